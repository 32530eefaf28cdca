"""ROME: Rank-One Model Editing (Meng et al., 2022, arXiv:2202.05262).

One fact is one rank-one change of one MLP down projection ``W`` (layout field ``mlp_out``)::

    k*  = the projection's input at the subject's last token, averaged over context templates
    v*  = the output that makes the model say the target (optimised, see keys_values)
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

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import CallbackEditor, WeightSnapshot
from lit_edit.editors.locate.keys_values import (
    ROME_LENGTH_PARAMS,
    ValueHParams,
    compute_keys,
    context_templates,
    value_targets,
)
from lit_edit.models.layouts import ModelLayout, add_to_weight, canonical_shape, resolve, weight_view

log = logging.getLogger(__name__)


class SecondMomentProvider(Protocol):
    """Anything that returns ``C = E[k k^T]`` (``[d_in, d_in]``) of ``mlp_out``'s input at a layer.

    The return value may be the matrix itself or an object with a ``.matrix`` attribute
    (``lit_edit.editors.locate.stats.SecondMoment``).
    """

    def get(self, model: nn.Module, tokenizer, layout: ModelLayout, layer: int) -> Any: ...


class CachedStatsProvider:
    """Adapter to :class:`lit_edit.editors.locate.stats.SecondMomentStats` (imported when first used).

    ``settings`` are the editor config's ``stats`` section: ``cache_dir`` and ``model_id``
    are for the cache itself, every other non-null key goes to ``StatsConfig`` (``corpus``,
    ``n_samples``, ``max_length``, ``token_budget``, ``dtype``, ``data_root``).
    ``model_id`` defaults to the model's ``config.name_or_path``.
    """

    _OWN_KEYS = ("cache_dir", "model_id")

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        if not self.settings.get("cache_dir"):
            raise ValueError("stats.cache_dir is required for the covariance statistics cache")
        self._stats = None

    def get(self, model: nn.Module, tokenizer, layout: ModelLayout, layer: int) -> Tensor:
        from lit_edit.editors.locate.stats import SecondMomentStats, StatsConfig

        if self._stats is None:
            self._stats = SecondMomentStats(self.settings["cache_dir"])
        cfg = StatsConfig(**{k: v for k, v in self.settings.items() if k not in self._OWN_KEYS and v is not None})
        model_id = self.settings.get("model_id") or getattr(model.config, "name_or_path", None) or type(model).__name__
        return self._stats.get(model, tokenizer, layout, layer, cfg, model_id).matrix


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
                "collect statistics over more tokens than the key dimension, or use mom2_adjustment: false"
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
    weight, _ = weight_view(module)
    with torch.no_grad():
        current = module(key.to(device=weight.device, dtype=weight.dtype)[None])[0]
    residual = value.detach().to(device="cpu", dtype=torch.float64) - current.to(device="cpu", dtype=torch.float64)
    k64 = key.detach().to(device="cpu", dtype=torch.float64)
    left = solve_c(k64) if solve_c is not None else k64.clone()
    denom = torch.dot(left, k64)
    if not torch.isfinite(denom) or denom.abs() < 1e-30:
        raise ValueError(f"degenerate rank-one update: (C^-1 k*)^T k* = {denom.item():.3g}")
    return left, residual / denom


class ROMEEditor(CallbackEditor):
    """ROME on ``mlp_out`` of ``layer``; hyperparameters come from ``configs/editor/rome.yaml``.

    Args:
        layer: the edited block (ROME: 17 for GPT-2 XL, 5 for GPT-J).
        v_num_grad_steps, v_lr, v_weight_decay, clamp_norm_factor, kl_factor, v_stop_loss:
            the ``v*`` optimisation (:class:`~lit_edit.editors.locate.keys_values.ValueHParams`).
        mom2_adjustment: use the second moment ``C`` of keys (True, ROME) or ``C = I``.
        context_template_length_params: ``[[prefix_tokens, how_many], ...]`` of generated
            prefixes (ROME: ``[[5, 10], [10, 10]]``), besides the bare prompt.
        context_templates: a fixed list of templates (each with one ``{}``) instead.
        context_template_seed: seed of the prefix sampling (deterministic templates).
        stats: settings of the default statistics provider (:class:`CachedStatsProvider`).
        stats_provider: any object with ``get(model, tokenizer, layout, layer)`` returning
            ``C``; overrides ``stats``.
        max_length: longest templated prompt + target, in tokens.
    """

    name = "rome"

    def __init__(
        self,
        *,
        layer: int,
        v_num_grad_steps: int,
        v_lr: float,
        v_weight_decay: float,
        clamp_norm_factor: float,
        kl_factor: float,
        v_stop_loss: float | None,
        mom2_adjustment: bool,
        context_template_length_params: Sequence[Sequence[int]] = ROME_LENGTH_PARAMS,
        context_templates: Sequence[str] | None = None,
        context_template_seed: int = 0,
        stats: Mapping[str, Any] | None = None,
        stats_provider: SecondMomentProvider | None = None,
        max_length: int = 128,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if isinstance(layer, Sequence):
            raise TypeError(f"ROME edits one layer; got {layer!r} (MEMIT spreads an edit over several)")
        self.layer = int(layer)
        self.hp = ValueHParams(
            num_grad_steps=int(v_num_grad_steps), lr=float(v_lr), weight_decay=float(v_weight_decay),
            clamp_norm_factor=float(clamp_norm_factor), kl_factor=float(kl_factor),
            stop_loss=None if v_stop_loss is None else float(v_stop_loss),
        )
        self.mom2_adjustment = bool(mom2_adjustment)
        self.context_template_length_params = [tuple(int(x) for x in p) for p in context_template_length_params]
        self.fixed_templates = list(context_templates) if context_templates is not None else None
        self.context_template_seed = int(context_template_seed)
        self.stats = dict(stats or {})
        self.stats_provider = stats_provider
        self.max_length = max_length
        # caches (visible, cleared by clear_cache): templates and the factorised C
        self.templates: list[str] | None = None
        self._solver: CholeskySolver | None = None
        # diagnostics of the latest edit() call, one entry per request
        self.last_updates: list[RankOneUpdate] = []

    # -- preparation ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, tokenizer, layout: ModelLayout | None = None) -> None:
        """Resolve the layer, generate the context templates, load and factorise ``C`` (once)."""
        super().prepare(model, tokenizer, layout)
        resolve(model, "mlp_out", self.layer, self.layout)  # a wrong layer fails here, readably
        if self.templates is None:
            self.templates = context_templates(
                model, tokenizer, length_params=self.context_template_length_params,
                seed=self.context_template_seed, fixed=self.fixed_templates,
            )
            log.info("ROME context templates: %s", self.templates)
        if self.mom2_adjustment and self._solver is None:
            provider = self.stats_provider if self.stats_provider is not None else CachedStatsProvider(self.stats)
            matrix = provider.get(model, tokenizer, self.layout, self.layer)
            matrix = getattr(matrix, "matrix", matrix)
            d_in = canonical_shape(resolve(model, "mlp_out", self.layer, self.layout))[1]
            if tuple(matrix.shape) != (d_in, d_in):
                raise ValueError(f"second moment for layer {self.layer} has shape {tuple(matrix.shape)}, "
                                 f"expected [{d_in}, {d_in}] (the input width of mlp_out)")
            self._solver = CholeskySolver(matrix, what=f"second moment C of layer {self.layer}")

    def clear_cache(self) -> None:
        """Forget templates and ``C`` (e.g. before using the editor on another model)."""
        self.templates = None
        self._solver = None
        self.layout = None

    def ensure_prepared(self, model: nn.Module, tokenizer) -> ModelLayout:
        if self.layout is None or self.templates is None or (self.mom2_adjustment and self._solver is None):
            self.prepare(model, tokenizer, self.layout)
        assert self.layout is not None
        return self.layout

    # -- editing ---------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> WeightSnapshot:
        layout = self.ensure_prepared(model, tokenizer)
        module = resolve(model, "mlp_out", self.layer, layout)
        for r in requests:
            if not r.subject:
                raise ValueError(f"ROME needs the request's subject; request {r.source or r.prompt!r} has none")
        weight = weight_view(module)[0]
        snapshot = WeightSnapshot({f"{layout.name('mlp_out', self.layer)}.weight": weight})
        solve_c = self._solver.solve if self._solver is not None else None
        self.last_updates = []
        try:
            for request in requests:
                key = compute_keys(model, tokenizer, layout, self.layer, [request], self.templates)[0]
                vt = value_targets(model, tokenizer, layout, self.layer, [request], self.templates, self.hp,
                                   max_length=self.max_length)
                left, right = rank_one_update(module, key, vt.values[0], solve_c)
                add_to_weight(module, torch.outer(right, left))
                self.last_updates.append(RankOneUpdate(self.layer, key, vt.values[0], left, right,
                                                       vt.steps[0], vt.nll[0], vt.loss[0]))
        except BaseException:
            snapshot.undo()  # a failed request never leaves earlier ones half-applied
            raise
        return snapshot
