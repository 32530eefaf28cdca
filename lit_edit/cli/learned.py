"""``edit.py ckpt=...``: a trained editor from its checkpoint and the base model it belongs to.

By default the base model is the one the checkpoint names (rebuilt from the spec recorded at
training time). When the command line chooses a model (``model=...`` or ``model.*=...``),
that model is loaded instead and must have the checkpoint's weight fingerprint; a
different model is an error unless ``force_ckpt=true``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lit_edit.editors.learned.base import LearnedEditor, load_editor
from lit_edit.models.layouts import ModelLayout, layout_for

log = logging.getLogger(__name__)


def model_chosen_on_command_line() -> bool:
    """True when the Hydra command line overrides ``model`` (outside Hydra: False)."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a dependency
        return False
    if not HydraConfig.initialized():
        return False
    keys = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    return any(k == "model" or k.startswith("model.") for k in keys)


def load_checkpoint_editor(cfg: DictConfig) -> LearnedEditor:
    """The editor of ``cfg.ckpt``; ``cfg.force_ckpt`` allows a base model with another fingerprint."""
    editor = load_editor(cfg.ckpt, force=bool(cfg.get("force_ckpt", False)))
    log.info("ckpt=%s: %s editor trained on %s (the editor=... config is not used)", cfg.ckpt, editor.name,
             editor.base_name)
    return editor


def checkpoint_model(cfg: DictConfig, editor: LearnedEditor) -> tuple[Any, Any, ModelLayout, str]:
    """``(model, tokenizer, layout, name)`` for a checkpoint run, fingerprint-checked."""
    if model_chosen_on_command_line():
        from lit_edit.cli.common import build_model

        model, tokenizer, layout = build_model(cfg)
        name = str(cfg.model.spec.name)
        editor.check_base(model, name=name)
        return model, tokenizer, layout, name
    cache_dir = OmegaConf.select(cfg, "paths.cache_dir")
    model, tokenizer = editor.load_base_model(cache_dir=f"{cache_dir}/models" if cache_dir else None)
    return model, tokenizer, layout_for(model, editor.base_info.layout), editor.base_name
