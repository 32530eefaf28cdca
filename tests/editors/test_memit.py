"""MEMIT on tiny random models of four layouts.

As in test_rome.py, the "edits succeed" check uses prompts that end with the subject (the
first target token is predicted at the subject's last token, where z* is written) and
one-token targets; the algebra (least-squares update, W' k* = target) is checked directly.
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path

import pytest
import torch

from lit_edit.editors.locate.keys import compute_keys, prompt_context_keys, subject_states
from lit_edit.editors.locate.norm_target import nearest_unit_rms, read_rmsnorm
from lit_edit.editors.locate.values import ValueHParams, value_targets
from lit_edit.editors.memit import MEMITEditor, layer_outputs, memit_update
from lit_edit.models.layouts import canonical_weight, layout_for, resolve
from lit_edit.models.tiny import TINY_ARCHS

from _support.locate import TEMPLATES, additive_mlp_archs, tiny_value_settings

ARCHS = TINY_ARCHS  # Gemma 3's post-MLP norm included: the writes are carried back through it
LAYERS = [1, 2]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/editors/conftest.py


def memit(**overrides) -> MEMITEditor:
    # MEMIT's own settings are in configs/editor/memit.yaml
    return MEMITEditor(**tiny_value_settings(**{"layers": LAYERS, "mom2_update_weight": 1e-6, **overrides}))


class FixedMoments:
    """A provider with only ``get`` (MEMIT falls back to one call per layer)."""

    def __init__(self, matrices: dict[int, torch.Tensor]) -> None:
        self.matrices, self.calls = matrices, []

    def get(self, model, tokenizer, layout, layer):
        self.calls.append(layer)
        return types.SimpleNamespace(matrix=self.matrices[layer])


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_edit_learns_targets_touches_only_the_layers_and_undoes(tiny, arch, facts_ending_with_subject, argmax_next):
    model, tok = tiny(arch)
    reqs = facts_ending_with_subject
    target_ids = [tok(" " + r.target_new)["input_ids"] for r in reqs]
    assert all(len(t) == 1 for t in target_ids)
    assert sum(argmax_next(model, tok, r.prompt) == t[0] for r, t in zip(reqs, target_ids)) < 2
    before = {k: v.clone() for k, v in model.state_dict().items()}

    editor = memit()
    handle = editor.edit(model, tok, reqs)

    for r, (t,) in zip(reqs, target_ids):
        assert argmax_next(model, tok, r.prompt) == t, f"{r.prompt!r} -> {r.target_new!r} not learned"
    layout = layout_for(model)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {layout.name("mlp_out", layer) + ".weight" for layer in LAYERS}
    assert set(handle.deltas()) == changed
    assert not any(p.requires_grad for p in model.parameters())
    # each layer's write is the least-squares solution: Delta W (lambda I + K K^T) = R K^T
    assert [u.layer for u in editor.last_updates] == LAYERS
    for upd in editor.last_updates:
        k, r = upd.keys.double(), upd.residual
        lhs = upd.delta @ (1e-6 * torch.eye(k.shape[1], dtype=torch.float64) + k.T @ k)
        assert torch.allclose(lhs, r.T @ k, atol=1e-8 * (r.T @ k).abs().max())
        written = canonical_weight(resolve(model, "mlp_out", upd.layer)).detach().double() \
            - canonical_weight_of(before, model, upd.layer)
        assert torch.allclose(written, upd.delta, atol=1e-5 * upd.delta.abs().max())
    # the last layer takes what is left: z at the last layer ends at z* (behind a post-MLP norm, only
    # as near as the norm lets it: test_behind_a_post_mlp_norm_the_write_is_carried_through_it)
    if layout.mlp_out_norm is None:
        z = layer_outputs(model, tok, layout, LAYERS[-1], reqs, TEMPLATES)
        assert torch.allclose(z, editor.last_targets.values, atol=1e-2 * editor.last_targets.delta.norm())

    handle.undo()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored exactly"


def canonical_weight_of(state: dict, model, layer: int) -> torch.Tensor:
    name = layout_for(model).name("mlp_out", layer) + ".weight"
    w = state[name].double()
    module = resolve(model, "mlp_out", layer)
    return w.T if tuple(w.shape) != tuple(canonical_weight(module).shape) else w


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_one_layer_one_request_is_the_closed_form_with_a_real_second_moment(tiny, requests_, random_text_second_moment,
                                                                            arch):
    model, tok = tiny(arch)
    layer, lam = 2, 0.5
    c = random_text_second_moment(model, layer)
    provider = FixedMoments({layer: c})
    editor = memit(layers=[layer], mom2_adjustment=True, mom2_update_weight=lam, stats_provider=provider,
                   v_num_grad_steps=5)
    module = resolve(model, "mlp_out", layer)
    w_before = canonical_weight(module).detach().double().clone()
    editor.edit(model, tok, requests_[:1])
    (upd,) = editor.last_updates
    k = upd.keys.double()[0]
    r = upd.residual[0]
    delta = canonical_weight(module).detach().double() - w_before
    assert torch.allclose(delta, upd.delta, atol=1e-5 * upd.delta.abs().max())
    # Delta W (lambda C + k k^T) = R k^T
    a = lam * c.double() + torch.outer(k, k)
    assert torch.allclose(upd.delta @ a, torch.outer(r, k), atol=1e-7 * r.abs().max() * k.abs().max() * k.numel())
    # W' k* = W k* + R q / (1 + q), q = k^T (lambda C)^-1 k (Sherman-Morrison): R shrunk toward 0 by lambda
    q = k @ torch.linalg.solve(lam * c.double(), k)
    with torch.no_grad():
        out = module(upd.keys[:1])[0].double()
    expected = w_before @ k + r * q / (1 + q)
    if module.bias is not None:
        expected = expected + module.bias.double()
    assert torch.allclose(out, expected, atol=1e-4 * expected.abs().max())
    # z at the (only) layer moved by exactly Delta W k* (averaged keys, linear update)
    z_after = layer_outputs(model, tok, layout_for(model), layer, requests_[:1], TEMPLATES)[0].double()
    assert torch.allclose(z_after, upd.z[0].double() + upd.delta @ k, atol=1e-4 * z_after.abs().max())
    # C is fetched once per editor, one call per layer when the provider has no get_many
    editor.edit(model, tok, requests_[1:2])
    assert provider.calls == [layer]


@pytest.mark.parametrize("arch", ["gptj", "gpt_neox"])
def test_one_layer_small_lambda_writes_the_layer_target(tiny, requests_, arch):
    """With lambda -> 0 the update maps k* exactly onto the target: W' k* = W k* + (z* - z)."""
    model, tok = tiny(arch)
    layer = 2
    editor = memit(layers=[layer], mom2_update_weight=1e-8, v_num_grad_steps=5)
    module = resolve(model, "mlp_out", layer)
    handle = editor.edit(model, tok, requests_[:1])
    (upd,) = editor.last_updates
    target = editor.last_targets.values
    z_after = layer_outputs(model, tok, layout_for(model), layer, requests_[:1], TEMPLATES)
    assert torch.allclose(z_after, target, atol=1e-4 * target.abs().max())
    with torch.no_grad():
        out_after = module(upd.keys[:1])[0].double()
        handle.undo()
        out_before = module(upd.keys[:1])[0].double()
    assert torch.allclose(upd.residual[0], (target - upd.z)[0].double(), atol=1e-6)  # one layer: all of it
    assert torch.allclose(out_after, out_before + upd.residual[0], atol=1e-4 * upd.residual.abs().max())


