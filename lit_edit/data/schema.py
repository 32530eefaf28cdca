"""The one request type every loader produces and every editor consumes.

Benchmarks disagree on field names (MEND's ``src``/``alt``, CounterFact's
``requested_rewrite``, KnowEdit's nested ``locality`` dicts); editors and the evaluation
loop should never see those differences, so loaders normalise into :class:`EditRequest`.

Rows stored in a ``datasets.Dataset`` use the flat form of :meth:`EditRequest.to_row`:
Arrow needs one schema for every row, so named probe groups are stored as a list of
``{"name", "prompt", "answers"}`` structs and format-specific leftovers as a JSON string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Probe:
    """A prompt and its accepted answers; ``answers[0]`` is the one used for teacher forcing.

    Several answers exist because benchmarks list aliases ("USSR", "Soviet Union", ...);
    exact-match metrics accept any of them.
    """

    prompt: str
    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise ValueError(f"probe prompt must be a non-empty string, got {self.prompt!r}")
        if not self.answers or not all(isinstance(a, str) for a in self.answers):
            raise ValueError(f"probe {self.prompt!r} needs at least one string answer, got {self.answers!r}")

    @property
    def answer(self) -> str:
        return self.answers[0]


@dataclass
class EditRequest:
    """One fact to write into a model, with every probe the benchmark gives for it.

    ``locality`` probes carry the benchmark's answer for token positions only: locality is
    scored as agreement between pre- and post-edit predictions, not against this answer.
    ``group_id`` ties requests that must be applied together (an MQuAKE case's rewrites).
    ``source`` ("file.json:17") lets every downstream error and result point at the record.
    """

    prompt: str
    target_new: str
    subject: str | None = None
    ground_truth: list[str] = field(default_factory=list)
    rephrase_prompts: list[str] = field(default_factory=list)
    locality: dict[str, list[Probe]] = field(default_factory=dict)
    portability: dict[str, list[Probe]] = field(default_factory=dict)
    generation_prompts: list[str] = field(default_factory=list)
    case_id: str = ""
    group_id: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f" ({self.source})" if self.source else ""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"edit request{where}: field 'prompt' must be a non-empty string")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise ValueError(f"edit request{where}: field 'target_new' must be a non-empty string")
        if self.subject is not None and self.subject not in self.prompt:
            # ROME-style editors locate the subject's last token in the prompt; a subject
            # missing from it would silently edit the wrong position later.
            raise ValueError(
                f"edit request{where}: subject {self.subject!r} does not occur in prompt {self.prompt!r}"
            )

    # -- flat row form for datasets.Dataset ------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        def flat(groups: dict[str, list[Probe]]) -> list[dict[str, Any]]:
            return [
                {"name": name, "prompt": p.prompt, "answers": list(p.answers)}
                for name, probes in groups.items()
                for p in probes
            ]

        return {
            "prompt": self.prompt,
            "target_new": self.target_new,
            "subject": self.subject,
            "ground_truth": list(self.ground_truth),
            "rephrase_prompts": list(self.rephrase_prompts),
            "locality": flat(self.locality),
            "portability": flat(self.portability),
            "generation_prompts": list(self.generation_prompts),
            "case_id": str(self.case_id),
            "group_id": self.group_id,
            "source": self.source,
            "extra": json.dumps(self.extra, ensure_ascii=False),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "EditRequest":
        def grouped(items: list[dict[str, Any]] | None) -> dict[str, list[Probe]]:
            out: dict[str, list[Probe]] = {}
            for item in items or []:
                out.setdefault(item["name"], []).append(Probe(item["prompt"], tuple(item["answers"])))
            return out

        extra = row.get("extra") or "{}"
        return cls(
            prompt=row["prompt"],
            target_new=row["target_new"],
            subject=row.get("subject"),
            ground_truth=list(row.get("ground_truth") or []),
            rephrase_prompts=list(row.get("rephrase_prompts") or []),
            locality=grouped(row.get("locality")),
            portability=grouped(row.get("portability")),
            generation_prompts=list(row.get("generation_prompts") or []),
            case_id=str(row.get("case_id", "")),
            group_id=row.get("group_id"),
            source=row.get("source", ""),
            extra=json.loads(extra) if isinstance(extra, str) else dict(extra),
        )


class RecordError(ValueError):
    """A benchmark record that cannot be turned into an :class:`EditRequest`.

    The message always names file, record index and field so the user can open the file
    at the right place instead of guessing which of 10,000 records broke.
    """

    def __init__(self, path: str, index: int, field_name: str, problem: str) -> None:
        super().__init__(f"{path}: record {index}: field {field_name!r}: {problem}")
        self.path = path
        self.index = index
        self.field_name = field_name
