"""edit.py end to end on a tiny model and shared ZsRE records, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from omegaconf import OmegaConf

from lit_edit.cli.common import build_trainer
from lit_edit.utils.progress import ClosingTQDMProgressBar


ROOT = Path(__file__).resolve().parents[1]


def edit(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    return subprocess.run(
        [sys.executable, str(ROOT / "edit.py"), f"hydra.run.dir={tmp_path}", "model=tiny_llama",
         "eval.fluency_max_new_tokens=8", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


def test_edit_writes_summary_records_and_wandb_run(tmp_path, shared_data):
    out = edit(tmp_path, "editor=ft_m", "data=zsre", "data.limit=3", "editor.lr=5e-2")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("reliability", "generalization", "locality", "portability", "fluency",
                "seconds_per_edit", "peak_memory_mb", "n_edits"):
        assert key in summary
    assert summary["n_edits"] == 3 and summary["editor"] == "ft_m"
    assert 0.0 <= summary["reliability"] <= 1.0 and summary["seconds_per_edit"] > 0
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 3
    assert "| reliability |" in out.stdout
    assert "Testing DataLoader 0: 100%" in out.stdout  # a tqdm bar: the output is a pipe, not a terminal
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline W&B run directory"
    # a second run into the same directory must not overwrite the results
    again = edit(tmp_path, "editor=ft_m", "data=zsre", "data.limit=3", "logger=none")
    assert again.returncode != 0 and "already holds results" in again.stderr


def test_unknown_editor_and_bad_layer_are_clear_errors(tmp_path, shared_data):
    out = edit(tmp_path / "a", "editor=no_such_editor", "logger=none")
    assert out.returncode != 0 and "no_such_editor" in out.stderr
    out = edit(tmp_path / "b", "editor=ft_m", "model.layers.ft=[9]", "data.limit=1", "logger=none")
    assert out.returncode != 0 and "layer 9 does not exist" in out.stderr


def test_train_refuses_training_free_editor(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}", "model=tiny_llama",
                          "editor=ft_m", "logger=none"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0 and "training-free" in out.stderr


def test_value_ceiling_mode_writes_its_table_and_never_overwrites(tmp_path, shared_data):
    common = ("data=zsre", "data.limit=2", "logger=none", "editor.mom2_adjustment=false",
              "editor.v_num_grad_steps=3")
    out = edit(tmp_path, "mode=value_ceiling", "editor=rome", *common)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "ceiling.json").read_text())
    assert result["editor"] == "rome" and result["requests"] == 2 and [r["scale"] for r in result["rows"]] == [0.0, 1.0]
    assert "Value ceiling at" in (tmp_path / "ceiling.md").read_text() and "| edit prompt |" in out.stdout
    again = edit(tmp_path, "mode=value_ceiling", "editor=rome", *common)
    assert again.returncode != 0 and "already holds results" in again.stderr
    out = edit(tmp_path / "b", "mode=value_ceiling", "editor=ft_m", "data.limit=1", "logger=none")
    assert out.returncode != 0 and "needs a locate-then-edit editor" in out.stderr
    out = edit(tmp_path / "c", "mode=bogus", "editor=ft_m", "data.limit=1", "logger=none")
    assert out.returncode != 0 and "mode='bogus' is not a mode" in out.stderr


def test_progress_bar_is_tqdm_unless_a_terminal_and_a_given_one_is_kept():
    cfg = OmegaConf.create({"trainer": {"_target_": "lightning.Trainer", "accelerator": "cpu", "devices": 1,
                                        "enable_progress_bar": True}})

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert type(build_trainer(cfg, [], False, stream=io.StringIO()).progress_bar_callback) is ClosingTQDMProgressBar
    mine = TQDMProgressBar(refresh_rate=7)
    assert build_trainer(cfg, [mine], False, stream=io.StringIO()).progress_bar_callback is mine
    # on a terminal the choice stays Lightning's (its Rich bar when rich is installed)
    on_terminal = build_trainer(cfg, [], False, stream=Terminal())
    lightnings_own = "RichProgressBar" if _RICH_AVAILABLE else "TQDMProgressBar"
    assert type(on_terminal.progress_bar_callback).__name__ == lightnings_own
    cfg.trainer.enable_progress_bar = False
    assert build_trainer(cfg, [], False, stream=io.StringIO()).progress_bar_callback is None


def test_seeded_slices_as_a_multirun_then_compared(tmp_path, shared_data):
    from lit_edit.cli.compare import main as compare

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "edit.py"), "-m", f"hydra.sweep.dir={tmp_path}", "model=tiny_llama",
         "editor=ft_m", "data=zsre", "data.limit=2", "eval.fluency=false", "logger=none",
         "data.shuffle=true", "data.seed=0,1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(str(p) for p in tmp_path.iterdir() if p.is_dir())
    assert [Path(r).name for r in runs] == ["0", "1"]
    table = compare(runs)
    assert "| 0 | 2 |" in table and "| 1 | 2 |" in table and "| mean of 2 | 4 |" in table
    assert "±" in table  # two edits per run: each score has a standard error
