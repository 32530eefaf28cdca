"""Malformed records, bad names and missing files fail with messages that point at the problem.

These tests write small files to ``tmp_path`` and pass absolute paths, so they need no
shared data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lit_edit.data.paths import ENV_VAR, data_root
from lit_edit.data.reader import DataFileError
from lit_edit.data.registry import load_requests, load_rows, read_requests
from lit_edit.data.schema import RecordError

ZSRE = {
    "subject": "X",
    "src": "Who made X?",
    "pred": "A",
    "rephrase": "X was made by?",
    "alt": "B",
    "answers": ["A"],
    "loc": "nq question: q",
    "loc_ans": "a",
    "cond": "A >> B || Who made X?",
}
CF = {
    "case_id": 1,
    "prompt": "X plays",
    "target_new": "piano",
    "subject": "X",
    "ground_truth": "guitar",
    "rephrase_prompt": "X is good at",
    "locality_prompt": "Y plays",
    "locality_ground_truth": "guitar",
}
ROME = {
    "case_id": 1,
    "requested_rewrite": {
        "prompt": "{} plays",
        "subject": "X",
        "target_new": {"str": "piano"},
        "target_true": {"str": "guitar"},
    },
    "paraphrase_prompts": ["X is good at"],
    "neighborhood_prompts": ["Y plays"],
    "attribute_prompts": [],
    "generation_prompts": [],
}
KNOWEDIT = {
    "subject": "X",
    "prompt": "X plays",
    "target_new": "piano",
    "ground_truth": "guitar",
    "locality": {"Relation_Specificity": [{"prompt": "X was born in", "ground_truth": [["Paris"]]}]},
    "portability": {},
}
MQUAKE = {
    "case_id": 5,
    "requested_rewrite": [
        {
            "prompt": "{} plays",
            "subject": "X",
            "target_new": {"str": "piano"},
            "target_true": {"str": "guitar"},
            "question": "What does X play?",
        }
    ],
    "questions": ["q?"],
    "new_answer": "piano",
    "new_answer_alias": [],
    "new_single_hops": [],
}


def _with(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Deep copy of ``record`` with dotted ``path`` set to ``value`` (or deleted if value is ...)."""
    out = json.loads(json.dumps(record))
    *parents, last = path.split(".")
    target = out
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return out


def _write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


CASES = [
    # dataset, good record, dotted path to break, new value (... = delete), field named in the error, problem
    ("zsre", ZSRE, "alt", ..., "alt", "missing"),
    ("zsre", ZSRE, "src", 5, "src", "expected str, got int"),
    ("zsre", ZSRE, "alt", "  ", "alt", "empty string"),
    ("zsre", ZSRE, "rephrase", 3, "rephrase", "expected str or list, got int"),
    ("zsre", ZSRE, "rephrase", ["ok", ""], "rephrase", "item 1 must be a non-empty string"),
    ("zsre", ZSRE, "answers", [1], "answers", "(nested) list of strings"),
    ("counterfact", CF, "case_id", True, "case_id", "expected int or str, got bool"),
    ("counterfact", CF, "target_new", None, "target_new", "expected str, got null"),
    ("counterfact_rome", ROME, "requested_rewrite.target_new.str", ..., "requested_rewrite.target_new.str", "missing"),
    ("counterfact_rome", ROME, "requested_rewrite.prompt", "X plays", "requested_rewrite.prompt", "exactly one '{}'"),
    ("counterfact_rome", ROME, "neighborhood_prompts", "Y plays", None, None),  # a single string is accepted
    (
        "knowedit_zsre",
        KNOWEDIT,
        "locality.Relation_Specificity",
        {"prompt": "p"},
        "locality.Relation_Specificity",
        "expected list, got dict",
    ),
    (
        "knowedit_zsre",
        KNOWEDIT,
        "locality.Relation_Specificity.0.ground_truth",
        3,
        "locality.Relation_Specificity[0].ground_truth",
        "expected str or list, got int",
    ),
    ("mquake", MQUAKE, "requested_rewrite", [], "requested_rewrite", "empty list"),
    ("mquake", MQUAKE, "requested_rewrite.0.subject", ..., "requested_rewrite[0].subject", "missing"),
]


@pytest.mark.parametrize(("name", "good", "where", "value", "field_name", "problem"), CASES)
def test_malformed_record(
    tmp_path: Path, name: str, good: dict, where: str, value: Any, field_name: str | None, problem: str | None
) -> None:
    path = _write(tmp_path, "bad_records.json", [good, _with(good, where, value)])
    if field_name is None:
        assert len(read_requests(name, path=path)) == 2
        return
    with pytest.raises(RecordError) as info:
        read_requests(name, path=path)
    message = str(info.value)
    assert "bad_records.json" in message and "record 1:" in message and f"field {field_name!r}" in message, message
    assert problem in message
    assert (info.value.index, info.value.field_name) == (1, field_name)


