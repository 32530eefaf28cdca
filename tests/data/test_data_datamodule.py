"""EditDataModule: batches of EditRequest, limit after seeded shuffle, whole MQuAKE cases, Lightning wiring."""

from __future__ import annotations

import pickle

import lightning as L
import pytest
import torch

from lit_edit.data.datamodule import EditDataModule, RequestDataset, UnitBatchSampler
from lit_edit.data.schema import EditRequest


def _ids(dm: EditDataModule, loader: str = "test_dataloader") -> list[list[str]]:
    return [[r.case_id for r in batch] for batch in getattr(dm, loader)()]


def _module(**kwargs) -> EditDataModule:
    dm = EditDataModule(**kwargs)
    dm.setup()
    return dm


def test_batches_are_lists_of_requests(root) -> None:
    dm = _module(name="zsre", limit=10, batch_size=4)
    batches = list(dm.test_dataloader())
    assert [len(b) for b in batches] == [4, 4, 2]
    assert all(isinstance(b, list) and all(isinstance(r, EditRequest) for r in b) for b in batches)
    assert _ids(dm) == [["0", "1", "2", "3"], ["4", "5", "6", "7"], ["8", "9"]]  # unshuffled: head of the file


def test_shuffle_is_seeded_and_limit_applies_after_it(root) -> None:
    full = [i for b in _ids(_module(name="zsre", shuffle=True, seed=3, batch_size=50)) for i in b]
    limited = [i for b in _ids(_module(name="zsre", shuffle=True, seed=3, limit=12, batch_size=5)) for i in b]
    assert limited == full[:12]  # a seeded random subset, not the head of the file
    assert limited != [str(i) for i in range(12)]
    assert sorted(full, key=int) == [str(i) for i in range(520)]
    assert _ids(_module(name="zsre", shuffle=True, seed=3, limit=12)) == _ids(
        _module(name="zsre", shuffle=True, seed=3, limit=12)
    )
    assert _ids(_module(name="zsre", shuffle=True, seed=4, limit=12)) != _ids(
        _module(name="zsre", shuffle=True, seed=3, limit=12)
    )


def test_group_by_case_keeps_mquake_cases_whole(root) -> None:
    dm = _module(name="mquake", group_by_case=True, shuffle=True, seed=0, limit=5)
    batches = list(dm.test_dataloader())
    assert len(batches) == 5  # limit counts cases, batch_size=1 means one case per batch
    for batch in batches:
        assert len(batch) == 4 and len({r.group_id for r in batch}) == 1
        assert [r.extra["rewrite_index"] for r in batch] == [0, 1, 2, 3] and "multi_hop" in batch[-1].portability
    two = list(_module(name="mquake", group_by_case=True, batch_size=2, limit=3).test_dataloader())
    assert [len(b) for b in two] == [8, 4]
    ungrouped = list(_module(name="mquake", batch_size=3, limit=5).test_dataloader())
    assert [len(b) for b in ungrouped] == [3, 2]  # without grouping, limit and batch_size count requests


def test_train_and_val_loaders(root) -> None:
    kwargs = dict(
        name="zsre",
        limit=4,
        train_name="zsre_train",
        train_limit=20,
        val_name="zsre",
        val_limit=6,
        batch_size=5,
        seed=1,
    )
    dm = EditDataModule(**kwargs)
    dm.setup("fit")
    assert "test" not in dm.requests  # fit loads train and val only
    train = dm.train_dataloader()
    epoch1, epoch2 = _flat(train), _flat(train)
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2  # reshuffled every epoch
    again = EditDataModule(**kwargs)
    again.setup("fit")
    assert _flat(again.train_dataloader()) == epoch1  # ...deterministically
    assert _ids(dm, "val_dataloader") == [["0", "1", "2", "3", "4"], ["5"]]
    assert _ids(dm) == [["0", "1", "2", "3"]]  # test set loaded on demand


def _flat(loader) -> list[str]:
    return [r.case_id for batch in loader for r in batch]


def test_missing_train_or_val_configuration(root) -> None:
    dm = _module(name="zsre", limit=2)
    assert dm.val_dataloader() == []
    with pytest.raises(RuntimeError, match="no train dataset configured"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EditDataModule(name="zsre", batch_size=0)
    with pytest.raises(ValueError, match="limit must be None or a non-negative int"):
        _module(name="zsre", limit=-3)


def test_sampler_and_dataset_basics() -> None:
    sampler = UnitBatchSampler([[0], [1, 2], [3]], batch_size=2)
    assert len(sampler) == 2 and list(sampler) == [[0, 1, 2], [3]]
    dataset = RequestDataset([EditRequest("p", "t")])
    assert pickle.loads(pickle.dumps(dataset)).requests == dataset.requests  # worker processes need this


class _Recorder(L.LightningModule):
    """Stands in for an editor: records the batches Lightning hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list[list[str]]] = {"train": [], "test": []}

    def training_step(self, batch: list[EditRequest], batch_idx: int) -> torch.Tensor:
        self.seen["train"].append([r.case_id for r in batch])
        return (self.weight**2).sum()

    def test_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        assert all(isinstance(r, EditRequest) for r in batch)
        self.seen["test"].append([r.case_id for r in batch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_consumes_the_module(root) -> None:
    dm = EditDataModule(
        name="mquake", group_by_case=True, limit=2, train_name="zsre_train", train_limit=6, batch_size=1
    )
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert len(model.seen["train"]) == 6 and all(len(b) == 1 for b in model.seen["train"])
    assert [len(b) for b in model.seen["test"]] == [4, 4]
