"""Keys of locate-then-edit editors: the input of an MLP down projection at the subject's last token.

An MLP down projection ``W`` (layout field ``mlp_out``) is read as a linear associative
memory: its *input* at the subject's last token is the key ``k`` of a fact, its *output*
there the value ``v``. ``k*`` is that key averaged over the context templates
(:mod:`.prompts`), so the edit does not depend on one exact wording; values are in
:mod:`.values`, and the write ``W k* = v*`` in the editors (ROME: a rank-one update,
:mod:`lit_edit.editors.rome`; MEMIT: least squares over several layers).

Everything here works for any number of requests and any layer, so batch editors call it
once per layer with all their requests. Only the blocks up to the read one run. Hooks go
through :mod:`lit_edit.utils.hooks` only.

Sources: ROME (Meng et al., 2022, arXiv:2202.05262), ``rome/compute_u.py`` and
``rome/repr_tools.py`` in kmeng01/rome.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.locate.prompts import (check_subjects, subject_char_span, subject_last_token_positions,
                                             templated_prompts)
from lit_edit.models.layouts import ModelLayout, resolve
from lit_edit.utils.forward import decoder_body
from lit_edit.utils.hooks import capture
from lit_edit.utils.replay import frozen_prefix
from lit_edit.utils.tokens import pad_right


@torch.no_grad()
def compute_keys(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    *,
    module: str = "mlp_out",
    batch_size: int = 64,
) -> Tensor:
    """ROME's ``k*``: the input of ``module`` at the subject's last token, averaged over templates.

    Returns ``[n_requests, d_in]`` in float32. Only blocks ``0..layer`` run: the forward
    stops after the edited block (the recording pass of :func:`frozen_prefix`).
    """
    check_subjects(requests)
    return subject_states(model, tokenizer, layout, module, layer, requests, templates, what="input",
                          batch_size=batch_size)


@torch.no_grad()
def subject_states(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    module: str,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    *,
    what: str,
    batch_size: int = 64,
) -> Tensor:
    """The ``what`` (``"input"`` or ``"output"``) of layout field ``module`` at ``layer``, read at
    the subject's last token and averaged over ``templates``: ``[n_requests, d]`` float32.

    Shared by :func:`compute_keys` (``mlp_out`` inputs) and MEMIT's ``layer_outputs`` (block
    outputs). Only blocks ``0..layer`` run: the forward stops after that block (the recording
    pass of :func:`frozen_prefix`).
    """
    prompts, subjects, starts = templated_prompts(requests, templates)
    positions = subject_last_token_positions(tokenizer, prompts, subjects, search_from=starts)
    ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    states = []
    for lo, batch in _module_states(model, tokenizer, layout, module, layer, ids, what=what, batch_size=batch_size):
        cols = torch.tensor(positions[lo : lo + len(batch)], device=batch.device)
        states.append(batch[torch.arange(len(cols), device=batch.device), cols].float())
    per_prompt = torch.cat(states)
    return per_prompt.view(len(requests), len(templates), -1).mean(1)


def _module_states(model: nn.Module, tokenizer, layout: ModelLayout, module: str, layer: int,
                   ids: Sequence[Sequence[int]], *, what: str, batch_size: int):
    """``(offset, states [b, seq, d])`` per batch of right-padded ``ids``: the ``what`` of layout
    field ``module`` at ``layer``; only blocks ``0..layer`` run."""
    target = resolve(model, module, layer, layout)  # checks the layer index
    name = layout.name(module, layer)
    device = next(model.parameters()).device
    body = decoder_body(model)
    for lo in range(0, len(ids), batch_size):
        input_ids, mask = pad_right(ids[lo : lo + batch_size], tokenizer.pad_token_id)
        input_ids, mask = input_ids.to(device), mask.to(device)
        forward = lambda: body(input_ids=input_ids, attention_mask=mask, use_cache=False)  # noqa: E731
        with capture(model, [name], what=what) as seen:
            # the recording pass runs blocks 0..layer and stops: nothing above is computed
            with frozen_prefix(model, layout, layer + 1, forward):
                pass
        if name not in seen:
            raise RuntimeError(f"{type(target).__name__} {name} did not run in the forward pass")
        yield lo, seen[name]


@torch.no_grad()
def prompt_context_keys(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    layer: int,
    requests: Sequence[EditRequest],
    *,
    module: str = "mlp_out",
    batch_size: int = 64,
) -> Tensor:
    """Inputs of ``module`` at every token of each bare prompt that is not part of the subject.

    MEMIT's preserved set is ``C`` of a text corpus; these are the keys of the edit prompts' own
    context (the question around the subject), which a batch write should leave as it found them:
    the edit is meant to act at the subject alone. Returns ``[m, d_in]`` float32, one row per token.
    """
    check_subjects(requests)
    prompts = [r.prompt for r in requests]
    enc = tokenizer(prompts, add_special_tokens=True, return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    keep = []
    for i, (prompt, r) in enumerate(zip(prompts, requests)):
        at, end = subject_char_span(prompt, r.subject)
        if "offset_mapping" in enc:
            keep.append([not (s < end and e > at) for s, e in enc["offset_mapping"][i]])
        else:  # ROME's rule: tokens of the text before the subject, then those after its end
            first = len(tokenizer(prompt[:at], add_special_tokens=True)["input_ids"])
            last = len(tokenizer(prompt[:end], add_special_tokens=True)["input_ids"])
            keep.append([not (first <= j < last) for j in range(len(enc["input_ids"][i]))])
    rows = []
    for lo, batch in _module_states(model, tokenizer, layout, module, layer, enc["input_ids"], what="input",
                                    batch_size=batch_size):
        for j in range(len(batch)):
            flags = torch.tensor(keep[lo + j], dtype=torch.bool, device=batch.device)
            rows.append(batch[j, : len(flags)][flags].float())
    if not rows:
        raise ValueError("prompt_context_keys needs at least one request")
    return torch.cat(rows)
