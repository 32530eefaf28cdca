"""AlphaEdit on tiny random models: the null-space projection, the closed form, sequential keys, undo.

``C`` is the second moment of mlp_out's input over random token sequences (conftest's
``random_text_second_moment``); the threshold is set per test so that ``P`` has about half
the rank, which leaves a non-trivial preserved span ``U_1`` to check ``Delta U_1 ~ 0`` on.
"""

from __future__ import annotations

import copy
import types

import pytest
import torch

from lit_edit.editors.alphaedit import AlphaEditEditor, alphaedit_update, null_space_projection
from lit_edit.editors.base import MemorySnapshot
from lit_edit.editors.locate.keys import prompt_context_keys
from lit_edit.evaluation.sequential_state import SequentialState
from lit_edit.models.layouts import canonical_weight, layout_for, resolve
from lit_edit.models.loading import model_fingerprint
from lit_edit.models.tiny import TINY_ARCHS

from _support.locate import tiny_value_settings

LAYERS = [1, 2]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/editors/conftest.py


class FixedMoments:
    """A provider with only ``get``."""

    def __init__(self, matrices: dict[int, torch.Tensor]) -> None:
        self.matrices = matrices

    def get(self, model, tokenizer, layout, layer):
        return types.SimpleNamespace(matrix=self.matrices[layer])


def alphaedit(**overrides) -> AlphaEditEditor:
    # AlphaEdit's own settings are in configs/editor/alphaedit.yaml
    return AlphaEditEditor(**tiny_value_settings(**{
        "layers": LAYERS, "v_num_grad_steps": 10, "mom2_adjustment": True, "mom2_update_weight": 15000,
        "nullspace_threshold": 1e-2, "L2": 1e-3, **overrides}))


def half_rank_setup(model, random_text_second_moment, layers=LAYERS):
    """``C`` per layer and a threshold that leaves both eigenvector sets non-empty at every layer."""
    cs = {layer: random_text_second_moment(model, layer) for layer in layers}
    mids = [torch.linalg.eigvalsh(c.double()).sort().values[c.shape[0] // 2].item() for c in cs.values()]
    return cs, min(mids)


def weights(model, layers=LAYERS) -> dict[int, torch.Tensor]:
    return {layer: canonical_weight(resolve(model, "mlp_out", layer)).detach().double().clone() for layer in layers}


@pytest.mark.parametrize("arch", TINY_ARCHS)  # Gemma 3: carried through its post-MLP norm, as MEMIT
def test_update_lies_in_the_null_space_and_is_the_closed_form(tiny, requests_, random_text_second_moment, arch):
    model, tok = tiny(arch)
    cs, threshold = half_rank_setup(model, random_text_second_moment)
    editor = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs))
    w_before = weights(model)
    editor.edit(model, tok, requests_[:2])
    w_after = weights(model)
    assert [u.layer for u in editor.last_updates] == LAYERS
    for upd in editor.last_updates:
        layer = upd.layer
        c = cs[layer].double()
        evals, evecs = torch.linalg.eigh((c + c.T) / 2)
        u1 = evecs[:, evals >= threshold]  # the preserved span
        assert 0 < u1.shape[1] < c.shape[0]
        p = editor.projections[layer]
        assert torch.allclose(p, p @ p, atol=1e-10) and torch.allclose(p, p.T, atol=1e-12)
        assert torch.allclose(p, null_space_projection(cs[layer], threshold), atol=1e-12)
        delta = upd.delta
        written = w_after[layer] - w_before[layer]
        assert torch.allclose(written, delta, atol=1e-5 * delta.abs().max())
        scale = delta.norm()
        assert scale > 0
        # Delta = Delta P and Delta U_1 ~ 0: preserved keys map as before
        assert (delta - delta @ p).norm() < 1e-8 * scale
        assert (delta @ u1).norm() < 1e-8 * scale
        assert (written @ u1).norm() < 1e-5 * scale  # also for the float32 weights actually written
        # the closed form: Delta (K K^T P + L2 I) = R K^T P (no past keys on the first edit)
        k, r = upd.keys.double(), upd.residual
        lhs = delta @ (k.T @ k @ p + 1e-3 * torch.eye(k.shape[1], dtype=torch.float64))
        rhs = r.T @ k @ p
        assert torch.allclose(lhs, rhs, atol=1e-8 * rhs.abs().max())


