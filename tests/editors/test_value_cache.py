"""The z* cache: a hit gives exactly the optimised targets, and anything they depend on changes the key."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lit_edit.editors.memit as memit_module
from lit_edit.editors.locate.value_cache import ValueCache
from lit_edit.editors.memit import MEMITEditor
from lit_edit.models.layouts import canonical_weight, resolve

from _support.locate import tiny_value_settings

LAYERS = [1, 2]

pytestmark = pytest.mark.usefixtures("one_thread")


def memit(cache_dir, **overrides) -> MEMITEditor:
    return MEMITEditor(**tiny_value_settings(**{"layers": LAYERS, "v_num_grad_steps": 6, "mom2_update_weight": 1e-2,
                                                "v_cache_dir": str(cache_dir), **overrides}))


def written(model) -> list[torch.Tensor]:
    return [canonical_weight(resolve(model, "mlp_out", layer)).detach().clone() for layer in LAYERS]


@pytest.fixture
def counted_optimisation(monkeypatch):
    """How many times MEMIT really optimised z* (cache misses)."""
    calls = []
    real = memit_module.value_targets

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(memit_module, "value_targets", counting)
    return calls


def test_a_hit_reproduces_the_edit_without_optimising(tiny, facts_ending_with_subject, tmp_path, counted_optimisation):
    reqs = facts_ending_with_subject
    first_model, tok = tiny("llama")
    first = memit(tmp_path)
    first.edit(first_model, tok, reqs)
    assert counted_optimisation == [1] and len(list(tmp_path.glob("*.safetensors"))) == 1

    second_model, _ = tiny("llama")
    second = memit(tmp_path)
    second.edit(second_model, tok, reqs)
    assert counted_optimisation == [1] and second.value_cache.hits == 1
    for a, b in zip(written(first_model), written(second_model)):
        assert torch.equal(a, b)
    cached, fresh = second.last_targets, first.last_targets
    for name in ("values", "original", "delta"):
        assert torch.equal(getattr(cached, name), getattr(fresh, name))
    assert (cached.steps, cached.nll, cached.loss) == (fresh.steps, fresh.nll, fresh.loss)


def test_lambda_shares_the_entry_and_inputs_of_z_star_do_not(tiny, facts_ending_with_subject, tmp_path,
                                                             counted_optimisation):
    reqs = facts_ending_with_subject
    model, tok = tiny("llama")
    memit(tmp_path).edit(tiny("llama")[0], tok, reqs)
    memit(tmp_path, mom2_update_weight=10.0).edit(tiny("llama")[0], tok, reqs)  # the update only
    assert len(counted_optimisation) == 1
    other_target = [dataclasses.replace(reqs[0], target_new="Berlin")] + reqs[1:]
    memit(tmp_path).edit(tiny("llama")[0], tok, other_target)
    memit(tmp_path, v_lr=0.5).edit(tiny("llama")[0], tok, reqs)
    memit(tmp_path, layers=[0, 2]).edit(tiny("llama")[0], tok, reqs)  # z* at layer 2 all the same
    assert len(counted_optimisation) == 3
    with torch.no_grad():  # another model (here: one weight changed) never hits
        resolve(model, "mlp_out", 0).weight[0, 0] += 1e-3
    memit(tmp_path).edit(model, tok, reqs)
    assert len(counted_optimisation) == 4
    # a second round runs on the edited model: its z* is a different entry
    memit(tmp_path, rounds=2).edit(tiny("llama")[0], tok, reqs)
    assert len(counted_optimisation) == 5


def test_a_foreign_file_under_the_key_is_reported_and_kept(tiny, facts_ending_with_subject, tmp_path):
    model, tok = tiny("llama")
    editor = memit(tmp_path)
    editor.prepare(model, tok)
    key = editor.value_cache.key(model, tok, layer=LAYERS[-1], modules=["layer"], requests=facts_ending_with_subject,
                                 templates=editor.templates, hp=editor.hp, max_length=editor.max_length)
    path = ValueCache(tmp_path).path(key)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "something else"})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="not a value-target cache entry"):
        editor.edit(model, tok, facts_ending_with_subject)
    assert path.read_bytes() == before
