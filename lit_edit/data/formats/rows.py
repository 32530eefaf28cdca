"""Probe sets that are not edit requests (PIQA, general-ability tasks): plain rows.

Editors never consume these; the evaluation loop asks a model these questions before and
after editing to measure side effects. Each row keeps every original field plus
``source`` ("file:index"); only obvious normalisations are applied: numeric string labels
become ints (``"1"`` -> ``1``, as in the int-labelled GLUE files) and GSM8K gets
``final_answer`` (the text after ``####``). Required fields are type-checked through the
same :class:`Record` accessors, so a broken row raises :class:`RecordError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lit_edit.data.formats.base import FileContext, Record, expect_list


def _label(rec: Record, name: str) -> int | str:
    value = rec.value(name, (int, str))
    return int(value) if isinstance(value, str) and value.strip().isdigit() else value


def _final_answer(rec: Record, name: str) -> str:
    solution = rec.text(name)
    if "####" not in solution:
        raise rec.error(name, "GSM8K solution without a '#### <answer>' line")
    return solution.rsplit("####", 1)[1].strip()


_KINDS: Mapping[str, Callable[[Record, str], Any]] = {
    "text": Record.text,
    "str": lambda rec, name: rec.value(name, str),
    "int": lambda rec, name: rec.value(name, int),
    "bool": lambda rec, name: rec.value(name, bool),
    "list": lambda rec, name: rec.value(name, list),
    "label": _label,
}


@dataclass(frozen=True)
class RowFormat:
    """Required fields and their kinds (keys of ``_KINDS``); ``derived`` adds fields computed from others."""

    fields: Mapping[str, str]
    derived: Mapping[str, tuple[str, Callable[[Record, str], Any]]] = field(default_factory=dict)

    def parse(self, data: Any, ctx: FileContext) -> list[dict[str, Any]]:
        rows = []
        for index, raw in enumerate(expect_list(data, ctx)):
            rec = Record(ctx, index, raw)
            row = dict(raw)
            row.update({name: _KINDS[kind](rec, name) for name, kind in self.fields.items()})
            row.update({name: fn(rec, source) for name, (source, fn) in self.derived.items()})
            row["source"] = f"{ctx.source}:{index}"
            rows.append(row)
        return rows


PIQA = RowFormat({"goal": "text", "sol1": "text", "sol2": "text"})
SENTENCE_LABEL = RowFormat({"sentence": "text", "label": "label"})
PAIR_LABEL = RowFormat({"sentence1": "text", "sentence2": "text", "label": "label"})
DIALOGUE = RowFormat({"article": "text", "options": "list", "answers": "text"})
MMLU = RowFormat({"question": "text", "choices": "list", "answer": "int", "subject": "text"})
BOOLQ = RowFormat({"question": "text", "passage": "text", "answer": "bool"})
NER = RowFormat({"tokens": "list", "ner_tags": "list"})
OPEN_QA = RowFormat({"question": "text", "answer": "list"})
GSM8K = RowFormat({"question": "text", "answer": "text"}, {"final_answer": ("answer", _final_answer)})
SUMMARIZATION = RowFormat({"dialogue": "text", "summary": "text"})
