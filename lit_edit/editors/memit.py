"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al., 2023, arXiv:2210.07229).

A batch of ``n`` facts is written into the MLP down projections (layout field ``mlp_out``)
of several consecutive layers ``L = layers`` at once (``execute_memit`` in kmeng01/memit)::

    z*_i  = the residual stream (output of block L[-1]) at request i's subject's last token
            that makes the model say the target (optimised once, up front: value_targets
            with module="layer")
    for the j-th layer l of L (ascending):
        K_l = [k_1 .. k_n]        keys at l (input of mlp_out), averaged over context templates
        z_i = current output of block L[-1] (recomputed: earlier layers already moved it)
        R   = (Z* - Z) / (len(L) - j)           the remaining residual, spread over the
                                                 layers still to edit
        Delta W_l = R K_l^T (lambda C_l + K_l K_l^T)^-1         (lambda = mom2_update_weight)

``Delta W_l`` is the least-squares solution of ``min ||Delta W K - R||^2 + lambda tr(Delta W
C Delta W^T)``: it moves the MLP output at the new keys by (about) ``R`` while changing the
output for ordinary keys (second moment ``C = E[k k^T]``) as little as possible. The MLP
output is added to the residual stream, so writing ``R`` at layer ``l`` moves ``z`` at
``L[-1]`` by roughly ``R``; the last layer takes what is left. Unlike ROME, scaling ``C``
matters (it trades against ``K K^T``), hence ``mom2_update_weight``.

Numerics: ``lambda C + K K^T`` ``[d_in, d_in]`` is solved in float64 on the CPU with
``torch.linalg.solve`` (no explicit inverse; ``C`` of MLP keys is badly conditioned). ``C``
of every layer is fetched once per editor in :meth:`MEMITEditor.prepare` - before any
edit, so sequential editing keeps using the base model's statistics - with one pass over
the corpus for all layers when the provider has ``get_many``.

Rounds (``rounds``, MEMIT: 1). ``z*`` is optimised on the model *before* the batch is written:
the tokens after the subject (the rest of the question, the answer's first tokens) run through
unedited MLPs. Once a hundred facts are written into five layers those tokens run through
edited MLPs too, and the written ``z`` no longer says what ``z*`` said (SmolLM2, 100 ZsRE facts:
reliability 0.85 with ``z`` within 4 % of ``z*``). With ``rounds = 2`` the editor then optimises
``z*`` again on the edited model (starting from its current ``z``, so requests that already
succeed stop at once) and writes the correction the same way; the total update is the sum.
Measured on that batch (layers 3-7): lambda 1000 0.846/0.688/0.827 -> 0.991/0.803/0.803
(rel/gen/loc), lambda 8000 0.705/0.580/0.861 -> 0.972/0.793/0.827.

Context preservation (``context_preserve_weight`` ``w``, MEMIT: 0). ``C`` protects the keys of
the corpus the statistics came from; the keys of the batch's own prompts at every token other
than the subject's (``K_ctx``: "When was the inception of", "?") are not in it. On SmolLM2 those
question tokens are out of WikiText's distribution (``k^T C^-1 k`` median 2100-2400 at layers
3-7 for ZsRE's locality questions, 1000-1200 for WikiText tokens), so a batch write moves them
much more than ordinary text; the solve with ``lambda C + w K_ctx K_ctx^T + K K^T`` asks the
update to leave them where they were, which keeps the edit at the subject. Measured on one batch
of 100 ZsRE facts, one round, lambda 8000: w 0 / 1 / 10 / 30 -> rel 0.673 / 0.656 / 0.609 /
0.558, loc 0.884 / 0.901 / 0.918 / 0.919; raising lambda to 16000 buys the same locality
(0.917) for rel 0.448. Including the target's tokens in ``K_ctx`` costs reliability (w 3: rel
0.564, loc 0.907), so only the prompt is preserved. With rounds (edit.py, w 10): lambda 8000,
3 rounds 0.974/0.765/0.878 (0.979/0.782/0.861 without the term); lambda 12000, 4 rounds
0.974/0.757/0.888. AlphaEdit (same z*, one round) does not gain locality from it: w 0 / 10 / 100
-> 0.846/0.665/0.844, 0.882/0.674/0.840, 0.865/0.670/0.830. MEMIT with w 30, or lambda 16000 and
more rounds, stays on the lambda-12000 trade (per-round numbers: configs/model/smollm2_135m.yaml).

