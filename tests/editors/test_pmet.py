"""PMET on tiny random models of four layouts: joint attention/MLP targets, MLP-only writes, undo."""

from __future__ import annotations

import math

import pytest
import torch

from lit_edit.editors.locate.values import ValueHParams, joint_value_targets, value_targets
from lit_edit.editors.pmet import PMETEditor
from lit_edit.models.layouts import layout_for

from _support.locate import TEMPLATES, additive_mlp_archs, tiny_value_settings

ARCHS = additive_mlp_archs()  # Gemma 3 is refused (test_memit.py::test_normalised_mlp_output_is_refused_by_pmet_and_kn)
LAYERS = [1, 2]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/editors/conftest.py


def pmet(**overrides) -> PMETEditor:
    # PMET's own settings are in configs/editor/pmet.yaml
    return PMETEditor(**tiny_value_settings(**{"layers": LAYERS, "v_num_grad_steps": 30, "mom2_update_weight": 1e-6,
                                               **overrides}))


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_edit_learns_targets_writes_only_mlp_and_undoes(tiny, arch, facts_ending_with_subject, argmax_next):
    model, tok = tiny(arch)
    reqs = facts_ending_with_subject[:3]
    target_ids = [tok(" " + r.target_new)["input_ids"] for r in reqs]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = pmet()
    handle = editor.edit(model, tok, reqs)
    learned = sum(argmax_next(model, tok, r.prompt) == t[0] for r, t in zip(reqs, target_ids))
    assert learned == len(reqs), f"{arch}: {learned}/{len(reqs)} targets learned"
    layout = layout_for(model)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {layout.name("mlp_out", layer) + ".weight" for layer in LAYERS}
    # the attention delta was optimised too (not written)
    assert editor.last_attention_targets is not None and editor.last_attention_targets.delta.abs().sum() > 0
    # residual shares: 1/sqrt(remaining); the first layer's residual is that share of the MLP delta
    first = editor.last_updates[0]
    expected = editor.last_targets.delta.double() / math.sqrt(len(LAYERS))
    assert torch.allclose(first.residual, expected, atol=1e-4)
    handle.undo()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_joint_targets_reduce_to_single_module_values_when_one_module(tiny, requests_):
    model, tok = tiny("llama")
    hp = ValueHParams(num_grad_steps=5, lr=0.5, weight_decay=0.1, clamp_norm_factor=4, kl_factor=0.0625,
                      stop_loss=None)
    layout = layout_for(model)
    alone = value_targets(model, tok, layout, 1, requests_[:2], TEMPLATES, hp)
    joint = joint_value_targets(model, tok, layout, 1, requests_[:2], TEMPLATES, hp, modules=["mlp_out"])["mlp_out"]
    assert torch.equal(alone.values, joint.values)
    both = joint_value_targets(model, tok, layout, 1, requests_[:2], TEMPLATES, hp, modules=["attn_out", "mlp_out"])
    assert set(both) == {"attn_out", "mlp_out"} and both["attn_out"].steps == both["mlp_out"].steps
    # "original" is each module's unedited output at the subject (averaged over templates)
    assert both["attn_out"].original.shape == (2, model.config.hidden_size)
    assert not torch.equal(both["attn_out"].original, both["mlp_out"].original)
    with pytest.raises(ValueError, match="distinct"):
        joint_value_targets(model, tok, layout, 1, requests_[:1], TEMPLATES, hp, modules=["mlp_out", "mlp_out"])


def test_clamp_binds_per_component(tiny, requests_):
    model, tok = tiny("gpt2")
    hp = ValueHParams(num_grad_steps=8, lr=5.0, weight_decay=0.0, clamp_norm_factor=0.1, kl_factor=0.0,
                      stop_loss=None)
    both = joint_value_targets(model, tok, layout_for(model), 1, requests_[:1], TEMPLATES, hp,
                               modules=["attn_out", "mlp_out"])
    for vt in both.values():
        assert vt.delta_ratio[0] == pytest.approx(0.1, rel=1e-3)


def test_config_builds_the_editor(editor_from_config, fake_stats):
    editor = editor_from_config("pmet", [1, 2], layers_key="memit")
    assert isinstance(editor, PMETEditor) and editor.name == "pmet" and editor.layers == [1, 2]
    assert editor.hp.num_grad_steps == 30 and editor.hp.lr == 0.2 and editor.hp.kl_factor == 1.0
    assert editor.mom2_update_weight == 15000 and editor.context_template_length_params == [(10, 5)]


def test_layer_weights_are_refused_not_ignored():
    with pytest.raises(ValueError, match="PMET shares the residual"):
        pmet(layer_weights=[1.0, 2.0])


def test_failed_batch_leaves_model_unchanged(check_failed_batch_is_undone):
    check_failed_batch_is_undone(pmet())


def test_chunked_value_optimisation_gives_the_same_targets(tiny, requests_):
    """Requests never interact in the z*/v* optimisation, so chunks of them change nothing."""
    model, tok = tiny("gptj")
    hp = ValueHParams(num_grad_steps=4, lr=0.5, weight_decay=0.1, clamp_norm_factor=4, kl_factor=0.0625,
                      stop_loss=1.0)
    layout = layout_for(model)
    whole = joint_value_targets(model, tok, layout, 1, requests_[:3], TEMPLATES, hp, modules=["attn_out", "mlp_out"])
    parts = joint_value_targets(model, tok, layout, 1, requests_[:3], TEMPLATES, hp, modules=["attn_out", "mlp_out"],
                                chunk_size=2)
    for name in whole:
        assert torch.allclose(whole[name].values, parts[name].values, atol=1e-5)
        assert whole[name].steps == parts[name].steps


def test_value_ceiling_site_is_the_ffn_half_of_the_joint_target(tiny, facts_ending_with_subject):
    from lit_edit.editors.locate.ceiling import value_ceiling

    model, tok = tiny("llama")
    editor = pmet()
    targets = editor.initial_value_targets(model, tok, facts_ending_with_subject)
    assert editor.value_site == ("mlp_out", LAYERS[-1])
    assert editor.last_attention_targets is not None  # optimised with it, left out of the ceiling
    zero, one = value_ceiling(model, tok, editor.layout, *editor.value_site, facts_ending_with_subject,
                              targets.delta)
    assert one.prompt > zero.prompt
