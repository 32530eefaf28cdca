"""Hooks read and patch module inputs/outputs on every tiny architecture and always clean up."""

import pytest
import torch

from lit_edit.models.layouts import layout_for, resolve
from lit_edit.utils.hooks import capture, patch_input, patch_output, patch_outputs


@pytest.fixture
def setup(each_tiny):
    _, model, tok = each_tiny
    ids = tok(["The capital of France is", "Paris is in"], return_tensors="pt", padding=True)
    return model, ids


def _hooks(model):
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


def _logits(model, ids):
    with torch.no_grad():
        return model(**ids).logits


def test_capture_inputs_and_outputs(setup):
    model, ids = setup
    model(**ids, output_hidden_states=True)  # transformers installs its own (permanent) hooks here
    before = _hooks(model)
    layout = layout_for(model)
    down, block = layout.name("mlp_out", 1), layout.name("layer", 1)
    with capture(model, [down, block]) as outs, capture(model, down, what="input") as ins:
        with torch.no_grad():
            result = model(**ids, output_hidden_states=True)
    batch, seq = ids.input_ids.shape
    assert ins[down].shape[:2] == (batch, seq) and outs[down].shape == (batch, seq, 64)
    # the key (input) of mlp_out maps to its captured output
    torch.testing.assert_close(resolve(model, down)(ins[down]), outs[down])
    # a block's output is the residual stream the model reports for that layer
    torch.testing.assert_close(outs[block], result.hidden_states[2])
    assert _hooks(model) == before


def test_patch_output_changes_then_restores(setup):
    model, ids = setup
    before, base = _hooks(model), _logits(model, ids)
    module = resolve(model, "mlp_out", 2)
    with patch_output(module, lambda h: None):
        assert torch.equal(_logits(model, ids), base)
    with patch_output(module, lambda h: h + 1.0):
        assert not torch.allclose(_logits(model, ids), base)
    assert torch.equal(_logits(model, ids), base) and _hooks(model) == before


def test_patch_input_positional_and_keyword(setup):
    """Blocks and attention get hidden states positionally or as a keyword, depending on arch."""
    model, ids = setup
    before, base = _hooks(model), _logits(model, ids)
    for key in ("layer", "attn", "mlp_out"):
        module = resolve(model, key, 1)
        with patch_input(module, lambda h: h.clone()):
            assert torch.allclose(_logits(model, ids), base, atol=1e-6)
        with patch_input(module, lambda h: h * 3.0):
            assert not torch.allclose(_logits(model, ids), base)
    assert _hooks(model) == before


def test_patch_tuple_output(setup):
    """Attention returns a tuple: the patch sees and replaces only the hidden states."""
    model, ids = setup
    before, attn = _hooks(model), layout_for(model).name("attn", 0)
    with patch_outputs(model, {attn: torch.zeros_like}):
        with capture(model, attn) as seen:
            _logits(model, ids)
    assert torch.count_nonzero(seen[attn]) == 0 and _hooks(model) == before


def test_hooks_removed_on_exception(setup):
    model, ids = setup
    before, module = _hooks(model), resolve(model, "mlp", 0)
    with pytest.raises(RuntimeError, match="boom"):
        with capture(model, [layout_for(model).name("mlp", 0)]), patch_input(module, lambda h: h), patch_output(
            module, lambda h: h
        ):
            raise RuntimeError("boom")
    with pytest.raises(ValueError):
        with patch_output(module, lambda h: (_ for _ in ()).throw(ValueError("in hook"))):
            _logits(model, ids)
    assert _hooks(model) == before


def test_patches_show_in_output_hidden_states(setup):
    """Patches run before transformers' own capturing hooks, so hidden_states see them."""
    model, ids = setup
    model(**ids, output_hidden_states=True)
    block = resolve(model, "layer", 1)
    with patch_output(block, torch.zeros_like), torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states
    assert torch.count_nonzero(hidden[2]) == 0


def test_gradients_flow_through_patch(setup):
    """ROME-style: optimise a delta added to an MLP output of a frozen model."""
    model, ids = setup
    delta = torch.zeros(64, requires_grad=True)
    down = layout_for(model).name("mlp_out", 1)
    with patch_output(resolve(model, down), lambda h: h + delta), capture(model, down, detach=False) as seen:
        loss = model(**ids).logits[:, -1].logsumexp(-1).sum()
    loss.backward()
    assert seen[down].requires_grad and delta.grad is not None and delta.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_capture_rejects_bad_what(setup):
    model, _ = setup
    with pytest.raises(ValueError, match="'input' or 'output'"):
        with capture(model, [], what="weights"):  # type: ignore[arg-type]
            pass
