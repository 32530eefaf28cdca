"""Fixtures for the data tests: the shared benchmark folder (skip if absent) and a load cache.

The data is found exactly as the library finds it ($LIT_EDIT_DATA, else ../shared/data next
to the project root), so the tests exercise the real resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lit_edit.data.paths import data_root
from lit_edit.data.registry import read_requests
from lit_edit.data.schema import EditRequest


@pytest.fixture(scope="session")
def root() -> Path:
    try:
        return data_root()
    except FileNotFoundError as err:
        pytest.skip(f"shared benchmark data not available ({err})")


@pytest.fixture(scope="session")
def requests_of(root: Path) -> Callable[..., list[EditRequest]]:
    """Parsed requests per (name, split), parsed once per session: several tests inspect the same files."""
    cache: dict[tuple[str, str | None], list[EditRequest]] = {}

    def get(name: str, split: str | None = None) -> list[EditRequest]:
        if (name, split) not in cache:
            cache[name, split] = read_requests(name, split=split)
        return cache[name, split]

    return get
