"""The value-ceiling diagnostic on tiny random models: the optimised delta, added at the subject's
last token, makes the edit prompt say the target; scale 0 is the unedited model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lit_edit.editors.locate.ceiling import ceiling_table, value_ceiling
from lit_edit.editors.memit import MEMITEditor
from lit_edit.editors.rome import ROMEEditor

from _support.locate import tiny_value_settings

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/editors/conftest.py

SETTINGS = tiny_value_settings()


def _with_rephrases(reqs):
    # one rephrase that keeps the subject (the patch has a position) and one that does not
    return [dataclasses.replace(r, rephrase_prompts=[f"Tell me this. {r.prompt}", "Something else entirely"])
            for r in reqs]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["memit", "rome"])
def test_the_delta_carries_the_edit_prompt_and_scale_zero_is_the_unedited_model(tiny, arch, kind,
                                                                               facts_ending_with_subject, argmax_next):
    model, tok = tiny(arch)
    reqs = _with_rephrases(facts_ending_with_subject)
    editor = (MEMITEditor(layers=[1, 2], mom2_update_weight=1e-6, **SETTINGS) if kind == "memit"
              else ROMEEditor(layer=1, **SETTINGS))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = editor.initial_value_targets(model, tok, reqs)
    module, layer = editor.value_site
    assert (module, layer) == (("layer", 2) if kind == "memit" else ("mlp_out", 1))

    zero, one = value_ceiling(model, tok, editor.layout, module, layer, reqs, targets.delta, scales=(0.0, 1.0))
    unedited = sum(argmax_next(model, tok, r.prompt) == tok(" " + r.target_new)["input_ids"][0] for r in reqs)
    assert zero.prompt == pytest.approx(unedited / len(reqs))  # one-token targets: accuracy = argmax hits
    assert one.prompt == 1.0 and zero.prompt < 0.5
    assert (one.n_prompts, one.n_rephrases, one.skipped_rephrases) == (4, 4, 4)
    assert one.rephrase is not None and 0.0 <= one.rephrase <= 1.0
    # a diagnostic: no weight moves
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    table = ceiling_table([zero, one], "here")
    assert "| 1 | 1.000 |" in table and "| 0 |" in table


def test_mismatched_deltas_are_an_error(tiny, facts_ending_with_subject):
    model, tok = tiny("llama")
    editor = ROMEEditor(layer=1, **SETTINGS)
    editor.ensure_prepared(model, tok)
    with pytest.raises(ValueError, match="3 deltas for 4 requests"):
        value_ceiling(model, tok, editor.layout, "mlp_out", 1, facts_ending_with_subject, torch.zeros(3, 8))
