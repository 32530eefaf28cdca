"""Perplexity: exact against a direct computation, and wired into sequential evaluation points."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_edit.editors.ft import FineTuneEditor
from lit_edit.evaluation.loop import EditingLoop, EvalConfig
from lit_edit.evaluation.perplexity import PerplexityConfig, PerplexityProbe

TEXT = ("The quick brown fox jumps over the lazy dog. " * 20 + "\n\n" + "Paris is the capital of France. " * 20)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def test_matches_a_direct_computation(each_tiny, text_file):
    _, model, tok = each_tiny
    probe = PerplexityProbe(PerplexityConfig(path=str(text_file), n_tokens=100, window=32, token_budget=64), tok)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:100]
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(ids), 32):
            w = torch.tensor(ids[lo : lo + 32])[None]
            if w.shape[1] < 2:
                continue
            logits = model(input_ids=w).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, w[0, 1:], reduction="sum"))
            count += w.shape[1] - 1
    assert probe.n_predicted == count
    assert probe(model) == pytest.approx(math.exp(total / count), rel=1e-4)


def test_bad_settings_are_named(tmp_path, tiny_tok):
    with pytest.raises(FileNotFoundError, match="perplexity_path"):
        PerplexityProbe(PerplexityConfig(path=str(tmp_path / "missing.txt")), tiny_tok)
    with pytest.raises(ValueError, match="window"):
        PerplexityConfig(path="x", token_budget=16, window=32)
    with pytest.raises(ValueError, match="perplexity_path"):
        EvalConfig(perplexity=True)


def test_sequential_run_reports_perplexity_at_each_point(tiny, requests_, text_file):
    model, tok = tiny("gpt2")
    editor = FineTuneEditor(layers=[2], num_steps=10, lr=5e-2, weight_decay=0.0, norm_constraint=None,
                            objective="target_new", stop_loss=None)
    cfg = EvalConfig(mode="sequential", eval_at="every_n", every_n=2, fluency=False, perplexity=True,
                     perplexity_path=str(text_file), perplexity_tokens=64, perplexity_window=32)
    loop = EditingLoop(model, tok, editor, cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[editor])
    trainer.test(loop, dataloaders=DataLoader(requests_[:4], batch_size=1, collate_fn=list), verbose=False)
    s = loop.summary
    assert s["perplexity@unedited"] > 1 and s["perplexity"] == s["perplexity@end"]
    assert s["perplexity@end"] != s["perplexity@unedited"]  # lr 5e-2 on a tiny model moves it
    assert all("perplexity" in p for p in loop._curve)
    # restored model: the perplexity is back where it started
    probe = PerplexityProbe(cfg.perplexity_config, tok)
    assert probe(model) == pytest.approx(s["perplexity@unedited"], rel=1e-6)