def test_alphaedit_update_matches_the_explicit_formula():
    gen = torch.Generator().manual_seed(0)
    keys, resid = torch.randn(3, 6, generator=gen), torch.randn(3, 4, generator=gen)
    past = torch.randn(5, 6, generator=gen)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    c = x @ x.T  # rank 3: a 3-dimensional null space
    p = null_space_projection(c, 1e-8)
    assert torch.linalg.matrix_rank(p) == 3 and torch.allclose(p @ c, torch.zeros_like(c), atol=1e-10)
    k, r, kp = keys.double().T, resid.double().T, past.double().T
    eye = torch.eye(6, dtype=torch.float64)
    expected = r @ k.T @ p @ torch.linalg.inv(kp @ kp.T @ p + k @ k.T @ p + 2.0 * eye)
    delta = alphaedit_update(keys, resid, p, 2.0, past)
    assert torch.allclose(delta, expected, atol=1e-10)
    assert torch.allclose(delta, delta @ p, atol=1e-10)
    assert torch.allclose(alphaedit_update(keys, resid, p, 2.0, None),
                          r @ k.T @ p @ torch.linalg.inv(k @ k.T @ p + 2.0 * eye), atol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sequential_edits_grow_the_key_cache_and_spare_earlier_keys(tiny, requests_, random_text_second_moment, arch):
    model, tok = tiny(arch)
    cs, threshold = half_rank_setup(model, random_text_second_moment)
    editor = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), L2=1e-6)
    editor.edit(model, tok, requests_[:2])
    first = {layer: keys.clone() for layer, keys in editor.past_keys.items()}
    assert sorted(first) == LAYERS and all(k.shape[0] == 2 for k in first.values())
    state_after_first = {k: v.clone() for k, v in model.state_dict().items()}
    editor.edit(model, tok, requests_[2:4])
    assert all(editor.past_keys[layer].shape[0] == 4 for layer in LAYERS)
    for layer in LAYERS:
        assert torch.equal(editor.past_keys[layer][:2], first[layer])
    with_cache = {u.layer: u.delta for u in editor.last_updates}

    # the same second edit from the same state without the first edit's keys
    model.load_state_dict(state_after_first)
    forgetful = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), L2=1e-6)
    forgetful.edit(model, tok, requests_[2:4])
    without_cache = {u.layer: u.delta for u in forgetful.last_updates}
    for layer in LAYERS:
        k1 = first[layer].double().T  # [d_in, 2]
        d2 = with_cache[layer]
        rel = (d2 @ k1).norm() / (d2.norm() * k1.norm())
        rel_forgetful = (without_cache[layer] @ k1).norm() / (without_cache[layer].norm() * k1.norm())
        assert rel < 1e-3, f"layer {layer}: second edit moves the first edit's keys ({rel:.2e})"
        assert rel < 0.1 * rel_forgetful, f"layer {layer}: {rel:.2e} vs {rel_forgetful:.2e} without the cache"
    editor.reset_past_keys()
    assert editor.past_keys == {}


def test_undo_is_bit_exact_and_restores_the_key_cache(tiny, requests_, random_text_second_moment):
    model, tok = tiny("llama")
    cs, threshold = half_rank_setup(model, random_text_second_moment)
    editor = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), v_num_grad_steps=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h1 = editor.edit(model, tok, requests_[:2])
    assert isinstance(h1, MemorySnapshot)
    after1 = {k: v.clone() for k, v in model.state_dict().items()}
    keys1 = {layer: k.clone() for layer, k in editor.past_keys.items()}
    h2 = editor.edit(model, tok, requests_[2:3])
    assert all(editor.past_keys[layer].shape[0] == 3 for layer in LAYERS)
    h2.undo()
    assert all(torch.equal(v, after1[k]) for k, v in model.state_dict().items())
    assert sorted(editor.past_keys) == LAYERS
    assert all(torch.equal(editor.past_keys[layer], keys1[layer]) for layer in LAYERS)
    h1.undo()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored exactly"
    assert editor.past_keys == {}
    with pytest.raises(RuntimeError, match="already undone"):
        h1.undo()


