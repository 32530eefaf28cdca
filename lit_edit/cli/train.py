"""``python train.py editor=...``: fit a learnable editor (a LightningModule) on edit data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from lit_edit.cli.common import build_logger, build_trainer, split_prune


def run_train(cfg: DictConfig, run_dir: str | Path) -> Any:
    """Instantiate the editor and fit it; training-free editors are refused with a reason."""
    L.seed_everything(cfg.seed, workers=True)
    editor_cfg, _ = split_prune(cfg)
    editor = hydra.utils.instantiate(editor_cfg, _convert_="all")
    if not isinstance(editor, L.LightningModule):
        raise TypeError(
            f"editor={cfg.editor.name} ({type(editor).__name__}) is training-free: there is nothing to train. "
            "train.py fits learned editors (LightningModules such as MEND, KE, SERAC); "
            f"apply {cfg.editor.name} with `python edit.py editor={cfg.editor.name}`."
        )
    trainer = build_trainer(cfg, callbacks=[], logger=build_logger(cfg))
    trainer.fit(editor, ckpt_path=cfg.get("ckpt_path"))
    return editor
