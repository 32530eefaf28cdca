import json
import math

import pytest

from lit_edit.cli.compare import compare_rows, load_run, main
from lit_edit.evaluation.results import write_summary


def _run(tmp_path, name, **summary):
    write_summary(tmp_path / name, summary)
    return tmp_path / name


def test_rows_and_mean_with_standard_errors(tmp_path, capsys):
    a = _run(tmp_path, "seed0", reliability=0.96, reliability_se=0.02, locality=0.90, locality_se=0.018, n_edits=100)
    b = _run(tmp_path, "seed1", reliability=0.92, reliability_se=0.03, locality=0.88, locality_se=0.018, n_edits=100)
    rows = compare_rows([load_run(a), load_run(b / "summary.json")], ["reliability", "locality"])
    assert [r["run"] for r in rows] == ["seed0", "seed1", "mean of 2"]
    mean = rows[-1]
    assert mean["reliability"] == pytest.approx(0.94) and mean["locality"] == pytest.approx(0.89)
    assert mean["reliability_se"] == pytest.approx(math.sqrt(0.02**2 + 0.03**2) / 2)
    out = tmp_path / "cmp.md"
    table = main([str(a), str(b), "--metrics", "reliability", "locality", "--out", str(out)])
    assert "| seed0 | 100 | 0.960 ± 0.020 | 0.900 ± 0.018 |" in table
    assert "| mean of 2 | 200 | 0.940 ± 0.018 | 0.890 ± 0.013 |" in table
    assert out.read_text().strip() == table and table in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="cmp.md"):
        main([str(a), "--out", str(out)])


def test_missing_metric_or_error_is_not_invented(tmp_path):
    a = _run(tmp_path, "a", reliability=0.5, reliability_se=0.1)
    b = _run(tmp_path, "b", reliability=0.7)  # an older run without standard errors
    rows = compare_rows([load_run(a), load_run(b)], ["reliability", "portability"])
    assert rows[-1]["reliability"] == pytest.approx(0.6) and rows[-1]["reliability_se"] is None
    assert rows[-1]["portability"] is None
    assert "n/a" in main([str(a), str(b), "--metrics", "portability"])


def test_bad_run_paths_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="JSON object"):
        load_run(tmp_path)


def test_older_runs_get_standard_errors_from_their_records(tmp_path):
    run = _run(tmp_path, "old", reliability=0.5, locality=0.25, n_edits=2)
    records = [{"edit": 0, "reliability": 1.0, "locality": 0.9}, {"edit": 1, "reliability": 0.0, "locality": 0.9}]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = load_run(run, ["reliability", "locality"]).summary
    assert summary["reliability_se"] == pytest.approx(0.5)  # std 0.7071 / sqrt(2)
    assert "locality_se" not in summary  # the records' mean (0.9) is not the summary's 0.25: not used
    seq = _run(tmp_path, "seq", reliability=0.5, n_edits=2)
    (seq / "records.jsonl").write_text("".join(json.dumps({"reliability@end": r["reliability"]}) + "\n" for r in records))
    assert load_run(seq, ["reliability"]).summary["reliability_se"] == pytest.approx(0.5)
