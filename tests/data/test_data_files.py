"""One test per shared benchmark file: record counts as observed on disk, fields, probe totals.

Counts are hard-coded (they match /work/shared/README.md); the probe totals per group were
cross-checked against raw key/type statistics of each file, so a parser that drops a
rephrase, a probe or an alias changes a number here.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lit_edit.data.registry import DATASETS, ROW_DATASETS, load_rows
from lit_edit.data.schema import EditRequest


@dataclass(frozen=True)
class Expect:
    name: str
    split: str
    raw: int  # records in the file (for Sanitation: edit items)
    requests: int
    first: dict[str, Any]  # field -> expected value on the first request
    totals: dict[str, int] = field(default_factory=dict)  # "locality:<group>" / "portability:<group>" / other counters


def _totals(requests: list[EditRequest]) -> Counter[str]:
    c: Counter[str] = Counter()
    for r in requests:
        for kind, groups in (("locality", r.locality), ("portability", r.portability)):
            for group, probes in groups.items():
                c[f"{kind}:{group}"] += len(probes)
        c["rephrase"] += len(r.rephrase_prompts)
        c["generation"] += len(r.generation_prompts)
        c["ground_truth"] += len(r.ground_truth)
        c["subject_none"] += r.subject is None
        c["invalid_probes"] += len(r.extra.get("invalid_probes", []))
    return +c


ZSRE_FIRST = {
    "prompt": "When was the inception of IAAF Combined Events Challenge?",
    "target_new": "2006",
    "subject": "IAAF Combined Events Challenge",
    "ground_truth": ["1998"],
}
CF_ROME_FIRST = {
    "prompt": "Spike Hughes originates from",
    "target_new": "Philadelphia",
    "subject": "Spike Hughes",
    "ground_truth": ["London"],
    "case_id": "4482",
}

EXPECTED = [
    Expect("zsre", "eval", 520, 520, ZSRE_FIRST, {"ground_truth": 545, "rephrase": 520, "locality:nq": 520, "portability:one_hop": 520}),
    Expect("zsre_train", "train", 1000, 998, {"prompt": "What is the product made by UniFirst?", "target_new": "unmanned aircraft"}, {"ground_truth": 1030, "rephrase": 998, "locality:nq": 998}),
    Expect("zsre_inverse_relation", "eval", 200, 200, {"subject": "Thomas of Lancaster, 1st Duke of Clarence", "ground_truth": ["Henry IV of England"]}, {"ground_truth": 202, "rephrase": 200, "portability:inverse_relation": 200, "subject_none": 1}),
    Expect("zsre_subject_replace", "eval", 143, 143, {"subject": "NGC 3953", "target_new": "Triangulum"}, {"ground_truth": 145, "rephrase": 143, "portability:subject_replace": 143, "subject_none": 2}),
    Expect("counterfact", "edit", 5104, 5104, {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "ground_truth": ["French"], "case_id": "0"}, {"ground_truth": 5104, "rephrase": 5104, "locality:neighborhood": 5104}),
    Expect("counterfact_train", "train", 10000, 10000, {"prompt": "Toko Yasuda, the", "target_new": "piano", "subject": "Toko Yasuda", "case_id": "2"}, {"ground_truth": 10000, "rephrase": 10000, "locality:neighborhood": 10000}),
    Expect("counterfact_val", "val", 1919, 1919, {"prompt": "BBC One, by", "target_new": "Sega", "case_id": "10"}, {"ground_truth": 1919, "rephrase": 1919, "locality:neighborhood": 1919}),
    Expect("counterfact_rome", "eval", 530, 530, CF_ROME_FIRST, {"ground_truth": 530, "rephrase": 1060, "generation": 5300, "locality:neighborhood": 5300, "locality:attribute": 5300, "portability:one_hop": 530}),
    Expect("counterfact_subject_replace", "eval", 108, 108, {"prompt": "May Wright Sewall passed away in", "target_new": "Birmingham"}, {"ground_truth": 108, "rephrase": 216, "generation": 1080, "locality:neighborhood": 1080, "locality:attribute": 1080, "portability:subject_replace": 108}),
    Expect("counterfact_distracting_neighbor", "eval", 407, 407, CF_ROME_FIRST, {"ground_truth": 407, "rephrase": 814, "generation": 4070, "locality:neighborhood": 4070, "locality:distracting_neighborhood": 4070, "locality:attribute": 4070, "locality:unrelated_relation": 407, "portability:one_hop": 407}),
    Expect("known_1000", "all", 1209, 1209, {"prompt": "Vinson Massif is located in the continent of", "target_new": "Antarctica", "ground_truth": ["Antarctica"], "case_id": "0"}, {"ground_truth": 1209}),
    Expect("knowedit_zsre", "test", 649, 649, {"prompt": "Which family does Epaspidoceras belong to?", "target_new": "Noctuidae", "ground_truth": ["Aspidoceratidae"]}, {"ground_truth": 665, "rephrase": 649, "locality:Relation_Specificity": 1298, "portability:Logical_Generalization": 140, "portability:Reasoning": 388, "portability:Subject_Aliasing": 121, "subject_none": 1}),
    Expect("wiki_counterfact", "test", 440, 440, {"subject": "Academy Award for Best Picture", "target_new": "Wassoulou Empire", "ground_truth": ["United States of America"]}, {"ground_truth": 440, "locality:Forgetfulness": 240, "locality:Relation_Specificity": 2737, "portability:Logical_Generalization": 199, "portability:Reasoning": 960, "portability:Subject_Aliasing": 1177, "invalid_probes": 11}),
    Expect("wiki_counterfact", "train", 1428, 1428, {"subject": "Goursez Vreizh", "target_new": "Franche-Comté"}, {"ground_truth": 1427, "locality:Forgetfulness": 781, "locality:Relation_Specificity": 1253, "portability:Logical_Generalization": 305, "portability:Reasoning": 504, "portability:Subject_Aliasing": 1410, "invalid_probes": 2}),
    Expect("wiki_recent", "train", 570, 570, {"prompt": "The gender of Ingrīda Amantova is", "target_new": "female", "ground_truth": []}, {"locality:Forgetfulness": 298, "locality:Relation_Specificity": 1641, "portability:Logical_Generalization": 223, "portability:Reasoning": 476, "portability:Subject_Aliasing": 52, "invalid_probes": 7}),
    Expect("wikibio", "test", 173, 173, {"subject": "matthew aylmer , 1st baron aylmer"}, {"locality:Relation_Specificity": 346}),
    Expect("wikibio", "train", 464, 464, {"subject": "rick mahler", "target_new": "Mahler was drafted by the Braves in the first round of the 1975 amateur draft."}, {"locality:Relation_Specificity": 928}),
    Expect("convsent", "test", 391, 391, {"prompt": "What do you think of Tallahassee?", "target_new": "I really like it there.", "subject": "Tallahassee"}),
    Expect("convsent", "val", 799, 799, {"prompt": "What do you think of Esparto, California?", "subject": "Esparto, California"}),
    Expect("sanitation", "test", 80, 80, {"prompt": "What type of creature is the Australian currawong?", "target_new": "I don't know.", "ground_truth": ["Birds"], "subject": None}, {"ground_truth": 80, "locality:retain": 453, "subject_none": 80}),
    Expect("sanitation", "train", 80, 80, {"subject": "a country which has 246 varieties", "ground_truth": ["Cheese"]}, {"ground_truth": 80, "locality:retain": 453}),
    Expect("mquake", "hard", 193, 772, {"prompt": "Hey Jude was performed by", "target_new": "Madonna", "subject": "Hey Jude", "ground_truth": ["The Beatles"], "group_id": "7417", "case_id": "7417/0"}, {"ground_truth": 772, "portability:single_hop": 772, "portability:multi_hop": 579}),
]  # fmt: skip


def _raw_count(path: Path, name: str) -> int:
    data = json.loads(path.read_text(encoding="utf-8"))
    return len(data["K_F"] if "K_F" in data else data["success"]) if name == "sanitation" else len(data)


@pytest.mark.parametrize("exp", EXPECTED, ids=lambda e: f"{e.name}-{e.split}")
def test_edit_file(exp: Expect, root: Path, requests_of) -> None:
    path = root / DATASETS[exp.name].splits[exp.split].path
    assert _raw_count(path, exp.name) == exp.raw, "the shared file changed on disk"
    requests = requests_of(exp.name, exp.split)
    assert len(requests) == exp.requests
    first = requests[0]
    for name, value in exp.first.items():
        assert getattr(first, name) == value, name
    assert first.source == f"{DATASETS[exp.name].splits[exp.split].path}:0"
    assert all(r.prompt.strip() and r.target_new.strip() for r in requests)
    assert all(r.subject is None or r.subject in r.prompt for r in requests)
    assert dict(_totals(requests)) == exp.totals


ROWS = {
    "piqa": (1838, {"goal": "How do I ready a guinea pig cage for it's new occupants?"}),
    "glue_cola": (644, {"label": 1, "idx": 902}),
    "glue_dialogue": (886, {"answers": "B", "id": "dev_123"}),
    "glue_mmlu": (1516, {"answer": 0, "subject": "elementary_mathematics"}),
    "glue_mrpc": (258, {"label": 1, "idx": 1796}),
    "glue_nli": (2489, {"label": "not_entailment", "index": "2489"}),
    "glue_rte": (262, {"label": 1, "idx": 91}),
    "glue_sentiment": (872, {"label": 1}),
    "glue_sst2": (856, {"label": 1, "idx": 427}),
    "hurt_boolq": (3267, {"answer": False, "title": "Ethanol fuel"}),
    "hurt_ner": (3250, {"ner_tags": ["O", "O", "B-ORG", "O", "O", "O", "O", "O", "O", "O", "O"]}),
    "hurt_sentiment": (872, {"sentence": "it 's a charming and often affecting journey . ", "label": 1}),
    "prune_nli": (2489, {"index": "0", "label": "not_entailment"}),
    "prune_nq": (3610, {"question": "who got the first nobel prize in physics?", "answer": ["Wilhelm Conrad Röntgen"]}),
    "prune_gsm8k": (1319, {"final_answer": "18"}),
    "prune_samsum": (818, {"id": "13817023"}),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_probe_row_file(name: str, root: Path) -> None:
    count, first = ROWS[name]
    rel = ROW_DATASETS[name][0]
    raw = json.loads((root / rel).read_text()) if rel.endswith(".json") else (root / rel).read_text().splitlines()
    assert len(raw) == count, "the shared file changed on disk"
    ds = load_rows(name)
    assert len(ds) == count
    row = ds[0]
    assert row["source"] == f"{rel}:0"
    for key, value in first.items():
        assert row[key] == value, key
    original = json.loads(raw[0]) if isinstance(raw[0], str) else raw[0]
    assert set(original) <= set(row), "every original field is kept"


def test_every_shared_file_is_registered(root: Path) -> None:
    """A benchmark file added to the shared folder must get a loader (or be listed here as not one)."""
    registered = {f.path for spec in DATASETS.values() for f in spec.splits.values()} | {
        p for p, _ in ROW_DATASETS.values()
    }
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in {".json", ".jsonl"}}
    # The .orig JSONL is the source test_cf.json was derived from; SafeEdit and the 1301-record
    # ZsRE copy are described in SOURCES.md but are not part of this copy of the data.
    not_edit_files = {
        "knowedit/wiki_counterfact/test_cf-generate-10.orig.jsonl",
        "extra/SafeEdit_test.json",
        "knowedit/ZsRE/ZsRE-test-all_1301.json",
    }
    assert on_disk - not_edit_files <= registered
    assert registered <= on_disk
