"""train.py with DDP on CPU: two gloo processes train MEND in lockstep, rank 0 alone writes checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train_ddp(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """train.py: MEND on tiny_llama, two gloo processes, checkpoints in ``tmp_path / "ckpt"``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT / "tests")}  # tests/_support: callbacks a test's overrides name
    env.pop("LOCAL_RANK", None)
    cmd = [sys.executable, str(ROOT / "train.py"), "editor=mend", "trainer=ddp", "trainer.devices=2",
           "trainer.accelerator=cpu", "model=tiny_llama", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
           f"paths.checkpoint_dir={tmp_path / 'ckpt'}", "trainer.accumulate_grad_batches=1", "train_data.val_size=2",
           "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
           "editor.rank=8", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_hold_identical_editor_weights_and_only_rank0_checkpoints(tmp_path, shared_data):
    out = train_ddp(tmp_path, "trainer.max_steps=2", "data.limit=8", "editor.lr=1e-2",
                    "+callbacks.digest._target_=lit_edit.editors.learned.callbacks.WeightDigest",
                    f"+callbacks.digest.dirpath={tmp_path / 'digest'}")
    assert out.returncode == 0, out.stderr[-4000:]
    digests = [json.loads((tmp_path / "digest" / f"weights-rank{r}.json").read_text()) for r in (0, 1)]
    assert [d["world_size"] for d in digests] == [2, 2]
    assert [d["global_step"] for d in digests] == [2, 2]
    assert digests[0]["digest"] == digests[1]["digest"], "ranks diverged"

    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["mend-tiny_llama-step2-best.ckpt", "mend-tiny_llama-step2.ckpt"], files
    ckpt = torch.load(tmp_path / "ckpt" / "mend-tiny_llama-step2.ckpt", weights_only=True)
    assert ckpt["lit_edit"]["saved_by_rank"] == 0 and ckpt["lit_edit"]["world_size"] == 2
    # the editor moved away from its initialisation (a real optimiser step was taken on both ranks)
    assert ckpt["global_step"] == 2
    assert float(ckpt["state_dict"]["nets.64x128.layers.0.v"].abs().sum()) > 0


def test_a_sigterm_to_the_launching_process_ends_both_and_names_the_latest_checkpoint(tmp_path, shared_data):
    """``kill <pid>`` (or a scheduler) reaching rank 0: Lightning forwards it to rank 1. The run must end, not
    hang in a collective the other rank never joins (a save on the stop is one: it is skipped under DDP)."""
    out = train_ddp(tmp_path, "trainer.max_steps=50", "data.limit=16", "callbacks.early_stopping=null",
                    "callbacks.latest_checkpoint.every_n_train_steps=2",
                    "+callbacks.stop._target_=_support.signals.TerminateAtStep", "+callbacks.stop.step=3",
                    "+callbacks.stop.rank=0")
    assert out.returncode == 1, out.stderr[-4000:]
    latest = tmp_path / "ckpt" / "mend-tiny_llama-step2.ckpt"
    note = f"train.py: training stopped at step 3; ckpt_path={latest} resumes it from step 2, its latest checkpoint"
    assert out.stderr.count(note) == 1, out.stderr[-4000:]  # said by rank 0 only, not once per process
    assert torch.load(latest, weights_only=True)["global_step"] == 2


def test_a_run_resumed_mid_epoch_trains_each_process_on_what_the_uninterrupted_run_did(tmp_path, shared_data):
    """8 edits, 2 processes: 4 steps an epoch each. Resumed from step 3 (mid-epoch), every process
    continues its own share of the epoch's order (lit_edit.data.resumable)."""
    common = ("data.limit=10", "callbacks.early_stopping=null", "callbacks.latest_checkpoint.every_n_train_steps=3",
              "callbacks.latest_checkpoint.save_top_k=-1", "+callbacks.order._target_=_support.order.RecordOrder")
    whole = train_ddp(tmp_path / "whole", "trainer.max_steps=6", *common,
                      f"+callbacks.order.dirpath={tmp_path / 'whole' / 'order'}")
    assert whole.returncode == 0, whole.stderr[-4000:]
    start = tmp_path / "whole" / "ckpt" / "mend-tiny_llama-step3.ckpt"
    resumed = train_ddp(tmp_path / "resumed", "trainer.max_steps=6", *common, f"ckpt_path={start}",
                        f"+callbacks.order.dirpath={tmp_path / 'resumed' / 'order'}")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    orders = {run: [json.loads((tmp_path / run / "order" / f"order-rank{r}.json").read_text()) for r in (0, 1)]
              for run in ("whole", "resumed")}
    for rank in (0, 1):
        assert [step for step, _ in orders["whole"][rank]] == list(range(6))
        assert orders["resumed"][rank] == orders["whole"][rank][3:], f"rank {rank}"
    shares = [{c for _, ids in orders["whole"][r][:4] for c in ids} for r in (0, 1)]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 8  # one epoch: each edit on one process
