"""Lightning data module that serves batches of :class:`EditRequest` objects.

Editing is not gradient descent over a dataset: a batch is the set of edits applied at
once (1 in single-edit mode, n in batch modes, one MQuAKE case when ``group_by_case``).
Batches are plain ``list[EditRequest]``; the evaluation loop tokenizes, because the
tokenizer depends on the model and the probes it needs depend on the metric.

Order and selection (deterministic given ``seed``):

1. all requests of the file are loaded in file order and grouped into *units*: a request,
   or with ``group_by_case`` all requests sharing a ``group_id`` (requests without one are
   units of their own);
2. if ``shuffle``, the units are permuted with ``random.Random(seed)``;
3. ``limit`` keeps the first N units, i.e. it applies *after* shuffling: a shuffled,
   limited run is a seeded random subset, an unshuffled one the head of the file;
4. batches take ``batch_size`` units in order (with ``group_by_case``, ``batch_size``
   therefore counts cases, default one case per batch; the last batch may be smaller).

``shuffle`` governs the test and validation sets. The training set (``train_name``) uses
``train_shuffle`` (default on) for step 2 and additionally reshuffles its units every
epoch from ``seed + epoch``, so long runs do not see one fixed order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lit_edit.data.registry import check_limit, read_requests
from lit_edit.data.schema import EditRequest


def collate_requests(batch: list[EditRequest]) -> list[EditRequest]:
    """Keep requests as objects: no tensors, the evaluation loop tokenizes."""
    return list(batch)


class RequestDataset(Dataset[EditRequest]):
    """A list of requests as a map-style dataset (picklable, so it works with worker processes)."""

    def __init__(self, requests: Sequence[EditRequest]) -> None:
        self.requests = list(requests)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int) -> EditRequest:
        return self.requests[index]


def group_units(requests: Sequence[EditRequest], group_by_case: bool) -> list[list[int]]:
    """Indices of requests that must travel together, in order of first appearance."""
    if not group_by_case:
        return [[i] for i in range(len(requests))]
    units: dict[object, list[int]] = {}
    for i, request in enumerate(requests):
        key = ("group", request.group_id) if request.group_id is not None else ("single", i)
        units.setdefault(key, []).append(i)
    return list(units.values())


def select_units(units: list[list[int]], shuffle: bool, seed: int, limit: int | None) -> list[list[int]]:
    """Seeded shuffle, then keep the first ``limit`` units."""
    check_limit(limit)
    units = list(units)
    if shuffle:
        random.Random(seed).shuffle(units)
    return units if limit is None else units[:limit]


class UnitBatchSampler(Sampler[list[int]]):
    """Yields index batches of ``batch_size`` whole units; optionally reshuffled per epoch from ``seed + epoch``."""

    def __init__(self, units: list[list[int]], batch_size: int, reshuffle: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.units, self.batch_size, self.reshuffle, self.seed = units, batch_size, reshuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.units) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        units = list(self.units)
        if self.reshuffle:
            random.Random(self.seed + self.epoch).shuffle(units)
            self.epoch += 1
        for start in range(0, len(units), self.batch_size):
            yield [i for unit in units[start : start + self.batch_size] for i in unit]


class EditDataModule(L.LightningDataModule):
    """Edit requests for evaluation (``name``) and, optionally, training/validation of trainable editors.

    ``name``/``path``/``split``/``data_root`` are passed to the registry (see
    :func:`lit_edit.data.registry.load_requests`); ``train_*``/``val_*`` name other datasets
    (or other splits) for editors such as MEND or SERAC that learn from edits. See the module
    docstring for how ``shuffle``, ``seed``, ``limit``, ``batch_size`` and ``group_by_case`` act.
    """

    def __init__(
        self,
        name: str,
        path: str | None = None,
        split: str | None = None,
        limit: int | None = None,
        data_root: str | None = None,
        batch_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        group_by_case: bool = False,
        num_workers: int = 0,
        train_name: str | None = None,
        train_split: str | None = None,
        train_path: str | None = None,
        train_limit: int | None = None,
        train_shuffle: bool = True,
        val_name: str | None = None,
        val_split: str | None = None,
        val_path: str | None = None,
        val_limit: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.requests: dict[str, list[EditRequest]] = {}
        self.units: dict[str, list[list[int]]] = {}

    def _sources(self) -> dict[str, tuple[str | None, str | None, str | None, int | None, bool]]:
        """Per role: (name, split, path, limit, shuffle)."""
        hp = self.hparams
        return {
            "test": (hp.name, hp.split, hp.path, hp.limit, hp.shuffle),
            "train": (hp.train_name, hp.train_split, hp.train_path, hp.train_limit, hp.train_shuffle),
            "val": (hp.val_name, hp.val_split, hp.val_path, hp.val_limit, hp.shuffle),
        }

    def _load(self, role: str) -> None:
        name, split, path, limit, shuffle = self._sources()[role]
        if name is None or role in self.requests:
            return
        requests = read_requests(name, path=path, split=split, data_root=self.hparams.data_root)
        units = select_units(group_units(requests, self.hparams.group_by_case), shuffle, self.hparams.seed, limit)
        # Keep only the selected requests, renumbered, so datasets stay small under a limit.
        kept = [i for unit in units for i in unit]
        remap = {old: new for new, old in enumerate(kept)}
        self.requests[role] = [requests[i] for i in kept]
        self.units[role] = [[remap[i] for i in unit] for unit in units]

    def setup(self, stage: str | None = None) -> None:
        """Load what ``stage`` needs (all configured sets when ``stage`` is None); idempotent."""
        roles = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for role in roles.get(stage or "", ("test", "train", "val")):
            self._load(role)

    def _loader(self, role: str, reshuffle: bool = False) -> DataLoader:
        if role not in self.requests:
            name = self._sources()[role][0]
            if name is None:
                raise RuntimeError(f"no {role} dataset configured (set {role}_name)")
            self._load(role)
        sampler = UnitBatchSampler(self.units[role], self.hparams.batch_size, reshuffle, self.hparams.seed)
        return DataLoader(
            RequestDataset(self.requests[role]),
            batch_sampler=sampler,
            collate_fn=collate_requests,
            num_workers=self.hparams.num_workers,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Hand request batches over untouched: they hold no tensors, and Lightning's default
        device transfer rebuilds dataclasses field by field, which fails on the frozen ``Probe``."""
        if isinstance(batch, list) and all(isinstance(r, EditRequest) for r in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", reshuffle=self.hparams.train_shuffle)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches; an empty list (Lightning skips validation) when no ``val_name`` is set."""
        return self._loader("val") if self.hparams.val_name is not None else []
