"""Learned editors (MEND, KE): LightningModules trained by ``train.py``, used through ``edit(...)``."""

from lit_edit.editors.learned.base import (
    BaseModelInfo,
    BaseModelMismatch,
    EditSignal,
    EditTarget,
    LearnedEditor,
    load_editor,
    resolve_targets,
)

__all__ = ["BaseModelInfo", "BaseModelMismatch", "EditSignal", "EditTarget", "LearnedEditor", "load_editor",
           "resolve_targets"]
