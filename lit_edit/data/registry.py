"""Dataset names used in configs, mapped to files under the data root and their parsers.

Configs name a benchmark (``data.name=zsre``) and optionally a split or an explicit file;
this module is the only place that knows where each file lives and which format it has.
Edit datasets load as ``datasets.Dataset`` rows in :meth:`EditRequest.to_row` form; probe
sets that are not edit requests (PIQA, general-ability tasks) load as plain rows via
:func:`load_rows`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import datasets

from lit_edit.data import formats
from lit_edit.data.formats.base import FileContext, Parser, parse_file
from lit_edit.data.formats.rows import RowFormat
from lit_edit.data.paths import data_file, display_name
from lit_edit.data.paths import data_root as resolve_data_root
from lit_edit.data.reader import read_json
from lit_edit.data.schema import EditRequest

log = logging.getLogger(__name__)

PathArg = str | os.PathLike[str] | None


@dataclass(frozen=True)
class SplitFile:
    """A file relative to the data root; ``known_invalid``: record index -> why the source record is unusable."""

    path: str
    known_invalid: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSpec:
    """Parser plus files per split; the first split is the default."""

    parser: Parser
    splits: Mapping[str, SplitFile]
    description: str

    @property
    def default_split(self) -> str:
        return next(iter(self.splits))


def _spec(parser: Parser, description: str, **splits: str | SplitFile) -> DatasetSpec:
    files = {k: v if isinstance(v, SplitFile) else SplitFile(v) for k, v in splits.items()}
    return DatasetSpec(parser, MappingProxyType(files), description)


# Two ZsRE train records have an empty ``alt`` in the source (cond reads "female >>  || ..."):
# no target, so no edit. They are skipped with a warning; any other bad record still raises.
_ZSRE_TRAIN = SplitFile(
    "zsre/zsre_mend_train-1k.json",
    MappingProxyType({534: "empty alt (no target_new)", 723: "empty alt (no target_new)"}),
)
_ZSRE_EVAL = "zsre/zsre_mend_eval_portability_gpt4.json"
_CF = "counterfact/easyedit/counterfact-{}.json"

_KE = "knowedit/"
DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "zsre": _spec(formats.zsre_mend, "ZsRE eval, MEND format, one-hop portability",
                  eval=_ZSRE_EVAL, train=_ZSRE_TRAIN),
    "zsre_train": _spec(formats.zsre_mend, "ZsRE train subset (1k), MEND format", train=_ZSRE_TRAIN),
    "zsre_inverse_relation": _spec(formats.zsre_mend, "ZsRE + inverse-relation portability",
                                   eval="portability/zsre_inverse_relation.json"),
    "zsre_subject_replace": _spec(formats.zsre_mend, "ZsRE + subject-alias portability",
                                  eval="portability/zsre_subject_replace.json"),
    "counterfact": _spec(formats.counterfact_flat, "CounterFact, EasyEdit flat format",
                         edit=_CF.format("edit"), train=_CF.format("train"), val=_CF.format("val")),
    "counterfact_train": _spec(formats.counterfact_flat, "CounterFact train, flat format", train=_CF.format("train")),
    "counterfact_val": _spec(formats.counterfact_flat, "CounterFact val, flat format", val=_CF.format("val")),
    "counterfact_rome": _spec(formats.counterfact_rome, "CounterFact, ROME format, one-hop portability",
                              eval="portability/counterfact_portability_gpt4.json"),
    "counterfact_subject_replace": _spec(formats.counterfact_rome, "CounterFact + subject-alias portability",
                                         eval="portability/counterfact_subject_replace.json"),
    "counterfact_distracting_neighbor": _spec(formats.counterfact_rome, "CounterFact + distracting neighbours",
                                              eval="locality/counterfact_distracting_neighbor.json"),
    "known_1000": _spec(formats.known_facts, "ROME known facts (causal tracing)",
                        all="counterfact/rome/known_1000.json"),
    "knowedit_zsre": _spec(formats.knowedit_fact, "KnowEdit ZsRE", test=_KE + "ZsRE/ZsRE-test-all.json"),
    "wiki_counterfact": _spec(formats.knowedit_fact, "KnowEdit WikiData counterfact",
                              test=_KE + "wiki_counterfact/test_cf.json", train=_KE + "wiki_counterfact/train_cf.json"),
    "wiki_recent": _spec(formats.knowedit_fact, "KnowEdit WikiData recent (insertion)",
                         train=_KE + "wiki_recent/recent_train.json"),
    "wikibio": _spec(formats.wikibio, "KnowEdit WikiBio (hallucination)",
                     test=_KE + "WikiBio/wikibio-test-all.json", train=_KE + "WikiBio/wikibio-train-all.json"),
    "convsent": _spec(formats.convsent, "KnowEdit ConvSent (sentiment)",
                      test=_KE + "convsent/blender_test.json", val=_KE + "convsent/blender_val.json"),
    "sanitation": _spec(formats.sanitation, "KnowEdit Sanitation (TriviaQA erasure)",
                        test=_KE + "Sanitation/trivia_qa_test.json", train=_KE + "Sanitation/trivia_qa_train.json"),
    "mquake": _spec(formats.mquake, "MQuAKE-hard multi-hop (4 rewrites per case)", hard="mquake/MQuAKE-hard.json"),
})  # fmt: skip

_GLUE = "general_eval/alphaedit_glue_eval/"
_HURT = "general_eval/model_editing_hurt/"
_PRUNE = "general_eval/prune_task_data/"
ROW_DATASETS: Mapping[str, tuple[str, RowFormat]] = MappingProxyType({
    "piqa": ("locality/piqa_valid.jsonl", formats.rows.PIQA),
    "glue_cola": (_GLUE + "cola.json", formats.rows.SENTENCE_LABEL),
    "glue_dialogue": (_GLUE + "dialogue.json", formats.rows.DIALOGUE),
    "glue_mmlu": (_GLUE + "mmlu.json", formats.rows.MMLU),
    "glue_mrpc": (_GLUE + "mrpc.json", formats.rows.PAIR_LABEL),
    "glue_nli": (_GLUE + "nli.json", formats.rows.PAIR_LABEL),
    "glue_rte": (_GLUE + "rte.json", formats.rows.PAIR_LABEL),
    "glue_sentiment": (_GLUE + "sentiment_analysis.json", formats.rows.SENTENCE_LABEL),
    "glue_sst2": (_GLUE + "sst2.json", formats.rows.SENTENCE_LABEL),
    "hurt_boolq": (_HURT + "test-ClosedDomainQA.jsonl", formats.rows.BOOLQ),
    "hurt_ner": (_HURT + "test-NER.json", formats.rows.NER),
    "hurt_sentiment": (_HURT + "test-SentimentAnalysis.json", formats.rows.SENTENCE_LABEL),
    "prune_nli": (_PRUNE + "test-NLI.json", formats.rows.PAIR_LABEL),
    "prune_nq": (_PRUNE + "test-OpenDomainQA.jsonl", formats.rows.OPEN_QA),
    "prune_gsm8k": (_PRUNE + "test-reasoning.jsonl", formats.rows.GSM8K),
    "prune_samsum": (_PRUNE + "test-summarization.json", formats.rows.SUMMARIZATION),
})  # fmt: skip

_STRINGS = datasets.List(datasets.Value("string"))
_PROBE = {"name": datasets.Value("string"), "prompt": datasets.Value("string"), "answers": _STRINGS}
# Explicit so that all-empty lists and all-None subjects/group ids never break Arrow type inference.
REQUEST_FEATURES = datasets.Features({
    "prompt": datasets.Value("string"),
    "target_new": datasets.Value("string"),
    "subject": datasets.Value("string"),
    "ground_truth": _STRINGS,
    "rephrase_prompts": _STRINGS,
    "locality": datasets.List(_PROBE),
    "portability": datasets.List(_PROBE),
    "generation_prompts": _STRINGS,
    "case_id": datasets.Value("string"),
    "group_id": datasets.Value("string"),
    "source": datasets.Value("string"),
    "extra": datasets.Value("string"),
})  # fmt: skip


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_requests`."""
    return sorted(DATASETS)


