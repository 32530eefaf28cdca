"""Residual-stream targets carried back through a post-MLP RMSNorm (Gemma 2/3's "sandwich" norms).

MEMIT writes a share ``r`` of ``z* - z`` into each edited layer's MLP output ``m``, which most
models add to the residual stream as it is. Gemma 2/3 add ``n(m) = g * m / rms(m)`` instead
(``post_feedforward_layernorm``, elementwise gain ``g``). So the write must move ``m`` to where
``n(m_new) = n(m) + r``; writing ``r`` itself would be rescaled away (on a tiny Gemma 3 the
last layer ended far from ``z*``).

``n`` only sees the direction of ``m``: ``s = m / rms(m)`` always has ``||s||^2 = d``. A target
``t = n(m) + r`` is reachable exactly when ``||t / g||^2 = d``; in general the best one can do is
the nearest reachable point,

    min_s ||g * s - t||^2  subject to  ||s||^2 = d,
    s_i = g_i t_i / (g_i^2 + mu),   mu > -min_i g_i^2  such that  sum_i s_i^2 = d

(the Lagrange condition; the left side decreases in ``mu`` on that branch, so one bisection per row
finds it). Whatever ``n(m_new)`` misses of ``t`` stays in ``z* - z``, which MEMIT re-reads after
every layer's write, so the layers after this one and the next round take it up.

Any positive multiple ``c s`` has the same ``n``; the write leaks into other keys in proportion to
its size, so ``c`` is the one nearest the current ``m`` (``c = s.m / ||s||^2``, the projection onto
the ray), but never below half the current RMS: a small ``m`` would make the edited key's output
hypersensitive to what other edits leak into it (``dn/dm ~ g / rms``), nor near the norm's ``eps``,
below which the normalised output shrinks (``g * m / sqrt(rms^2 + eps)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: smallest ``c / rms(m)`` the new MLP output may have (see the module docstring)
MIN_SCALE: float = 0.5
#: and smallest ``c / sqrt(eps)``: ``c / sqrt(c^2 + eps)`` is then within 0.06 % of 1
EPS_MARGIN: float = 30.0


@dataclass(frozen=True)
class RMSNormShape:
    """What carrying a target through ``norm(x) = g * x / sqrt(mean(x^2) + eps)`` needs of the norm."""

    gain: Tensor  # g  [d] float64
    eps: float


def _as_norm_input(norm: nn.Module, x: Tensor) -> Tensor:
    """``x`` on the norm's device and in its dtype (as is for a norm without parameters)."""
    param = next(iter(norm.parameters()), None)
    return x if param is None else x.to(device=param.device, dtype=param.dtype)


@torch.no_grad()
def read_rmsnorm(norm: nn.Module, width: int) -> RMSNormShape:
    """The gain and ``eps`` of ``norm``, read from the module itself.

    So the gain's convention (Gemma's ``1 + w`` or a plain ``w``) and where ``eps`` is stored need not
    be known: a constant vector of RMS 1000 normalises to ``g`` (up to ``eps / 1e6``), one of RMS
    1e-3 to ``g * 1e-3 / sqrt(1e-6 + eps)``. A module that is not such a norm (a LayerNorm centres,
    and has a bias) is an error.
    """
    gain = norm(_as_norm_input(norm, torch.full((1, width), 1000.0)))[0].double().cpu()
    probe = torch.randn(4, width, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    expected = gain * probe / probe.pow(2).mean(-1, keepdim=True).sqrt()
    got = norm(_as_norm_input(norm, probe)).double().cpu()
    if not torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(gain.abs().max())):
        raise ValueError(f"{type(norm).__name__} after the MLP output is not an RMSNorm with an elementwise "
                         "gain (norm(x) = g * x / rms(x)), which is what carrying a target through it assumes")
    small = norm(_as_norm_input(norm, torch.full((1, width), 1e-3)))[0].double().cpu()
    used = gain.abs() > 1e-6 * float(gain.abs().max())
    ratio = float((small[used] / gain[used]).mean())  # 1e-3 / sqrt(1e-6 + eps)
    return RMSNormShape(gain=gain, eps=max(1e-6 * (1.0 / ratio ** 2 - 1.0), 0.0) if ratio > 0 else 0.0)


def nearest_unit_rms(gain: Tensor, target: Tensor, iterations: int = 200) -> Tensor:
    """Per row of ``target`` ``[n, d]``, the ``s`` with ``mean(s^2) = 1`` that minimises ``||gain * s - target||``.

    float64. Bisection on ``mu`` (module docstring); the result is rescaled to RMS 1 exactly, which
    also covers the degenerate case where the row has no component along the smallest gain.
    """
    g = gain.double()
    t = target.double()
    d = t.shape[-1]
    gt = g * t  # [n, d]
    g2 = g * g
    lo = torch.full((t.shape[0], 1), -float(g2.min()), dtype=torch.float64)
    hi = gt.norm(dim=-1, keepdim=True) / d ** 0.5 - float(g2.min()) + 1e-12
    for _ in range(iterations):
        mid = (lo + hi) / 2
        too_long = ((gt / (g2 + mid)) ** 2).sum(-1, keepdim=True) > d
        lo = torch.where(too_long, mid, lo)
        hi = torch.where(too_long, hi, mid)
    s = gt / (g2 + hi)
    return s * (d ** 0.5 / s.norm(dim=-1, keepdim=True).clamp_min(1e-300))


def mlp_output_change(norm: nn.Module, current: Tensor, residual: Tensor) -> Tensor:
    """What to add to the MLP output ``current`` ``[n, d]`` so that ``norm`` of it moves by ``residual``.

    Both in float64 on the CPU, as returned. Exact where ``norm(current) + residual`` is reachable,
    the nearest reachable point otherwise (module docstring). The current normalised output is the
    module's own (``eps`` included); the new output's RMS is kept at least ``EPS_MARGIN sqrt(eps)``,
    where ``eps`` shortens the normalised output by under 0.1 %.
    """
    m = current.detach().double().cpu()
    r = residual.detach().double().cpu()
    if m.shape != r.shape:
        raise ValueError(f"MLP outputs {tuple(m.shape)} and residual {tuple(r.shape)} differ in shape")
    shape = read_rmsnorm(norm, m.shape[-1])
    with torch.no_grad():
        now = norm(_as_norm_input(norm, m.float())).double().cpu()
    s = nearest_unit_rms(shape.gain, now + r)
    rms = m.pow(2).mean(-1, keepdim=True).sqrt()
    floor = torch.clamp(MIN_SCALE * rms, min=EPS_MARGIN * shape.eps ** 0.5)
    scale = torch.maximum((s * m).sum(-1, keepdim=True) / s.pow(2).sum(-1, keepdim=True), floor)
    return scale * s - m
