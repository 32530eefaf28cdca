"""PRUNE (Ma et al., 2024): restrain the accumulated update of sequential editing.

After many sequential edits the summed update ΔW of a matrix grows singular values far
beyond those of the original W, which inflates the edited matrix's condition number and
is what degrades general abilities. PRUNE keeps ΔW's singular vectors and replaces each
singular value s above σ_max(W) by F(s) = log_α(s) − log_α(σ_max(W)) + σ_max(W), so the
update can never dominate W's own spectrum. It works on any editor whose handles are
:class:`WeightSnapshot` objects (FT, ROME, MEMIT, ...); the loop applies it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor

from lit_edit.editors.base import EditHandle, WeightSnapshot


@dataclass
class PruneConfig:
    """How PRUNE is applied in a sequential run.

    Attributes:
        alpha: base of the logarithm in F (e for the natural log of the reference code).
        compare: ``False``: restrain in place at every evaluation point, so later edits build
            on the restrained weights. ``True``: at every evaluation point score the plain
            model, then the restrained one (stages tagged ``_pruned``), then put the plain
            weights back and go on editing - PRUNE as a post-hoc restraint of the summed
            update, and one run gives the with/without comparison.
    """

    alpha: float
    compare: bool = False

    def __post_init__(self) -> None:
        if not self.alpha > 1.0:
            raise ValueError(f"PRUNE alpha must be > 1 (log base), got {self.alpha}")


@dataclass
class MatrixReport:
    """Spectrum of one edited matrix before and after restraint (float64 SVDs)."""

    name: str
    sigma_max_original: float
    update_sigma_max_before: float
    update_sigma_max_after: float
    restrained: int  # singular values of the update that were above sigma_max(W)
    cond_original: float
    cond_before: float
    cond_after: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def restrain_singular_values(s: Tensor, sigma_max: float, alpha: float) -> Tensor:
    """F applied to the singular values above ``sigma_max``; the rest are unchanged."""
    out = s.clone()
    big = s > sigma_max
    log_a = math.log(alpha)
    out[big] = torch.log(s[big]) / log_a - math.log(sigma_max) / log_a + sigma_max
    return out


def condition_number(matrix: Tensor) -> float:
    s = torch.linalg.svdvals(matrix.double())
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def originals(handles: Iterable[EditHandle]) -> dict[str, tuple[torch.nn.Parameter, Tensor]]:
    """Each edited parameter with its value before the *first* edit that touched it."""
    found: dict[str, tuple[torch.nn.Parameter, Tensor]] = {}
    for handle in handles:
        if isinstance(handle, WeightSnapshot):
            for name, param in handle.params.items():
                found.setdefault(name, (param, handle.saved[name]))
    return found


@torch.no_grad()
def spectrum_reports(handles: Iterable[EditHandle], prune: PruneConfig | None) -> list[MatrixReport]:
    """Measure (and with ``prune``, restrain in place) the summed update of every edited matrix."""
    reports = []
    for name, (param, original) in originals(handles).items():
        w0 = original.double()
        delta = param.detach().double() - w0
        sigma_w = float(torch.linalg.svdvals(w0)[0])
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        cond_before = condition_number(w0 + delta)
        if prune is not None:
            s_new = restrain_singular_values(s, sigma_w, prune.alpha)
            param.copy_((w0 + (u * s_new) @ vh).to(param.dtype))
        else:
            s_new = s
        reports.append(MatrixReport(
            name=name, sigma_max_original=sigma_w, update_sigma_max_before=float(s[0]),
            update_sigma_max_after=float(s_new[0]), restrained=int((s > sigma_w).sum()),
            cond_original=condition_number(w0), cond_before=cond_before,
            cond_after=condition_number(param.detach()),
        ))
    return reports


@contextmanager
def restrained(handles: list[EditHandle], prune: PruneConfig) -> Iterator[list[MatrixReport]]:
    """PRUNE applied for the duration of the block; the unrestrained weights come back after."""
    found = originals(handles)
    kept = {name: param.detach().clone() for name, (param, _) in found.items()}
    try:
        yield spectrum_reports(handles, prune)
    finally:
        with torch.no_grad():
            for name, (param, _) in found.items():
                param.copy_(kept[name])
