"""``to_row``/``from_row`` through Arrow loses nothing, for every registered dataset and edge cases."""

from __future__ import annotations

import time

import datasets
import pytest

from lit_edit.data.registry import DATASETS, REQUEST_FEATURES, load_requests, requests_from_dataset
from lit_edit.data.schema import EditRequest, Probe

# One (name, split) per distinct file: counterfact_train is counterfact's train split, etc.
_BY_FILE = {
    spec.splits[split].path: (name, split) for name, spec in reversed(DATASETS.items()) for split in spec.splits
}
ALL_SPLITS = sorted(_BY_FILE.values())


@pytest.mark.parametrize(("name", "split"), ALL_SPLITS, ids=[f"{n}-{s}" for n, s in ALL_SPLITS])
def test_dataset_round_trip(name: str, split: str, requests_of) -> None:
    ds = load_requests(name, split=split)
    assert ds.features == REQUEST_FEATURES
    assert requests_from_dataset(ds) == requests_of(name, split)


def test_limit_keeps_first_n(requests_of) -> None:
    ds = load_requests("counterfact", limit=7)
    assert requests_from_dataset(ds) == requests_of("counterfact")[:7]
    assert len(load_requests("zsre", limit=0)) == 0


def test_biggest_file_loads_fast(root) -> None:
    start = time.perf_counter()
    assert len(load_requests("counterfact_train")) == 10_000
    assert time.perf_counter() - start < 5.0


def test_edge_case_request_round_trip() -> None:
    bare = EditRequest(prompt="p", target_new="t")
    full = EditRequest(
        prompt="Who made X?",
        target_new="B",
        subject="X",
        ground_truth=["A", "A2"],
        rephrase_prompts=["r1", "r2"],
        locality={"nq": [Probe("l?", ("a",))], "other": [Probe("m?", ("b", "c")), Probe("n?", ("d",))]},
        portability={"one_hop": [Probe("o?", ("e",))]},
        generation_prompts=["g"],
        case_id="7",
        group_id="g1",
        source="f.json:3",
        extra={"nested": {"k": [1, None]}, "ü": "ö"},
    )
    for request in (bare, full):
        assert EditRequest.from_row(request.to_row()) == request
    ds = datasets.Dataset.from_list([bare.to_row(), full.to_row()], features=REQUEST_FEATURES)
    assert requests_from_dataset(ds) == [bare, full]
