"""Benchmark data: the request schema, loaders for every benchmark file, and the data module.

Only the schema is imported eagerly; loaders and the data module pull in ``datasets`` and
``lightning``, so they are imported on first attribute access to keep ``import
lit_edit.data.schema`` cheap for code that only needs the types.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from lit_edit.data.schema import EditRequest, Probe, RecordError

_LAZY = {
    "load_requests": "lit_edit.data.registry",
    "load_rows": "lit_edit.data.registry",
    "read_requests": "lit_edit.data.registry",
    "requests_from_dataset": "lit_edit.data.registry",
    "dataset_names": "lit_edit.data.registry",
    "row_dataset_names": "lit_edit.data.registry",
    "data_root": "lit_edit.data.paths",
    "EditDataModule": "lit_edit.data.datamodule",
}

__all__ = ["EditRequest", "Probe", "RecordError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
