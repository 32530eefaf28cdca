"""The training order: fixed by (seed, epoch), split over processes, and continued exactly by a
run resumed from a checkpoint taken mid-epoch or at an epoch's end."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_edit.data.resumable import ResumableShuffle, batches_per_epoch
from lit_edit.data.training import EditBatch, EditTrainingDataModule


def test_the_order_is_fixed_by_seed_and_epoch_and_the_shares_cover_the_data():
    data = list(range(11))
    first = ResumableShuffle(data, 2, seed=5)
    epoch0, epoch1 = list(first), list(first)  # each pass is the next epoch
    assert sorted(epoch0) == data and sorted(epoch1) == data and epoch0 != epoch1
    again = ResumableShuffle(data, 2, seed=5)
    again.set_epoch(7)  # Lightning's call: the pass count decides, not it
    assert list(again) == epoch0
    assert list(ResumableShuffle(data, 2, seed=5, epoch=1)) == epoch1
    assert list(ResumableShuffle(data, 2, seed=6)) != epoch0
    assert list(ResumableShuffle(data, 2, seed=5, epoch=1, batches_done=2)) == epoch1[4:]
    shares = [list(ResumableShuffle(data, 2, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 6 and set(shares[0]) | set(shares[1]) == set(data)
    assert batches_per_epoch(11, 2, 2) == 3 and batches_per_epoch(11, 2, 1) == 6
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ResumableShuffle(data, 0)


class Recorder(L.LightningModule):
    """Trains nothing of note; records which edits each step got."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, list[str]]] = []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # text, as for the learned editors

    def training_step(self, batch: EditBatch, batch_idx: int):
        self.seen.append((self.current_epoch, [r.case_id for r in batch.requests]))
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, max_steps: int, ckpt_path=None, every: int = 1000, limit_batches: int | float = 1.0) -> list:
    module = Recorder()
    data = EditTrainingDataModule("zsre_train", limit=10, val_size=0, seed=3, edits_per_batch=2)  # 5 steps an epoch
    saver = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=every, save_top_k=-1)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[saver], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                        limit_train_batches=limit_batches)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module.seen


def test_a_resumed_run_trains_on_what_the_uninterrupted_one_would_have(tmp_path, shared_data):
    whole = fit(tmp_path, 13, every=1)
    assert sorted(c for _, ids in whole[:5] for c in ids) == sorted(c for _, ids in whole[5:10] for c in ids)
    assert whole[:5] != whole[5:10]  # each epoch has its own order
    for step in (3, 5, 7):  # mid-epoch, the first epoch's end, mid-way through the second
        resumed = fit(tmp_path / "resumed", 13, ckpt_path=tmp_path / f"step={step}.ckpt")
        assert resumed == whole[step:], f"resumed from step {step}"


def test_an_epoch_cut_by_limit_train_batches_resumes_at_the_next_epoch(tmp_path, shared_data):
    whole = fit(tmp_path, 9, every=1, limit_batches=3)  # 3 of the 5 steps an epoch
    assert [epoch for epoch, _ in whole] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    resumed = fit(tmp_path / "resumed", 9, ckpt_path=tmp_path / "step=3.ckpt", limit_batches=3)
    assert resumed == whole[3:]
