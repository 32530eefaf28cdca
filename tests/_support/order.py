"""A training callback that writes which edits each step of each process trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RecordOrder(L.Callback):
    """Appends ``[global_step, case ids]`` per training batch; writes ``order-rank<r>.json`` at the end."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.steps: list[list[Any]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.steps.append([trainer.global_step, [r.case_id for r in batch.requests]])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        (self.dirpath / f"order-rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))
