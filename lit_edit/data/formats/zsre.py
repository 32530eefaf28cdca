"""ZsRE in MEND format (``src``/``alt``/``answers``/``loc``), including EasyEdit's probe files.

The probe files reuse the MEND record and add one key each, mapped to a named portability
group so that a single parser serves all four files:

* ``portability{New Question, New Answer}`` -> ``one_hop`` (``Recalled Relation`` stays in extra);
* ``inverse question`` -> ``inverse_relation``: it asks for the edited relation backwards
  ("Who is the child of <alt>?"), so its answer is the record's subject;
* ``alter_subject_question`` -> ``subject_replace``: the same question about an alias of the
  subject (``alternative_subject``, kept in extra), answered by the new target ``alt``.

``loc``/``loc_ans`` (an unrelated NQ question) become locality group ``nq``; the inverse
relation file has none. ``pred`` and ``cond`` are kept in extra.
"""

from __future__ import annotations

from lit_edit.data.formats.base import Record, per_record
from lit_edit.data.schema import EditRequest, Probe


def _zsre_mend(rec: Record) -> EditRequest:
    prompt, target_new = rec.text("src"), rec.text("alt")
    subject = rec.subject("subject", prompt)
    locality = {}
    if rec.has("loc") or rec.has("loc_ans"):
        locality["nq"] = [Probe(rec.text("loc"), rec.answers("loc_ans"))]
    portability = {}
    if rec.has("portability"):
        one_hop = rec.sub("portability")
        portability["one_hop"] = [Probe(one_hop.text("New Question"), one_hop.answers("New Answer"))]
    if rec.has("inverse question"):
        portability["inverse_relation"] = [Probe(rec.text("inverse question"), (rec.text("subject"),))]
    if rec.has("alter_subject_question"):
        portability["subject_replace"] = [Probe(rec.text("alter_subject_question"), (target_new,))]
    return rec.request(
        prompt=prompt,
        target_new=target_new,
        subject=subject,
        ground_truth=list(rec.answers("answers")),
        rephrase_prompts=rec.texts("rephrase"),
        locality=locality,
        portability=portability,
    )


zsre_mend = per_record(_zsre_mend)
