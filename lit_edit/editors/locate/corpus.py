"""Text for key statistics: which documents a second-moment estimate is computed over.

A *source* is either the name ``"wikitext"`` (WikiText-2 ``valid.txt`` then ``test.txt`` from
the shared data folder, see :func:`lit_edit.data.paths.data_root`), a path to a plain text
file, a directory written by ``datasets.Dataset.save_to_disk`` with a ``"text"`` column, or
``"prompts:<dataset>[/<split>][:<field>,...]"``: the prompts of a registered edit dataset
(:func:`lit_edit.data.registry.read_requests`), fields ``prompt``, ``rephrase``, ``locality``,
``portability`` (default: all four). That kind exists because question-answering benchmarks
are asked in a register WikiText hardly has; ``prompts:zsre_train:locality`` (the Natural
Questions of ZsRE's train split) is text in that register, disjoint from the eval split's.
Finally ``"json:<path>:<field>"``: the string ``field`` of every record of a JSON array or a
``.jsonl`` file (read as benchmark files are, :func:`lit_edit.data.reader.read_json`; the path is
relative to the current directory or the data root), each distinct text
once. It exists to pool more text with WikiText: the shared WikiText-2 (valid and test) is 0.53M
SmolLM2 tokens, and along the directions where its ``C`` is smallest, other encyclopedic text
has 1.6-1.7 times the energy (a small sample's estimate is biased low there;
``configs/model/smollm2_135m.yaml`` says what pooling measured).

A list of sources is one corpus: their documents one after the other, in the order given
(``["wikitext", "json:general_eval/model_editing_hurt/test-ClosedDomainQA.jsonl:passage"]``).

Documents, in file order (deterministic; nothing is shuffled):

- WikiText: every paragraph line is one document (that is how the corpus is laid out).
- a text file (``unit="auto"``): blank-line-separated paragraphs when blank lines separate
  it into paragraphs of at most ``MAX_AUTO_PARAGRAPH_LINES`` lines on average, otherwise one
  document per line (so a stray blank line in a one-text-per-line file does not glue thousands
  of lines into two documents). ``unit="paragraph"`` / ``"line"`` force either.
- a ``datasets`` directory: one document per row (split ``"train"`` of a ``DatasetDict``
  when it has one, otherwise all splits in their saved order).
- ``prompts:``: one document per prompt, record by record, fields in the order given.
- ``json:``: one document per distinct value of the field, in record order.

Empty lines and WikiText headings (``" = = Early life = = "``) are never part of a document.
Lines are stripped; a paragraph keeps its line breaks.

:func:`corpus_id` hashes the selected texts themselves, so a cache keyed by it can never
serve statistics of a file whose content has since changed.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Literal

from lit_edit.data.paths import data_root as resolve_data_root
from lit_edit.data.reader import DataFileError, read_json

WIKITEXT = "wikitext"
WIKITEXT_FILES = ("wikitext-2/valid.txt", "wikitext-2/test.txt")
PROMPTS = "prompts:"
JSON = "json:"
PROMPT_FIELDS = ("prompt", "rephrase", "locality", "portability")

Unit = Literal["auto", "paragraph", "line"]
#: ``unit="auto"`` reads blank-line-separated blocks as paragraphs only when they average at most
#: this many lines (prose wrapped at 80 columns: a few to a dozen per paragraph)
MAX_AUTO_PARAGRAPH_LINES = 20
Source = str | tuple[str, ...]  # one source, or several pooled in order


def as_source(corpus) -> Source:
    """``corpus`` as a hashable source: a string stays one, a list (also Hydra's) becomes a tuple."""
    if isinstance(corpus, str):
        return corpus
    try:
        parts = tuple(corpus)
    except TypeError:
        raise ValueError(f"corpus must be a source or a list of sources, got {corpus!r}") from None
    if not parts or not all(isinstance(part, str) for part in parts):
        raise ValueError(f"corpus must be a source or a non-empty list of sources, got {corpus!r}")
    return parts[0] if len(parts) == 1 else parts

_HEADING = re.compile(r"(?:=\s*)+\S.*?(?:\s*=)+")


def is_heading(line: str) -> bool:
    """A WikiText section heading: ``= Title =``, ``= = Sub = =`` (surrounding space ignored)."""
    text = line.strip()
    return text.startswith("=") and text.endswith("=") and _HEADING.fullmatch(text) is not None


def parse_prompts_source(source: str) -> tuple[str, str | None, tuple[str, ...]]:
    """``(dataset, split, fields)`` of a ``prompts:<dataset>[/<split>][:<field>,...]`` source."""
    body = source[len(PROMPTS):]
    name_split, _, fields_text = body.partition(":")
    name, _, split = name_split.partition("/")
    fields = tuple(f.strip() for f in fields_text.split(",") if f.strip()) if fields_text else PROMPT_FIELDS
    unknown = [f for f in fields if f not in PROMPT_FIELDS]
    if not name or unknown:
        raise ValueError(f"corpus {source!r}: expected 'prompts:<dataset>[/<split>][:<field>,...]' with fields "
                         f"from {list(PROMPT_FIELDS)}" + (f"; unknown field(s) {unknown}" if unknown else ""))
    return name, split or None, fields


def parse_json_source(source: str) -> tuple[str, str]:
    """``(path, field)`` of a ``json:<path>:<field>`` source (the field is after the last colon)."""
    path, sep, name = source[len(JSON):].rpartition(":")
    if not sep or not path or not name:
        raise ValueError(f"corpus {source!r}: expected 'json:<path>:<field>'")
    return path, name


def resolve_source(source: str, data_root: str | None = None) -> tuple[str, list[Path]]:
    """``(kind, paths)`` of a source: ``"wikitext"``, ``"text"``, ``"datasets"``, ``"prompts"`` or ``"json"``.

    Relative paths are tried against the current directory first, then under the data root
    (when one can be resolved). A missing source is a ``FileNotFoundError`` naming what was tried.
    """
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"corpus source must be 'wikitext' or a path, got {source!r}")
    if source == WIKITEXT:
        root = resolve_data_root(data_root)
        paths = [root / name for name in WIKITEXT_FILES]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"corpus 'wikitext' needs {missing} under the data root {root}")
        return WIKITEXT, paths
    if source.startswith(PROMPTS):
        from lit_edit.data.registry import split_file  # lazily: the registry imports datasets

        name, split, _ = parse_prompts_source(source)
        return "prompts", [split_file(name, split, data_root)]
    if source.startswith(JSON):
        path, _ = parse_json_source(source)
        kind, paths = resolve_source(path, data_root)
        if kind != "text":
            raise ValueError(f"corpus {source!r}: {path!r} is a {kind} source, not a JSON or JSON-lines file")
        return "json", paths

    given = Path(source).expanduser()
    tried = [given if given.is_absolute() else Path.cwd() / given]
    if not given.is_absolute():
        try:
            tried.append(resolve_data_root(data_root) / given)
        except FileNotFoundError:
            pass
    for path in tried:
        if path.is_file():
            return "text", [path.resolve()]
        if path.is_dir():
            return "datasets", [path.resolve()]
    raise FileNotFoundError(
        f"corpus {source!r} not found (tried {[str(p) for p in tried]}); use 'wikitext', a text file, "
        "or a directory saved with datasets' save_to_disk"
    )


