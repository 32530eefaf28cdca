"""On-disk cache locations and atomic directory writes.

Expensive one-off products (de-quantized GGUF weights, the tiny test tokenizer) are cached as
directories. A directory is written under a temporary name and renamed into place only when
complete, so an interrupted write never leaves a half cache that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_root(sub: str = "") -> Path:
    """``$LIT_EDIT_CACHE`` (default ``~/.cache/lit_edit``), joined with ``sub``."""
    root = Path(os.environ.get("LIT_EDIT_CACHE") or Path.home() / ".cache" / "lit_edit").expanduser()
    return root / sub if sub else root


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``final``; rename it to ``final`` on success.

    On an exception the temporary directory is deleted. If another process completed
    ``final`` first, its copy is kept and ours is discarded (both hold the same content).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
