"""Read one benchmark file into plain Python values.

Kept apart from the parsers so that a broken file (invalid JSON, a truncated JSONL line)
fails with its path and line before any format logic runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class DataFileError(ValueError):
    """A whole file is unreadable or has the wrong top-level shape (as opposed to one bad record)."""


def read_json(path: Path) -> Any:
    """Parse ``path``: a ``.jsonl`` file becomes the list of its non-blank lines' values."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataFileError(f"{path}: line {number}: invalid JSON: {e.msg}") from e
    return values
