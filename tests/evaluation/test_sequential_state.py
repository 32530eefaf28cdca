"""The saved state of a sequential run: put back exactly, refused on another model or editor."""

from __future__ import annotations

import pytest
import torch

from lit_edit.editors.base import NoEdit, WeightSnapshot
from lit_edit.evaluation.sequential_state import SequentialState
from lit_edit.models.layouts import resolve, weight_view
from lit_edit.models.loading import model_fingerprint


def edited(model, scale: float = 0.01) -> list[WeightSnapshot]:
    """Two edits of the model's mlp_out weights (layers 0 and 1, then 1 again), as editors make them."""
    handles = []
    for layers in ((0, 1), (1,)):
        weights = {f"w{layer}": weight_view(resolve(model, "mlp_out", layer))[0] for layer in layers}
        handles.append(WeightSnapshot(weights))
        with torch.no_grad():
            for w in weights.values():
                w.add_(scale * torch.randn_like(w))
    return handles


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_saved_weights_come_back_bit_exact_and_undo_to_the_unedited_model(tiny, arch, tmp_path):
    model, _ = tiny(arch)
    fresh, _ = tiny(arch)
    unedited = {k: v.clone() for k, v in fresh.state_dict().items()}
    records = [{"edit": 0, "prompt": "p"}, {"edit": 1, "prompt": "q"}]
    base = model_fingerprint(model)
    state = SequentialState.capture(model, base, edited(model), NoEdit(), records,
                                    [{"n_edits": 2, "reliability": 0.5}], {"perplexity@after_2": [12.5]})
    assert len(state.weights) == 2  # one entry per parameter, however many edits touched it
    path = tmp_path / "state.pt"
    state.save(path)
    loaded = SequentialState.load(path)
    assert loaded.records == records and loaded.curve == state.curve and loaded.model_scores == state.model_scores
    handle = loaded.apply(fresh, NoEdit(), path)
    for (name, mine), theirs in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(mine, theirs), name
    handle.undo()
    assert all(torch.equal(v, unedited[k]) for k, v in fresh.state_dict().items())


def test_a_state_is_refused_on_another_model_another_editor_or_when_unreadable(tiny, tmp_path):
    model, _ = tiny("llama")
    state = SequentialState.capture(model, model_fingerprint(model), edited(model), NoEdit(), [], [], {})
    path = tmp_path / "state.pt"
    state.save(path)
    other, _ = tiny("llama")
    with torch.no_grad():  # the same architecture, other weights (another checkpoint)
        weight_view(resolve(other, "mlp_out", 0))[0].mul_(1.001)
    with pytest.raises(ValueError, match=r"this model is not the one that run started from \(fingerprint"):
        SequentialState.load(path).apply(other, NoEdit(), path)
    gpt2, _ = tiny("gpt2")
    with pytest.raises(ValueError, match=r"not the one that run started from"):
        SequentialState.load(path).apply(gpt2, NoEdit(), path)
    renamed = SequentialState.load(path)  # a state naming a parameter the model lacks (a hand-edited file)
    renamed.weights = {f"x.{k}": v for k, v in renamed.weights.items()}
    with pytest.raises(ValueError, match=r"which this model does not have"):
        renamed.apply(tiny("llama")[0], NoEdit(), path)
    state.editor_state = {"past_keys": {}}
    with pytest.raises(ValueError, match=r"editor 'none' keeps nothing between edits"):
        state.apply(tiny("llama")[0], NoEdit(), path)
    path.write_bytes(b"not a state")
    with pytest.raises(ValueError, match=r"state.pt: not a readable sequential state"):
        SequentialState.load(path)


def test_only_weight_changes_can_be_saved():
    class Hook:
        def undo(self) -> None: ...

    assert SequentialState.savable([WeightSnapshot({}), WeightSnapshot({})])
    assert not SequentialState.savable([WeightSnapshot({}), Hook()])
