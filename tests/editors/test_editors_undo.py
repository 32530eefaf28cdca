"""Every editor's undo restores every parameter bit-exactly, on several layouts."""

from __future__ import annotations

import pytest
import torch

from lit_edit.editors.base import NoEdit
from lit_edit.editors.ft import FineTuneEditor
from lit_edit.models.tiny import TINY_ARCHS

ARCHS = TINY_ARCHS


def ft(objective: str) -> FineTuneEditor:
    return FineTuneEditor(layers=[1, 2], num_steps=5, lr=1e-2, weight_decay=0.0,
                          norm_constraint=5e-3 if objective == "prompt_last" else None,
                          objective=objective, stop_loss=None)


EDITORS = {"ft_l": lambda: ft("prompt_last"), "ft_m": lambda: ft("target_new"), "none": NoEdit}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("editor_name", sorted(EDITORS))
def test_undo_is_bit_exact(tiny, requests_, arch, editor_name):
    model, tok = tiny(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = EDITORS[editor_name]()
    handle = editor.edit(model, tok, requests_[:2])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    if editor_name != "none":
        assert changed, "the edit changed nothing"
    handle.undo()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored exactly"
    assert not any(p.requires_grad for p in model.parameters()), "editor left parameters trainable"


def test_double_undo_is_an_error(tiny, requests_):
    model, tok = tiny("llama")
    handle = ft("target_new").edit(model, tok, requests_[:1])
    handle.undo()
    with pytest.raises(RuntimeError, match="already undone"):
        handle.undo()
