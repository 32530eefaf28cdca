"""KN (Knowledge Neurons): integrated-gradient attributions, neuron selection, value-vector edit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lit_edit.data.schema import EditRequest
from lit_edit.editors.kn import (
    KNEditor,
    attributions,
    coarse_neurons,
    greedy_next_token,
    integrated_gradients,
    prompt_and_answer_ids,
    refine_neurons,
)
from lit_edit.models.layouts import canonical_shape, canonical_weight, layout_for, num_layers, resolve, weight_view
from lit_edit.utils.forward import logits_at
from lit_edit.utils.hooks import patch_input

from _support.locate import additive_mlp_archs

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = additive_mlp_archs()  # Gemma 3 is refused (test_memit.py::test_normalised_mlp_output_is_refused_by_pmet_and_kn)
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "editor" / "kn.yaml"


def kn(**overrides) -> KNEditor:
    hp = dict(lr_scale=1.0, steps=10, batch_size=10, adaptive_threshold=0.2, refine=False, p=0.4)
    hp.update(overrides)
    return KNEditor(**hp)


def prob_at_last(model, ids, token, scale: float | None = None, layer: int | None = None) -> float:
    """p(token | ids); with ``scale``, layer's mlp_out input at the last position is multiplied by it."""
    x = torch.tensor([ids])
    one = torch.ones_like(x)
    pos = torch.tensor([len(ids) - 1])

    def run():
        with torch.no_grad():
            return torch.softmax(logits_at(model, x, one, torch.tensor([0]), pos).float(), -1)[0, token].item()

    if scale is None:
        return run()
    module = resolve(model, "mlp_out", layer)

    def f(h):
        h = h.clone()
        h[:, -1] = h[:, -1] * scale
        return h

    with patch_input(module, f):
        return run()


@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_shape_and_completeness(tiny, requests_, arch):
    model, tok = tiny(arch)
    layout = layout_for(model)
    ids, answer = prompt_and_answer_ids(tok, requests_[0].prompt, requests_[0].ground_truth[0])
    layers = list(range(num_layers(model)))
    scores = attributions(model, layout, ids, answer, layers, steps=4, batch_size=2)
    for layer in layers:
        assert scores[layer].shape == (canonical_shape(resolve(model, "mlp_out", layer))[1],)
        assert torch.isfinite(scores[layer]).all()
    # completeness: sum of IG attributions ~ p(full activation) - p(zero activation), up to Riemann error
    layer = 1
    ig = integrated_gradients(model, layout, ids, answer, layer, steps=40, batch_size=40)
    diff = prob_at_last(model, ids, answer, 1.0, layer) - prob_at_last(model, ids, answer, 0.0, layer)
    assert prob_at_last(model, ids, answer, 1.0, layer) == pytest.approx(prob_at_last(model, ids, answer))
    assert abs(diff) > 1e-7  # the check is not vacuous (tiny random models: diffs ~1e-6..1e-4)
    assert float(ig.sum()) == pytest.approx(diff, rel=0.05, abs=1e-9)  # observed within ~1% at 40 steps


