"""CounterFact in its three shapes: EasyEdit's flat files, ROME's nested records, ROME's known facts.

ROME-format probe groups and their answers:

* ``neighborhood`` / ``distracting_neighborhood``: other subjects that share the *old*
  object, so the answer is ``target_true`` (the distracting variant prefixes the new fact);
* ``attribute``: other subjects whose true object already *is* ``target_new``; ROME scores
  them against ``target_new``, and an edit must not change them either, so they are a
  locality group answered by ``target_new``;
* ``unrelated_relation``: another relation of the edited subject ({question, object});
* portability ``one_hop`` (``New Question``/``New Answer``) and ``subject_replace``: the
  edit template filled with ``alternative_subject`` (an alias), answered by ``target_new``.
"""

from __future__ import annotations

from lit_edit.data.formats.base import Record, per_record, rewrite_template
from lit_edit.data.schema import EditRequest, Probe


def _counterfact_flat(rec: Record) -> EditRequest:
    prompt = rec.text("prompt")
    return rec.request(
        prompt=prompt,
        target_new=rec.text("target_new"),
        subject=rec.subject("subject", prompt),
        ground_truth=list(rec.answers("ground_truth")),
        rephrase_prompts=rec.texts("rephrase_prompt"),
        locality={"neighborhood": [Probe(rec.text("locality_prompt"), rec.answers("locality_ground_truth"))]},
        case_id=rec.key("case_id"),
    )


def _counterfact_rome(rec: Record) -> EditRequest:
    rewrite = rec.sub("requested_rewrite")
    template, subject = rewrite_template(rewrite)
    prompt = template.replace("{}", subject)
    target_new = rewrite.sub("target_new").text("str")
    target_true = rewrite.sub("target_true").answers("str")

    def probes(name: str, answers: tuple[str, ...]) -> list[Probe]:
        return [Probe(p, answers) for p in rec.texts(name, [])]

    locality = {
        "neighborhood": probes("neighborhood_prompts", target_true),
        "distracting_neighborhood": probes("distracting_neighborhood_prompts", target_true),
        "attribute": probes("attribute_prompts", (target_new,)),
    }
    if rec.has("unrelated_relation"):
        unrelated = rec.sub("unrelated_relation")
        locality["unrelated_relation"] = [Probe(unrelated.text("question"), unrelated.answers("object"))]
    portability = {}
    if rec.has("portability"):
        one_hop = rec.sub("portability")
        portability["one_hop"] = [Probe(one_hop.text("New Question"), one_hop.answers("New Answer"))]
    if rec.has("alternative_subject"):
        alias = rec.extra["alternative_subject"] = rec.text("alternative_subject")
        portability["subject_replace"] = [Probe(template.replace("{}", alias), (target_new,))]
    return rec.request(
        prompt=prompt,
        target_new=target_new,
        subject=subject,
        ground_truth=list(target_true),
        rephrase_prompts=rec.texts("paraphrase_prompts"),
        locality=locality,
        portability=portability,
        generation_prompts=rec.texts("generation_prompts", []),
        case_id=rec.key("case_id"),
    )


def _known_facts(rec: Record) -> EditRequest:
    """ROME's known_1000: facts the model already knows, for causal tracing; target = the true attribute."""
    prompt, attribute = rec.text("prompt"), rec.text("attribute")
    return rec.request(
        prompt=prompt,
        target_new=attribute,
        subject=rec.subject("subject", prompt),
        ground_truth=[attribute],
        case_id=rec.key("known_id"),
    )


counterfact_flat = per_record(_counterfact_flat)
counterfact_rome = per_record(_counterfact_rome)
known_facts = per_record(_known_facts)
