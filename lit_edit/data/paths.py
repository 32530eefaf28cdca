"""Where the benchmark files live.

The data is read-only input shared by several checkouts, so the project never copies it:
it points at it. Resolution order: explicit argument, then ``$LIT_EDIT_DATA``, then
``../shared/data`` next to the project root. The project root comes from ``__file__``,
never from the cwd, because Hydra changes the cwd of every run.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LIT_EDIT_DATA"


def project_root() -> Path:
    """The checkout root: the parent of the ``lit_edit`` package directory."""
    return Path(__file__).resolve().parents[2]


def _absolute(path: str | os.PathLike[str]) -> Path:
    """Relative paths are taken from the project root so that they mean the same under Hydra."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def data_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the benchmark data directory, failing loudly with the knob to turn if it is absent."""
    if explicit:
        root, origin = _absolute(explicit), "the data_root argument"
    elif os.environ.get(ENV_VAR):
        root, origin = _absolute(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        root, origin = project_root().parent / "shared" / "data", "the default ../shared/data"
    if not root.is_dir():
        raise FileNotFoundError(
            f"benchmark data directory {root} (from {origin}) does not exist; "
            f"pass data_root=... or set the {ENV_VAR} environment variable to the shared data folder"
        )
    return root.resolve()


def data_file(path: str | os.PathLike[str], root: Path) -> Path:
    """Resolve a data file: absolute paths as given, relative ones under ``root``; must exist."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise FileNotFoundError(f"benchmark file {p} does not exist")
    return p


def display_name(path: Path, root: Path) -> str:
    """Short, machine-independent name for ``EditRequest.source``: relative to the root if inside it."""
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)