def row_dataset_names() -> list[str]:
    """Names accepted by :func:`load_rows`."""
    return sorted(ROW_DATASETS)


def _unknown(name: str, kind: str) -> ValueError:
    return ValueError(
        f"unknown {kind} {name!r}; edit datasets (load_requests): {', '.join(dataset_names())}; "
        f"probe row sets (load_rows): {', '.join(row_dataset_names())}"
    )


def _locate(default: str, path: PathArg, root: PathArg) -> tuple[Path, str]:
    """The file to read and its short name for ``source``; only relative paths need the data root."""
    chosen = Path(path).expanduser() if path is not None else Path(default)
    if chosen.is_absolute():
        return data_file(chosen, chosen.parent), chosen.name
    base = resolve_data_root(root)
    file = data_file(chosen, base)
    return file, display_name(file, base)


def _log_issues(source: str, issues: Mapping[str, list[int]]) -> None:
    for issue, indices in issues.items():
        shown = ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")
        log.warning("%s: %d record(s): %s [records %s]", source, len(indices), issue, shown)


def check_limit(limit: int | None) -> None:
    """Reject negative or non-int limits early (a negative slice would silently drop the tail)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")


def _split_entry(name: str, split: str | None) -> tuple[DatasetSpec, str, SplitFile]:
    """The registered dataset, the split chosen (its default when ``None``) and its file entry."""
    if name in ROW_DATASETS:
        raise ValueError(f"{name!r} is a probe row set, not an edit dataset; load it with load_rows({name!r})")
    if name not in DATASETS:
        raise _unknown(name, "dataset")
    spec = DATASETS[name]
    split = split or spec.default_split
    if split not in spec.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")
    return spec, split, spec.splits[split]


def _split_location(name: str, split: str, entry: SplitFile, path: PathArg, root: PathArg) -> tuple[Path, str]:
    try:
        return _locate(entry.path, path, root)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"dataset {name!r} split {split!r}: {err}") from err


def split_file(name: str, split: str | None = None, data_root: PathArg = None) -> Path:
    """The file :func:`read_requests` reads for ``name``/``split`` (for change detection by callers)."""
    _, split, entry = _split_entry(name, split)
    return _split_location(name, split, entry, None, data_root)[0]


def read_requests(
    name: str, path: PathArg = None, split: str | None = None, data_root: PathArg = None
) -> list[EditRequest]:
    """Parse every record of a registered dataset into :class:`EditRequest` objects (no Arrow).

    ``path`` overrides the split's file (absolute, or relative to the data root) and is read
    with the dataset's parser; the registry's known-invalid records apply only to its own file.
    Issues (subjects not in prompts, empty aliases, skipped known-invalid records) are logged
    as warnings with counts and record indices.
    """
    spec, split, entry = _split_entry(name, split)
    file, source = _split_location(name, split, entry, path, data_root)
    requests, issues = parse_file(file, spec.parser, source, entry.known_invalid if path is None else None)
    _log_issues(source, issues)
    return requests


def load_requests(
    name: str,
    path: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    data_root: str | None = None,
) -> datasets.Dataset:
    """Load a registered edit dataset as rows in :meth:`EditRequest.to_row` form.

    ``path`` overrides the registered file (absolute, or relative to the data root); ``limit``
    keeps the first N requests in file order (shuffling is the data module's job).
    Unknown names raise ``ValueError`` listing the known ones; a missing file raises
    ``FileNotFoundError`` naming the path; a malformed record raises ``RecordError``.
    """
    check_limit(limit)
    rows = [r.to_row() for r in read_requests(name, path=path, split=split, data_root=data_root)[:limit]]
    if not rows:  # from_list([], features=...) fails in datasets 5.x; an empty column dict does not
        return datasets.Dataset.from_dict({column: [] for column in REQUEST_FEATURES}, features=REQUEST_FEATURES)
    return datasets.Dataset.from_list(rows, features=REQUEST_FEATURES)


def requests_from_dataset(ds: datasets.Dataset) -> list[EditRequest]:
    """Rows from :func:`load_requests` back to :class:`EditRequest` objects, in order."""
    return [EditRequest.from_row(row) for row in ds.to_list()]


def load_rows(
    name: str, path: str | None = None, limit: int | None = None, data_root: str | None = None
) -> datasets.Dataset:
    """Load a probe set that is not an edit dataset (``piqa``, ``glue_*``, ``hurt_*``, ``prune_*``) as plain rows."""
    if name not in ROW_DATASETS:
        raise _unknown(name, "probe row set")
    check_limit(limit)
    default, row_format = ROW_DATASETS[name]
    try:
        file, source = _locate(default, path, data_root)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"probe row set {name!r}: {err}") from err
    rows: list[dict[str, Any]] = row_format.parse(read_json(file), FileContext(file, source))
    return datasets.Dataset.from_list(rows[:limit])