def test_a_saved_sequential_state_continues_with_the_same_keys_and_weights(tiny, requests_, random_text_second_moment,
                                                                           tmp_path):
    """A resumed AlphaEdit sequence (SequentialState) writes what the uninterrupted one writes next."""
    model, tok = tiny("llama")
    fresh = copy.deepcopy(model)
    cs, threshold = half_rank_setup(model, random_text_second_moment)
    editor = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), v_num_grad_steps=3)
    handles = [editor.edit(model, tok, requests_[:2])]
    path = tmp_path / "state.pt"
    SequentialState.capture(model, model_fingerprint(fresh), handles, editor, [], [], {}).save(path)
    editor.edit(model, tok, requests_[2:4])

    resumed = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), v_num_grad_steps=3)
    handle = SequentialState.load(path).apply(fresh, resumed, path)
    assert all(torch.equal(resumed.past_keys[layer], editor.past_keys[layer][:2]) for layer in LAYERS)
    resumed.edit(fresh, tok, requests_[2:4])
    for (name, mine), theirs in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(mine, theirs), name
    handle.undo()  # the restored edits' undo also empties the resumed editor's memory (it had none before)
    assert resumed.past_keys == {}


def test_failed_request_leaves_the_model_and_the_cache_unchanged(check_failed_batch_is_undone, fake_stats):
    _, stats = fake_stats  # C = 3 I: with threshold 5 P = I
    editor = alphaedit(v_num_grad_steps=2, nullspace_threshold=5.0, stats=stats)
    check_failed_batch_is_undone(editor)
    assert editor.past_keys == {}


def test_needs_the_second_moment():
    with pytest.raises(ValueError, match="mom2_adjustment"):
        alphaedit(mom2_adjustment=False)
    with pytest.raises(ValueError, match="nullspace_threshold"):
        alphaedit(nullspace_threshold=0.0)


def test_config_builds_the_editor(editor_from_config):
    """configs/editor/alphaedit.yaml instantiated as Hydra does; it reads MEMIT's layers."""
    editor = editor_from_config("alphaedit", [1, 2], layers_key="memit")
    assert isinstance(editor, AlphaEditEditor) and editor.name == "alphaedit" and editor.layers == [1, 2]
    assert editor.nullspace_threshold == 2e-2 and editor.L2 == 10 and editor.mom2_adjustment
    assert editor.stats["cache_dir"] == "/tmp/cache/stats" and editor.stats["model_id"] == "tiny_llama"
    assert editor.hp.num_grad_steps == 25 and editor.hp.lr == 0.1 and editor.hp.clamp_norm_factor == 0.75
    assert editor.context_template_length_params == [(10, 5)]
    assert editor.projections is None and editor.past_keys == {}
    assert editor.frame_weight == 0 and editor.subject_frames == [] and editor.layer_weights is None


def test_two_rounds_remember_each_request_key_once(tiny, requests_, random_text_second_moment):
    model, tok = tiny("llama")
    cs, threshold = half_rank_setup(model, random_text_second_moment)
    editor = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), rounds=2)
    editor.edit(model, tok, requests_[:2])
    assert {u.round for u in editor.last_updates} <= {0, 1}
    last = max(u.round for u in editor.last_updates)
    for layer in LAYERS:
        # the keys of the last round (computed on the model as edited so far), not both rounds'
        (final,) = [u for u in editor.last_updates if u.layer == layer and u.round == last]
        assert torch.equal(editor.past_keys[layer], final.keys.float())


def test_context_keys_join_the_past_keys_term_but_are_not_remembered(tiny, requests_, random_text_second_moment):
    model, tok = tiny("llama")
    cs, threshold = half_rank_setup(model, random_text_second_moment)
    first = LAYERS[0]
    context = prompt_context_keys(model, tok, layout_for(model), first, requests_[:2])  # before any write
    editor = alphaedit(nullspace_threshold=threshold, stats_provider=FixedMoments(cs), context_preserve_weight=4.0)
    editor.edit(model, tok, requests_[:2])
    upd = editor.last_updates[0]
    assert upd.layer == first
    expected = alphaedit_update(upd.keys, upd.residual, editor.projections[first], editor.L2, 2.0 * context)
    assert torch.allclose(upd.delta, expected, atol=1e-8 * expected.abs().max())
    plain = alphaedit_update(upd.keys, upd.residual, editor.projections[first], editor.L2, None)
    assert not torch.allclose(upd.delta, plain, atol=1e-3 * plain.abs().max())
    assert all(keys.shape[0] == 2 for keys in editor.past_keys.values())  # only the edit keys are kept
