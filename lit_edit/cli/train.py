"""``python train.py editor=...``: fit a learnable editor (a LightningModule) on edit data."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from lit_edit.cli.common import build_logger, build_model, build_trainer, split_prune
from lit_edit.data.training import EditTrainingDataModule
from lit_edit.editors.learned.base import LearnedEditor
from lit_edit.editors.learned.callbacks import resume_note
from lit_edit.utils.signals import explain_sigterm

log = logging.getLogger(__name__)

# "...your dataloader is not resumable": Lightning looks for a dataloader with state_dict; the
# training order resumes through its sampler instead (lit_edit.data.resumable)
_QUIET = (r".*isinstance\(treespec, LeafSpec\).*", r".*litlogger.*", r".*does not have many workers.*",
          r".*overridden `transfer_batch_to_device`.*", r".*your dataloader is not resumable.*")


def check_learned(cfg: DictConfig) -> type:
    """The editor class named by ``cfg.editor``; training-free editors are refused with a reason."""
    target = cfg.editor.get("_target_")
    if not target:
        raise ValueError(f"editor={cfg.editor.get('name')} has no _target_ class")
    cls = hydra.utils.get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, LearnedEditor)):
        raise TypeError(
            f"editor={cfg.editor.name} ({cls.__name__}) is training-free: there is nothing to train. "
            "train.py fits learned editors (LightningModules such as MEND and KE: editor=mend, editor=ke); "
            f"apply {cfg.editor.name} with `python edit.py editor={cfg.editor.name}`."
        )
    return cls


def build_training_data(cfg: DictConfig) -> EditTrainingDataModule:
    """Training records from ``cfg.data`` (name/split/path/limit) and batching from ``cfg.train_data``."""
    data = cfg.data
    extra = OmegaConf.to_container(cfg.train_data, resolve=True) if cfg.get("train_data") else {}
    return EditTrainingDataModule(name=data.name, split=data.get("split"), path=data.get("path"),
                                  limit=data.get("limit"), data_root=data.get("data_root"), seed=int(cfg.seed), **extra)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """Every entry of ``cfg.callbacks`` that names a ``_target_`` (null entries are switched off)."""
    callbacks = []
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is not None and "_target_" in entry:
            callbacks.append(hydra.utils.instantiate(entry))
    return callbacks


def build_editor(cfg: DictConfig, model: Any, tokenizer: Any) -> LearnedEditor:
    editor_cfg, _ = split_prune(cfg)
    spec = OmegaConf.to_container(cfg.model.spec, resolve=True)
    overrides = cfg.model.get("layout")
    layout = OmegaConf.to_container(overrides, resolve=True) if overrides else {}
    return hydra.utils.instantiate(editor_cfg, base_model=model, tokenizer=tokenizer, model_spec=spec, layout=layout,
                                   _convert_="all")


def run_train(cfg: DictConfig, run_dir: str | Path) -> tuple[LearnedEditor, L.Trainer]:
    """Build base model, editor, data, callbacks and logger as configured, then ``trainer.fit``.

    ``ckpt_path`` resumes an interrupted run: weights, optimizer and the global step continue
    from the checkpoint (which must belong to the same base model).
    """
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    check_learned(cfg)
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint to resume from")
    L.seed_everything(cfg.seed, workers=True)
    model, tokenizer, _ = build_model(cfg)
    editor = build_editor(cfg, model, tokenizer)
    datamodule = build_training_data(cfg)
    logger = build_logger(cfg)
    if logger:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True),
                                "base_model": editor.base_name, "base_fingerprint": editor.base_info.fingerprint})
    trainer = build_trainer(cfg, build_callbacks(cfg), logger)
    log.info("training %s on %s (fingerprint %s); run dir %s", editor.name, editor.base_name,
             editor.base_info.fingerprint, run_dir)
    # a SIGTERM saves the latest state, exits 1 and says how to resume (lit_edit.utils.signals)
    with explain_sigterm(lambda: f"train.py: {resume_note(trainer)}"):
        trainer.fit(editor, datamodule=datamodule, ckpt_path=ckpt_path)
    return editor, trainer