def test_layers_out_of_range_and_bad_lists(tiny, requests_):
    model, tok = tiny("gpt2")
    with pytest.raises(IndexError, match=re.escape("editor.layers=[2, 9]: layer 9 does not exist: the model has 4")):
        memit(layers=[2, 9]).edit(model, tok, requests_[:1])
    with pytest.raises(ValueError, match="strictly increasing"):
        memit(layers=[2, 1])
    with pytest.raises(ValueError, match="at least one layer"):
        memit(layers=[])
    assert memit(layers=3).layers == [3]


def test_memit_update_matches_the_explicit_formula():
    gen = torch.Generator().manual_seed(0)
    keys, resid = torch.randn(3, 6, generator=gen), torch.randn(3, 4, generator=gen)
    x = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    c = x @ x.T / 12
    delta = memit_update(keys, resid, 2.0, c)
    k, r = keys.double().T, resid.double().T
    assert torch.allclose(delta, r @ k.T @ torch.linalg.inv(2.0 * c + k @ k.T), atol=1e-10)
    assert torch.allclose(memit_update(keys, resid, 2.0, None),
                          r @ k.T @ torch.linalg.inv(2.0 * torch.eye(6, dtype=torch.float64) + k @ k.T), atol=1e-10)


def test_failed_request_leaves_the_model_unchanged(check_failed_batch_is_undone):
    check_failed_batch_is_undone(memit(v_num_grad_steps=2))


