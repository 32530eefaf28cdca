"""A run stopped by an exception closes its progress bar where it stopped (lit_edit.utils.progress)."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from lit_edit.utils.progress import ClosingTQDMProgressBar


class StopsAtStep2(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        if batch_idx == 2:
            raise RuntimeError("stopped")
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def stopped_training_bar(bar: TQDMProgressBar):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar])
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=1)
    with pytest.raises(RuntimeError, match="stopped"):
        trainer.fit(StopsAtStep2(), data)
    return trainer.progress_bar_callback.train_progress_bar


def test_a_stopped_run_closes_its_bar(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())  # where Lightning's bars write
    assert not stopped_training_bar(TQDMProgressBar()).disable, "Lightning's own bar now closes: drop ours"
    assert stopped_training_bar(ClosingTQDMProgressBar()).disable  # tqdm marks a closed bar disabled


def test_closing_bars_a_run_never_opened_is_a_no_op():
    ClosingTQDMProgressBar().on_exception(None, None, RuntimeError("before any loop"))
