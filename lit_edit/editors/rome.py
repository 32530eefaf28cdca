"""ROME: Rank-One Model Editing (Meng et al., 2022, arXiv:2202.05262).

One fact is one rank-one change of one MLP down projection ``W`` (layout field ``mlp_out``)::

    k*  = the projection's input at the subject's last token, averaged over context templates
    v*  = the output that makes the model say the target (optimised, see locate/values.py)
    u   = C^-1 k*                       C = E[k k^T], the second moment of keys at that layer
    W' = W + Lambda u^T,   Lambda = (v* - W k*) / (u^T k*)

so ``W' k* = v*`` exactly, while keys uncorrelated with ``k*`` under ``C`` are left alone.
Scaling ``C`` changes nothing (``u`` and ``u^T k*`` scale together), which is why ROME has no
``mom2_update_weight``: that weight belongs to MEMIT's ``lambda C + K K^T``.
``mom2_adjustment=False`` uses ``C = I`` (ROME's ablation; what the tests use).

Several requests in one ``edit`` call are applied one after another (ROME edits one fact at
a time; each later ``v*`` is computed on the already-edited model), and the single returned
snapshot restores the weight as it was before the first of them.

Numerics: the rank-one update is computed in float64 on the CPU (``C`` of an MLP's keys is
often badly conditioned - condition numbers of 1e6..1e9 are common - and float32 would lose
most digits of ``C^-1 k*``; CPU also covers MPS, which has no float64). ``C`` is factorised
once per editor (Cholesky; ``C`` is symmetric positive definite) and each edit solves
against the factor, which is ``torch.linalg.solve`` split in two so the O(d^3) part is
paid once. The result is cast to the weight's dtype by ``add_to_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import WeightSnapshot
from lit_edit.editors.locate.base import CachedStatsProvider, LocateEditor, SecondMomentProvider
from lit_edit.editors.locate.keys import compute_keys
from lit_edit.editors.locate.prompts import ROME_LENGTH_PARAMS
from lit_edit.editors.locate.values import ValueTargets, value_targets
from lit_edit.models.layouts import add_to_weight, output_at, resolve, weight_view

__all__ = ["CachedStatsProvider", "CholeskySolver", "ROMEEditor", "RankOneUpdate", "SecondMomentProvider",
           "rank_one_update"]


@dataclass
class RankOneUpdate:
    """What one request wrote: ``Delta W = outer(right, left)`` at ``layer`` (canonical [out, in])."""

    layer: int
    key: Tensor  # k*  [d_in]
    value: Tensor  # v* [d_out]
    left: Tensor  # u = C^-1 k*  [d_in] (float64)
    right: Tensor  # Lambda = (v* - W k*) / (u^T k*)  [d_out] (float64)
    steps: int  # forward passes of the v* optimisation
    nll: float  # target NLL at v* (before the write)
    loss: float  # total v* loss (NLL + KL + decay) at v*

    def delta(self) -> Tensor:
        return torch.outer(self.right, self.left)


class CholeskySolver:
    """``x = C^-1 b`` against a Cholesky factor of ``C`` computed once (float64, CPU)."""

    def __init__(self, matrix: Tensor, what: str = "C") -> None:
        c = matrix.detach().to(device="cpu", dtype=torch.float64)
        if c.dim() != 2 or c.shape[0] != c.shape[1]:
            raise ValueError(f"{what} must be a square matrix, got shape {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise ValueError(f"{what} has non-finite entries")
        c = (c + c.T) / 2  # statistics accumulated in float32 are symmetric only up to rounding
        factor, info = torch.linalg.cholesky_ex(c)
        if int(info) != 0:
            raise ValueError(
                f"{what} ({c.shape[0]}x{c.shape[0]}) is not positive definite (leading minor {int(info)} fails): "
                "the keys it was collected from do not span all the dimensions: collect statistics over more, and "
                "more varied, text (many more tokens than the key dimension), or use mom2_adjustment: false"
            )
        self.dim = c.shape[0]
        self.factor = factor

    def solve(self, b: Tensor) -> Tensor:
        b64 = b.detach().to(device="cpu", dtype=torch.float64)
        return torch.cholesky_solve(b64.reshape(self.dim, -1), self.factor).reshape(b64.shape)


def rank_one_update(module: nn.Module, key: Tensor, value: Tensor, solve_c=None) -> tuple[Tensor, Tensor]:
    """``(left, right)`` with ``W + outer(right, left)`` mapping ``key`` to ``value`` (float64, CPU).

    ``left = C^-1 key`` (``solve_c``; ``None`` means ``C = I``) and ``right = (value -
    module(key)) / (left . key)``. ``module(key)`` includes any bias, so for every supported
    projection the edited module returns exactly ``value`` for ``key``.
    """
    current = output_at(module, key[None])[0]
    residual = value.detach().to(device="cpu", dtype=torch.float64) - current.to(device="cpu", dtype=torch.float64)
    k64 = key.detach().to(device="cpu", dtype=torch.float64)
    left = solve_c(k64) if solve_c is not None else k64.clone()
    denom = torch.dot(left, k64)
    if not torch.isfinite(denom) or denom.abs() < 1e-30:
        raise ValueError(f"degenerate rank-one update: (C^-1 k*)^T k* = {denom.item():.3g}")
    return left, residual / denom


class ROMEEditor(LocateEditor):
    """ROME on ``mlp_out`` of ``layer``; hyperparameters come from ``configs/editor/rome.yaml``.

    Args:
        layer: the edited block (ROME: 17 for GPT-2 XL, 5 for GPT-J).
        **settings: the keyword arguments of :class:`~lit_edit.editors.locate.base.LocateEditor`:
            ``v_num_grad_steps, v_lr, v_weight_decay, clamp_norm_factor, kl_factor, v_stop_loss``
            (the ``v*`` optimisation), ``mom2_adjustment`` (``C`` of keys, True in ROME, or ``C = I``),
            ``context_template_length_params`` (ROME: ``[[5, 10], [10, 10]]``, the default),
            ``context_templates, context_template_seed, stats`` (for :class:`CachedStatsProvider`),
            ``stats_provider, max_length, name``.
    """

    name = "rome"
    algorithm = "ROME"
    default_length_params = ROME_LENGTH_PARAMS

    def __init__(self, *, layer: int, **settings: Any) -> None:
        if isinstance(layer, Sequence):
            raise TypeError(f"ROME edits one layer; got {layer!r} (MEMIT spreads an edit over several)")
        super().__init__(**settings)
        self.layer = int(layer)
        # diagnostics of the latest edit() call, one entry per request
        self.last_updates: list[RankOneUpdate] = []

    @property
    def edited_layers(self) -> list[int]:
        return [self.layer]

    def layers_override(self, layers: Sequence[int]) -> str:
        return f"editor.layer={self.layer}"

    def _use_moments(self, moments: dict[int, Tensor]) -> CholeskySolver:
        """``C`` is factorised once per editor (cached until clear_cache)."""
        return CholeskySolver(moments[self.layer], what=f"second moment C of layer {self.layer}")

    @property
    def _solver(self) -> CholeskySolver | None:
        return self._prepared_moments

    # -- editing ---------------------------------------------------------------------------------
    @property
    def value_site(self) -> tuple[str, int]:
        return "mlp_out", self.layer

    def initial_value_targets(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> ValueTargets:
        """``v*`` of every request on ``model`` as it is (``edit`` optimises each after the previous write)."""
        layout = self.ensure_prepared(model, tokenizer)
        self._require_subjects(requests)
        return self._value_targets(model, tokenizer, layout, list(requests))

    def _value_targets(self, model: nn.Module, tokenizer, layout, requests: Sequence[EditRequest]) -> ValueTargets:
        """``v*`` at ``mlp_out`` of the layer, the one place ROME's settings reach the optimisation."""
        return value_targets(model, tokenizer, layout, self.layer, requests, self.templates, self.value_hp(model),
                             max_length=self.max_length, chunk_size=self.chunk_size(model))

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> WeightSnapshot:
        layout = self.ensure_prepared(model, tokenizer)
        module = resolve(model, "mlp_out", self.layer, layout)
        self._require_subjects(requests)
        snapshot = self._snapshot(layout, {self.layer: module})
        solve_c = self._solver.solve if self._solver is not None else None
        self.last_updates = []
        self.last_timings = {}
        self.last_counts = {}
        device = weight_view(module)[0].device
        try:
            for request in requests:
                with self._phase("keys", device):
                    key = compute_keys(model, tokenizer, layout, self.layer, [request], self.templates)[0]
                with self._phase("values", device):
                    vt = self._value_targets(model, tokenizer, layout, [request])
                self._count("value_steps", vt.steps[0])
                with self._phase("update", device):
                    left, right = rank_one_update(module, key, vt.values[0], solve_c)
                    add_to_weight(module, torch.outer(right, left))
                self.last_updates.append(RankOneUpdate(self.layer, key, vt.values[0], left, right,
                                                       vt.steps[0], vt.nll[0], vt.loss[0]))
        except BaseException:
            snapshot.undo()  # a failed request never leaves earlier ones half-applied
            raise
        return snapshot