def test_record_that_is_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(
        RecordError, match=re.escape("list.json: record 1: field '<record>': expected a JSON object, got int")
    ):
        read_requests("zsre", path=_write(tmp_path, "list.json", [ZSRE, 7]))


def test_sanitation_item_errors_name_the_list(tmp_path: Path) -> None:
    item = {"question": "Q?", "ground_truth": "A", "target_new": "I don't know."}
    bad = {
        "success": [item, {"ground_truth": "A", "target_new": "I don't know."}],
        "locality": [{"question": "R?", "ground_truth": "B"}],
    }
    with pytest.raises(RecordError, match=re.escape("san.json: record 1: field 'success[1].question': missing")):
        read_requests("sanitation", path=_write(tmp_path, "san.json", bad))
    retain_bad = {"K_F": [item], "K_R": [{"question": "R?", "ground_truth": "B", "target_new": "C"}]}
    with pytest.raises(RecordError, match=re.escape("field 'K_R[0].target_new': differs from ground_truth")):
        read_requests("sanitation", path=_write(tmp_path, "san2.json", retain_bad))


def test_empty_probe_answer_is_set_aside_not_fatal(tmp_path: Path) -> None:
    record = _with(
        KNOWEDIT,
        "portability",
        {"Reasoning": [{"prompt": "p?", "ground_truth": [[]]}, {"prompt": "q?", "ground_truth": "a"}]},
    )
    (request,) = read_requests("knowedit_zsre", path=_write(tmp_path, "ke.json", [record]))
    assert [p.prompt for p in request.portability["Reasoning"]] == ["q?"]
    assert request.extra["invalid_probes"] == [{"group": "portability.Reasoning", "prompt": "p?", "ground_truth": [[]]}]


def test_unread_fields_are_kept_in_extra(tmp_path: Path) -> None:
    record = _with(ROME, "requested_rewrite.relation_id", "P1") | {"pararel_idx": 9}
    (request,) = read_requests("counterfact_rome", path=_write(tmp_path, "rome.json", [record]))
    assert request.extra == {"requested_rewrite.relation_id": "P1", "pararel_idx": 9}


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"src": ')
    with pytest.raises(DataFileError, match=re.escape("broken.json: invalid JSON at line 1")):
        read_requests("zsre", path=str(broken))
    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n{oops\n')
    with pytest.raises(DataFileError, match=re.escape("broken.jsonl: line 2: invalid JSON")):
        load_rows("piqa", path=str(lines))
    with pytest.raises(DataFileError, match="expected a JSON list of records, got dict"):
        read_requests("zsre", path=_write(tmp_path, "obj.json", {"a": ZSRE}))
    with pytest.raises(
        RecordError,
        match=re.escape("gsm.json: record 0: field 'answer': GSM8K solution without a '#### <answer>' line"),
    ):
        load_rows("prune_gsm8k", path=_write(tmp_path, "gsm.json", [{"question": "q", "answer": "42"}]))


def test_unknown_names_and_splits() -> None:
    with pytest.raises(
        ValueError, match=r"unknown dataset 'zsre_typo'; edit datasets \(load_requests\): .*counterfact.*zsre"
    ):
        load_requests("zsre_typo")
    with pytest.raises(ValueError, match=r"'piqa' is a probe row set.*load_rows\('piqa'\)"):
        load_requests("piqa")
    with pytest.raises(ValueError, match="unknown probe row set 'zsre'"):
        load_rows("zsre")
    with pytest.raises(ValueError, match="dataset 'zsre' has no split 'dev'; splits: eval, train"):
        load_requests("zsre", split="dev")
    with pytest.raises(ValueError, match="limit must be None or a non-negative int"):
        load_requests("zsre", limit=-1)


def test_missing_file_and_missing_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = tmp_path / "zsre/zsre_mend_eval_portability_gpt4.json"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"dataset 'zsre' split 'eval': benchmark file {expected} does")
    ):
        load_requests("zsre", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(f"benchmark file {tmp_path / 'nope.json'} does not exist")):
        load_requests("zsre", path=str(tmp_path / "nope.json"))
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(
        FileNotFoundError, match=f"from \\${ENV_VAR}\\) does not exist; pass data_root=... or set the {ENV_VAR}"
    ):
        data_root()
