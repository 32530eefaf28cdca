"""Run part of a model in bfloat16 for a while, and give back exactly what was there before.

Optimising a value vector (ROME's ``v*``, MEMIT's ``z*``) runs the same few short rows
through the blocks above the edited layer dozens of times. On a CPU those steps are
matrix products with a handful of rows, whose cost is reading the weights: float32
weights under ``torch.autocast`` are converted to bfloat16 again on every call, which
costs more than it saves. :func:`low_precision_weights` converts them once and restores
the float32 tensors themselves (not a round trip through bfloat16) on exit.
:func:`eager_attention` swaps SDPA for the plain attention code meanwhile, because the CPU
backward of bfloat16 SDPA is about ten times slower than float32's on such short rows.
:func:`resolve_autocast` turns the ``"auto"`` setting into bfloat16 only where bfloat16
products are faster than float32 ones: a CUDA GPU that supports them, or a CPU with AMX tiles.
Elsewhere the same steps run slower in bfloat16: many times slower on an AVX2-only CPU (every
product emulated), and still slower with AVX-512 BF16 alone (a 512x576 by 576x1536 product
with its backward: 31.9 ms under autocast against 18.9 ms in float32, one thread).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn


@contextmanager
def low_precision_weights(modules: Iterable[nn.Module], dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Within the context, the matrices (parameters of 2+ dimensions) of ``modules`` are ``dtype`` copies.

    Vectors (norms, biases) keep their dtype: they are cheap and norms want the precision.
    A parameter shared by several modules (a tied LM head) is converted once: the second time
    it is already ``dtype``. Run the modules under ``torch.autocast(dtype=...)``: their inputs
    stay float32 otherwise.
    """
    swapped: list[tuple[nn.Parameter, Tensor]] = []
    try:
        for module in modules:
            for param in module.parameters():
                if param.dim() < 2 or not param.is_floating_point() or param.dtype == dtype:
                    continue
                swapped.append((param, param.data))
                param.data = param.data.to(dtype)
        yield
    finally:
        for param, data in reversed(swapped):
            param.data = data


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Within the context, a transformers model uses its eager attention code (where it can switch).

    Models that pick their attention class when built (GPT-J) cannot switch and keep theirs;
    so do models that are not transformers ``PreTrainedModel``s.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    can_switch = getattr(model, "_can_set_attn_implementation", None)
    if current in (None, "eager") or not callable(can_switch) or not can_switch():
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


#: what an ``autocast`` setting may be: float32 (``None``), bfloat16, or bfloat16 where it is the faster
AUTOCAST_SETTINGS = (None, "bf16", "auto")


def fast_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products on ``device`` beat float32 ones.

    CUDA: what the GPU reports (Ampere and later). CPU: AMX tiles only. AVX-512 BF16 without
    AMX has bfloat16 dot-product instructions, but PyTorch's CPU products measured slower in
    bfloat16 than in float32 on such a CPU (see the module docstring), so it counts as "no".
    The AMX check is PyTorch's private probe, so a PyTorch without it counts as "no" too.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def check_autocast(setting: str | None, name: str = "autocast") -> str | None:
    """``setting``, if it is one of :data:`AUTOCAST_SETTINGS`; ``name`` is the option the error names."""
    if setting not in AUTOCAST_SETTINGS:
        raise ValueError(f"{name} must be null, 'bf16' or 'auto', got {setting!r}")
    return setting


def resolve_autocast(setting: str | None, device: torch.device | str) -> str | None:
    """``None`` or ``"bf16"`` for an ``autocast`` setting on ``device`` (``"auto"``: bf16 where it is the faster)."""
    if check_autocast(setting) == "auto":
        return "bf16" if fast_bf16(device) else None
    return setting
