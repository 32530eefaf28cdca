"""``python -m lit_edit.cli.compare RUN_DIR...``: edit.py runs side by side, and their mean.

A score over 100 records is one sample: on SmolLM2, MEMIT's locality over ZsRE records 0-99
and over 100 other records differs by 0.012 with a standard error of 0.018 each. Comparing a
setting with a floor, or two settings, is honest only over several slices (``python edit.py -m
data.shuffle=true data.seed=0,1,2 ...``), so this reads the runs' ``summary.json`` files and
prints one row per run (value ± standard error) and a mean row. The mean's standard error
treats the runs as independent samples, sqrt(sum se_i^2) / k; slices drawn from one file may
share records, which makes it somewhat too small.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_edit.evaluation.results import SE_SUFFIX, format_with_se, markdown_table

__all__ = ["RunScores", "load_run", "compare_rows", "compare_markdown", "main"]

DEFAULT_METRICS = ("reliability", "generalization", "locality", "portability")


@dataclass(frozen=True)
class RunScores:
    """One run's summary: ``name`` labels its row, ``summary`` is its summary.json."""

    name: str
    summary: dict[str, Any]


def _records_standard_errors(records_file: Path, summary: dict[str, Any], metrics: Sequence[str]) -> dict[str, float]:
    """``<metric>_se`` from a run's per-edit ``records.jsonl``, for runs written before summaries had
    them. A record's value is that edit's mean (what the summary averages), under the metric's name
    or, in sequential runs, ``<metric>@end``; a metric is used only where the records' mean
    reproduces the summary's value, so a record key that means something else is never taken."""
    try:
        records = [json.loads(line) for line in records_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for m in metrics:
        target = _number(summary.get(m))
        for key in (m, f"{m}@end"):
            values = [v for r in records if isinstance(r, dict) and (v := _number(r.get(key))) is not None]
            mean = sum(values) / len(values) if values else None
            if target is None or len(values) < 2 or abs(mean - target) > 1e-6:
                continue
            out[m + SE_SUFFIX] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
            break
    return out


def load_run(path: str | Path, metrics: Sequence[str] = DEFAULT_METRICS) -> RunScores:
    """Read a run directory's ``summary.json`` (or that file itself); a clear error otherwise.
    Standard errors the summary lacks are taken from ``records.jsonl`` beside it when it has them."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no summary.json (is it an edit.py run directory that finished?)")
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{file}: expected a JSON object, found {type(summary).__name__}")
    missing = [m for m in metrics if m + SE_SUFFIX not in summary]
    if missing and (file.parent / "records.jsonl").is_file():
        summary = {**_records_standard_errors(file.parent / "records.jsonl", summary, missing), **summary}
    name = file.parent.name if file.name == "summary.json" else file.stem
    return RunScores(name, summary)


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def compare_rows(runs: Sequence[RunScores], metrics: Sequence[str] = DEFAULT_METRICS) -> list[dict[str, Any]]:
    """One row per run, then "mean" (when there are two runs or more): for each metric its value
    and ``<metric>_se``, plus ``n_edits``. A mean is over the runs that have the metric; its
    standard error is None unless every one of those runs has one."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "n_edits": run.summary.get("n_edits")}
        for m in metrics:
            row[m] = _number(run.summary.get(m))
            row[m + SE_SUFFIX] = _number(run.summary.get(m + SE_SUFFIX))
        rows.append(row)
    if len(rows) < 2:
        return rows
    mean: dict[str, Any] = {"run": f"mean of {len(rows)}", "n_edits": sum(r["n_edits"] or 0 for r in rows)}
    for m in metrics:
        have = [r for r in rows if r[m] is not None]
        mean[m] = sum(r[m] for r in have) / len(have) if have else None
        ses = [r[m + SE_SUFFIX] for r in have]
        ok = have and all(se is not None for se in ses)
        mean[m + SE_SUFFIX] = math.sqrt(sum(se * se for se in ses)) / len(ses) if ok else None
    return rows + [mean]


def compare_markdown(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """The rows as a markdown table, "0.960 ± 0.018" per cell, "n/a" where a run lacks the metric
    (cells formatted as in the runs' own summary tables)."""
    return markdown_table(
        ["run", "n_edits", *metrics],
        [[str(r["run"]), format_with_se("n_edits", r["n_edits"], None),
          *(format_with_se(m, r[m], r[m + SE_SUFFIX]) for m in metrics)] for r in rows],
    )


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m lit_edit.cli.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="edit.py run directories (or their summary.json files)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                        help="summary keys to show (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file (never overwritten)")
    args = parser.parse_args(argv)
    table = compare_markdown(compare_rows([load_run(p, args.metrics) for p in args.runs], args.metrics), args.metrics)
    if args.out is not None:
        if args.out.exists():
            raise FileExistsError(f"{args.out} exists; refusing to overwrite it (choose another --out)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n", encoding="utf-8")
    print(table)
    return table


if __name__ == "__main__":
    main()