def test_stats_adapter_uses_get_many_once_for_all_layers(tiny, requests_, fake_stats):
    calls, stats = fake_stats
    model, tok = tiny("llama")
    editor = memit(mom2_adjustment=True, mom2_update_weight=1.0, stats=stats, v_num_grad_steps=2)
    editor.edit(model, tok, requests_[:2])
    editor.edit(model, tok, requests_[2:3])
    assert calls == [("init", "/tmp/stats"),
                     ("get_many", LAYERS, {"corpus": "wikitext", "n_samples": 10, "dtype": "float32"}, "tiny_llama")]
    # C = 3 I with lambda 1 is the identity case with lambda 3
    upd = editor.last_updates[-1]
    assert torch.allclose(upd.delta, memit_update(upd.keys, upd.residual, 3.0, None), atol=1e-12)


def test_config_builds_the_editor(editor_from_config):
    editor = editor_from_config("memit", [1, 2])
    assert isinstance(editor, MEMITEditor) and editor.name == "memit" and editor.layers == [1, 2]
    assert editor.mom2_adjustment and editor.mom2_update_weight == 15000
    assert editor.stats["cache_dir"] == "/tmp/cache/stats"
    assert editor.hp.num_grad_steps == 25 and editor.hp.lr == 0.5 and editor.hp.clamp_norm_factor == 0.75
    assert editor.context_template_length_params == [(10, 5)]
    assert editor.rounds == 1 and str(editor.value_cache.directory) == "/tmp/cache/values"


