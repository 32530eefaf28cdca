"""Flatten a batch of edit requests into one list of probes, so one scoring call covers all.

Each probe remembers which edit it belongs to and what it measures; metrics then group
by ``edit`` (each edit weighs the same however many probes it has) and by ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from lit_edit.data.schema import EditRequest

#: What a probe measures. ``*_true`` and ``locality_new`` only exist for the CounterFact
#: probability protocol, which compares P(target_new) with P(ground truth) on the same prompt.
KINDS = ("reliability", "generalization", "portability", "locality", "reliability_true",
         "generalization_true", "locality_new")


@dataclass(frozen=True)
class ProbeRow:
    edit: int  # index of the edit within the run
    kind: str
    group: str  # benchmark's probe-group name ("nq", "Reasoning", ...) or the kind itself
    prompt: str
    answer: str
    aliases: tuple[str, ...]
    slot: int  # position of this probe among its edit's probes of the same kind/group


def build_probes(requests: Sequence[EditRequest], first_edit: int, *, counterfact: bool = False,
                 kinds: Iterable[str] = KINDS) -> list[ProbeRow]:
    """All probes of ``requests``; edits are numbered from ``first_edit`` in order."""
    wanted = set(kinds)
    rows: list[ProbeRow] = []

    def add(edit: int, kind: str, group: str, prompts_answers: list[tuple[str, tuple[str, ...]]]) -> None:
        if kind in wanted:
            rows.extend(ProbeRow(edit, kind, group, p, a[0], a, s) for s, (p, a) in enumerate(prompts_answers))

    for offset, req in enumerate(requests):
        e = first_edit + offset
        new = (req.target_new,)
        add(e, "reliability", "reliability", [(req.prompt, new)])
        add(e, "generalization", "generalization", [(p, new) for p in req.rephrase_prompts])
        for name, probes in req.portability.items():
            add(e, "portability", name, [(p.prompt, p.answers) for p in probes])
        for name, probes in req.locality.items():
            add(e, "locality", name, [(p.prompt, p.answers) for p in probes])
        if counterfact and req.ground_truth:
            true = tuple(req.ground_truth)
            add(e, "reliability_true", "reliability", [(req.prompt, true)])
            add(e, "generalization_true", "generalization", [(p, true) for p in req.rephrase_prompts])
            for name, probes in req.locality.items():
                add(e, "locality_new", name, [(p.prompt, new) for p in probes])
    return rows


def locality_key(row: ProbeRow) -> tuple[int, str, int]:
    """Identity of a locality probe across the pre-edit and post-edit passes."""
    return (row.edit, row.group, row.slot)
