"""On-disk cache locations and atomic writes of directories and files.

Expensive one-off products (de-quantized GGUF weights, the tiny test tokenizer) are cached as
directories. A directory is written under a temporary name and renamed into place only when
complete, so an interrupted write never leaves a half cache that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
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


@contextmanager
def atomic_file(final: Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``final`` to write; move it to ``final`` on success.

    A reader never sees a half-written file, and a stop during the write leaves the previous
    ``final`` whole. ``keep_existing``: if ``final`` exists by then (another process wrote the
    same content first), it stays and ours is discarded; otherwise ours replaces it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not (keep_existing and final.exists()):
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
