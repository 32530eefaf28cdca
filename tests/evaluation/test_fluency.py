"""ROME n-gram entropy against hand-computed values."""

import math

import pytest

from lit_edit.evaluation.fluency import n_gram_entropy, ngram_entropy_single, word_tokenize


def test_word_tokenize_close_to_nltk():
    assert word_tokenize("I don't know, it's 3.14... Well-known?") == [
        "I", "do", "n't", "know", ",", "it", "'s", "3.14", "...", "Well-known", "?",
    ]


def test_entropy_of_a_b_a_b():
    # bigrams: (a,b) x2, (b,a) x1 -> H2 = H(2/3, 1/3); trigrams: (a,b,a), (b,a,b) -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert ngram_entropy_single("a b a b") == pytest.approx(expected)
    assert ngram_entropy_single("a b a b", ns=(2,), weights=(1.0,)) == pytest.approx(h2)


def test_short_texts_and_mean_over_texts():
    assert ngram_entropy_single("") == 0.0
    # "x y": one bigram (H2 = 0), no trigram (H3 = 0)
    assert ngram_entropy_single("x y") == 0.0
    # "a b c": two distinct bigrams -> H2 = 1 bit; one trigram -> H3 = 0
    assert ngram_entropy_single("a b c") == pytest.approx(2 / 3 * 1.0 / 2)
    assert n_gram_entropy(["a b c", ""]) == pytest.approx(2 / 3 / 2 / 2)
    assert math.isnan(n_gram_entropy([]))
    with pytest.raises(TypeError):
        n_gram_entropy("a b c")


def test_repetition_lowers_entropy():
    fluent = "The Eiffel Tower is located in Paris, the capital of France."
    degenerate = "Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris Paris"
    assert n_gram_entropy([degenerate]) == 0.0 < n_gram_entropy([fluent])
