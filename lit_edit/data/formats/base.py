"""Checked access to raw benchmark records, shared by every format parser.

Parsers read fields only through :class:`Record`, so a missing or mistyped field always
becomes a :class:`RecordError` naming file, record index and field, and every field a
parser did not consume lands in ``EditRequest.extra`` instead of vanishing. Values that are
well typed but empty (an alias ``""``, a probe without answer) are not errors: they are set
aside visibly (``FileContext.issues``, ``extra["invalid_probes"]``) so one empty alias does
not make a 10,000-record file unusable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_edit.data.reader import DataFileError, read_json
from lit_edit.data.schema import EditRequest, Probe, RecordError

_MISSING: Any = object()


@dataclass
class FileContext:
    """One file being parsed: its path, the name used in ``EditRequest.source``, and what was seen.

    ``known_invalid`` maps record indices that the registry documents as broken in the source
    file to the reason; only those may be skipped, any other bad record raises.
    ``issues`` maps a human-readable issue to the record indices it concerns, for logging.
    """

    path: Path
    source: str
    known_invalid: Mapping[int, str] = field(default_factory=dict)
    issues: dict[str, list[int]] = field(default_factory=dict)

    def note(self, issue: str, index: int) -> None:
        indices = self.issues.setdefault(issue, [])
        if not indices or indices[-1] != index:
            indices.append(index)

    def error(self, index: int, field_name: str, problem: str) -> RecordError:
        return RecordError(str(self.path), index, field_name, problem)

    def guard(self, index: int, build: Callable[..., Any], *args: Any) -> list[Any]:
        """Run ``build(*args)`` for record ``index``; skip it only if it fails *and* is a known-invalid record."""
        try:
            result = build(*args)
        except RecordError:
            if index not in self.known_invalid:
                raise
            self.note(f"skipped: known invalid in the source ({self.known_invalid[index]})", index)
            return []
        if index in self.known_invalid:
            self.note("listed as known invalid but parsed fine; kept", index)
        return list(result) if isinstance(result, (list, tuple)) else [result]


Parser = Callable[[Any, FileContext], list[EditRequest]]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int subclass; a JSON true is never a valid id or count.
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def flatten_answers(value: Any) -> list[str] | None:
    """Flatten ``str | list[str] | list[list[str]]`` (KnowEdit nests aliases) in order; None if mistyped."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        return None
    out: list[str] = []
    for item in value:
        flat = flatten_answers(item)
        if flat is None:
            return None
        out.extend(flat)
    return out


def expect_list(data: Any, ctx: FileContext) -> list[Any]:
    if not isinstance(data, list):
        raise DataFileError(f"{ctx.path}: expected a JSON list of records, got {_type_name(data)}")
    return data


def expect_dict(data: Any, ctx: FileContext) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DataFileError(f"{ctx.path}: expected a JSON object at top level, got {_type_name(data)}")
    return data


