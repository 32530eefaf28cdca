"""bfloat16 weight copies and the eager-attention switch give back exactly what was there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_edit.utils.precision import eager_attention, fast_bf16, low_precision_weights, resolve_autocast


def _tied() -> nn.Sequential:
    emb, head, norm = nn.Embedding(11, 4), nn.Linear(4, 11, bias=True), nn.LayerNorm(4)
    head.weight = emb.weight  # tied, as GPT-2's and SmolLM2's heads are
    return nn.Sequential(emb, norm, head)


def test_matrices_are_bf16_inside_and_the_same_tensors_after():
    model = _tied()
    emb, norm, head = model
    originals = {name: (p.data_ptr(), p.detach().clone()) for name, p in model.named_parameters()}
    with low_precision_weights([head, emb]):
        assert emb.weight.dtype == head.weight.dtype == torch.bfloat16
        assert emb.weight is head.weight  # still tied: converted once
        assert head.bias.dtype == norm.weight.dtype == torch.float32  # vectors keep their precision
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.tensor([[1, 2, 3]]))
        assert out.dtype == torch.bfloat16
    for name, p in model.named_parameters():
        ptr, value = originals[name]
        # the float32 tensors themselves (same storage), not a round trip through bfloat16
        assert p.data_ptr() == ptr and p.dtype == torch.float32 and torch.equal(p, value), name


def test_weights_come_back_when_the_body_raises():
    lin = nn.Linear(3, 3)
    ptr = lin.weight.data_ptr()
    with pytest.raises(RuntimeError, match="boom"):
        with low_precision_weights([lin]):
            assert lin.weight.dtype == torch.bfloat16
            raise RuntimeError("boom")
    assert lin.weight.data_ptr() == ptr and lin.weight.dtype == torch.float32


def test_eager_attention_switches_and_restores(tiny):
    model, _ = tiny("llama")
    model.set_attn_implementation("sdpa")
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(KeyError):
        with eager_attention(model):
            raise KeyError("x")
    assert model.config._attn_implementation == "sdpa"


def test_eager_attention_leaves_other_modules_alone():
    lin = nn.Linear(2, 2)
    with eager_attention(lin):
        pass
    assert not hasattr(lin, "config")


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(False, False, None), (True, False, "bf16"),
                                                        (True, True, "bf16"), (False, True, None)])
def test_auto_autocast_is_bf16_only_on_cpus_with_amx(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert fast_bf16("cpu") is (expected == "bf16")
    assert resolve_autocast("auto", "cpu") == expected
    # explicit settings are kept whatever the hardware
    assert resolve_autocast("bf16", "cpu") == "bf16" and resolve_autocast(None, "cpu") is None


def test_auto_autocast_without_the_private_probes_is_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert resolve_autocast("auto", torch.device("cpu")) is None
    assert resolve_autocast("auto", "meta") is None  # no bf16 claim for devices it cannot probe


def test_unknown_autocast_setting_names_the_choices():
    with pytest.raises(ValueError, match="'auto'.*'fp16'"):
        resolve_autocast("fp16", "cpu")
