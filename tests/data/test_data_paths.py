"""Data-root resolution: explicit argument, then $LIT_EDIT_DATA, then ../shared/data; never the cwd."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lit_edit.data.paths import ENV_VAR, data_file, data_root, display_name, project_root


def test_project_root_is_parent_of_package() -> None:
    assert (project_root() / "lit_edit" / "data" / "paths.py").is_file()


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    explicit.mkdir(), env.mkdir()
    monkeypatch.setenv(ENV_VAR, str(env))
    assert data_root(str(explicit)) == explicit.resolve()
    assert data_root() == env.resolve()
    monkeypatch.delenv(ENV_VAR)
    default = project_root().parent / "shared" / "data"
    if default.is_dir():
        assert data_root() == default.resolve()
    else:
        with pytest.raises(FileNotFoundError, match=re.escape("default ../shared/data")):
            data_root()


def test_relative_paths_are_relative_to_project_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # Hydra changes the cwd; resolution must not care
    assert data_root("lit_edit") == (project_root() / "lit_edit").resolve()
    with pytest.raises(FileNotFoundError, match="from the data_root argument"):
        data_root("no/such/dir")


def test_data_file_and_display_name(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.json").write_text("[]")
    found = data_file("sub/f.json", tmp_path)
    assert found == tmp_path / "sub" / "f.json"
    assert display_name(found, tmp_path.resolve()) == "sub/f.json"
    assert display_name(Path("/elsewhere/g.json"), tmp_path) == "/elsewhere/g.json"
    with pytest.raises(FileNotFoundError, match=re.escape("sub/missing.json does not exist")):
        data_file("sub/missing.json", tmp_path)
