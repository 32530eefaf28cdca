"""train.py and edit.py ckpt=... end to end on tiny models, as a user runs them."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
# a few ZsRE train records, validation every 2 batches, checkpoints every 2 steps
SMALL = ["data.limit=8", "train_data.val_size=2", "trainer.accumulate_grad_batches=1", "trainer.val_check_interval=2",
         "callbacks.latest_checkpoint.every_n_train_steps=2", "callbacks.progress_bar=null", "editor.lr=1e-3"]


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """MEND on tiny_llama for 4 steps, W&B offline: (checkpoint dir, run dir, completed process)."""
    base = tmp_path_factory.mktemp("mend")
    out = run("train.py", "editor=mend", "model=tiny_llama", f"hydra.run.dir={base / 'run'}",
              f"paths.checkpoint_dir={base / 'ckpt'}", "trainer.max_steps=4", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "ckpt", base / "run", out


def test_train_writes_named_checkpoints_with_base_model_record(trained):
    ckpt_dir, run_dir, _ = trained
    names = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    assert "mend-tiny_llama-step4.ckpt" in names, names  # latest (final step)
    assert any(n.startswith("mend-tiny_llama-step") and n.endswith("-best.ckpt") for n in names), names
    ckpt = torch.load(ckpt_dir / "mend-tiny_llama-step4.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["lit_edit"]["base_model"] == "tiny_llama" and len(ckpt["lit_edit"]["base_fingerprint"]) == 16
    assert ckpt["hyper_parameters"]["base"]["spec"]["source"] == "tiny"
    assert not any(k.startswith("model.") for k in ckpt["state_dict"]), "base model weights in the checkpoint"
    from lit_edit.editors.learned import load_editor
    from lit_edit.editors.mend import MEND

    best = next(ckpt_dir.glob("*-best.ckpt"))
    assert "optimizer_states" not in torch.load(best, weights_only=True)  # weights-only: small
    assert isinstance(load_editor(best), MEND)
    # W&B offline run with the training curves
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb")), "no offline W&B run"


def test_resume_continues_the_step_count_and_never_overwrites(trained, tmp_path):
    ckpt_dir, _, _ = trained
    start = ckpt_dir / "mend-tiny_llama-step4.ckpt"
    before = {p.name: sha(p) for p in ckpt_dir.glob("*.ckpt")}
    # a file of the user's where the resumed run's final checkpoint would go
    users = ckpt_dir / "mend-tiny_llama-step6.ckpt"
    users.write_bytes(b"not yours")
    out = run("train.py", "editor=mend", "model=tiny_llama", f"hydra.run.dir={tmp_path / 'run'}", "logger=none",
              f"paths.checkpoint_dir={ckpt_dir}", "trainer.max_steps=6", f"ckpt_path={start}",
              "+callbacks.digest._target_=lit_edit.editors.learned.callbacks.WeightDigest",
              f"+callbacks.digest.dirpath={tmp_path / 'digest'}", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restoring states from the checkpoint" in out.stderr + out.stdout
    digest = json.loads((tmp_path / "digest" / "weights-rank0.json").read_text())
    assert digest["global_step"] == 6  # 4 restored + 2 new, not 6 new
    resumed = torch.load(ckpt_dir / "mend-tiny_llama-step6-v1.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    # the user's file, the checkpoint resumed from and the first run's files are untouched
    assert users.read_bytes() == b"not yours"
    assert all(sha(ckpt_dir / name) == digest_ for name, digest_ in before.items())


def test_edit_py_loads_the_checkpoint_and_its_base_model(trained, tmp_path):
    ckpt = trained[0] / "mend-tiny_llama-step4.ckpt"
    out = run("edit.py", f"ckpt={ckpt}", "data=zsre", "data.limit=3", "eval.fluency=false", "logger=none",
              f"hydra.run.dir={tmp_path / 'ok'}")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["editor"] == "mend" and summary["model"] == "tiny_llama" and summary["n_edits"] == 3
    assert 0.0 <= summary["reliability"] <= 1.0 and summary["locality"] is not None

    # another base model chosen on the command line: refused, naming both (force: tests/editors)
    other = run("edit.py", f"ckpt={ckpt}", "model=tiny_llama", "model.spec.seed=3", "data.limit=1", "logger=none",
                "eval.fluency=false", f"hydra.run.dir={tmp_path / 'other'}")
    assert other.returncode != 0
    assert "trained on base model 'tiny_llama'" in other.stderr and "force_ckpt=true" in other.stderr


def test_ke_trains_on_gpt2_conv1d_and_edits(tmp_path, shared_data, tiny, requests_):
    out = run("train.py", "editor=ke", "model=tiny_gpt2", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
              f"paths.checkpoint_dir={tmp_path / 'ckpt'}", "trainer.max_steps=2", "editor.condition_dim=32",
              "editor.lstm_hidden=16", "train_data.edits_per_batch=2", *SMALL)
    assert out.returncode == 0, out.stderr[-3000:]
    from lit_edit.editors.ke import KnowledgeEditor
    from lit_edit.editors.learned import load_editor

    editor = load_editor(tmp_path / "ckpt" / "ke-tiny_gpt2-step2.ckpt")
    assert isinstance(editor, KnowledgeEditor) and editor.targets[0].name == "transformer.h.1.mlp.c_fc"
    model, tok = tiny("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = editor.edit(model, tok, requests_[:3])  # batch editing with a trained KE
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    handle.undo()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_learned_editor_without_checkpoint_and_missing_checkpoint_are_clear_errors(tmp_path):
    from hydra import compose, initialize_config_dir

    from lit_edit.cli.edit import build_editor

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("edit", overrides=["editor=mend", "model=tiny_llama"])
        with pytest.raises(Exception, match=r"learned editor: train it first"):  # Hydra wraps the ValueError
            build_editor(cfg)
        cfg = compose("edit", overrides=[f"ckpt={tmp_path / 'nope.ckpt'}", "model=tiny_llama"])
        with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
            build_editor(cfg)


@pytest.mark.parametrize("experiment,editor", [("cpu_1h", "mend"), ("mend_cpu_1h", "mend"), ("ke_cpu_1h", "ke"),
                                               ("mend_counterfact", "mend")])
def test_experiment_files_compose_into_a_time_boxed_training_config(experiment, editor):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    assert cfg.editor.name == editor and cfg.model.spec.name == "smollm2_135m"
    if experiment.endswith("_1h"):
        # under an hour of wall time, an optimizer step per batch, checkpoints at each validation
        assert cfg.trainer.max_time == "00:00:55:00" and cfg.trainer.accumulate_grad_batches == 1
        assert cfg.callbacks.latest_checkpoint.every_n_train_steps == cfg.trainer.val_check_interval
    else:
        assert cfg.data.name == "counterfact_train" and cfg.train_data.val_name == "counterfact_val"
