"""Result files: per-edit records (JSONL), the run summary (JSON + markdown) and a plot.

Nothing here overwrites a user's non-empty result file unless asked to (``overwrite=True``).
Absent metrics are ``null`` (JSON) / ``n/a`` (markdown), never 0; NaN and +-inf become null.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SUMMARY_KEYS",
    "SE_SUFFIX",
    "FRACTION_METRICS",
    "nan_to_none",
    "RecordWriter",
    "format_table",
    "format_with_se",
    "markdown_table",
    "write_summary",
    "plot_summary",
]

SUMMARY_KEYS = (
    "reliability",
    "generalization",
    "locality",
    "portability",
    "fluency",
    "seconds_per_edit",
    "peak_memory_mb",
    "n_edits",
)
# "<metric>_se": the standard error of a per-edit mean over its edits (PerEditMean.standard_error);
# the markdown tables show it beside its metric, "0.960 ± 0.018", the JSON keeps it as its own key.
SE_SUFFIX = "_se"
# Metrics whose values are fractions in [0, 1]; a key counts as one when its name before any
# "/" (group) or "@" (evaluation point) is listed: "portability/one_hop", "reliability@end".
# (Put ConvSent's KL under its own name, e.g. "locality_kl", as it is not a fraction.)
FRACTION_METRICS = frozenset(
    {"reliability", "generalization", "locality", "portability", "efficacy_score", "paraphrase_score",
     "neighborhood_score"}
)


def _is_fraction(key: str) -> bool:
    return key.split("/")[0].split("@")[0] in FRACTION_METRICS


def nan_to_none(x: Any) -> Any:
    """JSON-ready copy of ``x``: tensors / numpy values become Python numbers or lists, NaN and
    +-inf become None, recursively through dicts, lists and tuples (tuples become lists)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().tolist()
    elif hasattr(x, "tolist") and type(x).__module__ == "numpy":
        x = x.tolist()
    if isinstance(x, Mapping):
        return {str(k): nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _dumps(obj: Any, **kwargs) -> str:
    return json.dumps(nan_to_none(obj), allow_nan=False, **kwargs)


def _refuse_overwrite(*paths: Path) -> None:
    for path in paths:
        if path.exists() and path.stat().st_size > 0:
            raise FileExistsError(
                f"{path} already exists and is not empty; refusing to overwrite results "
                "(pass overwrite=True or choose another output directory)"
            )


class RecordWriter:
    """Writes one JSON line per edit to ``path``, flushed after each line.

    Refuses (FileExistsError naming the path) to replace an existing non-empty file unless
    ``overwrite=True``. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        if not overwrite:
            _refuse_overwrite(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        self.n_records = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` (tensors converted, NaN -> null) as one line and flush it."""
        self._file.write(_dumps(record) + "\n")
        self._file.flush()
        self.n_records += 1

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _complete(summary: Mapping[str, Any]) -> dict[str, Any]:
    """All SUMMARY_KEYS first (None where absent), then the other keys; JSON-ready; fractions checked."""
    out = nan_to_none({**{k: None for k in SUMMARY_KEYS}, **summary})
    for key, value in out.items():
        if _is_fraction(key) and isinstance(value, numbers.Real) and not 0.0 <= value <= 1.0:
            raise ValueError(f"summary[{key!r}] = {value} is not a fraction in [0, 1]")
    return out


def _format_value(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if _is_fraction(key):
        return f"{value:.3f}"
    if "seconds" in key:
        return f"{value:.3g} s"
    if key.endswith("_mb"):
        return f"{value:.1f} MB"
    return str(value) if isinstance(value, numbers.Integral) else f"{value:.4g}"


def format_with_se(key: str, value: Any, se: Any) -> str:
    """A table cell: ``value`` formatted as its key wants (see :func:`format_table`), followed by
    " ± se" when both are numbers (3 decimals for fractions, 2 significant digits otherwise)."""
    text = _format_value(key, value)
    if value is not None and isinstance(se, numbers.Real) and not isinstance(se, bool):
        text += f" ± {se:.3f}" if _is_fraction(key) else f" ± {se:.2g}"
    return text


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """``| a | b |`` lines: the header, a ``---`` rule, then the rows (cells already strings)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _metric_table(values: Mapping[str, Any]) -> str:
    rows = [[key, format_with_se(key, value, values.get(f"{key}{SE_SUFFIX}"))]
            for key, value in values.items()
            if not (key.endswith(SE_SUFFIX) and key[: -len(SE_SUFFIX)] in values)]  # _se: beside its metric
    return markdown_table(["metric", "value"], rows)


def _rows_table(rows: list[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return markdown_table(columns, [[_format_value(c, row.get(c)) for c in columns] for row in rows])


def format_table(summary: Mapping[str, Any]) -> str:
    """Markdown table ``| metric | value |`` of a summary: every SUMMARY_KEY (n/a if absent),
    then the other keys; fractions to 3 decimals, times in s, memory in MB; a metric with a
    ``<metric>_se`` key reads "value ± se" and the ``_se`` key gets no row of its own."""
    return _metric_table(_complete(summary))


def write_summary(
    run_dir: str | Path,
    summary: Mapping[str, Any],
    extra_tables: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``summary.json`` and ``summary.md`` into ``run_dir`` (created if needed).

    ``summary.json`` holds every SUMMARY_KEY (null where absent) and any further keys
    ("efficacy_score", "reliability@end", "portability/one_hop", "mode", "editor", ...);
    fraction metrics must lie in [0, 1] (ValueError otherwise). ``extra_tables`` maps a title to
    a mapping (a metric | value table) or a list of row dicts (e.g. metrics after every N edits);
    they are stored under "tables" in the JSON and appended as sections to the markdown.
    Refuses (FileExistsError) to replace non-empty existing files unless ``overwrite=True``.
    """
    run_dir = Path(run_dir)
    json_path, md_path = run_dir / "summary.json", run_dir / "summary.md"
    if not overwrite:
        _refuse_overwrite(json_path, md_path)
    data = _complete(summary)
    sections = ["# Summary", _metric_table(data)]
    if extra_tables:
        data["tables"] = nan_to_none(extra_tables)
        for title, table in data["tables"].items():
            sections += [f"## {title}", _metric_table(table) if isinstance(table, Mapping) else _rows_table(table)]
    run_dir.mkdir(parents=True, exist_ok=True)
    json_path.write_text(_dumps(data, indent=2) + "\n", encoding="utf-8")
    md_path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")


def plot_summary(summary: Mapping[str, Any], path: str | Path) -> None:
    """Save a bar chart (PNG, Agg) of the summary's fraction metrics that have a value."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {k: v for k, v in _complete(summary).items() if _is_fraction(k) and v is not None}
    fig = Figure(figsize=(max(4.0, 0.9 * len(data) + 1.5), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bars = ax.bar(list(data), list(data.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_title(" / ".join(str(summary[k]) for k in ("editor", "mode") if summary.get(k)) or "summary")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if not data:
        ax.text(0.5, 0.5, "no fraction metrics", ha="center", va="center", transform=ax.transAxes)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def plot_curve(points: list[Mapping[str, Any]], path: str | Path, x: str = "n_edits") -> None:
    """Headline metrics against the number of edits kept (sequential ``every_n``).

    PRUNE's restrained scores (``*_pruned``) are dashed in their metric's colour; perplexity,
    when measured, gets a panel of its own (it is not a fraction).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key: str) -> tuple[list[Any], list[Any]]:
        kept = [p for p in points if p.get(key) is not None]
        return [p[x] for p in kept], [p[key] for p in kept]

    has_ppl = any(p.get("perplexity") is not None for p in points)
    fig = Figure(figsize=(9.5 if has_ppl else 5.5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_ppl else 1, squeeze=False)[0]
    ax = axes[0]
    for i, key in enumerate(("reliability", "generalization", "locality", "portability")):
        colour = f"C{i}"
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, marker="o", color=colour, label=key)
        xs, ys = series(f"{key}_pruned")
        if xs:
            ax.plot(xs, ys, marker="x", linestyle="--", color=colour, label=f"{key} (PRUNE)")
    ax.set_xlabel("edits kept")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    if has_ppl:
        ax = axes[1]
        for key, style, label in (("perplexity", "-o", "edited"), ("perplexity_pruned", "--x", "edited + PRUNE")):
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, style, label=label)
        ax.set_xlabel("edits kept")
        ax.set_ylabel("WikiText-2 perplexity")
        ax.legend(fontsize=7)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