Question text in ``C`` (``stats.extra_corpora``, MEMIT: none). The same gap from the other
side: add the second moment of question text to WikiText's, ``C + beta C_q``, so ``lambda C``
protects questions the batch does not contain. ``C_q`` from the Natural Questions of ZsRE's train
split (``prompts:zsre_train:locality``, disjoint from the eval split's locality questions).
One batch of 100 ZsRE facts, one round: lambda 2000, beta 1 -> 0.782/0.637/0.891 where WikiText's
C alone gives 0.834/0.658/0.853 at lambda 2000 and 0.673/0.515/0.884 at lambda 8000 (the train
split's own ZsRE questions, src and rephrase, protect the rephrases too: gen 0.581, loc 0.877).
With the context term (w 10) and four rounds the rounds spend the gain: lambda 12000, beta 0.5
0.931/0.696/0.902; lambda 8000, beta 1 0.949/0.730/0.887, the same trade of generalization for
locality as raising lambda (14000: 0.966/0.730/0.894). So SmolLM2's tuned values leave it off.

Subject frames (``subject_frames``, ``frame_weight`` ``mu``, MEMIT: none). The write is fitted at
the prompt's key ``k``, and ``C^-1`` favours the directions ordinary text rarely uses, which are
presumably also where ``k`` differs most from the same subject's key after other words (a
rephrase). Adding
``mu / F sum_f (k_f - k)(k_f - k)^T`` to ``lambda C`` (``k_f``: the subject's last-token key in the
``F`` frames, e.g. "Tell me about {}") asks the write to act on the subject alike whatever comes
before it. No benchmark text is used: the frames are fixed strings. One batch of 100 ZsRE facts,
tuned values (lambda 12000, w 10), 8 frames (configs/editor/memit.yaml), one round: mu 10
0.444/0.343/0.934 against lambda 16000's 0.407/0.335/0.931 (mu 100: 0.363/0.294/0.936). Like
question text in ``C``, four rounds spend the gain: mu 3 0.963/0.745/0.892, mu 10
0.961/0.760/0.881, against 0.974/0.757/0.888 without frames; mu 10 in round 1 only, rounds 2-4
without frames, 0.966/0.756/0.883. So it is off in SmolLM2's tuned values and useful with
``rounds: 1`` (MEMIT's own algorithm).

Layer weights (``layer_weights``, MEMIT: even). MEMIT gives the ``j``-th of ``L`` layers
``1 / (L - j)`` of the residual still left. Measured per unit of write (the tuned four-round
update added back one layer at a time, 100 ZsRE locality probes), SmolLM2's layers 3 / 4 / 5 /
6 / 7 cost 0.054 / 0.053 / 0.030 / 0.049 / 0.065 locality for writes of 12.5 / 12.8 / 13.8 / 16.4
/ 22.5 at the edit keys, so layer 5 is the cheapest. Weights ``w`` give layer ``j`` the share
``w_j / sum_{i >= j} w_i``. One round, tuned values: ``[0.7, 0.7, 1.4, 1, 1]`` 0.486/0.378/0.927
and ``[0.10, 0.11, 0.38, 0.21, 0.22]`` (``w ~ cost^-2``) 0.475/0.369/0.930, against even
0.490/0.381/0.914 - far better than raising lambda (16000: 0.407/0.335/0.931). Four rounds spend
the gain, as with the terms above: ``[0.7, 0.7, 1.4, 1, 1]`` 0.967/0.742/0.888 against
0.974/0.757/0.888. So it is off in SmolLM2's tuned values.

Templates after the prompt (``extra_context_templates``, MEMIT: none). MEMIT optimises ``z*`` on
the prompt behind generated prefixes, so the target always follows the prompt's own last words.
ZsRE's prompts end at the subject ("... of Barack Obama?"), and a rephrase often puts words
between the subject and the answer ("Barack Obama is a citizen of which country?"), which such a
``z*`` was never asked to carry the fact across. Templates such as ``"{} Answer:"`` do ask it; the
key at the subject is the same (causal attention), so only ``z*`` changes. On SmolLM2 (ZsRE 0-99,
tuned values) the ``z*`` alone makes the rephrases say the target 0.849 of the time against 0.793
(value ceiling, records 0-39) and the batch write, four rounds, gives 0.983/0.788/0.890 against
0.974/0.747/0.894: generalization +0.04 for locality -0.004, where every lever above traded
0.04 for 0.01. Three rounds then give 0.960/0.764/0.900.

A norm after the MLP (Gemma 2/3's ``post_feedforward_layernorm``, layout field ``mlp_out_norm``).
MEMIT's algebra assumes the MLP output is added to the residual stream as it is, so the share
``R`` is what ``mlp_out`` should add. Behind ``n(m) = g * m / rms(m)`` the editor instead asks for
the ``m`` whose ``n(m)`` is nearest ``n(m) + R`` at each key, and fits that change
(:mod:`lit_edit.editors.locate.norm_target`; exact where reachable, and whatever is missed stays in
``z* - z`` for the later layers and rounds). On the tiny Gemma 3 (post-MLP gain 10, four
requests, one template) ``z`` then ends 0.11-0.16 of ``||z* - z||`` from ``z*``, against 0.41-0.47
when ``R`` is written into the MLP output as it is
(``test_behind_a_post_mlp_norm_the_write_is_carried_through_it``); until this was added MEMIT
refused such models. Models without such a norm run the code above unchanged.

Deviations from the MEMIT code, all deliberate (``rounds: 1``, ``v_share_subject: false``,
``context_preserve_weight: 0``, ``frame_weight: 0``, ``layer_weights: null`` and
``extra_context_templates: []`` give MEMIT's algorithm):
- Keys are a plain mean over the context templates (MEMIT averages within the group
  ``["{}"]`` and within the generated group, then over the two groups, so the bare prompt
  weighs 1/2; here it weighs 1/len(templates), 2/8 with the tuned templates, as "{} Answer:" has
  the same key). Measured on one batch of 100 ZsRE facts (data.seed=6, tuned values): MEMIT's
  weighting 0.957/0.764/0.892, no bare prompt (the generated prefixes and "Question: {}" evenly)
  0.926/0.749/0.890, the plain mean 0.939/0.763/0.900.
- The current ``z`` is averaged over the context templates like ``v*``'s ``original``
  (:class:`~lit_edit.editors.locate.values.ValueTargets`), where MEMIT reads it on
  the bare prompt and takes ``z*`` = bare value + delta. Both make the first residual exactly
  the optimised ``delta``; this way ``z*`` and ``z`` are measured the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import WeightSnapshot
from lit_edit.editors.locate.base import LocateEditor
from lit_edit.editors.locate.keys import compute_keys, prompt_context_keys, subject_states
from lit_edit.editors.locate.prompts import fill_template
from lit_edit.editors.locate.values import ValueTargets, value_targets
from lit_edit.editors.locate.norm_target import mlp_output_change
from lit_edit.models.layouts import ModelLayout, add_to_weight, output_at, resolve

#: MEMIT's context templates: "{}" plus 5 generated prefixes of 10 tokens (memit_main.py).
MEMIT_LENGTH_PARAMS: tuple[tuple[int, int], ...] = ((10, 5),)


def layer_outputs(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
) -> Tensor:
    """Output of block ``layer`` (the residual stream ``z``) at the subject's last token.

    Averaged over ``templates``, as :func:`compute_keys` averages keys; ``[n, d_model]``
    float32. Only blocks ``0..layer`` run.
    """
    return subject_states(model, tokenizer, layout, "layer", layer, requests, templates, what="output",
                          batch_size=batch_size)


def memit_update(keys: Tensor, residual: Tensor, weight: float, c: Tensor | None,
                 preserved: Sequence[tuple[Tensor, float]] = ()) -> Tensor:
    """``Delta W = R K^T (weight * C + sum_i w_i P_i^T P_i + K K^T)^-1`` in float64 on the CPU,
    canonical ``[out, in]``.

    ``keys`` ``[n, d_in]``, ``residual`` ``[n, d_out]`` (rows are requests), ``c`` ``[d_in,
    d_in]`` or ``None`` for ``C = I``; ``preserved``: pairs ``(P_i [m_i, d_in], w_i)`` of further
    keys whose output should stay (each row weighs like one edit key times ``w_i``). Solved, not
    inverted: ``A X = K^T`` then ``R^T X^T``.
    """
    k = keys.detach().to(device="cpu", dtype=torch.float64).T  # [d_in, n]
    r = residual.detach().to(device="cpu", dtype=torch.float64).T  # [d_out, n]
    c64 = torch.eye(k.shape[0], dtype=torch.float64) if c is None else c
    a = weight * c64 + k @ k.T
    for rows, rows_weight in preserved:
        if rows_weight:
            p = rows.detach().to(device="cpu", dtype=torch.float64)
            a = a + rows_weight * (p.T @ p)
    try:
        adj_k = torch.linalg.solve(a, k)  # (lambda C [+ sum w P^T P] + K K^T)^-1 K  [d_in, n]
    except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"lambda C + K K^T ({a.shape[0]}x{a.shape[0]}) is singular: {err}") from err
    return r @ adj_k.T


@dataclass
class LayerUpdate:
    """What MEMIT wrote at one layer (canonical ``[out, in]``, float64 on the CPU)."""

    layer: int
    keys: Tensor  # K_l  [n, d_in]
    z: Tensor  # z at the last edited layer before this layer's write  [n, d_model]
    # R, what the write fits at the keys: the layer's share of z* - z  [n, d_model]; behind a post-MLP
    # norm (Gemma 2/3) the change of the MLP's own output that moves the normalised output by that share
    residual: Tensor
    delta: Tensor  # Delta W_l  [d_out, d_in]
    round: int = 0  # which round of the edit (``rounds``) wrote it


class MEMITEditor(LocateEditor):
    """MEMIT on ``mlp_out`` of ``layers``; hyperparameters come from ``configs/editor/memit.yaml``.

    Args:
        layers: the edited blocks, strictly increasing (MEMIT: 3..8 for GPT-J, 13..17 for
            GPT-2 XL); ``z*`` is optimised at the output of the last one. An int is one layer.
        mom2_update_weight: ``lambda`` in ``lambda C + K K^T`` (MEMIT: 15000 GPT-J, 20000 GPT-2 XL).
        rounds: how many times ``z*`` is optimised and written per ``edit`` call, each round on
            the model as the previous one left it (MEMIT: 1; see the module docstring).
        context_preserve_weight: ``w`` in ``lambda C + w K_ctx K_ctx^T + K K^T``, where ``K_ctx``
            are the keys of every non-subject token of the batch's own prompts (MEMIT: 0, no such
            term; see the module docstring).
        subject_frames: strings with ``{}`` where the subject goes; the subject's last-token keys
            in them join the preserved term as deviations from the edit key (MEMIT: none).
        frame_weight: ``mu``, their total weight against one edit key (0: off; see the module
            docstring).
        layer_weights: how the residual is shared over ``layers`` (``None``: evenly, MEMIT's
            ``1 / (len(layers) - i)`` of what is left; see the module docstring).
        **settings: the keyword arguments of :class:`~lit_edit.editors.locate.base.LocateEditor`:
            ``v_num_grad_steps, v_lr, v_weight_decay, clamp_norm_factor, kl_factor, v_stop_loss``
            (the ``z*`` optimisation), ``mom2_adjustment`` (``C`` of keys, True in MEMIT, or ``C = I``),
            ``context_template_length_params`` (MEMIT: ``[[10, 5]]``, the default),
            ``context_templates, extra_context_templates`` (see the module docstring),
            ``context_template_seed, stats`` (for :class:`CachedStatsProvider`),
            ``stats_provider`` (may also have ``get_many(model, tokenizer, layout, layers)``),
            ``max_length, name``.
    """

    name = "memit"
    algorithm = "MEMIT"
    default_length_params = MEMIT_LENGTH_PARAMS

    def __init__(self, *, layers: Sequence[int] | int, mom2_update_weight: float, rounds: int = 1,
                 context_preserve_weight: float = 0.0, subject_frames: Sequence[str] = (),
                 frame_weight: float = 0.0, layer_weights: Sequence[float] | None = None,
                 **settings: Any) -> None:
        layers = [int(layers)] if isinstance(layers, int) else [int(x) for x in layers]
        if not layers:
            raise ValueError("MEMIT needs at least one layer")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"MEMIT layers must be strictly increasing, got {layers}")
        super().__init__(**settings)
        self.layers = layers
        self.mom2_update_weight = float(mom2_update_weight)
        if self.mom2_update_weight < 0:
            raise ValueError(f"mom2_update_weight must be >= 0, got {mom2_update_weight}")
        self.rounds = int(rounds)
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.context_preserve_weight = float(context_preserve_weight)
        if self.context_preserve_weight < 0:
            raise ValueError(f"context_preserve_weight must be >= 0, got {context_preserve_weight}")
        self.subject_frames = [str(f) for f in subject_frames]
        for frame in self.subject_frames:
            if frame.count("{}") != 1:
                raise ValueError(f"subject_frames: {frame!r} must hold '{{}}' (the subject) exactly once")
        self.frame_weight = float(frame_weight)
        if self.frame_weight < 0:
            raise ValueError(f"frame_weight must be >= 0, got {frame_weight}")
        if self.frame_weight and not self.subject_frames:
            raise ValueError("frame_weight > 0 needs subject_frames")
        if layer_weights is not None:
            layer_weights = [float(w) for w in layer_weights]
            if len(layer_weights) != len(layers):
                raise ValueError(f"layer_weights has {len(layer_weights)} entries, layers {layers} has {len(layers)}")
            if any(w <= 0 or w != w for w in layer_weights):
                raise ValueError(f"layer_weights must be positive, got {layer_weights}")
        self.layer_weights = layer_weights
        # diagnostics of the latest edit() call: z* of every round, the update of every layer and round
        self.last_round_targets: list[ValueTargets] = []
        self.last_updates: list[LayerUpdate] = []

    @property
    def edited_layers(self) -> list[int]:
        return self.layers

    def _use_moments(self, moments: dict[int, Tensor]) -> dict[int, Tensor]:
        """``C`` per layer in float64 on the CPU, symmetrised (cached until clear_cache)."""
        out = {}
        for layer, matrix in moments.items():
            c = matrix.detach().to(device="cpu", dtype=torch.float64)
            if not torch.isfinite(c).all():
                raise ValueError(f"second moment C of layer {layer} has non-finite entries")
            out[layer] = (c + c.T) / 2  # float32 accumulation is symmetric only up to rounding
        return out

    @property
    def _moments(self) -> dict[int, Tensor] | None:
        return self._prepared_moments

    # -- editing ---------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> WeightSnapshot:
        layout = self.ensure_prepared(model, tokenizer)
        requests = list(requests)
        self._require_subjects(requests)
        modules = {layer: resolve(model, "mlp_out", layer, layout) for layer in self.layers}
        snapshot = self._snapshot(layout, modules)
        self.last_updates = []
        self.last_round_targets = []
        if not requests:
            return snapshot
        self.last_timings = {}
        self.last_counts = {}
        device = next(model.parameters()).device
        try:
            for round_ in range(self.rounds):
                with self._phase("values", device):
                    vt = self._value_targets(model, tokenizer, layout, requests)
                self.last_round_targets.append(vt)
                self._count("value_steps", sum(vt.steps))
                moving = int((vt.delta.norm(dim=-1) > 0).sum())
                logging.getLogger(__name__).info(
                    "%s round %d/%d: %d of %d requests get a z* correction (mean %.1f optimisation steps)",
                    self.algorithm, round_ + 1, self.rounds, moving, len(requests), sum(vt.steps) / len(vt.steps))
                if round_ and not moving:
                    break  # every request already says its target: nothing left to correct
                for i, layer in enumerate(self.layers):
                    with self._phase("keys", device):
                        keys, spread = self._keys(model, tokenizer, layout, layer, requests)
                        z = self._current_z(model, tokenizer, layout, requests)
                        preserved = []
                        if self.context_preserve_weight:
                            preserved.append((prompt_context_keys(model, tokenizer, layout, layer, requests),
                                              self.context_preserve_weight))
                        if spread is not None:
                            preserved.append((spread, self.frame_weight / len(self.subject_frames)))
                    with self._phase("update", device):
                        residual = (vt.values.to(z.device) - z).double().cpu() * self._residual_share(i)
                        if layout.mlp_out_norm is not None:
                            residual = self._through_output_norm(model, layout, layer, modules[layer], keys, residual)
                        delta = self._layer_delta(layer, keys, residual, preserved)
                        add_to_weight(modules[layer], delta)
                    self.last_updates.append(LayerUpdate(layer, keys.cpu(), z.cpu(), residual, delta, round_))
            last = self.last_updates[-1].round
            self._after_edit([u for u in self.last_updates if u.round == last])
        except BaseException:
            snapshot.undo()  # a failure never leaves some layers written (nor subclass state changed)
            raise
        return snapshot

    # -- what variants change (PMET) -----------------------------------------------------------
    @property
    def last_targets(self) -> ValueTargets | None:
        """``z*`` of the latest edit's first round (the targets MEMIT itself would write)."""
        return self.last_round_targets[0] if self.last_round_targets else None

    @property
    def value_site(self) -> tuple[str, int]:
        return "layer", self.layers[-1]

    def initial_value_targets(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> ValueTargets:
        layout = self.ensure_prepared(model, tokenizer)
        self._require_subjects(requests)
        return self._value_targets(model, tokenizer, layout, list(requests))

    def _value_targets(self, model: nn.Module, tokenizer, layout: ModelLayout,
                       requests: Sequence[EditRequest]) -> ValueTargets:
        """``z*``: the residual stream at the last edited layer that makes the model say the target
        (from ``v_cache_dir`` when the same model, requests and settings were optimised before)."""
        return self._cached_targets(
            model, tokenizer, self.layers[-1], "layer",
            lambda store: value_targets(model, tokenizer, layout, self.layers[-1], requests, self.templates,
                                        self.value_hp(model), module="layer", max_length=self.max_length,
                                        chunk_size=self.chunk_size(model), store=store))

    def _keys(self, model: nn.Module, tokenizer, layout: ModelLayout, layer: int,
              requests: Sequence[EditRequest]) -> tuple[Tensor, Tensor | None]:
        """Keys ``[n, d_in]`` and, with ``frame_weight``, the subject's spread over the frames:
        rows ``k_if - k_i`` ``[n * F, d_in]`` for the preserved term."""
        keys = compute_keys(model, tokenizer, layout, layer, requests, self.templates)
        if not self.frame_weight:
            return keys, None
        framed = [EditRequest(prompt=fill_template(frame, r.subject), target_new=r.target_new, subject=r.subject,
                              source=r.source) for r in requests for frame in self.subject_frames]
        at_frames = compute_keys(model, tokenizer, layout, layer, framed, ["{}"])
        return keys, (at_frames.view(len(requests), len(self.subject_frames), -1) - keys[:, None]).flatten(0, 1)

    def _current_z(self, model: nn.Module, tokenizer, layout: ModelLayout, requests: Sequence[EditRequest]) -> Tensor:
        """The quantity ``z*`` is a target for, on the model as edited so far."""
        return layer_outputs(model, tokenizer, layout, self.layers[-1], requests, self.templates)

    def _residual_share(self, i: int) -> float:
        """Part of the remaining residual the ``i``-th layer takes: MEMIT spreads it evenly
        (``1 / (len(layers) - i)``); with ``layer_weights`` ``w``, ``w_i / sum_{j >= i} w_j``."""
        if self.layer_weights is None:
            return 1.0 / (len(self.layers) - i)
        return self.layer_weights[i] / sum(self.layer_weights[i:])

    @staticmethod
    def _through_output_norm(model: nn.Module, layout: ModelLayout, layer: int, module: nn.Module, keys: Tensor,
                             residual: Tensor) -> Tensor:
        """The change of ``mlp_out``'s output at ``keys`` that moves its normalised output by ``residual``
        (Gemma 2/3; :mod:`lit_edit.editors.locate.norm_target`). The output is read at the averaged key,
        ``module(k)`` (:func:`~lit_edit.models.layouts.output_at`)."""
        return mlp_output_change(resolve(model, "mlp_out_norm", layer, layout), output_at(module, keys), residual)

    def _layer_delta(self, layer: int, keys: Tensor, residual: Tensor,
                     preserved: Sequence[tuple[Tensor, float]] = ()) -> Tensor:
        """MEMIT's least-squares update of one layer; variants (AlphaEdit) override this.
        ``preserved``: ``(keys, weight per key)`` pairs whose outputs should stay."""
        c = self._moments[layer] if self._moments is not None else None
        return memit_update(keys, residual, self.mom2_update_weight, c, preserved)

    def _after_edit(self, updates: list[LayerUpdate]) -> None:
        """Called once all layers of an edit are written; state for sequential variants goes here."""
