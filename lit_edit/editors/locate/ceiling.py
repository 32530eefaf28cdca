"""The value ceiling: how far an editor's value target can carry an edit before any weight is written.

ROME writes ``v*`` (the MLP output) and MEMIT ``z*`` (the block output) at the subject's last
token: a vector that, added there, makes the *edit prompt* say the target. The weight update
then tries to produce that vector wherever the subject's key appears. Adding the optimised
delta directly - to the unedited model, at the subject's last token of a prompt - is what a
perfect write could give on that prompt. On the edit prompt it measures the optimisation; on a
rephrase it bounds the generalization the weight update can reach from this target (a write
also reaches other positions, so it is a reference, not a proof). Scales other than 1 show
whether a larger or smaller delta would carry better.

Measured on SmolLM2 / ZsRE records 0-99 (``python edit.py mode=value_ceiling editor=memit
data=zsre data.limit=100``): MEMIT's tuned z* (block 7's output) makes the edit prompts say the
target at token accuracy 0.997 and the rephrases at 0.789, and the batch write reaches 0.747-0.757
generalization; ROME's v* (layer 7's MLP output) 1.000 and 0.896, the single edits 0.852.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.locate.prompts import subject_last_token_positions
from lit_edit.evaluation.metrics import token_accuracy
from lit_edit.evaluation.scoring import teacher_forced
from lit_edit.models.layouts import ModelLayout, resolve
from lit_edit.utils.hooks import patch_output
from lit_edit.utils.tokens import TokenizedPairs, tokenize_pairs


@dataclass(frozen=True)
class CeilingRow:
    """Target token accuracy with ``scale * delta`` added, per kind of prompt."""

    scale: float
    prompt: float  # the edit prompts
    rephrase: float | None  # the rephrases that contain the subject (None: there are none)
    n_prompts: int
    n_rephrases: int
    skipped_rephrases: int  # rephrases without the subject string: no position to patch

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Probe:
    """One (prompt, target) probe of request ``request``, tokenised once for every scale."""

    request: int
    pairs: TokenizedPairs  # the one pair
    position: int  # the subject's last token in ``pairs.ids[0]``


def _probe(tokenizer, request: int, prompt: str, subject: str, target: str, max_length: int) -> _Probe:
    pairs = tokenize_pairs(tokenizer, [prompt], [target], max_length)
    position = subject_last_token_positions(tokenizer, [prompt], [subject])[0]
    untruncated = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    return _Probe(request, pairs, position - (untruncated - pairs.n_prompt[0]))  # tokenize_pairs cuts on the left


def _patched_accuracy(model: nn.Module, site: nn.Module, probe: _Probe, delta: Tensor, pad_id: int) -> float:
    """Teacher-forced token accuracy of the probe's target with ``delta`` added to ``site``'s
    output at the subject's last token (``delta`` zero: the unedited model)."""

    def add(hidden: Tensor) -> Tensor | None:
        if probe.position < 0:  # the subject was cut off with the prompt's start
            return None
        hidden = hidden.clone()
        hidden[0, probe.position] += delta.to(device=hidden.device, dtype=hidden.dtype)
        return hidden

    with patch_output(site, add):
        scored = teacher_forced(model, probe.pairs, pad_id=pad_id)
    return float(token_accuracy(scored.pred_ids, scored.label_ids, scored.mask)[0])


def value_ceiling(model: nn.Module, tokenizer, layout: ModelLayout, module: str, layer: int,
                  requests: Sequence[EditRequest], deltas: Tensor, scales: Sequence[float] = (0.0, 1.0), *,
                  max_length: int = 512) -> list[CeilingRow]:
    """One :class:`CeilingRow` per scale: ``scale * deltas[i]`` added at ``module``/``layer``'s
    output at the subject's last token of request ``i``'s prompt and of each rephrase.

    ``deltas`` ``[n, width]``: the value target minus the unedited value (``ValueTargets.delta``).
    Scale 0 is the unedited model (what the edit starts from).
    """
    requests = list(requests)
    if deltas.shape[0] != len(requests):
        raise ValueError(f"{deltas.shape[0]} deltas for {len(requests)} requests")
    site = resolve(model, module, layer, layout)
    prompts = [_probe(tokenizer, i, r.prompt, r.subject, r.target_new, max_length) for i, r in enumerate(requests)]
    rephrases = [_probe(tokenizer, i, p, r.subject, r.target_new, max_length)
                 for i, r in enumerate(requests) for p in r.rephrase_prompts if r.subject in p]
    skipped = sum(len(r.rephrase_prompts) for r in requests) - len(rephrases)
    rows = []
    for scale in scales:
        on_prompt, on_rephrase = [[_patched_accuracy(model, site, probe, deltas[probe.request].float() * float(scale),
                                                     tokenizer.pad_token_id) for probe in probes]
                                  for probes in (prompts, rephrases)]
        rows.append(CeilingRow(
            scale=float(scale), prompt=sum(on_prompt) / max(len(on_prompt), 1),
            rephrase=sum(on_rephrase) / len(on_rephrase) if on_rephrase else None,
            n_prompts=len(on_prompt), n_rephrases=len(on_rephrase), skipped_rephrases=skipped))
    return rows


def ceiling_table(rows: Sequence[CeilingRow], site: str) -> str:
    """Markdown table of :func:`value_ceiling`'s rows."""
    lines = [f"Value ceiling at {site} (delta added at the subject's last token, unedited weights)", "",
             "| scale | edit prompt | rephrase | prompts | rephrases | rephrases without the subject |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        rephrase = "-" if r.rephrase is None else f"{r.rephrase:.3f}"
        lines.append(f"| {r.scale:g} | {r.prompt:.3f} | {rephrase} | {r.n_prompts} | {r.n_rephrases} | "
                     f"{r.skipped_rephrases} |")
    return "\n".join(lines)
