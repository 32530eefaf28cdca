"""PRUNE: the restraint function, its effect on the summed update, and its place in the loop."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_edit.editors.base import WeightSnapshot
from lit_edit.editors.ft import FineTuneEditor
from lit_edit.editors.prune import PruneConfig, restrain_singular_values, spectrum_reports
from lit_edit.editors.rome import ROMEEditor
from lit_edit.evaluation.loop import EditingLoop, EvalConfig
from lit_edit.models.tiny import TINY_ARCHS


def test_restraint_function_by_hand():
    s = torch.tensor([10.0, 3.0, 2.0, 0.5], dtype=torch.float64)
    out = restrain_singular_values(s, sigma_max=2.5, alpha=math.e)
    assert out[0] == pytest.approx(math.log(10.0) - math.log(2.5) + 2.5)
    assert out[1] == pytest.approx(math.log(3.0) - math.log(2.5) + 2.5)
    assert torch.equal(out[2:], s[2:])  # at or below sigma_max: untouched
    base10 = restrain_singular_values(s, sigma_max=2.5, alpha=10.0)
    assert base10[0] == pytest.approx(math.log10(10.0) - math.log10(2.5) + 2.5)


def test_restrains_summed_update_keeps_its_directions():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 6) * 0.1, requires_grad=False)
    snap = WeightSnapshot({"w": w})
    u = torch.linalg.qr(torch.randn(8, 2))[0]
    v = torch.linalg.qr(torch.randn(6, 2))[0]
    delta = u @ torch.diag(torch.tensor([50.0, 0.01])) @ v.T
    w.data += delta
    sigma_w = float(torch.linalg.svdvals(snap.saved["w"].double())[0])
    (report,) = spectrum_reports([snap], PruneConfig(alpha=math.e))
    new_delta = (w.detach() - snap.saved["w"]).double()
    s = torch.linalg.svdvals(new_delta)
    assert report.restrained == 1 and report.update_sigma_max_before == pytest.approx(50.0, rel=1e-5)
    assert s[0] == pytest.approx(math.log(50.0) - math.log(sigma_w) + sigma_w, rel=1e-4)
    assert s[1] == pytest.approx(0.01, rel=1e-3)
    assert report.cond_after < report.cond_before
    # the restrained update still points the same way
    top = torch.linalg.svd(new_delta)[0][:, 0]
    assert abs(float(top @ u[:, 0].double())) == pytest.approx(1.0, abs=1e-4)
    snap.undo()


def test_loop_applies_prune_and_still_restores_bit_exactly(tiny, requests_):
    model, tok = tiny("gpt2")  # Conv1D: singular values do not care about the storage orientation
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = FineTuneEditor(layers=[2], num_steps=20, lr=5e-2, weight_decay=0.0, norm_constraint=None,
                            objective="target_new", stop_loss=None)
    loop = EditingLoop(model, tok, editor, EvalConfig(mode="sequential", eval_at="end", fluency=False),
                       prune=PruneConfig(alpha=1.5))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[editor])
    trainer.test(loop, dataloaders=DataLoader(requests_, batch_size=1, collate_fn=list), verbose=False)
    s = loop.summary
    assert s["update_sigma_max"] <= s["update_sigma_max_before_prune"] and s["prune_alpha"] == 1.5
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_prune_needs_a_sequential_mode(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match="sequential"):
        EditingLoop(model, tok, None, EvalConfig(mode="single"), prune=PruneConfig(alpha=math.e))
    with pytest.raises(ValueError, match="alpha"):
        PruneConfig(alpha=1.0)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_compare_mode_scores_both_and_keeps_editing_on_plain_weights(tiny, requests_, arch):
    """compare: the restrained model is scored at each point, then the plain weights come back.

    ROME with a huge clamp makes updates far above sigma_max(W) on tiny models, so PRUNE binds.
    """
    model, tok = tiny(arch)
    editor = ROMEEditor(layer=1, v_num_grad_steps=15, v_lr=2.0, v_weight_decay=0.0, clamp_norm_factor=1e4,
                        kl_factor=0.0, v_stop_loss=None, mom2_adjustment=False, context_templates=["{}"])
    cfg = EvalConfig(mode="sequential", eval_at="every_n", every_n=2, fluency=False, restore_at_end=False)
    loop = EditingLoop(model, tok, editor, cfg, prune=PruneConfig(alpha=1.5, compare=True))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[editor])
    trainer.test(loop, dataloaders=DataLoader(requests_[:4], batch_size=1, collate_fn=list), verbose=False)
    s = loop.summary
    assert s["reliability@end"] is not None and s["reliability@end_pruned"] is not None
    assert s["update_sigma_max_pruned"] < s["update_sigma_max"]
    assert [p["n_edits"] for p in loop._curve] == [2, 4]
    assert all("reliability" in p and "reliability_pruned" in p for p in loop._curve)  # the end point too
    assert loop._curve[-1]["reliability"] == pytest.approx(s["reliability@end"])
    # the model left behind carries the plain (unrestrained) update
    (report,) = spectrum_reports(loop._handles, None)
    assert report.update_sigma_max_before == pytest.approx(s["update_sigma_max"], rel=1e-5)
    for handle in reversed(loop._handles):
        handle.undo()
