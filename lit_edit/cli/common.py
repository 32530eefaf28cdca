"""Pieces both entry points build from a composed config: model, logger, trainer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import IO, Any, Sequence

import hydra
import lightning as L
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from lit_edit.editors.prune import PruneConfig
from lit_edit.models.layouts import ModelLayout, layout_for
from lit_edit.models.loading import ModelSpec, load_model
from lit_edit.utils.progress import ClosingTQDMProgressBar

log = logging.getLogger(__name__)


def build_model(cfg: DictConfig) -> tuple[Any, Any, ModelLayout]:
    """Load the model named by ``cfg.model`` and resolve its module layout."""
    spec = ModelSpec(**OmegaConf.to_container(cfg.model.spec, resolve=True))
    model, tokenizer = load_model(spec)
    overrides = cfg.model.get("layout")
    layout = layout_for(model, OmegaConf.to_container(overrides, resolve=True) if overrides else None)
    return model, tokenizer, layout


def refuse_existing_results(run_dir: str | Path, names: Sequence[str]) -> None:
    """Raise if ``run_dir`` already holds any of ``names``: a run never overwrites results."""
    existing = [n for n in names if (Path(run_dir) / n).exists()]
    if existing:
        raise FileExistsError(f"{run_dir} already holds results ({', '.join(existing)}); "
                              "choose another hydra.run.dir - results are never overwritten")


def build_logger(cfg: DictConfig) -> Any:
    """The configured Lightning logger, or False for ``logger=none``."""
    logger_cfg = cfg.get("logger")
    if not logger_cfg or "_target_" not in logger_cfg:
        return False
    return hydra.utils.instantiate(logger_cfg)


def build_trainer(cfg: DictConfig, callbacks: list[Any], logger: Any, *, stream: IO[str] | None = None) -> L.Trainer:
    """The configured trainer; a tqdm progress bar where the output is not a terminal.

    Lightning picks its Rich bar when ``rich`` is installed, and Rich redraws in place: a run
    redirected to a log file (nohup, a cluster job) shows nothing of the loop until it ends.
    tqdm writes every refresh, so ``tail`` on the log sees the edits go by. A progress-bar
    callback given in ``callbacks`` (train.py's config has one) is left as it is.
    """
    callbacks = list(callbacks)
    stream = sys.stdout if stream is None else stream  # where Lightning's bars write
    wants_bar = bool(cfg.trainer.get("enable_progress_bar", True))
    if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks) and not stream.isatty():
        callbacks.append(ClosingTQDMProgressBar())
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)


def split_prune(cfg: DictConfig) -> tuple[DictConfig, PruneConfig | None]:
    """PRUNE is an option in weight editors' yamls but is applied by the loop, not the editor."""
    editor_cfg = OmegaConf.to_container(cfg.editor, resolve=True)
    prune = editor_cfg.pop("prune", None)
    if prune and prune.get("enabled"):
        return OmegaConf.create(editor_cfg), PruneConfig(alpha=float(prune["alpha"]),
                                                   compare=bool(prune.get("compare", False)))
    return OmegaConf.create(editor_cfg), None
