"""FT-L / FT-M behave as specified: they learn the target, touch only their layer, respect
the L-infinity constraint, and the frozen-prefix replay changes nothing numerically."""

from __future__ import annotations

import contextlib
import re

import pytest
import torch

import lit_edit.editors.ft as ft_module
from lit_edit.editors.ft import FineTuneEditor
from lit_edit.evaluation.scoring import teacher_forced
from lit_edit.models.layouts import layout_for
from lit_edit.models.tiny import TINY_ARCHS
from lit_edit.utils.tokens import tokenize_pairs


def accuracy(model, tok, req) -> float:
    tf = teacher_forced(model, tokenize_pairs(tok, [req.prompt], [req.target_new]), pad_id=tok.pad_token_id)
    return float(((tf.pred_ids == tf.label_ids) & tf.mask).sum() / tf.mask.sum())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_ft_m_learns_target_and_touches_only_its_layer(tiny, requests_, arch):
    model, tok = tiny(arch)
    req = requests_[0]
    assert accuracy(model, tok, req) < 1.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = FineTuneEditor(layers=[2], num_steps=40, lr=5e-2, weight_decay=0.0, norm_constraint=None,
                            objective="target_new", stop_loss=1e-2)
    editor.edit(model, tok, [req])
    assert accuracy(model, tok, req) == 1.0
    target = layout_for(model).name("mlp_out", 2) + ".weight"
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {target}


def test_ft_l_respects_norm_constraint(tiny, requests_):
    model, tok = tiny("llama")
    eps = 1e-3
    editor = FineTuneEditor(layers=[1], num_steps=10, lr=1e-1, weight_decay=0.0, norm_constraint=eps,
                            objective="prompt_last", stop_loss=None)
    handle = editor.edit(model, tok, requests_[:2])
    (delta,) = handle.deltas().values()
    assert delta.abs().max() <= eps + 1e-7
    assert delta.abs().max() > eps / 2  # lr 0.1 pushes against the constraint


def test_stop_loss_stops_early(tiny, requests_):
    model, tok = tiny("llama")
    editor = FineTuneEditor(layers=[2], num_steps=200, lr=5e-2, weight_decay=0.0, norm_constraint=None,
                            objective="target_new", stop_loss=5.9)  # tiny model: loss starts at ln(vocab) ~ 6.9, plateaus ~5.6
    editor.edit(model, tok, [requests_[0]])
    assert 0 < editor.last_steps < 200


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_frozen_prefix_replay_is_exact(tiny, requests_, arch, monkeypatch):
    """The same edit with and without replaying the blocks below the edited layer."""
    results = []
    for replay in (True, False):
        model, tok = tiny(arch)
        if not replay:
            monkeypatch.setattr(ft_module, "frozen_prefix", lambda *a, **k: contextlib.nullcontext())
        editor = FineTuneEditor(layers=[2], num_steps=3, lr=1e-2, weight_decay=0.0, norm_constraint=None,
                                objective="target_new", stop_loss=None)
        handle = editor.edit(model, tok, requests_[:2])
        results.append(next(iter(handle.deltas().values())))
    assert torch.allclose(results[0], results[1], atol=1e-6, rtol=1e-5)


def test_bad_objective_and_layer_are_clear_errors(tiny, requests_):
    with pytest.raises(ValueError, match="objective"):
        FineTuneEditor(layers=[1], num_steps=1, lr=1e-3, weight_decay=0, norm_constraint=None,
                       objective="bogus", stop_loss=None)
    model, tok = tiny("llama")
    editor = FineTuneEditor(layers=[9], num_steps=1, lr=1e-3, weight_decay=0, norm_constraint=None,
                            objective="target_new", stop_loss=None)
    with pytest.raises(IndexError, match=re.escape("editor.layers=[9]: layer 9 does not exist")):
        editor.edit(model, tok, requests_[:1])
