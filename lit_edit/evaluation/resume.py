"""Continuing a stopped edit.py run from the records it kept (``resume=<its run directory>``).

Single and batch modes undo every batch of edits after scoring it and write each edit's record
at once, so a run stopped at edit 700 of 1000 (a scheduler's SIGTERM, a lost machine) holds 700
complete records: the edits are independent, and the remaining 300 give the same numbers
whether they run now or had run then. Resuming reads those records, checks that they come from
the same experiment (the same editor, model, data and evaluation settings, and the same
requests in the same order), and lets the new run start at the first edit that has none. The
old run directory is only read: the new run writes its own, old records first.

Sequential modes build each edit on the ones before, so their records alone are not enough:
they resume from the state they save every ``eval.state_every`` edits (the edited weights, the
editor's memory, the records and curve so far; :mod:`lit_edit.evaluation.sequential_state`) and
redo the edits made after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from lit_edit.evaluation.sequential_state import STATE_FILE, SequentialState

# the parts of edit.py's config that decide what a record holds; paths, logger and trainer do not
SAME_EXPERIMENT = ("editor", "model", "data", "eval", "seed", "ckpt")
# settings inside those that do not (how often a sequential run saves its state)
NOT_COMPARED = ("eval.state_every",)
# record fields that are not per-edit metric values
RECORD_FIELDS = ("edit", "case_id", "source", "prompt", "target_new", "edit_seconds", "peak_memory_mb")
RECORD_PREFIXES = ("edit_seconds/", "edit_counts/")


@dataclass
class ResumedRun:
    """The records of a stopped run, checked to be ``0..n-1`` in order; a sequential run's saved state."""

    run_dir: Path
    records: list[dict[str, Any]]
    state: SequentialState | None = None

    def metric_values(self, record: Mapping[str, Any]) -> dict[str, float]:
        """The per-edit metric values of one record (``reliability``, ``locality/nq``, ...)."""
        return {k: float(v) for k, v in record.items()
                if k not in RECORD_FIELDS and not k.startswith(RECORD_PREFIXES) and isinstance(v, (int, float))}

    def phase_values(self, record: Mapping[str, Any]) -> dict[str, float]:
        """The per-edit time and counts of the editor's phases in one record (``edit_seconds/values``, ...)."""
        return {k: float(v) for k, v in record.items() if k.startswith(RECORD_PREFIXES) and v is not None}


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if old == new or where in NOT_COMPARED else [f"{where}: {old!r} then, {new!r} now"]


def _resolved(cfg: DictConfig, part: str) -> Any:
    node = cfg.get(part)
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def load_resumed_run(resume_dir: str | Path, cfg: DictConfig, sequential: bool = False) -> ResumedRun:
    """The stopped run at ``resume_dir``, refused with the reason if it cannot be continued by ``cfg``.

    ``sequential``: the run is in a sequential mode, so it continues from its saved state.
    """
    run_dir = Path(resume_dir)
    records_path = run_dir / "records.jsonl"
    state_path = run_dir / STATE_FILE
    if (run_dir / "summary.json").exists():
        raise ValueError(f"resume={run_dir}: that run finished (it has a summary.json); there is nothing to resume")
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(f"resume={run_dir}: no .hydra/config.yaml there, so it cannot be checked to be the "
                                "same experiment")
    old_cfg = OmegaConf.load(saved)
    changed = []
    for part in SAME_EXPERIMENT:
        changed += _differences(_resolved(old_cfg, part), _resolved(cfg, part), part)
    if changed:
        raise ValueError(f"resume={run_dir}: that run was another experiment; these settings differ: "
                         + "; ".join(changed[:10]) + (f" (and {len(changed) - 10} more)" if len(changed) > 10 else ""))
    if sequential and not state_path.is_file():
        raise FileNotFoundError(f"resume={run_dir}: no {STATE_FILE} there. A sequential run saves its state every "
                                "eval.state_every edits; that one stopped before its first save (or saved none)")
    if not sequential and not records_path.is_file():
        raise FileNotFoundError(f"resume={run_dir}: no records.jsonl there, so no edits to continue from")
    if sequential:
        state = SequentialState.load(state_path)
        for i, record in enumerate(state.records):
            _check_order(record, i, str(state_path))
        return ResumedRun(run_dir, state.records, state)
    records = []
    for line_no, line in enumerate(records_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{records_path}:{line_no}: not a JSON record ({err})") from err
        _check_order(record, len(records), f"{records_path}:{line_no}")
        records.append(record)
    return ResumedRun(run_dir, records)


def _check_order(record: Mapping[str, Any], expected: int, where: str) -> None:
    """Records are edits 0, 1, 2, ... in order (they are written as the edits are made)."""
    if record.get("edit") != expected:
        raise ValueError(f"{where}: record of edit {record.get('edit')!r} where edit {expected} was expected "
                         "(records are written in order)")
