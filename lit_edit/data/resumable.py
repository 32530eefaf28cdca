"""A training order that a run resumed mid-epoch (``train.py ckpt_path=...``) continues exactly.

Lightning restores a checkpoint's step and its place in the epoch, but a plain shuffled
``DataLoader`` starts the epoch over in a fresh random order: the resumed epoch trains on some
examples twice and on others not at all (a checkpoint after 3 of 5 batches, then the rest of
the epoch: measured in ``tests/data/test_resumable.py``). :class:`ResumableShuffle` gives every
epoch an order fixed by ``(seed, epoch)`` and, in the epoch a run resumes in, skips the batches
the stopped run had trained on, so the resumed run sees what the uninterrupted one would have.

It is a ``DistributedSampler`` (each process takes its share), so under DDP Lightning uses it as
it is rather than wrapping it; in one process it is the whole order.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from torch.utils.data import Dataset, DistributedSampler


class ResumableShuffle(DistributedSampler):
    """Shuffled indices per epoch, the same for the same seed; the first epoch may start part-way.

    Args:
        dataset, num_replicas, rank, seed: as ``DistributedSampler`` (shuffle on, no drop_last).
        batch_size: examples per step, to turn ``batches_done`` into indices.
        epoch: the epoch of the first pass (a resumed run's).
        batches_done: batches of that epoch already trained on; the first pass starts after them.

    The epoch of each pass is counted here, one per pass. Lightning also calls ``set_epoch`` at
    every epoch start, with the same number except right after resuming from a checkpoint taken
    at an epoch's end, where its count lags by one; so those calls are not what sets the order.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 epoch: int = 0, batches_done: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        if batch_size < 1 or epoch < 0 or batches_done < 0:
            raise ValueError(f"batch_size must be >= 1 and epoch, batches_done >= 0; got {batch_size}, {epoch}, "
                             f"{batches_done}")
        self.batch_size = batch_size
        self.epoch = epoch
        self._skip = batches_done * batch_size

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the order's epoch is counted per pass (see the class docstring)."""

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())[self._skip:]
        self._skip = 0
        self.epoch += 1  # the next pass is the next epoch
        return iter(indices)


def resume_position(trainer: Any, n_batches: int) -> tuple[int, int]:
    """``(epoch, batches done in it)`` where a (possibly resumed) fit continues.

    Read when the train dataloader is built, after Lightning has restored the checkpoint's loop
    progress: ``processed`` counts the training steps of the current epoch. A checkpoint taken
    after the epoch's last batch (``n_batches``, cut to ``limit_train_batches`` as Lightning
    cuts it) resumes at the next epoch's start.
    """
    if trainer is None or not trainer.fit_loop.restarting:
        return (int(getattr(trainer, "current_epoch", 0) or 0), 0)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        n_batches = min(n_batches, limit)
    elif isinstance(limit, float):
        n_batches = int(n_batches * limit)
    epoch = trainer.current_epoch
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    if done >= n_batches:
        return (epoch + 1, 0)
    return (epoch, done)


def batches_per_epoch(n_examples: int, batch_size: int, num_replicas: int) -> int:
    """Steps per epoch of each process (``DistributedSampler`` pads the last share up)."""
    return math.ceil(math.ceil(n_examples / num_replicas) / batch_size)
