"""Fluency: ROME's weighted n-gram entropy of (greedy) generations.

For one text with word tokens ``w``::

    H_n(text) = -sum_g p(g) log2 p(g)      p = relative frequencies of the text's n-grams
    ngram_entropy_single(text) = mean_k( weights[k] * H_{ns[k]}(text) )
                               = (2/3 * H_2 + 4/3 * H_3) / 2   with ROME's defaults

and :func:`n_gram_entropy` is the arithmetic mean of that over texts (ROME's
``n_gram_entropy(gen_texts)``). A text with fewer than ``n`` tokens (e.g. empty) has no
n-grams, and its ``H_n`` is 0, which is also what ROME's code returns for it. Repetitive,
degenerate text has low entropy.

Tokenisation: ROME uses ``nltk.word_tokenize``; we use a small regex instead of depending
on nltk. For ordinary English it gives the same tokens: words, each punctuation mark on its
own, clitics split Treebank-style ("don't" -> "do" "n't", "it's" -> "it" "'s"), numbers
with separators and hyphenated words kept whole ("3.14", "1,000", "well-known"), "..." as one
token. Differences: abbreviations with periods are split ("U.S." -> "U" "." "S" "."; nltk
keeps them), and double quotes stay ``"`` (nltk rewrites them to `` and ''). No lowercasing,
as in ROME.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["word_tokenize", "ngram_entropy_single", "n_gram_entropy"]

_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)+"  # numbers with separators: 3.14, 1,000
    r"|\w+(?:-\w+)*(?=n't\b)"  # "do" of "don't", "ca" of "can't"
    r"|n't\b|'(?:s|re|ve|ll|d|m)\b"  # clitics
    r"|\w+(?:-\w+)*"  # words, hyphenated words
    r"|\.\.\."  # ellipsis
    r"|[^\w\s]",  # any other single punctuation mark
    re.IGNORECASE,
)


def word_tokenize(text: str) -> list[str]:
    """Split ``text`` into word and punctuation tokens (approximates ``nltk.word_tokenize``)."""
    return _TOKEN.findall(text)


def _entropy_bits(tokens: list[str], n: int) -> float:
    """Entropy (bits) of the frequency distribution of the n-grams of ``tokens``; 0 if none."""
    counts = Counter(zip(*(tokens[i:] for i in range(n))))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def ngram_entropy_single(
    text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """``mean_k(weights[k] * H_{ns[k]}(text))`` for one text (see the module docstring)."""
    if len(ns) != len(weights) or not ns:
        raise ValueError(f"ns {tuple(ns)} and weights {tuple(weights)} must be non-empty and of equal length")
    tokens = word_tokenize(text)
    return sum(w * _entropy_bits(tokens, n) for n, w in zip(ns, weights)) / len(ns)


def n_gram_entropy(
    texts: Sequence[str], ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)
) -> float:
    """ROME's fluency: arithmetic mean over ``texts`` of :func:`ngram_entropy_single`.

    NaN for an empty list (no generations: the metric is absent, not 0).
    """
    if isinstance(texts, str):
        raise TypeError("n_gram_entropy takes a list of texts; use ngram_entropy_single for one text")
    if not texts:
        return float("nan")
    return sum(ngram_entropy_single(t, ns, weights) for t in texts) / len(texts)