class Record:
    """A raw JSON object with typed accessors that raise :class:`RecordError` and track what was read.

    ``prefix`` qualifies field names in errors and leftovers for nested objects
    (``requested_rewrite.prompt``, ``K_F[3].question``).
    """

    def __init__(self, ctx: FileContext, index: int, raw: Any, prefix: str = "") -> None:
        if not isinstance(raw, dict):
            raise ctx.error(index, prefix.rstrip(".") or "<record>", f"expected a JSON object, got {_type_name(raw)}")
        self.ctx, self.index, self.raw, self.prefix = ctx, index, raw, prefix
        self.extra: dict[str, Any] = {}
        self._used: set[str] = set()
        self._children: dict[str, Record] = {}
        self._set_aside: list[dict[str, Any]] = []

    # -- primitive access ----------------------------------------------------------------
    def error(self, name: str, problem: str) -> RecordError:
        return self.ctx.error(self.index, self.prefix + name, problem)

    def has(self, name: str) -> bool:
        return name in self.raw

    def value(self, name: str, types: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The field's value, checked against ``types``; a missing field is an error unless ``default`` is given."""
        types = types if isinstance(types, tuple) else (types,)
        self._used.add(name)
        if name not in self.raw:
            if default is _MISSING:
                raise self.error(name, "missing")
            return default
        value = self.raw[name]
        if not _has_type(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise self.error(name, f"expected {expected}, got {_type_name(value)}")
        return value

    def text(self, name: str, default: Any = _MISSING) -> str:
        """A non-empty string field."""
        value = self.value(name, str, default)
        if value is not default and not value.strip():
            raise self.error(name, "empty string")
        return value

    def texts(self, name: str, default: Any = _MISSING, *, nonempty: bool = False) -> list[str]:
        """A string or a list of non-empty strings (benchmarks use both for rephrases)."""
        value = self.value(name, (str, list), default)
        items = [value] if isinstance(value, str) else list(value)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                raise self.error(name, f"item {i} must be a non-empty string, got {item!r}")
        if nonempty and not items:
            raise self.error(name, "empty list")
        return items

    def key(self, name: str) -> str:
        """An id that benchmarks store as int or string; normalised to ``str``."""
        return str(self.value(name, (int, str)))

    def answers(self, name: str, *, required: bool = True) -> tuple[str, ...]:
        """All answers/aliases of a field, flattened, de-duplicated in order, empty strings dropped (noted)."""
        flat = flatten_answers(self.value(name, (str, list)))
        if flat is None:
            raise self.error(name, "expected a string or (nested) list of strings")
        kept = tuple(dict.fromkeys(a for a in flat if a.strip()))
        if any(not a.strip() for a in flat):
            where = re.sub(r"\[\d+\]", "[]", self.prefix + name)  # one issue per field, not per list position
            self.ctx.note(f"empty answer string dropped from {where!r}", self.index)
        if required and not kept:
            raise self.error(name, "no non-empty answer")
        return kept

    def answers_with_aliases(self, name: str, aliases: str) -> tuple[str, ...]:
        """A main answer followed by its optional alias list (MQuAKE style); the main answer stays first."""
        alias_values = self.answers(aliases, required=False) if self.has(aliases) else ()
        return tuple(dict.fromkeys((*self.answers(name), *alias_values)))

    # -- nested objects ------------------------------------------------------------------
    def sub(self, name: str) -> Record:
        """A nested object; its unread fields become leftovers ``name.field`` of this record."""
        child = Record(self.ctx, self.index, self.value(name, dict), f"{self.prefix}{name}.")
        self._children[name] = child
        return child

    def items(self, name: str, *, nonempty: bool = True) -> list[Record]:
        """A list of objects; the caller is responsible for each child's leftovers."""
        values = self.value(name, list)
        if nonempty and not values:
            raise self.error(name, "empty list")
        return [Record(self.ctx, self.index, v, f"{self.prefix}{name}[{j}].") for j, v in enumerate(values)]

    def groups(self, name: str) -> dict[str, list[Probe]]:
        """KnowEdit-style ``{group: [{prompt, ground_truth}, ...]}``; an absent field means no groups.

        A probe with an empty prompt or no non-empty answer cannot be scored; it is kept in
        ``extra["invalid_probes"]`` (with its group) rather than dropped or failing the record.
        """
        out: dict[str, list[Probe]] = {}
        for group, entries in self.value(name, dict, {}).items():
            if not isinstance(entries, list):
                raise self.error(f"{name}.{group}", f"expected list, got {_type_name(entries)}")
            for j, entry in enumerate(entries):
                item = Record(self.ctx, self.index, entry, f"{self.prefix}{name}.{group}[{j}].")
                prompt = item.value("prompt", str)
                answers = item.answers("ground_truth", required=False)
                if prompt.strip() and answers:
                    out.setdefault(group, []).append(Probe(prompt, answers))
                else:
                    where = f"{name}.{group}"
                    self._set_aside.append({"group": where, "prompt": prompt, "ground_truth": entry["ground_truth"]})
                    self.ctx.note(f"{name} probe with empty prompt/answer kept in extra['invalid_probes']", self.index)
                if rest := item.leftovers():  # probe-level fields other than prompt/ground_truth
                    self.extra.setdefault(f"{name}_probe_extra", []).append({"group": group, "index": j, **rest})
        return out

    def subject(self, name: str, prompt: str) -> str | None:
        """The subject if it occurs in ``prompt`` (``EditRequest`` requires that), else an honest fallback.

        A case-only mismatch ("Altarpiece" vs "altarpiece") is resolved to the prompt's
        spelling, which names the same entity; otherwise the subject is None. Either way the
        original is kept in ``extra["subject"]`` and the record is noted, never dropped.
        """
        subject = self.text(name)
        if subject in prompt:
            return subject
        self.extra["subject"] = subject
        start = prompt.lower().find(subject.lower())
        if start >= 0 and len(prompt.lower()) == len(prompt) and len(subject.lower()) == len(subject):
            issue = "subject found only case-insensitively; prompt spelling used, original in extra['subject']"
            self.ctx.note(issue, self.index)
            return prompt[start : start + len(subject)]
        self.ctx.note("subject not in prompt; subject=None, original in extra['subject']", self.index)
        return None

    # -- output --------------------------------------------------------------------------
    def leftovers(self) -> dict[str, Any]:
        """Fields nobody read (recursively through :meth:`sub`), so they survive in ``extra``."""
        out: dict[str, Any] = {}
        for name, value in self.raw.items():
            if name in self._children:
                out.update({f"{name}.{k}": v for k, v in self._children[name].leftovers().items()})
            elif name not in self._used:
                out[name] = value
        return out

    def request(self, *, extra: Mapping[str, Any] | None = None, **fields: Any) -> EditRequest:
        """Build the :class:`EditRequest` with unread fields in extra; empty probe groups are omitted
        (they would not survive ``to_row``); a schema violation becomes a :class:`RecordError`."""
        merged = {**self.leftovers(), **self.extra, **(extra or {})}
        if self._set_aside:
            merged["invalid_probes"] = self._set_aside
        for kind in ("locality", "portability"):
            fields[kind] = {k: v for k, v in fields.get(kind, {}).items() if v}
        fields.setdefault("case_id", str(self.index))
        try:
            return EditRequest(source=f"{self.ctx.source}:{self.index}", extra=merged, **fields)
        except ValueError as err:
            raise self.error("<record>", str(err)) from err


def per_record(build: Callable[[Record], EditRequest | Iterable[EditRequest]]) -> Parser:
    """Lift a one-record builder to a parser of a JSON list of records."""

    def parse(data: Any, ctx: FileContext) -> list[EditRequest]:
        def one(index: int, raw: Any) -> EditRequest | Iterable[EditRequest]:
            return build(Record(ctx, index, raw))

        return [r for index, raw in enumerate(expect_list(data, ctx)) for r in ctx.guard(index, one, index, raw)]

    parse.__doc__ = build.__doc__
    parse.__name__ = build.__name__.lstrip("_")
    return parse


def rewrite_template(rewrite: Record) -> tuple[str, str]:
    """ROME/MQuAKE ``requested_rewrite``: the ``{}`` template (checked) and the subject that fills it."""
    template, subject = rewrite.text("prompt"), rewrite.text("subject")
    if template.count("{}") != 1:
        raise rewrite.error("prompt", f"template must contain exactly one '{{}}', got {template!r}")
    return template, subject


def parse_file(
    path: Path, parser: Parser, source: str, known_invalid: Mapping[int, str] | None = None
) -> tuple[list[EditRequest], dict[str, list[int]]]:
    """Read and parse one file; return the requests and the issues seen (for the caller to log)."""
    ctx = FileContext(path=path, source=source, known_invalid=known_invalid or {})
    return parser(read_json(path), ctx), ctx.issues