def test_smollm2_model_config_tunes_memit():
    """configs/model/smollm2_135m.yaml's tuned values reach the MEMIT editor (not the yaml's fallbacks)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lit_edit.cli.common import split_prune

    configs = Path(__file__).resolve().parents[2] / "configs"
    cfg = OmegaConf.create({"editor": OmegaConf.load(configs / "editor" / "memit.yaml"),
                            "model": OmegaConf.load(configs / "model" / "smollm2_135m.yaml"),
                            "paths": {"cache_dir": "/tmp/cache", "data_dir": "/tmp/data"}})
    editor = instantiate(split_prune(cfg)[0], _convert_="all")
    tuned = cfg.model.tuned.memit  # each differs from the MEMIT yaml's own fallback
    assert editor.layers == list(cfg.model.layers.memit)
    assert (editor.rounds, editor.mom2_update_weight, editor.context_preserve_weight) == (
        tuned.rounds, tuned.mom2_update_weight, tuned.context_preserve_weight) != (1, 15000, 0.0)
    assert editor.hp.lr == tuned.v_lr and editor.hp.num_grad_steps == tuned.v_num_grad_steps != 25
    assert editor.hp.share_subject and editor.hp.stop_on == "nll"


def test_default_provider_with_the_stats_module(tiny, requests_, real_stats, tmp_path):
    """mom2_adjustment with the real on-disk statistics of both layers (a small text file as corpus)."""
    model, tok = tiny("gpt2")
    editor = memit(mom2_adjustment=True, mom2_update_weight=1e-3, stats=real_stats, v_num_grad_steps=2)
    handle = editor.edit(model, tok, requests_[:2])
    assert sorted(editor._moments) == LAYERS
    for upd in editor.last_updates:
        c = editor._moments[upd.layer]
        k = upd.keys.double()
        lhs = upd.delta @ (1e-3 * c + k.T @ k)
        assert torch.allclose(lhs, upd.residual.T @ k, atol=1e-6 * (upd.residual.T @ k).abs().max())
    layout = layout_for(model)
    for layer in LAYERS:
        assert any((tmp_path / "stats").rglob(layout.name("mlp_out", layer))), f"layer {layer} not cached"
    handle.undo()


def _two_facts_about_one_subject():
    from lit_edit.data.schema import EditRequest

    s = "Danielle Darrieux"
    return [EditRequest(prompt=f"The mother tongue of {s} is", target_new="Rome", subject=s),
            EditRequest(prompt="The religion of Edwin of Northumbria is", target_new="Paris",
                        subject="Edwin of Northumbria"),
            EditRequest(prompt=f"The city where {s} was born is", target_new="Japan", subject=s)]


@pytest.mark.parametrize("chunk_size", [None, 1])
def test_requests_about_one_subject_share_one_delta(tiny, chunk_size):
    """share_subject: one z* delta per subject, in request order, groups never split by chunks."""
    model, tok = tiny("llama")
    layout = layout_for(model)
    reqs = _two_facts_about_one_subject()
    hp = ValueHParams(num_grad_steps=6, lr=0.5, weight_decay=1e-3, clamp_norm_factor=4.0, kl_factor=0.0625,
                         stop_loss=None, stop_on="nll")
    alone = value_targets(model, tok, layout, 2, reqs, TEMPLATES, hp, module="layer")
    shared = value_targets(model, tok, layout, 2, reqs, TEMPLATES, dataclasses.replace(hp, share_subject=True),
                              module="layer", chunk_size=chunk_size)
    assert torch.equal(shared.delta[0], shared.delta[2]) and not torch.equal(alone.delta[0], alone.delta[2])
    # the other subject's delta is what it is without sharing (its row never mixes with others)
    assert torch.allclose(shared.delta[1], alone.delta[1], atol=1e-5)
    # each request keeps its own original z (different prompts), so values differ by exactly that
    assert torch.allclose(shared.original, alone.original, atol=1e-5)
    assert torch.allclose(shared.values - shared.original, shared.delta[[0, 1, 0]], atol=1e-5)
    # both facts of the subject pull on the one delta: their summed NLL is optimised jointly and drops
    assert alone.history[0][0] + alone.history[0][2] > shared.nll[0] + shared.nll[2]  # step 0: delta = 0


def test_shared_subject_group_stops_when_all_its_requests_are_below_the_threshold(tiny):
    model, tok = tiny("gpt2")
    layout = layout_for(model)
    reqs = _two_facts_about_one_subject()
    hp = ValueHParams(num_grad_steps=15, lr=0.5, weight_decay=1e-3, clamp_norm_factor=4.0, kl_factor=0.0625,
                         stop_loss=None, stop_on="nll", share_subject=True)
    free = value_targets(model, tok, layout, 2, reqs, TEMPLATES, hp, module="layer")
    a, b = [h[0] for h in free.history], [h[2] for h in free.history]
    # 1) a threshold between the two final NLLs: one request gets below it early, the other never
    #    does, so the group (and both its requests) runs every step
    low, high = sorted([a, b], key=lambda h: h[-1])
    thr = (low[-1] + high[-1]) / 2
    assert min(high) > thr and any(x < thr for x in low[:-1]), (a, b)
    held = value_targets(model, tok, layout, 2, reqs, TEMPLATES, dataclasses.replace(hp, stop_loss=thr),
                            module="layer")
    assert held.steps[0] == held.steps[2] == hp.num_grad_steps
    # 2) a threshold both cross: the group stops at the first step where both are below it
    thr = max(a[-1], b[-1]) + 1e-3
    stop_at = next(i for i, (x, y) in enumerate(zip(a, b)) if max(x, y) < thr)
    stopped = value_targets(model, tok, layout, 2, reqs, TEMPLATES, dataclasses.replace(hp, stop_loss=thr),
                               module="layer")
    assert stopped.steps[0] == stopped.steps[2] == stop_at + 1
    assert max(stopped.nll[0], stopped.nll[2]) < thr


def _target_logprob(model, tok, reqs) -> float:
    """Mean log-probability of each request's one-token target after its prompt."""
    total = 0.0
    with torch.no_grad():
        for r in reqs:
            logits = model(**tok(r.prompt, return_tensors="pt")).logits[0, -1]
            total += float(logits.log_softmax(-1)[tok(" " + r.target_new)["input_ids"][0]])
    return total / len(reqs)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_second_round_writes_what_a_strong_lambda_left_out(tiny, arch, facts_ending_with_subject):
    # lambda 1 against C = I makes each round write only part of z* - z (the keys' squared norms
    # are of that order), so the second round, optimised on the edited model, has something to add
    reqs = facts_ending_with_subject
    one_model, tok = tiny(arch)
    one = memit(mom2_update_weight=1.0, v_num_grad_steps=8)
    one.edit(one_model, tok, reqs)
    two_model, _ = tiny(arch)
    two = memit(mom2_update_weight=1.0, v_num_grad_steps=8, rounds=2)
    before = {k: v.clone() for k, v in two_model.state_dict().items()}
    two.edit(two_model, tok, reqs)

    assert [(u.round, u.layer) for u in two.last_updates] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert len(two.last_round_targets) == 2 and two.last_targets is two.last_round_targets[0]
    # round 1 is exactly the one-round edit
    for a, b in zip(one.last_updates, two.last_updates[:2]):
        assert torch.allclose(a.delta, b.delta)
    # round 2's z* starts from the edited model's z (which round 1 moved towards, not onto, z*)
    layout = layout_for(two_model)
    first, second = two.last_round_targets
    assert not torch.allclose(second.original, first.original, atol=1e-4)
    assert second.delta.norm() < first.delta.norm()
    # the total written is the sum over both rounds
    for layer in LAYERS:
        written = canonical_weight(resolve(two_model, "mlp_out", layer, layout)).detach().double() \
            - canonical_weight_of(before, two_model, layer)
        summed = sum(u.delta for u in two.last_updates if u.layer == layer)
        assert torch.allclose(written, summed, atol=1e-5 * summed.abs().max())
    assert _target_logprob(two_model, tok, reqs) > _target_logprob(one_model, tok, reqs) + 0.1


