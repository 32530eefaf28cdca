"""Layouts resolve module names on every tiny architecture; weights are read in [out, in]."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from lit_edit.models.layouts import (
    BUILTIN_LAYOUTS,
    ModelLayout,
    add_to_weight,
    canonical_shape,
    canonical_weight,
    get_module,
    layout_for,
    module_name,
    num_layers,
    output_at,
    resolve,
    set_weight,
    weight_view,
)


def _dims(model):
    c = model.config
    hidden = getattr(c, "hidden_size", None) or c.n_embd
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    return hidden, inter


def test_every_template_resolves(each_tiny):
    arch, model, tok = each_tiny
    layout = layout_for(model)
    hidden, inter = _dims(model)
    assert num_layers(model) == 4
    for layer in range(4):
        assert canonical_shape(resolve(model, "mlp_out", layer)) == (hidden, inter)
        assert canonical_shape(resolve(model, "attn_out", layer)) == (hidden, hidden)
        for template in layout.mlp_in:
            assert canonical_shape(resolve(model, template, layer)) == (inter, hidden)
        for key in ("layer", "mlp", "attn"):
            assert isinstance(resolve(model, key, layer), nn.Module)
    assert resolve(model, "embed").weight.shape == (len(tok), hidden)
    assert canonical_shape(resolve(model, "lm_head")) == (len(tok), hidden)
    assert isinstance(resolve(model, "final_norm"), nn.Module)
    assert layout.name("mlp_out", 2) == layout.mlp_out.format(2)


def test_gpt2_conv1d_is_transposed(tiny_tok):
    from lit_edit.models.tiny import tiny_model

    model, _ = tiny_model("gpt2", tokenizer=tiny_tok)
    module = resolve(model, "mlp_out", 0)
    weight, transposed = weight_view(module)
    assert transposed and weight.shape == (256, 64)  # stored [in, out]
    assert canonical_weight(module).shape == (64, 256)


def test_rank_one_update_in_canonical_orientation(each_tiny):
    """W += u v^T must change the module's output by (x . v) u on every architecture."""
    _, model, _ = each_tiny
    module = resolve(model, "mlp_out", 1)
    out_f, in_f = canonical_shape(module)
    g = torch.Generator().manual_seed(0)
    u, v, x = torch.randn(out_f, generator=g), torch.randn(in_f, generator=g), torch.randn(3, in_f, generator=g)
    original = canonical_weight(module).detach().clone()
    before = module(x)
    add_to_weight(module, torch.outer(u, v))
    torch.testing.assert_close(module(x) - before, (x @ v)[:, None] * u[None, :], rtol=1e-4, atol=1e-4)
    set_weight(module, original)
    assert torch.equal(canonical_weight(module), original)
    with pytest.raises(ValueError, match=r"expected \[out, in\]"):
        add_to_weight(module, torch.zeros(in_f, out_f + 1))


def test_output_at_includes_the_bias_in_the_modules_dtype(each_tiny):
    """output_at(k) = W k + b for every architecture (biases where it has them), read without grad
    from float64 keys on the module's dtype; what ROME and MEMIT fit their updates against."""
    _, model, _ = each_tiny
    module = resolve(model, "mlp_out", 1)
    _, in_f = canonical_shape(module)
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3, in_f, generator=g, dtype=torch.float64)
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):  # the tiny models draw their biases, so leaving it out shows
        assert bias.abs().min() > 0
    out = output_at(module, keys)
    weight = canonical_weight(module).detach().double()
    expected = keys @ weight.T + (bias.detach().double() if isinstance(bias, torch.Tensor) else 0.0)
    assert out.dtype == canonical_weight(module).dtype and not out.requires_grad
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_out_of_range_layer(tiny_tok):
    from lit_edit.models.tiny import tiny_model

    model, _ = tiny_model("llama", tokenizer=tiny_tok)
    with pytest.raises(IndexError, match=r"^layer 40 does not exist: model has 4 layers \(0\.\.3\)$"):
        resolve(model, "mlp_out", 40)
    with pytest.raises(IndexError, match="layer -1 does not exist"):
        resolve(model, "model.layers.{}.mlp", -1)


def test_unknown_architecture():
    model = nn.Module()
    model.config = SimpleNamespace(model_type="mystery")
    with pytest.raises(ValueError, match="no built-in layout for model_type 'mystery'") as err:
        layout_for(model)
    assert "gpt2" in str(err.value) and "layout:" in str(err.value)
    with pytest.raises(ValueError, match="missing here"):
        layout_for(model, {"mlp_out": "blocks.{}.ff.out"})
    full = {f: f"blocks.{{}}.{f}" for f in ("mlp", "mlp_out", "attn", "attn_out")}
    full.update(layers="blocks", mlp_in="blocks.{}.ff.in", embed="emb", final_norm="norm", lm_head="head")
    layout = layout_for(model, full)
    assert layout.mlp_in == ("blocks.{}.ff.in",) and layout.layer == "blocks.{}"


def test_overrides_replace_builtin(tiny_tok):
    from lit_edit.models.tiny import tiny_model

    model, _ = tiny_model("llama", tokenizer=tiny_tok)
    layout = layout_for(model, {"mlp_in": ["model.layers.{}.mlp.up_proj"]})
    assert layout.mlp_in == ("model.layers.{}.mlp.up_proj",)
    assert layout.mlp_out == BUILTIN_LAYOUTS["llama"].mlp_out
    with pytest.raises(KeyError, match="unknown layout template"):
        layout_for(model, {"mlp_outt": "x"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        BUILTIN_LAYOUTS["llama"].mlp = "x"  # frozen dataclass, shared safely


def test_names_and_errors(tiny_tok):
    from lit_edit.models.tiny import tiny_model

    model, _ = tiny_model("gpt_neox", tokenizer=tiny_tok)
    assert module_name("a.{}.b", 3) == "a.3.b"
    with pytest.raises(ValueError, match="needs a layer"):
        module_name("a.{}.b")
    with pytest.raises(ValueError, match="has no"):
        module_name("lm_head", 2)
    with pytest.raises(AttributeError, match=r"gpt_neox\.layers\.1\.mlp \(GPTNeoXMLP\) has no child 'fc'"):
        get_module(model, "gpt_neox.layers.1.mlp.fc")
    assert get_module(model, "") is model


@pytest.mark.parametrize("model_type", sorted(set(BUILTIN_LAYOUTS) - {"llama", "gpt2", "gptj", "gpt_neox", "gemma3"}))
def test_llama_style_builtins_match_transformers(model_type):
    small = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **small))
    layout = layout_for(model)
    assert isinstance(layout, ModelLayout) and num_layers(model) == 2
    assert canonical_shape(resolve(model, "mlp_out", 1)) == (32, 48)
    for key in ("layer", "mlp", "attn", "attn_out"):
        resolve(model, key, 1)
    for key in ("embed", "final_norm", "lm_head"):
        resolve(model, key)
    # the post-MLP norm is named exactly where the model has one (Gemma 2/3), and resolves there
    has_norm = hasattr(get_module(model, layout.name("layer", 1)), "post_feedforward_layernorm")
    assert (layout.mlp_out_norm is not None) == has_norm == (model_type in ("gemma2", "gemma3_text"))
    if has_norm:
        resolve(model, "mlp_out_norm", 1)
