"""AlphaEdit: null-space constrained knowledge editing (Fang et al., ICLR 2025, arXiv:2410.02355).

MEMIT (:mod:`lit_edit.editors.memit`) with the update projected onto the (approximate) null
space of the preserved knowledge, and with the keys of earlier edits kept by the editor so
that sequential edits do not overwrite each other. Everything else - ``z*``, keys, the
residual spread over ``layers``, templates, statistics - is MEMIT's.

Projection, once per editor in :meth:`AlphaEditEditor.prepare` (``get_project`` in
jianghoucheng/AlphaEdit): with ``C_l = E[k k^T]`` the second moment MEMIT uses at layer ``l``,
``C_l = U diag(lambda) U^T`` (``torch.linalg.eigh``, float64) and ``U_0`` the eigenvectors
with ``lambda < nullspace_threshold``::

    P_l = U_0 U_0^T          (so P_l C_l ~ 0: P_l removes the preserved keys' directions)

Update per layer (``apply_AlphaEdit_to_model``; paper eq. 12), canonical ``[out, in]``,
``K`` ``[d_in, n]`` this edit's keys, ``R`` ``[d_out, n]`` the residual, ``K_p`` the keys of
all earlier edits at this layer (:attr:`AlphaEditEditor.past_keys`), ``alpha = L2``::

    X   = solve(P (K K^T + K_p K_p^T) + alpha I,  P K R^T)        [d_in, d_out]
    Delta W = X^T = R K^T P (K_p K_p^T P + K K^T P + alpha I)^-1   (P, K K^T symmetric)

This is the paper's ``Delta P``: from ``(P A + alpha I) X = P K R^T`` follows
``X = P (K R^T - A X) / alpha``, so ``X`` lies in the range of ``P`` and the written update
satisfies ``Delta W = Delta W P`` exactly (up to rounding): it leaves every key in the span of
``C``'s large-eigenvalue eigenvectors unchanged. The ``K_p K_p^T`` term makes it also
(approximately) leave the earlier edits' keys alone. ``mom2_update_weight`` takes no part in
the update (AlphaEdit's hparams files carry it only because they copy MEMIT's).

On SmolLM2 ``C`` has no spectral gap (eigenvalues at layers 3-7 run from 0.002 to 1.1-1.7), so
the threshold is a slider, not a null space: one batch of 100 ZsRE facts, MEMIT's z*, one round,
threshold 2e-2 (the paper's) / 5e-3 / 1e-3 -> rel 0.846 / 0.508 / 0.186 (nothing written), loc
0.844 / 0.858 / 1.000. The yaml keeps the paper's value.

After all layers are written, this edit's keys are appended to ``past_keys`` (AlphaEdit
recomputes them on the edited model; the keys at layer ``l`` depend only on the blocks below
``l``'s ``mlp_out``, which were already edited when layer ``l``'s keys were computed, so the
keys used for the update are those same keys). :meth:`edit` returns an
:class:`~lit_edit.editors.base.MemorySnapshot`, whose ``undo`` restores both the weights (bit-exact) and
``past_keys``; undo edits in reverse order (as the loop does).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from lit_edit.editors.base import MemorySnapshot
from lit_edit.editors.memit import LayerUpdate, MEMITEditor


def null_space_projection(c: Tensor, threshold: float) -> Tensor:
    """``P = U_0 U_0^T`` with ``U_0`` the eigenvectors of symmetric ``c`` whose eigenvalue is below ``threshold``.

    float64 on the CPU, ``[d, d]``; the zero matrix when no eigenvalue is below ``threshold``.
    """
    c64 = c.detach().to(device="cpu", dtype=torch.float64)
    eigvals, eigvecs = torch.linalg.eigh((c64 + c64.T) / 2)
    u0 = eigvecs[:, eigvals < threshold]
    return u0 @ u0.T


def alphaedit_update(keys: Tensor, residual: Tensor, projection: Tensor, l2: float,
                     past_keys: Tensor | None = None) -> Tensor:
    """``Delta W = R K^T P (K_p K_p^T P + K K^T P + l2 I)^-1`` in float64 on the CPU, ``[out, in]``.

    ``keys`` ``[n, d_in]``, ``residual`` ``[n, d_out]``, ``past_keys`` ``[m, d_in]`` or ``None``
    (rows are requests), ``projection`` ``[d_in, d_in]``. Solved as AlphaEdit does:
    ``(P (K K^T + K_p K_p^T) + l2 I) X = P K R^T``, ``Delta W = X^T``.
    """
    k = keys.detach().to(device="cpu", dtype=torch.float64).T  # [d_in, n]
    r = residual.detach().to(device="cpu", dtype=torch.float64).T  # [d_out, n]
    p = projection.to(device="cpu", dtype=torch.float64)
    gram = k @ k.T
    if past_keys is not None and past_keys.numel():
        kp = past_keys.detach().to(device="cpu", dtype=torch.float64).T  # [d_in, m]
        gram = gram + kp @ kp.T
    a = p @ gram + l2 * torch.eye(k.shape[0], dtype=torch.float64)
    try:
        x = torch.linalg.solve(a, p @ k @ r.T)  # [d_in, d_out]
    except RuntimeError as err:  # torch.linalg.LinAlgError subclasses RuntimeError
        raise ValueError(f"P (K K^T + K_p K_p^T) + L2 I ({a.shape[0]}x{a.shape[0]}) is singular: {err}") from err
    return x.T


class AlphaEditEditor(MEMITEditor):
    """AlphaEdit on ``mlp_out`` of ``layers``; hyperparameters come from ``configs/editor/alphaedit.yaml``.

    Args:
        nullspace_threshold: eigenvalues of ``C`` below it span the null space that ``P``
            projects on (AlphaEdit's hparams: 2e-2 for Llama3-8B, GPT-J and GPT2-XL).
        L2: ``alpha`` in ``P (K K^T + K_p K_p^T) + alpha I`` (AlphaEdit: 10).
        layers, mom2_update_weight, **settings: as :class:`~lit_edit.editors.memit.MEMITEditor`;
            ``mom2_adjustment`` must be true (``P`` is built from ``C``). ``mom2_update_weight``
            is accepted for config parity with MEMIT and unused by the update.

    State: :attr:`projections` (``P`` per layer, float64, set in prepare) and
    :attr:`past_keys` (``[m, d_in]`` float32 per layer, the keys of all edits so far;
    :meth:`reset_past_keys` empties it, :meth:`clear_cache` forgets both).
    """

    name = "alphaedit"
    algorithm = "AlphaEdit"

    def __init__(self, *, nullspace_threshold: float, L2: float,  # noqa: N803 (AlphaEdit's name)
                 mom2_update_weight: float | None = None, **settings: Any) -> None:
        super().__init__(mom2_update_weight=0.0 if mom2_update_weight is None else mom2_update_weight, **settings)
        if not self.mom2_adjustment:
            raise ValueError("AlphaEdit needs mom2_adjustment: true (its projection is built from C)")
        self.nullspace_threshold = float(nullspace_threshold)
        self.L2 = float(L2)
        if self.nullspace_threshold <= 0:
            raise ValueError(f"nullspace_threshold must be > 0, got {nullspace_threshold}")
        if self.L2 < 0:
            raise ValueError(f"L2 must be >= 0, got {L2}")
        self.projections: dict[int, Tensor] | None = None
        self.past_keys: dict[int, Tensor] = {}

    def reset_past_keys(self) -> None:
        """Forget the keys of earlier edits (start a new sequence of edits)."""
        self.past_keys = {}

    def sequence_state(self) -> dict[str, Any]:
        """The past keys per layer: what later edits of a sequence must leave alone.

        A shallow copy suffices: tensors in ``past_keys`` are replaced (``torch.cat``), never changed
        in place.
        """
        return {"past_keys": dict(self.past_keys)}

    def load_sequence_state(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"past_keys"}
        if unknown:
            raise ValueError(f"AlphaEdit's saved memory has {sorted(unknown)}, which it does not keep")
        self.past_keys = {int(layer): keys for layer, keys in state.get("past_keys", {}).items()}

    def clear_cache(self) -> None:
        """Forget templates, ``C``, ``P`` and the past keys (e.g. before using the editor on another model)."""
        super().clear_cache()
        self.projections = None
        self.reset_past_keys()

    def _use_moments(self, moments: dict[int, Tensor]) -> dict[int, Tensor]:
        """MEMIT's ``C`` per layer, plus ``P`` per layer in :attr:`projections` (computed here, once)."""
        cs = super()._use_moments(moments)
        self.projections = {layer: null_space_projection(c, self.nullspace_threshold) for layer, c in cs.items()}
        return cs

    def _snapshot(self, layout, modules: Mapping[int, nn.Module]) -> MemorySnapshot:
        plain = super()._snapshot(layout, modules)
        return MemorySnapshot(plain.params, self)

    # -- editing ---------------------------------------------------------------------------------
    def _layer_delta(self, layer: int, keys: Tensor, residual: Tensor,
                     preserved: Sequence[tuple[Tensor, float]] = ()) -> Tensor:
        """AlphaEdit's projected update: ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + L2·I)⁻¹.

        Further preserved keys (the prompts' context, ``context_preserve_weight``; the subject
        frames) join the past keys ``K_p``, the term AlphaEdit already has for outputs that must
        stay, scaled so each weighs its ``w``.
        """
        assert self.projections is not None
        kept = [self.past_keys[layer]] if layer in self.past_keys else []
        kept += [rows.detach().float().cpu() * w ** 0.5 for rows, w in preserved if w]
        return alphaedit_update(keys, residual, self.projections[layer], self.L2, torch.cat(kept) if kept else None)

    def _after_edit(self, updates: list[LayerUpdate]) -> None:
        """Remember this edit's keys so later edits leave them alone (sequential editing)."""
        for update in updates:
            keys = update.keys.detach().float().cpu()
            old = self.past_keys.get(update.layer)
            self.past_keys[update.layer] = keys if old is None else torch.cat([old, keys])
