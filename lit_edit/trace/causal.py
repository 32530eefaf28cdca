"""ROME-style causal tracing: which hidden states carry a fact?

For a prompt that names a subject ("The Space Needle is located in the city of"), tracing

1. runs the clean prompt and records the answer (the greedy next token unless one is given)
   and its probability, plus every block / MLP / attention output;
2. corrupts the subject's token embeddings with Gaussian noise (``samples`` noisy copies,
   fixed seed) and measures the answer's probability again (the corrupted probability);
3. for every (token position, layer) restores one clean state inside the corrupted run and
   measures the probability once more: ``"hidden"`` restores the block output (the residual
   stream), ``"mlp"`` / ``"attn"`` restore the MLP / attention outputs of a window of
   ``window`` layers centred on the layer (ROME's windowed restoration).

The *indirect effect* of a state is ``restored prob - corrupted prob``; averaged at the
subject's last token it is the curve ROME uses to choose the layer it edits.

Speed. Every forward carries ``samples`` corrupted copies for each of many layers at once
(all layers of one position, chunked by ``max_batch`` rows), and only the last position is
sent through the LM head. Positions before the subject are not traced: the noise cannot
reach them (causal attention), so their corrupted states *are* the clean ones and restoring
them changes nothing - their scores are the corrupted probability (indirect effect exactly 0).

Hooks go through :mod:`lit_edit.utils.hooks` (``patch_output`` / ``patch_outputs`` /
``capture``), which remove them on exit, so a trace never leaves the model patched.

Sources: ROME (Meng et al., 2022, arXiv:2202.05262), ``experiments/causal_trace.py`` in
kmeng01/rome (``trace_with_patch``, ``trace_important_states``,
``trace_important_window``, ``calculate_hidden_flow``). Deviation: ROME's default noise is
3 x the std of the *subject tokens'* embeddings collected over the dataset's subjects; here
the default is 3 x the std of the whole embedding matrix (no dataset needed); pass ``noise``
to use another level.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from lit_edit.editors.locate.prompts import subject_last_token_positions
from lit_edit.models.layouts import ModelLayout, get_module, num_layers
from lit_edit.utils.forward import decoder_body, head_logits
from lit_edit.utils.hooks import capture, patch_output, patch_outputs
from lit_edit.utils.tokens import tokenize_pairs

Kind = Literal["hidden", "mlp", "attn"]
KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")
#: Layout template restored for each kind.
KIND_TEMPLATE = {"hidden": "layer", "mlp": "mlp", "attn": "attn"}


# --- result --------------------------------------------------------------------------------------


@dataclass
class TraceResult:
    """Causal trace of one prompt.

    Attributes:
        prompt, subject: what was traced.
        tokens: the prompt's tokens (decoded one by one), special tokens included.
        subject_span: ``(start, end)`` token range of the subject (end exclusive).
        answer: decoded answer token; ``answer_id`` its id.
        clean_prob / corrupted_prob: answer probability without / with subject noise.
        scores: per kind, ``[n_tokens, n_layers]`` answer probability with that state restored
            (NaN where a position was not traced on request).
        noise, samples, window, seed: the settings used; ``seconds``: wall time of the trace.
    """

    prompt: str
    subject: str
    tokens: list[str]
    subject_span: tuple[int, int]
    answer: str
    answer_id: int
    clean_prob: float
    corrupted_prob: float
    scores: dict[str, Tensor]
    noise: float
    samples: int
    window: int
    seed: int
    seconds: float = 0.0

    @property
    def n_layers(self) -> int:
        return next(iter(self.scores.values())).shape[1] if self.scores else 0

    @property
    def subject_last(self) -> int:
        return self.subject_span[1] - 1

    def effects(self, kind: str) -> Tensor:
        """Indirect effects ``[n_tokens, n_layers]``: restored prob - corrupted prob."""
        return self.scores[kind] - self.corrupted_prob

    def layer_summary(self) -> dict[str, list[float]]:
        """Per kind, the indirect effect at the subject's last token for each layer."""
        return {kind: self.effects(kind)[self.subject_last].tolist() for kind in self.scores}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (scores as nested lists; NaN becomes ``None``)."""
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "tokens": list(self.tokens),
            "subject_span": list(self.subject_span),
            "answer": self.answer,
            "answer_id": self.answer_id,
            "clean_prob": self.clean_prob,
            "corrupted_prob": self.corrupted_prob,
            "noise": self.noise,
            "samples": self.samples,
            "window": self.window,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "scores": {k: _nan_to_none(v.tolist()) for k, v in self.scores.items()},
            "last_subject_token_effect": {k: _nan_to_none(v) for k, v in self.layer_summary().items()},
        }


@dataclass
class TraceSummary:
    """Causal traces averaged over a data slice (at the subject's last token).

    Attributes:
        kinds: kinds traced.
        mean_effect: per kind, ``[n_layers]`` average indirect effect at the last subject token.
        records: per request: prompt, subject, target, answer, correct (greedy answer is the
            target's first token), clean/corrupted prob and its per-layer effects.
        skipped: requests left out (``only_correct``), with why.
        seconds: total wall time.
    """

    kinds: tuple[str, ...]
    mean_effect: dict[str, Tensor]
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    def peak_layers(self, kind: str = "mlp", k: int = 3) -> list[int]:
        effect = self.mean_effect[kind]
        return torch.argsort(effect, descending=True)[:k].tolist() if effect.numel() else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "kinds": list(self.kinds),
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
            "mean_last_subject_token_effect": {k: _nan_to_none(v.tolist()) for k, v in self.mean_effect.items()},
            "peak_layers": {k: self.peak_layers(k) for k in self.kinds},
            "mean_clean_prob": _mean([r["clean_prob"] for r in self.records]),
            "mean_corrupted_prob": _mean([r["corrupted_prob"] for r in self.records]),
            "n_correct": sum(bool(r["correct"]) for r in self.records if r["correct"] is not None),
            "records": self.records,
            "skipped": self.skipped,
        }


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --- helpers -------------------------------------------------------------------------------------


def subject_token_span(tokenizer, prompt: str, subject: str) -> tuple[int, int]:
    """``(start, end)`` token range of the subject's first occurrence in ``prompt`` (end exclusive).

    The end comes from :func:`subject_last_token_positions`; the start is the first token
    that overlaps the subject's first character (offsets for fast tokenizers, else the
    number of tokens of the text before the subject, as ROME's ``find_token_range``).
    """
    last = subject_last_token_positions(tokenizer, [prompt], [subject])[0]
    at = prompt.find(subject)
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
        start = next(i for i, (s, e) in enumerate(offsets) if e > s and e > at)
    else:
        start = len(tokenizer(prompt[:at], add_special_tokens=True)["input_ids"]) if at else 0
    return min(start, last), last + 1


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """ROME's window of ``window`` layers centred on ``layer``, clipped to the model."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


@torch.no_grad()
def embedding_noise_level(model: nn.Module, layout: ModelLayout, factor: float = 3.0, chunk: int = 16384) -> float:
    """``factor`` x the standard deviation of the embedding module's output over the vocabulary.

    The noise is added to that output, so its scale is what counts, not the matrix's: Gemma's
    embedding multiplies the looked-up rows by sqrt(hidden size) (25 for Gemma 3 270M), and noise
    sized from the bare matrix would hardly corrupt the subject there. Summed in float64 over
    chunks of ids, so a 262k-row vocabulary needs no full-size copy.
    """
    embed = get_module(model, layout.embed)
    device = embed.weight.device
    total = squares = 0.0
    count = 0
    for start in range(0, embed.weight.shape[0], chunk):
        ids = torch.arange(start, min(start + chunk, embed.weight.shape[0]), device=device)
        out = embed(ids).double()
        total += float(out.sum())
        squares += float((out * out).sum())
        count += out.numel()
    mean = total / count
    return factor * ((squares - count * mean * mean) / (count - 1)) ** 0.5


def _answer_token_id(tokenizer, prompt: str, answer: str | int) -> int:
    if isinstance(answer, int):
        return answer
    pairs = tokenize_pairs(tokenizer, [prompt], [answer])
    return pairs.ids[0][pairs.n_prompt[0]]


def _last_probs(model: nn.Module, input_ids: Tensor) -> Tensor:
    """Next-token probabilities ``[batch, vocab]`` at the last position (LM head there only)."""
    hidden = decoder_body(model)(input_ids=input_ids, use_cache=False).last_hidden_state[:, -1]
    return torch.softmax(head_logits(model, hidden).float(), dim=-1)


# --- tracing -------------------------------------------------------------------------------------


@torch.no_grad()
def trace(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    prompt: str,
    subject: str,
    answer: str | int | None = None,
    *,
    noise: float | None = None,
    samples: int = 10,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    window: int = 10,
    positions: Sequence[int] | None = None,
    max_batch: int = 256,
) -> TraceResult:
    """Causal trace of ``prompt`` (see module docstring).

    Args:
        answer: answer text (its first token is scored), a token id, or None for the model's
            greedy next token.
        noise: std of the Gaussian noise added to the subject embeddings; None = 3 x the std
            of the embedding matrix.
        samples: corrupted copies averaged per measurement.
        kinds: any of ``"hidden"``, ``"mlp"``, ``"attn"``.
        window: layers restored together for ``"mlp"`` / ``"attn"`` (ROME: 10); ``"hidden"``
            always restores a single layer.
        positions: token positions to trace (None = all); other rows are NaN.
        max_batch: most rows in one forward (a forward holds ``samples`` rows per layer).
    """
    start_time = time.perf_counter()
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown trace kind(s) {unknown}; use {list(KINDS)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
    n_tokens = ids.shape[1]
    n_layers = num_layers(model, layout)
    span = subject_token_span(tokenizer, prompt, subject)
    noise = embedding_noise_level(model, layout) if noise is None else float(noise)
    embed = get_module(model, layout.embed)

    # (a) clean run: answer, its probability and every state we may restore.
    names = {kind: [layout.name(KIND_TEMPLATE[kind], i) for i in range(n_layers)] for kind in kinds}
    with capture(model, [n for kind in kinds for n in names[kind]]) as clean_states:
        clean = _last_probs(model, ids)[0]
    answer_id = int(clean.argmax()) if answer is None else _answer_token_id(tokenizer, prompt, answer)
    clean_prob = float(clean[answer_id])

    # (b) corrupted run: the same noise (fixed seed) is reused in every restored forward.
    generator = torch.Generator(device="cpu").manual_seed(seed)
    hidden_size = embed.weight.shape[1]
    draws = torch.randn(samples, span[1] - span[0], hidden_size, generator=generator)

    def corrupt(out: Tensor) -> Tensor:
        out = out.clone()
        reps = out.shape[0] // samples
        out[:, span[0] : span[1]] += (noise * draws).to(out.device, out.dtype).repeat(reps, 1, 1)
        return out

    with patch_output(embed, corrupt):
        corrupted_prob = float(_last_probs(model, ids.expand(samples, -1))[:, answer_id].mean())

    # (c) restorations, batched over layers at each position.
    wanted = range(n_tokens) if positions is None else sorted({p % n_tokens for p in positions})
    scores = {kind: torch.full((n_tokens, n_layers), float("nan")) for kind in kinds}
    chunk = max(1, max_batch // samples)
    for kind in kinds:
        for pos in wanted:
            if pos < span[0]:  # noise cannot reach it: restoring changes nothing
                scores[kind][pos] = corrupted_prob
                continue
            for first in range(0, n_layers, chunk):
                layers = list(range(first, min(first + chunk, n_layers)))
                probs = _restored_probs(
                    model, ids, embed, corrupt, clean_states, names[kind], layers, pos,
                    window=1 if kind == "hidden" else window, samples=samples, n_layers=n_layers,
                )
                scores[kind][pos, first : first + len(layers)] = probs[:, answer_id].view(len(layers), samples).mean(1)

    return TraceResult(
        prompt=prompt,
        subject=subject,
        tokens=[tokenizer.decode([t]) for t in ids[0].tolist()],
        subject_span=span,
        answer=tokenizer.decode([answer_id]),
        answer_id=answer_id,
        clean_prob=clean_prob,
        corrupted_prob=corrupted_prob,
        scores=scores,
        noise=noise,
        samples=samples,
        window=window,
        seed=seed,
        seconds=time.perf_counter() - start_time,
    )


def _restored_probs(
    model: nn.Module,
    ids: Tensor,
    embed: nn.Module,
    corrupt,
    clean_states: dict[str, Tensor],
    names: list[str],
    layers: list[int],
    pos: int,
    *,
    window: int,
    samples: int,
    n_layers: int,
) -> Tensor:
    """Probabilities ``[len(layers) * samples, vocab]``; rows ``i*samples..`` restore around ``layers[i]``."""
    # Which rows restore module j: those whose window around their layer contains j.
    rows_for: dict[int, list[int]] = {}
    for i, layer in enumerate(layers):
        for j in window_layers(layer, window, n_layers):
            rows_for.setdefault(j, []).extend(range(i * samples, (i + 1) * samples))

    def restore(j: int):
        rows = torch.tensor(rows_for[j], device=ids.device)
        value = clean_states[names[j]][0, pos]

        def fn(out: Tensor) -> Tensor:
            out = out.clone()
            out[rows, pos] = value.to(out.dtype)
            return out

        return fn

    with patch_output(embed, corrupt), patch_outputs(model, {names[j]: restore(j) for j in rows_for}):
        return _last_probs(model, ids.expand(len(layers) * samples, -1))


def trace_many(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    requests: Sequence[Any],
    *,
    answer: Literal["predicted", "target"] = "predicted",
    only_correct: bool = False,
    noise: float | None = None,
    samples: int = 10,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
    window: int = 10,
    max_batch: int = 256,
    progress: bool = True,
) -> TraceSummary:
    """Average per-layer indirect effect at the subject's last token over ``requests``.

    Only the last subject token is traced (one row of the heatmap), which is what the layer
    choice needs and ~``n_tokens`` times cheaper than a full trace.

    Args:
        requests: objects with ``prompt``, ``subject`` and ``target_new`` (``EditRequest``;
            known_1000's target is the true attribute).
        answer: score the model's greedy token (``"predicted"``, ROME) or the target's first
            token (``"target"``).
        only_correct: skip requests whose greedy token is not the target's first token (ROME
            keeps only facts the model predicts correctly).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    noise = embedding_noise_level(model, layout) if noise is None else float(noise)
    records, skipped = [], []
    sums = {kind: None for kind in kinds}
    for r in tqdm(requests, desc="causal trace", disable=not progress):
        if not r.subject:
            skipped.append({"prompt": r.prompt, "why": "no subject"})
            continue
        target = getattr(r, "target_new", None)
        target_id = _answer_token_id(tokenizer, r.prompt, target) if target else None
        last = subject_last_token_positions(tokenizer, [r.prompt], [r.subject])[0]
        # the clean greedy token first (one forward): requests the model does not know are
        # skipped before the expensive trace, not after it
        with torch.no_grad():
            ids = tokenizer(r.prompt, add_special_tokens=True, return_tensors="pt")["input_ids"]
            greedy = int(_last_probs(model, ids.to(next(model.parameters()).device))[0].argmax())
        correct = None if target_id is None else greedy == target_id
        if only_correct and not correct:
            skipped.append({"prompt": r.prompt, "target": target, "predicted": tokenizer.decode([greedy]),
                            "why": "greedy answer is not the target"})
            continue
        result = trace(
            model, tokenizer, layout, r.prompt, r.subject,
            answer=target_id if answer == "target" else None,
            noise=noise, samples=samples, seed=seed, kinds=kinds, window=window,
            positions=[last], max_batch=max_batch,
        )
        summary = result.layer_summary()
        for kind in kinds:
            row = torch.tensor(summary[kind])
            sums[kind] = row if sums[kind] is None else sums[kind] + row
        records.append({
            "prompt": r.prompt, "subject": r.subject, "target": target, "answer": result.answer,
            "correct": correct, "clean_prob": result.clean_prob, "corrupted_prob": result.corrupted_prob,
            "last_subject_token": result.subject_last, "seconds": round(result.seconds, 3),
            "effect": summary,
        })
    n = len(records)
    n_layers = num_layers(model, layout)
    mean = {k: (sums[k] / n if n else torch.full((n_layers,), float("nan"))) for k in kinds}
    return TraceSummary(
        kinds=tuple(kinds), mean_effect=mean, records=records, skipped=skipped,
        seconds=time.perf_counter() - start,
        settings={"answer": answer, "only_correct": only_correct, "noise": noise, "samples": samples,
                  "seed": seed, "window": window},
    )
