"""``python edit.py ...``: apply an editor to a model over a benchmark and measure it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from lit_edit.cli.common import build_logger, build_model, build_trainer, refuse_existing_results, split_prune
from lit_edit.data.datamodule import EditDataModule
from lit_edit.editors.base import Editor
from lit_edit.evaluation.loop import EditingLoop, EvalConfig
from lit_edit.evaluation.resume import load_resumed_run
from lit_edit.utils.signals import explain_sigterm

log = logging.getLogger(__name__)

# Lightning noise that says nothing about this run: both the loop and the datamodule keep
# request batches on the host on purpose, and the pytree deprecation is internal to Lightning.
_QUIET = (r".*overridden `transfer_batch_to_device`.*", r".*isinstance\(treespec, LeafSpec\).*",
          r".*litlogger.*")


def build_editor(cfg: DictConfig) -> Editor:
    if cfg.get("ckpt"):
        from lit_edit.cli.learned import load_checkpoint_editor

        return load_checkpoint_editor(cfg)
    editor_cfg, _ = split_prune(cfg)
    editor = hydra.utils.instantiate(editor_cfg, _convert_="all")
    if not isinstance(editor, Editor):
        raise TypeError(f"editor config {cfg.editor.get('_target_')} built a {type(editor).__name__}, not an Editor")
    return editor


def build_datamodule(cfg: DictConfig, eval_cfg: EvalConfig) -> EditDataModule:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    return EditDataModule(batch_size=eval_cfg.edits_per_batch, **data)


def run_edit(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Edit + evaluate as configured; writes records.jsonl / summary.{json,md,png} to ``run_dir``.

    ``mode=value_ceiling`` runs the value-ceiling diagnostic instead (:mod:`lit_edit.cli.ceiling`).
    """
    mode = cfg.get("mode", "edit")
    if mode == "value_ceiling":
        from lit_edit.cli.ceiling import run_value_ceiling

        return run_value_ceiling(cfg, run_dir)
    if mode != "edit":
        raise ValueError(f"mode={mode!r} is not a mode of edit.py; use 'edit' or 'value_ceiling'")
    eval_cfg = EvalConfig(**OmegaConf.to_container(cfg.eval, resolve=True))
    resumed = None
    if cfg.get("resume"):  # a stopped run's records (lit_edit.evaluation.resume)
        if Path(cfg.resume).resolve() == Path(run_dir).resolve():
            raise ValueError(f"resume={cfg.resume} is this run's own directory: a resumed run writes a new one, "
                             "so leave hydra.run.dir at its default or name another directory")
        resumed = load_resumed_run(cfg.resume, cfg, sequential=eval_cfg.sequential)
    refuse_existing_results(run_dir, ("summary.json", "records.jsonl"))
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    L.seed_everything(cfg.seed, workers=True)
    editor = build_editor(cfg)
    datamodule = build_datamodule(cfg, eval_cfg)
    if cfg.get("ckpt"):  # a trained editor: the base model its checkpoint names (or a checked override)
        from lit_edit.cli.learned import checkpoint_model

        model, tokenizer, layout, model_name = checkpoint_model(cfg, editor)
    else:
        model, tokenizer, layout = build_model(cfg)
        model_name = cfg.model.spec.name
    run_info = {"model": model_name, "data": cfg.data.name, "limit": cfg.data.limit}
    if cfg.get("ckpt"):
        run_info["ckpt"] = str(cfg.ckpt)
    _, prune = split_prune(cfg)
    loop = EditingLoop(model, tokenizer, editor, eval_cfg, run_dir=run_dir, layout=layout, run_info=run_info,
                       prune=prune, resumed=resumed)
    logger = build_logger(cfg)
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    callbacks = [editor] if isinstance(editor, L.Callback) else []
    trainer = build_trainer(cfg, callbacks, logger)
    # a SIGTERM exits 1 and says how far the run got and how to go on (lit_edit.utils.signals)
    with explain_sigterm(lambda: f"edit.py {loop.stop_note()}"):
        trainer.test(loop, datamodule=datamodule, verbose=False)
    return loop.summary
