"""Trainer callbacks for learned editors: named checkpoints and a per-rank weight digest."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def safe_name(text: str) -> str:
    """``org/model name`` -> ``org_model_name``: one path component, whatever the model id."""
    return _UNSAFE.sub("_", str(text)).strip("_") or "model"


class EditorCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` writing ``<editor>-<base model>-step<N>[-<tag>].ckpt``.

    Nothing that exists is overwritten: a name already taken (by an earlier run, or a file
    the user put there) gets Lightning's version suffix (``-v1``, ``-v2``, ...). Only files
    this process wrote are ever removed (its previous "latest" or "best"), also when it
    resumed another run's checkpoint, whose files stay.
    With ``monitor=None`` the callback keeps the latest checkpoint (every
    ``every_n_train_steps`` and at the end of training, for resuming); with a monitor it
    keeps the best ``save_top_k`` by that validation metric.
    """

    def __init__(self, dirpath: str, editor: str, model: str, tag: str | None = None, **kwargs: Any) -> None:
        filename = f"{safe_name(editor)}-{safe_name(model)}-step{{step}}" + (f"-{safe_name(tag)}" if tag else "")
        kwargs.setdefault("save_top_k", 1)
        super().__init__(dirpath=dirpath, filename=filename, auto_insert_metric_name=False,
                         enable_version_counter=True, **kwargs)
        self.tag = tag
        # what this process wrote: all it may remove. A run resumed from a checkpoint restores the
        # stopped run's best and latest paths (so it compares against their scores), but those
        # files belong to that run and stay when this one finds a better model.
        self._written: set[str] = set()

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self._written.add(str(filepath))

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if str(filepath) in self._written:
            super()._remove_checkpoint(trainer, filepath)
            self._written.discard(str(filepath))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, tag=self.tag,
                                        every_n_train_steps=self._every_n_train_steps)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The latest-checkpoint callback also saves the final step (max_steps/max_time/early stop)."""
        super().on_train_end(trainer, pl_module)
        self._save_latest(trainer)

    def _save_latest(self, trainer: L.Trainer) -> None:
        """The latest-checkpoint callback (no monitor) saves the current step, unless it already has."""
        if self.monitor is None and self._every_n_train_steps > 0 and not self._should_skip_saving_checkpoint(trainer):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On SIGTERM the latest-checkpoint callback saves the step the run stopped at.

        A scheduler's stop or a preemption would otherwise lose every step since the last
        ``every_n_train_steps`` save. Lightning raises the stop between batches, so the state
        is whole. Only in one process: under DDP, Lightning 2.6 raises it on each rank when
        that rank sees the signal, not on all at one step, and a save is a collective (a
        barrier, a broadcast of whether the file exists) that the other ranks may never join;
        the run would hang instead of ending. Other exceptions save nothing: their state may
        be half-updated.
        """
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and trainer.world_size == 1:
            self._save_latest(trainer)


def resume_note(trainer: L.Trainer) -> str:
    """Where a stopped training run can resume from: the latest checkpoint this run saved."""
    latest = [cb for cb in trainer.callbacks if isinstance(cb, EditorCheckpoint) and cb.monitor is None]
    saved = [cb for cb in latest if cb.best_model_path and Path(cb.best_model_path).is_file()]
    where = f"training stopped at step {trainer.global_step}"
    if saved:
        step = saved[0]._last_global_step_saved
        since = "" if step == trainer.global_step else f" from step {step}, its latest checkpoint"
        return f"{where}; ckpt_path={saved[0].best_model_path} resumes it{since}"
    if latest:
        return f"{where}; no checkpoint was saved (none is saved during the sanity check or fast_dev_run)"
    return f"{where}; no checkpoint was saved: callbacks.latest_checkpoint is off"


class WeightDigest(L.Callback):
    """Writes ``weights-rank<r>.json`` (a digest of the editor's state dict) when training ends.

    A cheap check that data-parallel ranks hold identical editor weights: every rank writes
    its own file and the digests must agree (the DDP test compares them).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for key, value in sorted(pl_module.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        self.dirpath.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                  "digest": digest.hexdigest()}
        (self.dirpath / f"weights-rank{trainer.global_rank}.json").write_text(json.dumps(record))
