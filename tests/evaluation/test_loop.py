"""The evaluation loop: undo vs keep per mode, what is measured when, and what is written."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import NoEdit
from lit_edit.editors.ft import FineTuneEditor
from lit_edit.evaluation.loop import EditingLoop, EvalConfig
from lit_edit.evaluation.results import SUMMARY_KEYS


def run(model, tok, editor, requests, tmp_path=None, **cfg):
    cfg.setdefault("fluency", False)
    eval_cfg = EvalConfig(**cfg)
    loop = EditingLoop(model, tok, editor, eval_cfg, run_dir=tmp_path)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[editor])
    loader = DataLoader(requests, batch_size=eval_cfg.edits_per_batch, collate_fn=list)
    trainer.test(loop, dataloaders=loader, verbose=False)
    return loop.summary


def strong_ft():
    return FineTuneEditor(layers=[2], num_steps=30, lr=5e-2, weight_decay=0.0, norm_constraint=None,
                          objective="target_new", stop_loss=None)


def test_no_edit_locality_is_one_and_writes_files(tiny, requests_, tmp_path):
    model, tok = tiny("llama")
    summary = run(model, tok, NoEdit(), requests_, tmp_path, fluency=True, fluency_max_new_tokens=8)
    assert summary["locality"] == 1.0
    assert summary["n_edits"] == 4
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(saved)
    assert saved["fluency"] is not None and saved["fluency"] > 0
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"reliability", "generalization", "locality"} <= set(json.loads(lines[0]))
    assert "| reliability |" in (tmp_path / "summary.md").read_text()
    # standard errors over the edits' own scores (the per-edit records)
    assert summary["locality_se"] == 0.0
    per_edit = torch.tensor([json.loads(x)["reliability"] for x in lines])
    assert saved["reliability_se"] == pytest.approx(float(per_edit.std() / 2))


def test_absent_metric_is_null_not_zero(tiny, requests_, tmp_path):
    model, tok = tiny("gpt2")
    bare = [EditRequest(prompt=r.prompt, target_new=r.target_new, source=r.source) for r in requests_]
    summary = run(model, tok, NoEdit(), bare, tmp_path)
    assert summary["portability"] is None and summary["locality"] is None and summary["generalization"] is None
    assert json.loads((tmp_path / "summary.json").read_text())["portability"] is None


@pytest.mark.parametrize("mode", ["single", "batch"])
def test_single_and_batch_restore_bit_exactly(tiny, requests_, mode):
    model, tok = tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = run(model, tok, strong_ft(), requests_, mode=mode, batch_size=2)
    assert summary["reliability"] > 0.5  # the edits did something while they were applied
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sequential_keeps_edits_and_reports_end_and_each_edit(tiny, requests_):
    model, tok = tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = run(model, tok, strong_ft(), requests_, mode="sequential", eval_at="each_edit", restore_at_end=False)
    assert summary["reliability@each_edit"] is not None and summary["reliability@end"] is not None
    assert summary["reliability"] == summary["reliability@end"]
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sequential_restores_at_end_when_asked(tiny, requests_):
    model, tok = tiny("gptj")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run(model, tok, strong_ft(), requests_, mode="sequential_batch", batch_size=2, eval_at="end")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_every_n_writes_a_curve(tiny, requests_, tmp_path):
    model, tok = tiny("gpt_neox")
    run(model, tok, strong_ft(), requests_, tmp_path, mode="sequential", eval_at="every_n", every_n=2)
    saved = json.loads((tmp_path / "summary.json").read_text())
    curve = saved["tables"]["edits over time"]
    assert [p["n_edits"] for p in curve] == [2, 4]
    assert (tmp_path / "curve.png").stat().st_size > 0
    records = [json.loads(x) for x in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all("reliability@end" in r for r in records)


def test_counterfact_and_generation_protocols(tiny, requests_):
    model, tok = tiny("llama")
    summary = run(model, tok, NoEdit(), requests_, cf_probability=True, protocol="generation_em")
    for key in ("efficacy_score", "paraphrase_score", "neighborhood_score", "reliability@teacher_forced"):
        assert summary[key] is not None and 0.0 <= summary[key] <= 1.0
    assert summary["protocol"] == "generation_em"
    # the EM score takes the headline with its own error; the teacher-forced score keeps its error
    assert summary["reliability"] == summary["reliability_em"]
    assert summary["reliability_se"] == summary["reliability_em_se"] is not None
    assert summary["reliability@teacher_forced_se"] is not None


def test_bad_eval_config_is_a_clear_error():
    with pytest.raises(ValueError, match="eval.mode"):
        EvalConfig(mode="parallel")
    with pytest.raises(ValueError, match="eval.autocast must be null, 'bf16' or 'auto'"):
        EvalConfig(autocast="fp16")


@pytest.mark.parametrize("amx", [True, False])
def test_auto_autocast_scores_in_what_the_device_does_fastest(tiny, requests_, monkeypatch, amx):
    """``auto`` scores under bf16 only where the probe says bf16 is the faster; the summary
    names the precision actually used, and scores under bf16 go through torch.autocast."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    model, tok = tiny("llama")
    entered = []
    real = torch.autocast

    class Spy(real):
        def __init__(self, device_type, dtype=None, enabled=True, **kw):
            entered.append(enabled)
            super().__init__(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", Spy)
    summary = run(model, tok, NoEdit(), requests_[:2], autocast="auto")
    assert summary["autocast"] == ("bf16" if amx else None)
    assert entered and all(e is amx for e in entered)
    assert summary["locality"] == 1.0


class _TimedNoEdit(NoEdit):
    """Reports phase timings the way ROME/MEMIT do (fixed numbers, so the sums can be checked)."""

    def edit(self, model, tokenizer, requests):
        self.last_timings = {"values": 2.0 * len(requests), "update": 0.5 * len(requests)}
        self.last_counts = {"value_steps": 30.0 * len(requests)}
        return super().edit(model, tokenizer, requests)


def test_editor_phase_timings_reach_records_and_summary(tiny, requests_, tmp_path):
    model, tok = tiny("gpt2")
    summary = run(model, tok, _TimedNoEdit(), requests_[:4], tmp_path, mode="batch", batch_size=2)
    assert summary["seconds_per_edit/values"] == pytest.approx(2.0)
    assert summary["seconds_per_edit/update"] == pytest.approx(0.5)
    assert summary["per_edit/value_steps"] == pytest.approx(30.0)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert all(r["edit_seconds/values"] == pytest.approx(2.0) for r in records)
    assert all(r["edit_counts/value_steps"] == pytest.approx(30.0) for r in records)
