"""The prompts of an edit: context templates, the prompt in each, and where its subject is.

Locate-then-edit editors read and write at one position, the subject's last token, and
average over several wordings of the prompt so an edit does not hang on one exact text.
Everything that turns ``EditRequest``s into token rows with that position known lives
here, so keys (:mod:`.keys`), values (:mod:`.values`), causal tracing and the value
ceiling agree on it to the token.

Sources: ROME (Meng et al., 2022, arXiv:2202.05262) and its code (``rome/compute_v.py``'s
context templates, ``rome/repr_tools.py``'s subject positions in kmeng01/rome); where this
module deviates from the code it says so at the place.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from lit_edit.data.schema import EditRequest

#: ROME's ``context_template_length_params``: (prefix length in tokens, how many) pairs.
ROME_LENGTH_PARAMS: tuple[tuple[int, int], ...] = ((5, 10), (10, 10))
#: Words the generated prefixes start from (MEMIT's and EasyEdit's choice; ROME started
#: from GPT-2's ``<|endoftext|>``, which other tokenizers do not have).
DEFAULT_STARTS: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
#: ROME's KL ("essence") prompt: keeps what the model thinks the subject *is*.
ESSENCE_TEMPLATE = "{} is a"


# --- context templates ---------------------------------------------------------------------------


def split_template(template: str) -> tuple[str, str]:
    """``"prefix {} suffix"`` -> ``("prefix ", " suffix")``; exactly one ``{}`` is required."""
    if template.count("{}") != 1:
        raise ValueError(f"context template {template!r} must contain exactly one '{{}}' (where the prompt goes)")
    prefix, suffix = template.split("{}")
    return prefix, suffix


def fill_template(template: str, prompt: str) -> str:
    """The prompt placed in a context template (no ``str.format``: braces elsewhere are kept)."""
    prefix, suffix = split_template(template)
    return prefix + prompt + suffix


def _clean_prefix(text: str) -> str:
    text = text.replace("{", " ").replace("}", " ")  # a prefix must not add a placeholder
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def context_templates(
    model: nn.Module,
    tokenizer,
    *,
    length_params: Sequence[Sequence[int]] = ROME_LENGTH_PARAMS,
    starts: Sequence[str] | None = None,
    seed: int = 0,
    top_k: int = 5,
    fixed: Sequence[str] | None = None,
    document_start: str | None = None,
) -> list[str]:
    """``["{}"]`` plus short prefixes the model generates itself, each followed by ``". {}"``.

    ROME averages keys and optimises values over the prompt preceded by random text so the
    edit holds in context. For each ``(length, n)`` in ``length_params`` it samples ``n``
    prefixes of ``length`` tokens (start word included) with top-``top_k`` sampling, spread
    evenly over ``starts``. Sampling is seeded and runs under a forked RNG, so the same model
    gives the same templates and the caller's random state is untouched. ``fixed`` (a list of
    templates with one ``{}`` each, e.g. from a config) skips generation entirely.

    ``document_start``: text the model saw at the start of its pretraining documents (e.g.
    SmolLM2's ``"<|endoftext|>"``), put before each start word for the generation only. A
    model whose tokenizer adds no such token may read a start word at position 0 as the middle
    of something: SmolLM2-135M-Instruct follows a bare "The" with "-" 42 % of the time, and
    its prefixes read "The-the-key-to-be-."; after "<|endoftext|>" it writes "The first step of
    the process is to gather the". ROME's code started its prefixes from GPT-2's
    "<|endoftext|>" too. ``None``: the start word with the tokenizer's own special
    tokens only (MEMIT's code). The templates never contain it: only the generated text is kept.

    Callers cache the result (the ROME editor keeps it on the editor object).
    """
    if fixed is not None:
        templates = list(fixed)
        if not templates:
            raise ValueError("fixed context templates must not be empty (use ['{}'] for no context)")
        for t in templates:
            split_template(t)
        return templates
    starts = list(starts or DEFAULT_STARTS)
    device = next(model.parameters()).device
    templates = ["{}"]
    fork_devices = [device] if device.type == "cuda" else []
    lead = tokenizer(document_start, add_special_tokens=False)["input_ids"] if document_start else []
    if document_start and not lead:
        raise ValueError(f"document_start {document_start!r} is no token of this tokenizer")
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for length, n in length_params:
            length, n = int(length), int(n)
            if n <= 0:
                continue
            per_start = [n // len(starts) + (1 if i < n % len(starts) else 0) for i in range(len(starts))]
            for start, count in zip(starts, per_start):
                if count == 0:
                    continue
                ids = tokenizer([start] * count, add_special_tokens=True, return_tensors="pt")["input_ids"]
                n_new = max(1, length - ids.shape[1])  # the prefix's length leaves document_start out
                ids = torch.cat([torch.tensor([lead] * count, dtype=ids.dtype), ids], dim=1)  # [count, 0] without a lead
                out = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=torch.ones_like(ids).to(device),
                    do_sample=True,
                    top_k=top_k,
                    top_p=1.0,
                    temperature=1.0,
                    max_new_tokens=n_new,
                    min_new_tokens=n_new,
                    pad_token_id=tokenizer.pad_token_id,
                )
                for row in out:
                    text = _clean_prefix(tokenizer.decode(row[len(lead):], skip_special_tokens=True))
                    templates.append(f"{text}. {{}}" if text else "{}")
    return templates


# --- where the subject is ------------------------------------------------------------------------


def subject_char_span(prompt: str, subject: str, start: int = 0) -> tuple[int, int]:
    """``(first, end)`` characters of the subject's first occurrence at or after ``start``."""
    if not subject:
        raise ValueError(f"an empty subject cannot be located in prompt {prompt!r}")
    at = prompt.find(subject, start)
    if at < 0:
        where = f" (searching from character {start})" if start else ""
        raise ValueError(f"subject {subject!r} not found in prompt {prompt!r}{where}")
    return at, at + len(subject)


def subject_last_token_positions(
    tokenizer,
    prompts: Sequence[str],
    subjects: Sequence[str],
    *,
    search_from: Sequence[int] | None = None,
) -> list[int]:
    """Index of the subject's last token in ``tokenizer(prompt, add_special_tokens=True)``.

    The subject is the first occurrence at or after character ``search_from[i]`` (default 0;
    pass the length of a context prefix so text in the prefix is never mistaken for it).
    Fast tokenizers map characters to tokens through offsets, so BOS tokens, subjects at the
    very start and BPE merges across the subject's boundary are all handled: the answer is
    the token containing the subject's last character. Tokenizers without offsets fall back
    to ROME's rule: the number of tokens of the text up to the subject's end, minus one.
    """
    if len(prompts) != len(subjects):
        raise ValueError(f"{len(prompts)} prompts but {len(subjects)} subjects")
    starts = list(search_from) if search_from is not None else [0] * len(prompts)
    ends = [subject_char_span(prompt, subject, start)[1] for prompt, subject, start in zip(prompts, subjects, starts)]
    if not prompts:
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(list(prompts), add_special_tokens=True, return_offsets_mapping=True)
        positions = []
        for prompt, subject, end, offsets in zip(prompts, subjects, ends, enc["offset_mapping"]):
            inside = [i for i, (s, e) in enumerate(offsets) if e > s and s < end]
            if not inside:
                raise ValueError(f"no token of prompt {prompt!r} covers subject {subject!r}")
            positions.append(max(inside))
        return positions
    return [len(tokenizer(p[:end], add_special_tokens=True)["input_ids"]) - 1 for p, end in zip(prompts, ends)]


def check_subjects(requests: Sequence[EditRequest]) -> None:
    """Fail before any model work if a request has no subject: there would be no position to edit."""
    for r in requests:
        if not r.subject:
            where = f" ({r.source})" if r.source else ""
            raise ValueError(f"request{where} {r.prompt!r} has no subject: locate-then-edit editors need one")


def templated_prompts(
    requests: Sequence[EditRequest], templates: Sequence[str]
) -> tuple[list[str], list[str], list[int]]:
    """Every request's prompt in every template: prompts, subjects, subject search starts."""
    if not templates:
        raise ValueError("at least one context template is needed (use ['{}'] for the bare prompt)")
    parts = [split_template(t) for t in templates]
    prompts, subjects, starts = [], [], []
    for r in requests:
        for prefix, suffix in parts:
            prompts.append(prefix + r.prompt + suffix)
            subjects.append(r.subject)
            starts.append(len(prefix))
    return prompts, subjects, starts
