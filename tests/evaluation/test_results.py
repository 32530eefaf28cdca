"""Result files: JSONL records, summary.json / summary.md, no silent overwrite, plot."""

import json

import numpy as np
import pytest
import torch

from lit_edit.evaluation.results import (
    SUMMARY_KEYS,
    RecordWriter,
    format_table,
    nan_to_none,
    plot_summary,
    write_summary,
)


def test_nan_to_none():
    record = {"a": float("nan"), "b": torch.tensor([1.0, float("nan")]), "c": (np.float32(0.5), torch.tensor(3))}
    assert nan_to_none(record) == {"a": None, "b": [1.0, None], "c": [0.5, 3]}
    assert nan_to_none(float("inf")) is None


def test_record_writer_jsonl_and_no_overwrite(tmp_path):
    path = tmp_path / "run" / "records.jsonl"
    with RecordWriter(path) as writer:
        writer.write({"edit_id": 0, "reliability": torch.tensor(1.0), "portability": float("nan")})
        writer.write({"edit_id": 1, "reliability": 0.5, "locality": torch.tensor([1.0, 0.0])})
        # flushed after each line: readable before close
        assert len(path.read_text().splitlines()) == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"edit_id": 0, "reliability": 1.0, "portability": None},
        {"edit_id": 1, "reliability": 0.5, "locality": [1.0, 0.0]},
    ]
    with pytest.raises(FileExistsError, match="records.jsonl"):
        RecordWriter(path)
    assert len(path.read_text().splitlines()) == 2  # untouched
    RecordWriter(path, overwrite=True).close()
    assert path.read_text() == ""


def test_write_summary(tmp_path):
    summary = {
        "reliability": torch.tensor(0.99612),
        "locality": 0.5,
        "portability": float("nan"),
        "seconds_per_edit": 1.2345,
        "peak_memory_mb": 2048.25,
        "n_edits": 10,
        "portability/one_hop": 0.25,
        "editor": "rome",
        "mode": "sequential",
    }
    curve = [{"n_edits": 5, "reliability": 1.0}, {"n_edits": 10, "reliability": 0.9}]
    write_summary(tmp_path, summary, extra_tables={"after every 5 edits": curve})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert list(data)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert data["generalization"] is None and data["fluency"] is None and data["portability"] is None
    assert data["reliability"] == pytest.approx(0.99612)
    assert data["portability/one_hop"] == 0.25 and data["editor"] == "rome"
    assert data["tables"]["after every 5 edits"] == curve

    md = (tmp_path / "summary.md").read_text()
    assert "| reliability | 0.996 |" in md
    assert "| generalization | n/a |" in md
    assert "| seconds_per_edit | 1.23 s |" in md
    assert "| peak_memory_mb | 2048.2 MB |" in md
    assert "| n_edits | 10 |" in md
    assert "## after every 5 edits" in md and "| 10 | 0.900 |" in md
    assert format_table(summary) in md

    with pytest.raises(FileExistsError, match="summary"):
        write_summary(tmp_path, {"reliability": 0.1})
    assert json.loads((tmp_path / "summary.json").read_text())["locality"] == 0.5
    write_summary(tmp_path, {"reliability": 0.1}, overwrite=True)
    assert json.loads((tmp_path / "summary.json").read_text())["locality"] is None


def test_standard_errors_sit_beside_their_metric():
    table = format_table({"reliability": 0.96, "reliability_se": 0.0123, "locality": 0.9, "locality_se": None,
                          "generalization": None, "generalization_se": 0.02, "perplexity": 31.5, "perplexity_se": 0.25})
    assert "| reliability | 0.960 ± 0.012 |" in table
    assert "| locality | 0.900 |" in table  # no standard error (one edit)
    assert "| generalization | n/a |" in table
    assert "| perplexity | 31.5 ± 0.25 |" in table
    assert "_se |" not in table


def test_fractions_must_be_fractions():
    with pytest.raises(ValueError, match="reliability@end"):
        format_table({"reliability@end": 99.6})


def test_plot_summary(tmp_path):
    path = tmp_path / "summary.png"
    plot_summary({"reliability": 0.9, "locality": 0.8, "portability": None, "editor": "rome"}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