def source_signature(source: Source, data_root: str | None = None) -> tuple:
    """Cheap change detector for a source: its files' paths, sizes and modification times."""
    if not isinstance(source, str):
        return tuple(source_signature(part, data_root) for part in source)
    kind, paths = resolve_source(source, data_root)
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return (kind, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


def _paragraphs(text: str) -> list[str]:
    docs, current = [], []
    for line in text.splitlines():
        if not line.strip():
            if current:
                docs.append("\n".join(current))
            current = []
        elif not is_heading(line):
            current.append(line.strip())
    if current:
        docs.append("\n".join(current))
    return docs


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not is_heading(line)]


def _split(text: str, unit: Unit) -> list[str]:
    if unit == "auto":
        paragraphs, lines = _paragraphs(text), _lines(text)
        blocks_are_paragraphs = len(paragraphs) > 1 and len(lines) <= MAX_AUTO_PARAGRAPH_LINES * len(paragraphs)
        return paragraphs if blocks_are_paragraphs else lines
    if unit == "paragraph":
        return _paragraphs(text)
    if unit == "line":
        return _lines(text)
    raise ValueError(f"unit must be 'auto', 'paragraph' or 'line', got {unit!r}")


def _dataset_texts(path: Path) -> list[str]:
    import datasets  # imported lazily: ~1 s, and only directory sources need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - re-raised with what the directory should be
        raise FileNotFoundError(
            f"corpus directory {path} is not a dataset saved with datasets' save_to_disk ({exc})"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        parts = [loaded["train"]] if "train" in loaded else list(loaded.values())
    else:
        parts = [loaded]
    texts: list[str] = []
    for part in parts:
        if "text" not in part.column_names:
            raise ValueError(f"dataset {path} has no 'text' column (columns: {part.column_names})")
        texts.extend(row for row in part["text"] if isinstance(row, str))
    return texts


def _request_prompts(source: str, data_root: str | None) -> list[str]:
    from lit_edit.data.registry import read_requests

    name, split, fields = parse_prompts_source(source)
    docs: list[str] = []
    for request in read_requests(name, split=split, data_root=data_root):
        for name_ in fields:
            if name_ == "prompt":
                docs.append(request.prompt)
            elif name_ == "rephrase":
                docs.extend(request.rephrase_prompts)
            else:
                docs.extend(probe.prompt for probes in getattr(request, name_).values() for probe in probes)
    return docs


def _json_field(source: str, path: Path) -> list[str]:
    """The distinct strings ``field`` of the records in ``path`` (a JSON array, or JSON lines)."""
    _, name = parse_json_source(source)
    try:
        records = read_json(path)
    except DataFileError as exc:
        raise ValueError(f"corpus {source!r}: {exc}") from exc
    if isinstance(records, dict):
        records = [records]  # a file of one record
    if not isinstance(records, list):
        raise ValueError(f"corpus {source!r}: {path} holds a {type(records).__name__}, not records")
    missing = [i for i, r in enumerate(records) if not isinstance(r, dict) or not isinstance(r.get(name), str)]
    if missing:
        raise ValueError(f"corpus {source!r}: {len(missing)} of {len(records)} records in {path} have no string "
                         f"field {name!r} (first: record {missing[0]})")
    return list(dict.fromkeys(r[name] for r in records))


def all_documents(source: Source, data_root: str | None = None, unit: Unit = "auto") -> list[str]:
    """Every document of ``source`` in order (see the module docstring for what one is)."""
    if not isinstance(source, str):
        return [doc for part in as_source(source) for doc in all_documents(part, data_root, unit)]
    kind, paths = resolve_source(source, data_root)
    if kind == "prompts":
        return [doc.strip() for doc in _request_prompts(source, data_root) if doc.strip()]
    if kind == "datasets":
        return [doc.strip() for doc in _dataset_texts(paths[0]) if doc.strip() and not is_heading(doc)]
    if kind == "json":
        return [doc.strip() for doc in _json_field(source, paths[0]) if doc.strip()]
    if kind == WIKITEXT:
        unit = "line"
    docs: list[str] = []
    for path in paths:
        docs.extend(_split(path.read_text(encoding="utf-8"), unit))
    return docs


def text_samples(
    source: Source, n_samples: int, data_root: str | None = None, unit: Unit = "auto", warn: bool = True
) -> list[str]:
    """The first ``n_samples`` documents of ``source`` (all of them, with a warning if ``warn``, if fewer).

    Callers that only hash the selection (a cache lookup) pass ``warn=False``: the shortfall
    matters when statistics are computed from it, not on every load of a cached result.
    """
    if int(n_samples) <= 0:
        raise ValueError(f"n_samples must be positive, got {n_samples}")
    docs = all_documents(source, data_root, unit)
    if not docs:
        raise ValueError(f"corpus {source!r} contains no text")
    if warn:
        warn_if_short(source, len(docs), n_samples, "using all of them")
    return docs[: int(n_samples)]


def warn_if_short(source: Source, found: int, n_samples: int, action: str) -> None:
    """Warn that ``source`` holds fewer than ``n_samples`` documents and say what is done instead."""
    if found < int(n_samples):
        warnings.warn(f"corpus {source!r} has only {found} documents; {action}, not {int(n_samples)}")


def texts_id(texts: list[str]) -> str:
    """sha256 (16 hex) of a list of texts; each is length-prefixed so boundaries count."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:16]


def corpus_id(source: Source, n_samples: int, data_root: str | None = None, unit: Unit = "auto") -> str:
    """Content hash of the texts :func:`text_samples` selects (changes whenever they do)."""
    return texts_id(text_samples(source, n_samples, data_root, unit, warn=False))
