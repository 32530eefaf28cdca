"""MQuAKE (Zhong et al. 2023): multi-hop questions whose answer changes after a chain of edits.

One :class:`EditRequest` per ``requested_rewrite`` (prompt = template filled with the
subject, ground truth = ``target_true``), all with ``group_id = case_id`` so that a case's
rewrites are applied together (``EditDataModule(group_by_case=True)``).

* ``single_hop``: the ``new_single_hops`` entry whose question equals the rewrite's
  question, answered by its answer + aliases. Its cloze form becomes ``single_hop_cloze``
  only when it differs from the edit prompt (in MQuAKE-hard it never does: it would just
  repeat the efficacy probe).
* ``multi_hop``: the case's questions answered by ``new_answer`` + ``new_answer_alias``,
  attached only to the *last* rewrite of the case: they are answerable only once every
  rewrite is applied, and attaching them once keeps them from being scored several times
  per case. MQuAKE counts a case correct if any of its questions is answered; all of them
  are kept so evaluation can apply that rule.

Case-level fields the probes do not use (pre-edit ``answer``/``answer_alias``,
``single_hops``, ``orig``; any ``new_single_hops`` entry matching no rewrite) go into the
last rewrite's extra; every rewrite's extra has ``rewrite_index``/``num_rewrites``.
"""

from __future__ import annotations

from typing import Any

from lit_edit.data.formats.base import Record, per_record, rewrite_template
from lit_edit.data.schema import EditRequest, Probe


def _mquake(rec: Record) -> list[EditRequest]:
    case_id = rec.key("case_id")
    rewrites = rec.items("requested_rewrite")
    hops = [(hop.text("question"), hop) for hop in rec.items("new_single_hops", nonempty=False)]
    multi_hop_answers = rec.answers_with_aliases("new_answer", "new_answer_alias")
    multi_hop = [Probe(q, multi_hop_answers) for q in rec.texts("questions", nonempty=True)]

    requests = []
    for k, rewrite in enumerate(rewrites):
        template, subject = rewrite_template(rewrite)
        prompt = template.replace("{}", subject)
        question = rewrite.text("question", None)
        extra: dict[str, Any] = {"rewrite_index": k, "num_rewrites": len(rewrites), "question": question}
        portability = {}
        hop = next((h for q, h in hops if q == question), None)
        if hop is not None:
            hops.remove((question, hop))
            answers = hop.answers_with_aliases("answer", "answer_alias")
            portability["single_hop"] = [Probe(question, answers)]
            if (cloze := hop.text("cloze")) != prompt:  # in MQuAKE-hard it always equals the edit prompt
                portability["single_hop_cloze"] = [Probe(cloze, answers)]
            extra.update({f"new_single_hop.{name}": v for name, v in hop.leftovers().items()})
        if k == len(rewrites) - 1:
            portability["multi_hop"] = multi_hop
            extra.update(rec.leftovers())
            if hops:
                extra["unmatched_new_single_hops"] = [h.raw for _, h in hops]
        requests.append(
            rewrite.request(
                prompt=prompt,
                target_new=rewrite.sub("target_new").text("str"),
                subject=subject,
                ground_truth=list(rewrite.sub("target_true").answers("str")),
                portability=portability,
                case_id=f"{case_id}/{k}",
                group_id=case_id,
                extra=extra,
            )
        )
    return requests


mquake = per_record(_mquake)