@pytest.mark.parametrize("arch", ARCHS)
def test_last_token_attribution_equals_the_whole_prompt_reference(tiny, requests_, arch):
    """The KV-cached last-token pass gives the attributions a plain full-prompt IG gives."""
    model, tok = tiny(arch)
    layout = layout_for(model)
    ids, answer = prompt_and_answer_ids(tok, requests_[1].prompt, requests_[1].ground_truth[0])
    layer, steps = 2, 6
    module = resolve(model, "mlp_out", layer)
    x = torch.tensor([ids] * steps)
    last = len(ids) - 1
    with torch.no_grad(), patch_input(module, lambda h: seen.append(h[0, last].clone()) or h):
        seen: list = []
        logits_at(model, x[:1], torch.ones_like(x[:1]), torch.tensor([0]), torch.tensor([last]))
    act = seen[0]
    scaled = (torch.linspace(0, 1, steps)[:, None] * act[None]).requires_grad_(True)

    def replace(h):
        return torch.cat([h[:, :last], scaled[:, None], h[:, last + 1:]], dim=1)

    with patch_input(module, replace):
        logits = logits_at(model, x, torch.ones_like(x), torch.arange(steps), torch.full((steps,), last))
        (grad,) = torch.autograd.grad(torch.softmax(logits, -1)[:, answer].sum(), scaled)
    reference = act * grad.sum(0) / steps
    fast = integrated_gradients(model, layout, ids, answer, layer, steps=steps, batch_size=3)
    assert reference.abs().max() > 0
    assert torch.allclose(fast, reference, atol=1e-9, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_edit_changes_only_selected_columns_raises_target_and_undoes_exactly(tiny, requests_, arch):
    model, tok = tiny(arch)
    layout = layout_for(model)
    req = requests_[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, target = prompt_and_answer_ids(tok, req.prompt, req.target_new)
    p_before = prob_at_last(model, ids, target)
    emb_before = model.get_output_embeddings().weight.detach().clone()

    editor = kn(lr_scale=20.0, layers=[1, 2, 3])
    handle = editor.edit(model, tok, [req])
    (sel,) = editor.last_selections
    assert sel.neurons and {layer for layer, _ in sel.neurons} <= {1, 2, 3}
    assert sel.target_token == target

    p_after = prob_at_last(model, ids, target)
    assert p_after > p_before

    touched = {layer for layer, _ in sel.neurons}
    expected_names = {layout.name("mlp_out", layer) + ".weight" for layer in touched}
    assert set(handle.params) == expected_names
    state = model.state_dict()
    for name, value in state.items():
        if name not in expected_names:
            assert torch.equal(value, before[name]), name
    for layer in touched:
        module = resolve(model, "mlp_out", layer)
        new = canonical_weight(module)
        stored = before[layout.name("mlp_out", layer) + ".weight"]
        old = stored.T if weight_view(module)[1] else stored
        cols = sorted(i for l, i in sel.neurons if l == layer)
        others = torch.ones(new.shape[1], dtype=torch.bool)
        others[cols] = False
        assert torch.equal(new[:, others], old[:, others])
        assert not torch.equal(new[:, cols], old[:, cols])
    # the output embedding itself (tied for some archs) never changes
    assert torch.equal(model.get_output_embeddings().weight, emb_before)

    handle.undo()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
        assert value.view(torch.uint8).equal(before[name].view(torch.uint8)), name  # bit-exact


def test_greedy_answer_without_ground_truth_and_refinement(tiny, requests_):
    model, tok = tiny("llama")
    req = EditRequest(prompt=requests_[0].prompt, target_new="English",
                      rephrase_prompts=requests_[0].rephrase_prompts)
    editor = kn(refine=True, p=0.5, max_neurons=3, layers=[2, 3])
    sel = editor.locate(model, tok, req)
    ids, _ = prompt_and_answer_ids(tok, req.prompt, None)
    assert sel.old_token == greedy_next_token(model, ids)
    assert len(sel.neurons) <= 3


def test_refine_and_threshold_rules():
    a = {(0, 1): 1.0, (0, 2): 0.5}
    b = {(0, 1): 0.8, (1, 3): 0.9}
    c = {(0, 1): 0.7, (0, 2): 0.1}
    assert refine_neurons([a, b, c], refine=True, p=0.5, max_neurons=None) == [(0, 1), (0, 2)]
    assert refine_neurons([a, b, c], refine=False, p=0.5, max_neurons=None) == [(0, 1), (0, 2), (1, 3)]
    assert refine_neurons([a, b, c], refine=False, p=0.5, max_neurons=1) == [(0, 1)]
    scores = {0: torch.tensor([1.0, 0.1, 0.3]), 1: torch.tensor([-2.0, 0.25, 0.0])}
    assert set(coarse_neurons(scores, 0.2)) == {(0, 0), (0, 2), (1, 1)}
    assert coarse_neurons({0: torch.tensor([-1.0, 0.0])}, 0.2) == {}


def test_no_neuron_above_threshold_is_a_noop_handle(tiny, requests_):
    """Documented choice: nothing above the threshold -> the edit changes nothing, undo still works."""
    model, tok = tiny("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = kn(adaptive_threshold=1.0, layers=[1])  # attribution > 1.0 x max: impossible
    handle = editor.edit(model, tok, [requests_[0]])
    assert editor.last_selections[0].neurons == []
    assert handle.params == {}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    handle.undo()


def test_a_layer_the_model_lacks_is_refused_before_any_attribution(tiny, requests_):
    model, tok = tiny("gpt2")
    with pytest.raises(IndexError, match=re.escape("editor.layers=[1, 9]: layer 9 does not exist: the model has 4")):
        kn(layers=[1, 9]).edit(model, tok, [requests_[0]])


def test_config_instantiates_and_bad_hparams_are_errors():
    from hydra.utils import instantiate

    from lit_edit.cli.common import split_prune

    editor_cfg, prune = split_prune(OmegaConf.create({"editor": OmegaConf.load(CONFIG)}))
    assert prune is None  # off by default; applied by the loop in sequential modes when enabled
    editor = instantiate(editor_cfg, _convert_="all")
    assert isinstance(editor, KNEditor) and editor.name == "kn" and editor.layers is None
    assert (editor.steps, editor.adaptive_threshold) == (20, 0.2)
    with pytest.raises(ValueError, match="multiple"):
        kn(steps=10, batch_size=3)
    with pytest.raises(ValueError, match="p"):
        kn(p=1.5)
