"""KnowEdit (Zhang et al. 2024) files: fact edits, WikiBio, ConvSent and Sanitation.

Fact files (ZsRE-test-all, WikiData counterfact, WikiData recent) share one schema with
named ``locality``/``portability`` groups whose ``ground_truth`` is a string, a list, or a
list of alias lists (one per accepted object); all aliases are flattened, in order, into
``Probe.answers``. WikiData recent inserts new facts and has no ``ground_truth``.
"""

from __future__ import annotations

from typing import Any

from lit_edit.data.formats.base import FileContext, Record, expect_dict, per_record
from lit_edit.data.reader import DataFileError
from lit_edit.data.schema import EditRequest, Probe


def _knowedit_fact(rec: Record) -> EditRequest:
    prompt = rec.text("prompt")
    return rec.request(
        prompt=prompt,
        target_new=rec.text("target_new"),
        subject=rec.subject("subject", prompt),
        ground_truth=list(rec.answers("ground_truth", required=False)) if rec.has("ground_truth") else [],
        rephrase_prompts=rec.texts("rephrase_prompt", []),
        locality=rec.groups("locality"),
        portability=rec.groups("portability"),
    )


def _wikibio(rec: Record) -> EditRequest:
    """WikiBio hallucination edits: continue a biography passage with the true next sentence."""
    prompt = rec.text("text")
    return rec.request(
        prompt=prompt,
        target_new=rec.text("labels"),
        subject=rec.subject("concept", prompt),
        locality=rec.groups("locality"),
    )


CONVSENT_TEMPLATE = "What do you think of {}?"


def _convsent(rec: Record) -> EditRequest:
    """ConvSent: make the model's opinion of ``ent`` positive.

    The files give only the entity and pools of positive/negative replies; the prompt is the
    ConvSent question, the target the first positive reply (whitespace-stripped), and both
    pools are kept verbatim in extra for sentiment scoring.
    """
    entity = rec.text("ent")
    positive, negative = rec.texts("pos", nonempty=True), rec.texts("neg")
    rec.extra.update(pos=positive, neg=negative, target_sentiment="positive")
    return rec.request(prompt=CONVSENT_TEMPLATE.format(entity), target_new=positive[0].strip(), subject=entity)


def _partition(n_items: int, n_bins: int) -> list[tuple[int, int]]:
    """Split ``range(n_items)`` into ``n_bins`` contiguous, near-equal, non-overlapping slices."""
    return [(i * n_items // n_bins, (i + 1) * n_items // n_bins) for i in range(n_bins)]


def sanitation(data: Any, ctx: FileContext) -> list[EditRequest]:
    """KnowEdit Sanitation (TriviaQA): forget an answer, i.e. make the model say "I don't know.".

    train: ``K_F`` (80 edits, with subjects) and ``K_R`` (453 facts to retain, whose
    ``target_new`` equals ``ground_truth``); test: ``success`` (80 edits) and ``locality``
    (453 facts to retain). The retain items belong to no edit in particular: they are one
    global set checked after editing. Each retain item is attached exactly once, as
    locality group ``retain``, by splitting the list into contiguous near-equal slices over
    the edits in file order (5-6 each; extra["retain_slice"] records the slice). Evaluating
    all edits therefore scores every retain item once, and on the train file the slices
    line up with EasyEdit's per-answer K_R chunks (K_F is ordered by answer, 16 each).
    """
    obj = expect_dict(data, ctx)
    edits_key, retain_key = ("K_F", "K_R") if "K_F" in obj else ("success", "locality")
    edits, retain = (_entries(obj, key, ctx) for key in (edits_key, retain_key))
    probes = [_retain_probe(item) for item in retain]

    def build(rec: Record, start: int, stop: int) -> EditRequest:
        prompt = rec.text("question")
        rec.extra["retain_slice"] = [start, stop]
        return rec.request(
            prompt=prompt,
            target_new=rec.text("target_new"),
            subject=rec.subject("subject", prompt) if rec.has("subject") else None,
            ground_truth=list(rec.answers("ground_truth")),
            locality={"retain": probes[start:stop]},
            case_id=f"{edits_key}/{rec.index}",
        )

    slices = _partition(len(probes), len(edits))
    return [r for rec, (a, b) in zip(edits, slices, strict=True) for r in ctx.guard(rec.index, build, rec, a, b)]


def _entries(obj: dict[str, Any], key: str, ctx: FileContext) -> list[Record]:
    values = obj.get(key)
    if not isinstance(values, list) or not values:
        raise DataFileError(f"{ctx.path}: top-level key {key!r} must be a non-empty list of records")
    return [Record(ctx, j, raw, f"{key}[{j}].") for j, raw in enumerate(values)]


def _retain_probe(item: Record) -> Probe:
    """A fact to retain; K_R items also carry ``target_new``, which must equal ``ground_truth``."""
    prompt, answers = item.text("question"), item.answers("ground_truth")
    if item.has("target_new") and item.answers("target_new") != answers:
        raise item.error("target_new", "differs from ground_truth; a retain item cannot carry a new target")
    if item.leftovers():
        raise item.error(next(iter(item.leftovers())), "unexpected field in a retain item (a Probe cannot keep it)")
    return Probe(prompt, answers)


knowedit_fact = per_record(_knowedit_fact)
wikibio = per_record(_wikibio)
convsent = per_record(_convsent)
