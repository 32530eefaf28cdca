"""Carrying a residual-stream target back through a post-MLP RMSNorm (editors/locate/norm_target.py).

Checked against the norm transformers' Gemma 3 itself uses, with a random gain: exact where the
target is reachable, the nearest reachable point where it is not, and an error for a norm that is
not an RMSNorm.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

from lit_edit.editors.locate.norm_target import EPS_MARGIN, MIN_SCALE, mlp_output_change, nearest_unit_rms, read_rmsnorm

D = 16


def gemma_norm(seed: int = 0) -> nn.Module:
    norm = Gemma3RMSNorm(D, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D, generator=torch.Generator().manual_seed(seed)) * 2)  # gain 1 + w, some negative
    return norm


@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-12])
def test_gain_and_eps_are_read_from_the_module(eps):
    norm = gemma_norm()
    norm.eps = eps
    shape = read_rmsnorm(norm, D)
    assert torch.allclose(shape.gain, 1 + norm.weight.detach().double(), atol=1e-5)
    assert shape.eps == pytest.approx(eps, rel=1e-3, abs=1e-11)


def test_a_layernorm_is_refused():
    with pytest.raises(ValueError, match="LayerNorm after the MLP output is not an RMSNorm"):
        read_rmsnorm(nn.LayerNorm(D), D)


def test_a_reachable_target_is_hit_exactly():
    norm = gemma_norm()
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(5, D, generator=gen)
    # wanted: from small moves (the nearest output keeps most of the current one) to ones that turn it
    # round; the last three start from outputs of RMS ~0.01, where eps (1e-6) shortens the normalised one
    wanted = base + torch.tensor([0.1, 0.3, 1.0, 3.0, 10.0])[:, None] * torch.randn(5, D, generator=gen)
    current = base * torch.tensor([1.0, 1.0, 0.01, 0.01, 0.01])[:, None]
    residual = (norm(wanted) - norm(current)).double().detach()

    change = mlp_output_change(norm, current, residual)

    new = (current.double() + change).float()
    assert torch.allclose(norm(new).double(), norm(current).double() + residual, atol=2e-3 * float(residual.abs().max()))
    # the new output is the nearest point of its ray to the current one (the write is no larger than
    # needed: the change is orthogonal to it), unless a floor on its size binds
    new_rms, rms = new.double().pow(2).mean(-1).sqrt(), current.double().pow(2).mean(-1).sqrt()
    orthogonal = (change * new.double()).sum(-1).abs() < 1e-5 * new.double().norm(dim=-1) ** 2
    floor = torch.clamp(MIN_SCALE * rms, min=EPS_MARGIN * 1e-3)
    at_floor = torch.isclose(new_rms, floor, rtol=1e-4)
    assert (orthogonal | at_floor).all() and orthogonal[:2].all() and at_floor[2:].all()


def test_an_unreachable_target_gets_the_nearest_reachable_point():
    gain = read_rmsnorm(gemma_norm(), D).gain
    target = torch.randn(3, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 5

    s = nearest_unit_rms(gain, target)

    assert torch.allclose(s.pow(2).mean(-1), torch.ones(3, dtype=torch.float64))
    best = (gain * s - target).norm(dim=-1)
    # no point of RMS 1 nearby or far away does better (random directions and small moves from s)
    gen = torch.Generator().manual_seed(3)
    for spread in (0.01, 0.1, 10.0):
        other = s[:, None] + spread * torch.randn(3, 2000, D, generator=gen, dtype=torch.float64)
        other = other * (D ** 0.5 / other.norm(dim=-1, keepdim=True))
        assert ((gain * other - target[:, None]).norm(dim=-1) >= best[:, None] - 1e-9).all()
