"""Format decisions on real records: aliases, named probe groups, portability, subjects, MQuAKE, Sanitation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from lit_edit.data.registry import load_rows, read_requests
from lit_edit.data.schema import Probe, RecordError


def test_nested_aliases_are_flattened_and_kept(requests_of) -> None:
    first = requests_of("wiki_recent")[0]
    citizenship = first.locality["Relation_Specificity"][1]
    assert citizenship.prompt == "The name of the country of citizenship of Ingrīda Amantova is"
    assert citizenship.answers == (
        "Soviet Union", "USSR", "U.S.S.R.", "Soviets", "U.S.S.R", "the Union of Soviet Socialist Republics",
        "the Soviet Union", "Union of Soviet Socialist Republics", "The Soviets", "CCCP", "SU", "URS", "The USSR",
    )  # fmt: skip
    assert len(first.locality["Relation_Specificity"]) == 5


def test_several_alias_lists_of_one_probe_are_concatenated(requests_of) -> None:
    # test_cf record 0: Logical_Generalization probes whose ground_truth is [[aliases...]]
    first = requests_of("wiki_counterfact", "test")[0]
    continent = first.portability["Logical_Generalization"][0]
    assert continent.answers == ("Africa", "African continent", "Ancient Libya")
    assert first.portability["Subject_Aliasing"][0].answers[:2] == ("Wassoulou Empire", "Mandinka Empire")


def test_several_named_locality_groups(requests_of) -> None:
    first = requests_of("counterfact_distracting_neighbor")[0]
    assert {k: len(v) for k, v in first.locality.items()} == {
        "neighborhood": 10, "distracting_neighborhood": 10, "attribute": 10, "unrelated_relation": 1,
    }  # fmt: skip
    assert first.locality["neighborhood"][0] == Probe("Max Mosley originates from", ("London",))
    assert first.locality["distracting_neighborhood"][0].prompt.startswith(
        "Spike Hughes originates from Philadelphia. "
    )
    assert all(p.answers == ("Philadelphia",) for p in first.locality["attribute"])  # their true object is target_new
    assert first.locality["unrelated_relation"] == [Probe("What is Spike Hughes an instance of?", ("human",))]
    assert first.portability["one_hop"][0].answers == ("Cheesesteaks",)
    assert first.extra["portability.Recalled Relation"] == "(Philadelphia, known for, cheesesteaks)"
    assert len(first.generation_prompts) == 10 and len(first.rephrase_prompts) == 2


def test_zsre_portability_and_extra(requests_of) -> None:
    first = requests_of("zsre")[0]
    assert first.portability == {
        "one_hop": [
            Probe(
                "What type of sports event is the IAAF Combined Events Challenge, which was established in 2006?",
                ("Athletics",),
            )
        ]
    }
    assert first.locality == {
        "nq": [Probe("nq question: what is the name of the last episode of spongebob", ("The String",))]
    }
    assert first.rephrase_prompts == ["When was the IAAF Combined Events Challenge launched?"]
    assert first.extra["pred"] == "2011" and first.extra["cond"].startswith("2011 >> 2006")


def test_zsre_probe_files(requests_of) -> None:
    inverse = requests_of("zsre_inverse_relation")[1]
    assert inverse.portability == {
        "inverse_relation": [Probe("Who is the son/daughter of Frederick Fager?", ("Dr. Fager",))]
    }
    assert inverse.locality == {}  # this file has no loc/loc_ans
    alias = requests_of("zsre_subject_replace")[1]
    assert alias.portability == {"subject_replace": [Probe("Which constellation is GZ Vel in?", ("Delphinus",))]}
    assert alias.extra["alternative_subject"] == "GZ Vel"


def test_counterfact_subject_replace_fills_template_with_alias(requests_of) -> None:
    first = requests_of("counterfact_subject_replace")[0]
    assert first.portability == {"subject_replace": [Probe("Mary Eliza Wright passed away in", ("Birmingham",))]}
    assert first.extra["alternative_subject"] == "Mary Eliza Wright"


def test_subject_not_in_prompt_is_kept_not_dropped(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        requests = read_requests("zsre_subject_replace")
    assert len(requests) == 143
    missing = requests[10]
    assert missing.subject is None and missing.extra["subject"] == "Rio Grande 463"
    case_only = requests[60]
    assert case_only.subject == "Saint Columba altarpiece" and case_only.extra["subject"] == "Saint Columba Altarpiece"
    assert "subject not in prompt" in caplog.text and "[records 10, 101]" in caplog.text


def test_known_invalid_records_are_skipped_loudly(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert len(read_requests("zsre_train")) == 998
    assert "2 record(s): skipped: known invalid" in caplog.text and "[records 534, 723]" in caplog.text
    # The allowance belongs to the registry's file: the same file under an explicit path fails.
    with pytest.raises(RecordError, match=r"zsre_mend_train-1k\.json: record 534: field 'alt': empty string"):
        read_requests("zsre_train", path=str(root / "zsre/zsre_mend_train-1k.json"))


def test_empty_values_are_set_aside_visibly(requests_of) -> None:
    train = requests_of("wiki_counterfact", "train")
    assert train[630].ground_truth == []  # ground_truth "" in the source
    assert train[326].extra["invalid_probes"] == [
        {
            "group": "locality.Forgetfulness",
            "prompt": train[326].extra["invalid_probes"][0]["prompt"],
            "ground_truth": "",
        }
    ]
    assert "Forgetfulness" not in train[326].locality and len(train[326].locality["Relation_Specificity"]) == 1


def test_mquake_cases(requests_of) -> None:
    requests = requests_of("mquake")
    case = requests[:4]
    assert {r.group_id for r in case} == {"7417"} and [r.extra["rewrite_index"] for r in case] == [0, 1, 2, 3]
    assert [r.prompt for r in case] == [
        "Hey Jude was performed by",
        "The director of Madonna is",
        "Narendra Modi is a citizen of",
        "The official language of Australia is",
    ]
    assert all("multi_hop" not in r.portability for r in case[:3])
    multi = case[3].portability["multi_hop"]
    assert len(multi) == 3 and all(p.answers == ("Arabic", "ar", "Arabian language", "Arabic language") for p in multi)
    assert case[1].portability["single_hop"] == [
        Probe(
            "Who is the director of Madonna?",
            (
                "Narendra Modi",
                "Modi",
                "Modi Ji",
                "Modiji",
                "NaMo",
                "Narendra Bhai",
                "Narendra Damodardas Modi",
                "Narendrabhai",
                "Narendrabhai Damodardas Modi",
            ),
        )
    ]
    assert (
        case[3].extra["answer"] == "English"
        and len(case[3].extra["orig"]["triples"]) == 4
        and "orig" not in case[0].extra
    )
    assert len({r.group_id for r in requests}) == 193


def test_sanitation_retain_items_attached_once_each(root: Path, requests_of) -> None:
    for split, key in (("test", "locality"), ("train", "K_R")):
        requests = requests_of("sanitation", split)
        raw = json.loads((root / f"knowedit/Sanitation/trivia_qa_{split}.json").read_text())[key]
        attached = [p.prompt for r in requests for p in r.locality["retain"]]
        assert attached == [item["question"] for item in raw]  # every item once, in order
        assert all(5 <= len(r.locality["retain"]) <= 6 for r in requests)
        assert requests[-1].extra["retain_slice"] == [447, 453]
    train = requests_of("sanitation", "train")
    assert all(r.subject and r.subject in r.prompt for r in train)


def test_convsent_keeps_both_reply_pools(requests_of) -> None:
    first = requests_of("convsent")[0]
    assert len(first.extra["pos"]) == 13 and len(first.extra["neg"]) == 7
    assert first.extra["pos"][0] == " I really like it there. " and first.extra["target_sentiment"] == "positive"


def test_known_1000_keeps_tracing_fields(requests_of) -> None:
    first = requests_of("known_1000")[0]
    assert first.extra == {
        "template": "{} is located in the continent",
        "prediction": " of Antarctica. It is the largest of the three",
        "relation_id": "P30",
    }


def test_row_normalisation(root: Path) -> None:
    assert load_rows("glue_sentiment")[0]["label"] == 1  # "1" in the file, int like the other GLUE files
    gsm = load_rows("prune_gsm8k", limit=2)
    assert len(gsm) == 2 and gsm[0]["answer"].endswith("#### 18") and gsm[0]["final_answer"] == "18"