def test_rounds_stop_once_nothing_is_left_to_write(tiny, facts_ending_with_subject, caplog):
    caplog.set_level("INFO", logger="lit_edit.editors.memit")
    model, tok = tiny("llama")
    editor = memit(rounds=3)
    calls = []
    real = editor._value_targets

    def targets(*args):
        vt = real(*args)
        calls.append(vt)
        if len(calls) == 1:
            return vt
        # from round 2 on: every request already says its target, so z* = z and delta = 0
        return dataclasses.replace(vt, values=vt.original, delta=torch.zeros_like(vt.delta))

    editor._value_targets = targets
    editor.edit(model, tok, facts_ending_with_subject)
    assert len(calls) == 2
    rounds = [r.getMessage() for r in caplog.records if " round " in r.getMessage()]
    assert len(rounds) == 2 and "round 1/3: 4 of 4 requests" in rounds[0] and "round 2/3: 0 of 4 requests" in rounds[1]
    assert {u.round for u in editor.last_updates} == {0}
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        memit(rounds=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_context_keys_are_the_mlp_inputs_at_every_non_subject_token(tiny, arch, facts_ending_with_subject):
    model, tok = tiny(arch)
    layout = layout_for(model)
    reqs = facts_ending_with_subject[:2]
    got = prompt_context_keys(model, tok, layout, 1, reqs)
    module = resolve(model, "mlp_out", 1, layout)
    expected = []
    for r in reqs:
        enc = tok(r.prompt, return_offsets_mapping=True, return_tensors="pt")
        at = r.prompt.index(r.subject)
        outside = [not (s < at + len(r.subject) and e > at) for s, e in enc.pop("offset_mapping")[0].tolist()]
        seen = []
        hook = module.register_forward_hook(lambda m, args, out: seen.append(args[0][0]))
        with torch.no_grad():
            model(**enc)
        hook.remove()
        assert 0 < sum(outside) < len(outside)  # "The mother tongue of" stays, the subject goes
        expected.append(seen[0][torch.tensor(outside)])
    assert torch.allclose(got, torch.cat(expected), atol=1e-5)


def test_memit_update_with_preserved_keys_matches_the_explicit_formula():
    gen = torch.Generator().manual_seed(1)
    keys, resid, kept = torch.randn(3, 6, generator=gen), torch.randn(3, 4, generator=gen), torch.randn(5, 6, generator=gen)
    c = torch.eye(6, dtype=torch.float64) * 0.5
    k, r, p = keys.double().T, resid.double().T, kept.double().T
    delta = memit_update(keys, resid, 2.0, c, [(kept, 3.0)])
    assert torch.allclose(delta, r @ k.T @ torch.linalg.inv(2.0 * c + 3.0 * p @ p.T + k @ k.T), atol=1e-10)
    assert torch.allclose(memit_update(keys, resid, 2.0, c, [(kept, 0.0)]), memit_update(keys, resid, 2.0, c), atol=0)
    more = torch.randn(2, 6, generator=gen)
    q = more.double().T
    two = memit_update(keys, resid, 2.0, c, [(kept, 3.0), (more, 0.5)])
    assert torch.allclose(two, r @ k.T @ torch.linalg.inv(2.0 * c + 3.0 * p @ p.T + 0.5 * q @ q.T + k @ k.T), atol=1e-10)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_context_preservation_leaves_the_prompts_other_tokens_alone_and_still_edits(tiny, arch, facts_ending_with_subject,
                                                                                   argmax_next):
    reqs = facts_ending_with_subject
    moved = {}
    for weight in (0.0, 100.0):
        model, tok = tiny(arch)
        layout = layout_for(model)
        context = {layer: prompt_context_keys(model, tok, layout, layer, reqs) for layer in LAYERS}
        editor = memit(mom2_update_weight=1e-2, context_preserve_weight=weight)
        editor.edit(model, tok, reqs)
        assert editor.context_preserve_weight == weight
        # what each layer's write does at the (pre-edit) context keys, relative to what it does at the edit keys
        moved[weight] = sum(float((u.delta @ context[u.layer].double().T).norm() / (u.delta @ u.keys.double().T).norm())
                            for u in editor.last_updates)
        for r in reqs:
            assert argmax_next(model, tok, r.prompt) == tok(" " + r.target_new)["input_ids"][0]
    assert moved[100.0] < 0.2 * moved[0.0]
    with pytest.raises(ValueError, match="context_preserve_weight must be >= 0"):
        memit(context_preserve_weight=-1.0)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_subject_frames_make_the_write_act_alike_on_the_subject_in_other_frames(tiny, arch, facts_ending_with_subject,
                                                                               argmax_next):
    reqs = facts_ending_with_subject
    frames = ["{}", "Tell me about {}", "Is it true that {}"]
    spread = {}
    for weight in (0.0, 100.0):
        model, tok = tiny(arch)
        layout = layout_for(model)
        framed = [dataclasses.replace(r, prompt=f.replace("{}", r.subject)) for r in reqs for f in frames]
        at_frames = compute_keys(model, tok, layout, 1, framed, ["{}"]).view(len(reqs), len(frames), -1).double()
        editor = memit(layers=[1], mom2_update_weight=1e-2, subject_frames=frames, frame_weight=weight)
        editor.edit(model, tok, reqs)
        (update,) = editor.last_updates
        keys = update.keys.double()
        # how differently the write acts on the subject in the frames than at the edit key, relative to what it writes
        spread[weight] = float((update.delta @ (at_frames - keys[:, None]).flatten(0, 1).T).norm()
                               / (update.delta @ keys.T).norm())
        for r in reqs:
            assert argmax_next(model, tok, r.prompt) == tok(" " + r.target_new)["input_ids"][0]
    assert spread[100.0] < 0.5 * spread[0.0]
    with pytest.raises(ValueError, match="exactly once"):
        memit(subject_frames=["About the subject"], frame_weight=1.0)
    with pytest.raises(ValueError, match="frame_weight must be >= 0"):
        memit(subject_frames=frames, frame_weight=-1.0)
    with pytest.raises(ValueError, match="needs subject_frames"):
        memit(frame_weight=1.0)


def test_layer_weights_share_the_residual_over_the_layers(tiny, facts_ending_with_subject):
    model, tok = tiny("llama")
    reqs = facts_ending_with_subject
    even, weighted = memit(), memit(layer_weights=[3.0, 1.0])
    assert [even._residual_share(i) for i in range(2)] == [0.5, 1.0]
    assert [memit(layer_weights=[2.0, 2.0])._residual_share(i) for i in range(2)] == [0.5, 1.0]
    weighted.edit(model, tok, reqs)
    first, last = weighted.last_updates
    target = weighted.last_targets.values.double()
    # the first layer takes 3/4 of z* - z, the last whatever is left after it
    assert torch.allclose(first.residual, 0.75 * (target - first.z.double()), atol=1e-6)
    assert torch.allclose(last.residual, target - last.z.double(), atol=1e-6)
    with pytest.raises(ValueError, match="layer_weights has 3 entries"):
        memit(layer_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="must be positive"):
        memit(layer_weights=[1.0, 0.0])


def test_behind_a_post_mlp_norm_the_write_is_carried_through_it(tiny, facts_ending_with_subject, monkeypatch):
    """Gemma 3 normalises the MLP output before the residual add: the last layer's normalised output
    lands on the nearest point it can reach of its target, and z ends much nearer z* than when the
    residual is written into the MLP output as it is (MEMIT on an additive model)."""
    reqs = facts_ending_with_subject
    one_template = dict(context_templates=["{}"])

    def edit(carry: bool):
        model, tok = tiny("gemma3")
        if not carry:
            monkeypatch.setattr(MEMITEditor, "_through_output_norm", staticmethod(lambda *args: args[-1]))
        editor = memit(**one_template)
        layout = layout_for(model)
        last = resolve(model, "mlp_out", LAYERS[-1], layout)
        recorded = {}
        real_delta = editor._layer_delta

        def record(layer, keys, residual, preserved=()):
            if layer == LAYERS[-1]:  # the MLP output at the keys just before the last layer's write
                recorded["m"] = keys.double() @ canonical_weight(last).detach().double().T
            return real_delta(layer, keys, residual, preserved)

        monkeypatch.setattr(editor, "_layer_delta", record)
        editor.edit(model, tok, reqs)
        monkeypatch.undo()
        z = layer_outputs(model, tok, layout, LAYERS[-1], reqs, ["{}"])
        vt = editor.last_targets
        return model, tok, layout, editor, recorded["m"], ((z - vt.values).norm(dim=-1) / vt.delta.norm(dim=-1))

    model, tok, layout, editor, m_old, miss = edit(carry=True)
    *_, miss_as_is = edit(carry=False)
    assert (miss < 0.5 * miss_as_is).all(), (miss, miss_as_is)  # measured: 0.11-0.16 against 0.41-0.47

    norm = resolve(model, "mlp_out_norm", LAYERS[-1], layout)
    gain = read_rmsnorm(norm, m_old.shape[-1]).gain
    upd = editor.last_updates[-1]
    wanted = norm(m_old.float()).double() + (editor.last_targets.values.double() - upd.z.double())
    reachable = gain * nearest_unit_rms(gain, wanted)
    landed = subject_states(model, tok, layout, "mlp_out_norm", LAYERS[-1], reqs, ["{}"], what="output").double()
    assert torch.allclose(landed, reachable, atol=1e-3 * reachable.norm(dim=-1).max())
    assert (landed - wanted).norm(dim=-1).max() > 1.0  # the targets here are out of the norm's reach


def test_normalised_mlp_output_is_refused_by_pmet_and_kn(tiny, requests_):
    """Gemma 3 normalises the MLP output before the residual add: PMET (whose target is that output,
    shared over the layers as a residual) and KN say so and stop, before any statistics are asked for,
    and leave the model as it was."""
    from lit_edit.editors.kn import KNEditor
    from lit_edit.editors.pmet import PMETEditor

    model, tok = tiny("gemma3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    provider = FixedMoments({})  # any request for C would fail with a KeyError, not the refusal
    editors = {
        "PMET": PMETEditor(**tiny_value_settings(layers=LAYERS, mom2_update_weight=1.0, mom2_adjustment=True,
                                                 stats_provider=provider)),
        "KN": KNEditor(lr_scale=1.0, steps=10, batch_size=10, adaptive_threshold=0.2, refine=False, p=0.4),
    }
    for name, editor in editors.items():
        with pytest.raises(ValueError, match=rf"{name} cannot edit this model \(gemma3_text\).*"
                                             r"post_feedforward_layernorm.*ROME"):
            editor.edit(model, tok, requests_[:1])
    assert provider.calls == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the models PMET and KN are tested on are not refused
    assert set(additive_mlp_archs()) == {"llama", "gpt2", "gptj", "gpt_neox"}
