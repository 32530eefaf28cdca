"""Every benchmark config runs through the evaluation loop (tiny model, 3 records each).

Loader tests check the parsed fields; this checks that each format's probes (aliases, long
WikiBio passages, ConvSent replies, MQuAKE cases) survive tokenisation, scoring and
aggregation without a crash and produce sane summaries.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lit_edit.cli.edit import run_edit

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASETS = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_dataset_config_runs(dataset, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(CONFIGS.parent))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("edit", overrides=[f"data={dataset}", "data.limit=3", "model=tiny_llama", "editor=ft_m",
                                         "editor.num_steps=2", "logger=none", "eval.fluency=false",
                                         "eval.max_length=64"])
    summary = run_edit(cfg, tmp_path)
    assert summary["n_edits"] >= 3
    for key in ("reliability", "generalization", "locality", "portability"):
        value = summary[key]
        assert value is None or 0.0 <= value <= 1.0
    assert summary["reliability"] is not None
