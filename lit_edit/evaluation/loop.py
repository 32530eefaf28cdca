"""The one evaluation loop: ``trainer.test(EditingLoop(...), datamodule=...)``.

Per test batch (a list of edit requests) the loop applies the editor, scores every probe
of the batch in one padded forward pass, and then undoes the edit (``single``/``batch``)
or keeps it (``sequential``/``sequential_batch``). Locality is agreement with the
*unedited* model, so pre-edit predictions for every locality probe of the run are taken
once, before the first edit. Editors never evaluate themselves.

When sequential runs evaluate (``eval_at``) is explicit because papers disagree:
``each_edit`` scores a batch right after it is written, ``end`` re-scores every edit on
the final model, ``every_n`` re-scores all edits so far after every n edits (a curve).
In sequential modes the final model is always scored as well; the headline numbers of a
sequential run are those of the final model, the immediate ones appear as ``*@each_edit``.

What a stopped run keeps: single and batch modes write each edit's record once it is scored;
sequential modes save their state every ``state_every`` edits
(:mod:`lit_edit.evaluation.sequential_state`). Either is what ``resume=`` continues from.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import Editor, EditHandle
from lit_edit.editors.prune import MatrixReport, PruneConfig, restrained, spectrum_reports
from lit_edit.evaluation.efficiency import PeakMemory, Stopwatch
from lit_edit.evaluation.fluency import n_gram_entropy
from lit_edit.evaluation.metrics import PerEditMean, exact_match, token_accuracy, token_agreement
from lit_edit.evaluation.perplexity import PerplexityConfig, PerplexityProbe
from lit_edit.evaluation.probes import ProbeRow, build_probes
from lit_edit.evaluation.resume import ResumedRun
from lit_edit.evaluation.results import (
    SE_SUFFIX, RecordWriter, format_table, nan_to_none, plot_curve, plot_summary, write_summary,
)
from lit_edit.evaluation.scoring import greedy_generate, teacher_forced
from lit_edit.evaluation.sequential_state import STATE_FILE, SequentialState
from lit_edit.models.layouts import ModelLayout, layout_for
from lit_edit.models.loading import model_fingerprint
from lit_edit.utils.precision import check_autocast, resolve_autocast
from lit_edit.utils.tokens import tokenize_pairs

log = logging.getLogger(__name__)

MODES = ("single", "batch", "sequential", "sequential_batch")
EVAL_AT = ("each_edit", "end", "every_n")
PROTOCOLS = ("teacher_forced", "generation_em")
#: per-edit record prefix -> the summary's name of its mean over edits
_PER_EDIT = {"edit_seconds": "seconds_per_edit", "edit_counts": "per_edit"}


@dataclass
class EvalConfig:
    """Mirrors ``configs/eval/*.yaml``; see that file for what each switch means."""

    mode: str = "single"
    batch_size: int = 1
    eval_at: str = "each_edit"
    every_n: int = 50
    protocol: str = "teacher_forced"
    generation_em: bool = False
    cf_probability: bool = False
    fluency: bool = False
    fluency_max_new_tokens: int = 100
    generation_batch_size: int = 16
    token_budget: int = 1024
    max_length: int = 512
    autocast: str | None = None
    restore_at_end: bool = True
    state_every: int | None = 50
    perplexity: bool = False
    perplexity_path: str | None = None
    perplexity_tokens: int = 8192
    perplexity_window: int = 512

    def __post_init__(self) -> None:
        for field_name, value, allowed in (("mode", self.mode, MODES), ("eval_at", self.eval_at, EVAL_AT),
                                           ("protocol", self.protocol, PROTOCOLS)):
            if value not in allowed:
                raise ValueError(f"eval.{field_name} must be one of {allowed}, got {value!r}")
        if self.protocol == "generation_em":
            self.generation_em = True
        check_autocast(self.autocast, "eval.autocast")
        if self.batch_size < 1 or self.every_n < 1:
            raise ValueError("eval.batch_size and eval.every_n must be >= 1")
        if self.state_every is not None and self.state_every < 1:
            raise ValueError(f"eval.state_every must be >= 1 or null (never save), got {self.state_every}")
        if self.perplexity and not self.perplexity_path:
            raise ValueError("eval.perplexity needs eval.perplexity_path (a text file, e.g. WikiText-2's test.txt)")

    @property
    def perplexity_config(self) -> PerplexityConfig | None:
        if not self.perplexity:
            return None
        return PerplexityConfig(path=str(self.perplexity_path), n_tokens=self.perplexity_tokens,
                                window=self.perplexity_window)

    @property
    def sequential(self) -> bool:
        return self.mode.startswith("sequential")

    @property
    def edits_per_batch(self) -> int:
        return self.batch_size if self.mode in ("batch", "sequential_batch") else 1


def request_key(req: EditRequest) -> tuple[str, str]:
    return (req.source, req.case_id)


class EditingLoop(L.LightningModule):
    """Holds the base model, runs edits through ``editor`` and measures them."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        editor: Editor,
        cfg: EvalConfig,
        run_dir: str | Path | None = None,
        layout: ModelLayout | None = None,
        run_info: dict[str, Any] | None = None,
        prune: PruneConfig | None = None,
        resumed: ResumedRun | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.editor = editor
        self.cfg = cfg
        self.layout = layout or layout_for(model)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.run_info = dict(run_info or {})
        self.prune = prune
        if prune is not None and not cfg.sequential:
            raise ValueError("PRUNE restrains the accumulated update of sequential editing; "
                             f"eval.mode={cfg.mode} undoes every edit, so there is nothing to restrain")
        if resumed is not None and cfg.sequential and resumed.state is None:
            raise ValueError(f"resume of a sequential run (eval.mode={cfg.mode}) needs its saved state "
                             "(lit_edit.evaluation.sequential_state): its edits build on each other")
        if resumed is not None and cfg.perplexity and not cfg.sequential:
            raise ValueError("resume with eval.perplexity: the stopped run's per-batch perplexities are not in its "
                             "records, so the summary's perplexity would leave them out")
        self.resumed = resumed
        self._resumed_seconds = 0.0
        self._spectrum: list[MatrixReport] = []
        self._spectrum_pruned: list[MatrixReport] = []
        self._perplexity: PerplexityProbe | None = None
        self._model_scores: dict[str, list[float]] = defaultdict(list)  # "perplexity@end": [...]
        self._phase_totals: dict[str, float] = {}  # "edit_seconds/values", "edit_counts/value_steps": totals over all edits
        self.summary: dict[str, Any] = {}
        self._pre: dict[tuple, Tensor] = {}
        self._edited: list[EditRequest] = []
        self._handles: list[EditHandle] = []
        self._records: dict[int, dict[str, Any]] = {}
        self._metrics: dict[str, Any] = {}
        self._curve: list[dict[str, Any]] = []
        self._stopwatch = Stopwatch()
        self._eval_watch = Stopwatch()
        self._peak_mb = 0.0
        self._n_edits = 0
        self._n_requests = 0
        self._writer: RecordWriter | None = None
        self._state_saved_at = 0  # edits in the sequential state on disk (0: none saved)
        self._base_fingerprint = ""  # the unedited model's, kept with a sequential state
        self._state_unsavable = ""  # why this run's sequential state cannot be saved, once known

    # -- Lightning plumbing ----------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # requests are text; tensors are made on the model's device when scoring

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def _metric(self, name: str, cls: type = PerEditMean):
        if name not in self._metrics:
            self._metrics[name] = cls().to(self.device)
        return self._metrics[name]

    # -- before the first edit -------------------------------------------------------------
    def on_test_start(self) -> None:
        self._stopwatch = Stopwatch(self.device)
        self._eval_watch = Stopwatch(self.device)
        if self.run_dir is not None and self.global_rank == 0 and not self.cfg.sequential:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = RecordWriter(self.run_dir / "records.jsonl")
        loaders = self.trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        requests = [r for loader in loaders for batch in loader for r in batch]
        self._n_requests = len(requests)
        if self.resumed is not None:
            self._take_resumed(requests)
        rows = build_probes(requests, 0, kinds=("locality",))
        ppl_cfg = self.cfg.perplexity_config
        if ppl_cfg is not None:
            with self._eval_watch:
                self._perplexity = PerplexityProbe(ppl_cfg, self.tokenizer)
                self._model_scores["perplexity@unedited"].append(self._perplexity(self.model))
        if rows:
            with self._eval_watch:
                tf = self._score(rows)
            for i, row in enumerate(rows):
                self._pre[self._pre_key(requests[row.edit], row)] = tf.pred_ids[i][tf.mask[i]]
        if self.resumed is not None and self.resumed.state is not None:
            self._restore_state(requests)  # checks this model against the state's fingerprint and keeps it
        elif self.cfg.sequential and self.cfg.state_every and self._state_path is not None:
            self._base_fingerprint = model_fingerprint(self.model)

    def _take_resumed(self, requests: Sequence[EditRequest]) -> None:
        """Count the stopped run's records as this run's first edits: copied to this run's records,
        fed to the metrics and time totals as if edited here (a record holds each metric's per-edit
        mean, which is all the per-edit-mean metrics keep of an edit)."""
        resumed = self.resumed
        assert resumed is not None
        done = resumed.records
        if len(done) > len(requests) or len(done) % self.cfg.edits_per_batch and len(done) != len(requests):
            raise ValueError(f"resume={resumed.run_dir}: {len(done)} records do not end a batch of "
                             f"{self.cfg.edits_per_batch} among this run's {len(requests)} edits")
        for record, req in zip(done, requests):
            if (record.get("prompt"), record.get("target_new")) != (req.prompt, req.target_new):
                raise ValueError(f"resume={resumed.run_dir}: edit {record['edit']} there is "
                                 f"{record.get('prompt')!r} -> {record.get('target_new')!r}, here "
                                 f"{req.prompt!r} -> {req.target_new!r}: not the same requests")
        if self.trainer.world_size > 1:
            raise ValueError("resume runs in one process: the stopped run's records are not split over ranks")
        for record in done:
            edit = torch.tensor([record["edit"]], device=self.device)
            for name, value in resumed.metric_values(record).items():
                self._metric(f"each_edit:{name}").update(torch.tensor([value], device=self.device), edit)
            for key, value in resumed.phase_values(record).items():
                self._phase_totals[key] = self._phase_totals.get(key, 0.0) + value
            self._resumed_seconds += float(record.get("edit_seconds") or 0.0)
            self._peak_mb = max(self._peak_mb, float(record.get("peak_memory_mb") or 0.0))
            if self.cfg.sequential:  # written with the final scores at the end
                self._records[record["edit"]] = dict(record)
            elif self._writer is not None:
                self._writer.write(record)
        self._n_edits = len(done)

    def _restore_state(self, requests: Sequence[EditRequest]) -> None:
        """Put the stopped sequential run's edits back on the model (after the unedited model's
        locality predictions and perplexity are taken) with its curve so far."""
        state = self.resumed.state
        handle = state.apply(self.model, self.editor, self.resumed.run_dir)
        self._base_fingerprint = state.base_fingerprint
        self._handles.append(handle)
        self._edited = list(requests[: state.n_edits])
        self._curve = [dict(point) for point in state.curve]
        for key, values in state.model_scores.items():
            if key != "perplexity@unedited":  # measured again on this run's unedited model
                self._model_scores[key] = list(values)
        self._save_state()  # this run's directory holds it too, should this run be stopped in turn

    @staticmethod
    def _pre_key(req: EditRequest, row: ProbeRow) -> tuple:
        return (*request_key(req), row.group, row.slot)

    # -- one batch of edits ----------------------------------------------------------------
    def test_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        if self.resumed is not None and batch_idx * self.cfg.edits_per_batch < len(self.resumed.records):
            return  # edited and scored by the stopped run
        first = self._n_edits
        mem = PeakMemory(self.device)
        with mem, self._stopwatch, torch.enable_grad():
            handle = self.editor.edit(self.model, self.tokenizer, batch)
        self._peak_mb = max(self._peak_mb, mem.peak_mb)
        seconds = self._stopwatch.last / len(batch)
        # where the editor's time went (editors that time their phases: ROME, MEMIT, ...)
        phases = {f"edit_seconds/{k}": v / len(batch) for k, v in getattr(self.editor, "last_timings", {}).items()}
        phases.update({f"edit_counts/{k}": v / len(batch) for k, v in getattr(self.editor, "last_counts", {}).items()})
        for key, value in phases.items():
            self._phase_totals[key] = self._phase_totals.get(key, 0.0) + value * len(batch)
        self._n_edits += len(batch)
        for offset, req in enumerate(batch):
            self._records[first + offset] = {
                "edit": first + offset, "case_id": req.case_id, "source": req.source, "prompt": req.prompt,
                "target_new": req.target_new, "edit_seconds": seconds, **phases, "peak_memory_mb": mem.peak_mb,
            }
        if not self.cfg.sequential or self.cfg.eval_at == "each_edit":
            self._evaluate(batch, first, stage="each_edit")
        if self.cfg.sequential:
            self._edited.extend(batch)
            self._handles.append(handle)
            due = self.cfg.eval_at == "every_n" and self._n_edits // self.cfg.every_n > first // self.cfg.every_n
            if due and not self._is_last_batch(batch_idx):  # the final point is the "end" evaluation
                self._curve.append({"n_edits": self._n_edits, **self._sequential_point(f"after_{self._n_edits}")})
            every = self.cfg.state_every
            if every and self._n_edits // every > first // every and not self._is_last_batch(batch_idx):
                self._save_state()
        else:
            handle.undo()
            if self._writer is not None:
                for e in range(first, self._n_edits):
                    self._writer.write(self._records.pop(e))

    @property
    def _state_path(self) -> Path | None:
        return self.run_dir / STATE_FILE if self.run_dir is not None else None

    def _save_state(self) -> None:
        """Save what ``resume=`` needs to continue this sequential run from here (after this
        point's evaluation, so the curve has it and PRUNE's in-place restraint is in the weights)."""
        if self._state_path is None or self.global_rank != 0:
            return
        if self.trainer.world_size > 1:
            self._state_unsavable = "a run over several processes saves no sequential state (each edits its own share)"
        elif not SequentialState.savable(self._handles):
            self._state_unsavable = (f"editor {self.editor.name!r} makes edits that are not weight changes, so its "
                                     "sequential state cannot be saved")
        if self._state_unsavable:
            return
        records = [self._records[e] for e in sorted(self._records)]
        SequentialState.capture(self.model, self._base_fingerprint, self._handles, self.editor, records, self._curve,
                                dict(self._model_scores)).save(self._state_path)
        self._state_saved_at = self._n_edits

    def _is_last_batch(self, batch_idx: int) -> bool:
        """Whether this is the last batch of the (single) test dataloader, when Lightning knows."""
        counts = getattr(self.trainer, "num_test_batches", None) or []
        return len(counts) == 1 and batch_idx + 1 == counts[0]

    # -- scoring ---------------------------------------------------------------------------
    @property
    def _scoring_precision(self) -> str | None:
        """``eval.autocast`` on the device the model is on now (``"auto"``: bf16 where it is the faster)."""
        return resolve_autocast(self.cfg.autocast, self.device)

    def _score(self, rows: Sequence[ProbeRow]):
        pairs = tokenize_pairs(self.tokenizer, [r.prompt for r in rows], [r.answer for r in rows], self.cfg.max_length)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._scoring_precision == "bf16"):
            return teacher_forced(self.model, pairs, pad_id=self.pad_id, token_budget=self.cfg.token_budget)

    def _sequential_point(self, stage: str) -> dict[str, Any]:
        """Score every edit so far on the current model (and, with PRUNE, the restrained one).

        Returns the point for ``curve.png``: the plain numbers and, in PRUNE's compare mode,
        the restrained ones with a ``_pruned`` suffix. Only the final point is recorded per edit.
        """
        record = stage == "end"
        prune = self.prune
        if prune is None or not prune.compare:
            if prune is not None or record:  # the spectrum is only kept at the end; PRUNE restrains in place
                reports = spectrum_reports(self._handles, prune)
                if record:
                    self._spectrum = reports
            return self._evaluate(self._edited, 0, stage=stage, record=record)
        if record:
            self._spectrum = spectrum_reports(self._handles, None)
        point = self._evaluate(self._edited, 0, stage=stage, record=record)
        with restrained(self._handles, prune) as reports:
            pruned = self._evaluate(self._edited, 0, stage=f"{stage}_pruned", record=record)
        if record:
            self._spectrum_pruned = reports
        return {**point, **{f"{k}_pruned": v for k, v in pruned.items()}}

    def _evaluate(self, requests: Sequence[EditRequest], first: int, stage: str, record: bool = True) -> dict[str, float]:
        """Score all probes of ``requests`` (edits numbered from ``first``) on the current model."""
        with self._eval_watch:
            return self._evaluate_now(requests, first, stage, record)

    def _evaluate_now(self, requests: Sequence[EditRequest], first: int, stage: str, record: bool) -> dict[str, float]:
        cfg = self.cfg
        rows = build_probes(requests, first, counterfact=cfg.cf_probability)
        values: dict[str, list[tuple[int, float]]] = defaultdict(list)
        if rows:
            tf = self._score(rows)
            acc = token_accuracy(tf.pred_ids, tf.label_ids, tf.mask)
            nll_by_key = {}
            for i, row in enumerate(rows):
                if row.kind == "locality":
                    pre = self._pre.get(self._pre_key(requests[row.edit - first], row))
                    if pre is None:
                        raise RuntimeError(f"no pre-edit prediction for locality probe {row.prompt!r}")
                    value = token_agreement(pre[None], tf.pred_ids[i][tf.mask[i]][None],
                                            torch.ones(1, len(pre), dtype=torch.bool))[0]
                else:
                    value = acc[i]
                if not row.kind.endswith(("_true", "_new")):
                    values[row.kind].append((row.edit, float(value)))
                    if row.group != row.kind:  # named benchmark groups: portability/one_hop, locality/nq
                        values[f"{row.kind}/{row.group}"].append((row.edit, float(value)))
                nll_by_key[(row.edit, row.kind, row.group, row.slot)] = float(tf.nll[i])
            if cfg.cf_probability:
                self._probability_scores(rows, nll_by_key, values)
        if cfg.generation_em:
            self._generation_scores(rows, values)
        if cfg.fluency and stage in ("each_edit", "end"):
            self._fluency(requests, first, values)
        out = self._aggregate(values, stage, record)
        if self._perplexity is not None and (stage != "each_edit" or cfg.mode == "batch"):
            # a property of the whole edited model, not of one edit: kept apart from per-edit metrics
            ppl = self._perplexity(self.model)
            self._model_scores[f"perplexity@{stage}"].append(ppl)
            out["perplexity"] = ppl
        return out

    def _probability_scores(self, rows, nll, values) -> None:
        """CounterFact's protocol: P(new) > P(true) on edit and paraphrase prompts, the reverse
        on neighbourhood prompts (ROME's efficacy / paraphrase / neighborhood scores)."""
        pairs = {"efficacy_score": ("reliability", "reliability_true", False),
                 "paraphrase_score": ("generalization", "generalization_true", False),
                 "neighborhood_score": ("locality", "locality_new", True)}
        for name, (kind_a, kind_b, true_wins) in pairs.items():
            for row in rows:
                if row.kind != kind_a:
                    continue
                other = nll.get((row.edit, kind_b, row.group, row.slot))
                if other is not None:
                    mine = nll[(row.edit, kind_a, row.group, row.slot)]
                    values[name].append((row.edit, float(mine < other)))

    def _generation_scores(self, rows: Sequence[ProbeRow], values) -> None:
        """Exact match of greedy generations against the answer or any alias."""
        rows = [r for r in rows if r.kind in ("reliability", "generalization", "portability")]
        if not rows:
            return
        longest = max(len(self.tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for r in rows for a in r.aliases)
        texts = greedy_generate(self.model, self.tokenizer, [r.prompt for r in rows], max_new_tokens=longest + 2,
                                batch_size=self.cfg.generation_batch_size)
        em = exact_match(texts, [list(r.aliases) for r in rows])
        for row, value in zip(rows, em.tolist()):
            values[f"{row.kind}_em"].append((row.edit, value))

    def _fluency(self, requests: Sequence[EditRequest], first: int, values) -> None:
        prompts, owners = [], []
        for offset, req in enumerate(requests):
            for p in req.generation_prompts or [req.prompt]:
                prompts.append(p)
                owners.append(first + offset)
        texts = greedy_generate(self.model, self.tokenizer, prompts, max_new_tokens=self.cfg.fluency_max_new_tokens,
                                batch_size=self.cfg.generation_batch_size)
        per_edit: dict[int, list[str]] = defaultdict(list)
        for owner, prompt, text in zip(owners, prompts, texts):
            per_edit[owner].append(prompt + text)
        for edit, gens in per_edit.items():
            values["fluency"].append((edit, n_gram_entropy(gens)))

    def _aggregate(self, values: dict[str, list[tuple[int, float]]], stage: str, record: bool) -> dict[str, float]:
        """Feed per-probe values to per-edit-mean metrics; fill per-edit records.

        Returns this evaluation's per-edit means (the point a sequential curve plots) either way.
        """
        out: dict[str, float] = {}
        for name, items in values.items():
            edits = torch.tensor([e for e, _ in items], device=self.device)
            vals = torch.tensor([v for _, v in items], device=self.device, dtype=torch.float32)
            m = PerEditMean().to(self.device)
            m.update(vals, edits)
            out[name] = float(m.compute())
            if record:
                self._metric(f"{stage}:{name}").update(vals, edits)
                by_edit: dict[int, list[float]] = defaultdict(list)
                for e, v in items:
                    by_edit[e].append(v)
                for e, vs in by_edit.items():
                    rec = self._records.setdefault(e, {"edit": e})
                    key = name if stage == "each_edit" else f"{name}@{stage}"
                    rec[key] = sum(vs) / len(vs)
        return out

    # -- after the last edit ---------------------------------------------------------------
    def on_test_epoch_end(self) -> None:
        cfg = self.cfg
        if cfg.sequential and self._edited:
            # the summed update's spectrum (and PRUNE's restraint of it) before the final scoring
            point = self._sequential_point("end")
            if cfg.eval_at == "every_n":
                self._curve.append({"n_edits": self._n_edits, **point})
        summary = self._summary()
        self.summary = summary
        numeric = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
        if numeric:
            self.log_dict(numeric, sync_dist=False, rank_zero_only=True)
        if cfg.sequential and cfg.restore_at_end:
            for handle in reversed(self._handles):
                handle.undo()
            self._handles.clear()

    def on_test_end(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.run_dir is None or self.global_rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.sequential:
            with RecordWriter(self.run_dir / "records.jsonl") as writer:
                for e in sorted(self._records):
                    writer.write(self._records[e])
        tables = {}
        if self._curve:
            tables["edits over time"] = self._curve
        if self._spectrum:
            tables["edited matrices"] = [r.as_dict() for r in self._spectrum]
        if self._spectrum_pruned:
            tables["edited matrices, PRUNE applied"] = [r.as_dict() for r in self._spectrum_pruned]
        tables = tables or None
        write_summary(self.run_dir, self.summary, extra_tables=tables)
        plot_summary(self.summary, self.run_dir / "summary.png")
        if self._curve:
            plot_curve(self._curve, self.run_dir / "curve.png")
        if self._state_path is not None and self._state_path.exists():
            self._state_path.unlink()  # only a stopped run needs it, and this one has its summary
        print("\n" + format_table(self.summary))

    def stop_note(self) -> str:
        """How far a run stopped before its end got, what of it is on disk, and how to go on.

        Single and batch modes write each edit's record as soon as it is scored (flushed), so a
        stopped run keeps them; sequential modes save their state every ``eval.state_every`` edits.
        """
        done = f"stopped after {self._n_edits} of {self._n_requests} edits ({self.cfg.mode} mode)"
        resumable = False
        if self.run_dir is None or self.global_rank != 0:
            kept = "this process writes no records"
        elif not self.cfg.sequential:
            n = self._writer.n_records if self._writer is not None else 0
            kept = f"{self.run_dir / 'records.jsonl'} holds the {n} records scored so far"
            resumable = True
        elif self._state_saved_at:
            kept = (f"{self._state_path} holds the state after {self._state_saved_at} edits (sequential runs write "
                    "their records at the end)")
            resumable = True
        else:
            why = self._state_unsavable or (
                "sequential runs save their state every eval.state_every edits, and this one saved none yet"
                if self.cfg.state_every else "eval.state_every is null, so no sequential state was saved")
            kept = f"{why}; sequential runs write their records at the end, so none were written"
        again = (f"resume={self.run_dir} continues it in a new run directory" if resumable else
                 "a new hydra.run.dir (the default makes one per run) starts again")
        return f"{done}; {kept}; no summary was written; {again}"

    def _summary(self) -> dict[str, Any]:
        cfg = self.cfg
        head_stage = "end" if cfg.sequential else "each_edit"
        summary: dict[str, Any] = {}
        stages = sorted({k.split(":", 1)[0] for k in self._metrics})
        for key, metric in self._metrics.items():
            stage, name = key.split(":", 1)
            per_edit = isinstance(metric, PerEditMean)
            if per_edit:
                value, error = (nan_to_none(float(x)) for x in metric.mean_and_error())
            else:
                value, error = nan_to_none(float(metric.compute())), None
            if stage == head_stage:
                summary[name] = value
                if per_edit:
                    summary[f"{name}{SE_SUFFIX}"] = error
            # a sequential run measured at several stages shows every stage tagged; otherwise only
            # the non-headline stages get a tag
            if (cfg.sequential and len(stages) > 1) or stage != head_stage:
                summary[f"{name}@{stage}"] = value
        if cfg.protocol == "generation_em":
            for name in ("reliability", "generalization", "portability"):
                # the EM score takes the headline; both keep their errors under their own names
                summary[f"{name}@teacher_forced"] = summary.get(name)
                summary[f"{name}@teacher_forced{SE_SUFFIX}"] = summary.get(f"{name}{SE_SUFFIX}")
                summary[name] = summary.get(f"{name}_em")
                summary[f"{name}{SE_SUFFIX}"] = summary.get(f"{name}_em{SE_SUFFIX}")
        n = self._n_edits
        summary.update(
            seconds_per_edit=((self._stopwatch.elapsed + self._resumed_seconds) / n) if n else None,
            **{f"{_PER_EDIT[k.split('/', 1)[0]]}/{k.split('/', 1)[1]}": v / n for k, v in self._phase_totals.items() if n},
            peak_memory_mb=self._peak_mb if n else None,
            evaluation_seconds=self._eval_watch.elapsed,
            n_edits=n,
            mode=cfg.mode,
            eval_at=cfg.eval_at,
            protocol=cfg.protocol,
            autocast=self._scoring_precision,
            editor=getattr(self.editor, "name", type(self.editor).__name__),
            **self.run_info,
        )
        if self.resumed is not None:  # its evaluation time is not in evaluation_seconds
            summary.update(resumed_from=str(self.resumed.run_dir), resumed_edits=len(self.resumed.records))
        for key, values in self._model_scores.items():
            summary[key] = sum(values) / len(values)
        head_ppl = summary.get(f"perplexity@{head_stage}")
        if head_ppl is not None:
            summary["perplexity"] = head_ppl
        if self._spectrum:
            summary["update_sigma_max"] = max(r.update_sigma_max_after for r in self._spectrum)
            summary["cond_edited_max"] = max(r.cond_after for r in self._spectrum)
            if self._spectrum_pruned:
                summary["update_sigma_max_pruned"] = max(r.update_sigma_max_after for r in self._spectrum_pruned)
                summary["cond_edited_max_pruned"] = max(r.cond_after for r in self._spectrum_pruned)
                summary["prune_alpha"] = self.prune.alpha
            elif self.prune is not None:
                summary["update_sigma_max_before_prune"] = max(r.update_sigma_max_before for r in self._spectrum)
                summary["cond_before_prune_max"] = max(r.cond_before for r in self._spectrum)
                summary["prune_alpha"] = self.prune.alpha
        for key in ("reliability", "generalization", "locality", "portability", "fluency"):
            summary.setdefault(key, None)
        return summary
