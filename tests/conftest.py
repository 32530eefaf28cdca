"""Shared fixtures: tiny random models of every test architecture and hand-made requests."""

from __future__ import annotations

import copy

import pytest

from lit_edit.data.schema import EditRequest, Probe
from lit_edit.models.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer

ARCHS = tuple(TINY_ARCHS)


@pytest.fixture(scope="session")
def shared_data():
    """The shared benchmark folder, found as the library finds it; tests needing it skip without it."""
    from lit_edit.data.paths import data_root

    try:
        return data_root()
    except FileNotFoundError as err:
        pytest.skip(f"shared data not available: {err}")


@pytest.fixture(scope="session")
def tiny_tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def _tiny_models(tiny_tok):
    return {arch: tiny_model(arch, seed=0, tokenizer=tiny_tok)[0] for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def each_tiny(request, _tiny_models, tiny_tok):
    """``(arch, model, tokenizer)`` for every tiny architecture (a fresh copy each time)."""
    return request.param, copy.deepcopy(_tiny_models[request.param]), tiny_tok


@pytest.fixture
def tiny(_tiny_models, tiny_tok):
    """``tiny(arch) -> (model, tokenizer)``: a fresh copy, so tests may edit it freely."""
    return lambda arch: (copy.deepcopy(_tiny_models[arch]), tiny_tok)


def make_request(i: int = 0) -> EditRequest:
    subjects = ["Danielle Darrieux", "Edwin of Northumbria", "Toko Yasuda", "Autonomous University of Madrid"]
    targets = ["English", "Islam", "piano", "Sweden"]
    s = subjects[i % len(subjects)]
    return EditRequest(
        prompt=f"The mother tongue of {s} is",
        target_new=targets[i % len(targets)],
        subject=s,
        ground_truth=["French"],
        rephrase_prompts=[f"{s} speaks the language of", f"Where {s} is from, people speak"],
        locality={"neighborhood": [Probe("Michel Rocard is a native speaker of", ("French",)),
                                   Probe("The capital of France is", ("Paris",))]},
        portability={"one_hop": [Probe(f"The country {s} comes from is", ("England",))]},
        case_id=str(i),
        source=f"handmade:{i}",
    )


@pytest.fixture
def requests_():
    return [make_request(i) for i in range(4)]
