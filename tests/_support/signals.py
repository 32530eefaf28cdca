"""A scheduler's stop, sent from inside a run at a chosen point (the process signals itself)."""

from __future__ import annotations

import os
import signal

import lightning as L


def terminate() -> None:
    """SIGTERM to this process: Lightning's handler sets ``trainer.received_sigterm``."""
    os.kill(os.getpid(), signal.SIGTERM)


class TerminateAtStep(L.Callback):
    """Sends SIGTERM once training has made ``step`` optimiser steps (built from a train.py config).

    ``rank``: only that process signals itself, as when a scheduler or ``kill`` reaches the
    process that launched the others; None: every process, as when a scheduler signals them all.
    """

    def __init__(self, step: int, rank: int | None = None) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        mine = self.rank is None or trainer.global_rank == self.rank
        if mine and trainer.global_step == self.step and not trainer.received_sigterm:
            terminate()
