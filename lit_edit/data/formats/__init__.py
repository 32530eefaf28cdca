"""One parser per benchmark file format; each turns a parsed JSON file into ``EditRequest`` objects.

A parser has the signature ``(data, FileContext) -> list[EditRequest]``; see
:mod:`lit_edit.data.formats.base` for the checked field access they all share.
"""

from lit_edit.data.formats.base import FileContext, Parser, Record, parse_file
from lit_edit.data.formats.counterfact import counterfact_flat, counterfact_rome, known_facts
from lit_edit.data.formats.knowedit import convsent, knowedit_fact, sanitation, wikibio
from lit_edit.data.formats.mquake import mquake
from lit_edit.data.formats.rows import RowFormat
from lit_edit.data.formats.zsre import zsre_mend

__all__ = [
    "FileContext",
    "Parser",
    "Record",
    "RowFormat",
    "convsent",
    "counterfact_flat",
    "counterfact_rome",
    "knowedit_fact",
    "known_facts",
    "mquake",
    "parse_file",
    "sanitation",
    "wikibio",
    "zsre_mend",
]
