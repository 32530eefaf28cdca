"""ROME and its key/value computation on tiny random models of four layouts.

Tiny random models route almost nothing from one position to later ones through their
near-uniform attention, so the "edit succeeds" check uses prompts that end with the subject
(the first target token is then predicted at the subject's last token, where ``v*`` is
written) and one-token targets. The algebra (rank one, ``W k* = v*``, the C-weighted
solution, undo) is checked on the shared fixture requests, whose subjects sit mid-prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from tokenizers import processors

import lit_edit.editors.locate.values as value_search
from lit_edit.data.schema import EditRequest
from lit_edit.editors.locate.keys import compute_keys
from lit_edit.editors.locate.prompts import context_templates, fill_template, subject_last_token_positions
from lit_edit.editors.locate.values import ValueHParams, value_targets
from lit_edit.editors.rome import CachedStatsProvider, ROMEEditor
from lit_edit.models.layouts import layout_for, resolve
from lit_edit.models.tiny import TINY_ARCHS
from lit_edit.utils.hooks import capture

from _support.locate import TEMPLATES, tiny_value_settings

ARCHS = TINY_ARCHS
LAYER = 1

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/editors/conftest.py


def rome(**overrides) -> ROMEEditor:
    # ROME's own settings are in configs/editor/rome.yaml
    return ROMEEditor(**tiny_value_settings(**{"layer": LAYER, **overrides}))


def next_token_probs(model, tok, prompt: str) -> torch.Tensor:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits[0, -1].softmax(-1)


def mlp_out_name(model) -> str:
    return layout_for(model).name("mlp_out", LAYER) + ".weight"


@pytest.mark.parametrize("arch", ARCHS)
def test_rome_edit_learns_target_touches_one_weight_rank_one_and_undoes(tiny, arch):
    model, tok = tiny(arch)
    req = EditRequest(prompt="The mother tongue of Danielle Darrieux", target_new="Rome", subject="Danielle Darrieux")
    (target_id,) = tok(" Rome")["input_ids"]
    assert next_token_probs(model, tok, req.prompt).argmax() != target_id
    before = {k: v.clone() for k, v in model.state_dict().items()}

    editor = rome()
    handle = editor.edit(model, tok, [req])

    assert next_token_probs(model, tok, req.prompt).argmax() == target_id
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {mlp_out_name(model)}
    (delta,) = handle.deltas().values()
    s = torch.linalg.svdvals(delta.double())
    assert s[1] / s[0] < 1e-4, f"update is not rank one: singular values {s[:3].tolist()}"
    # the defining property: the edited projection maps k* to v*
    (upd,) = editor.last_updates
    module = resolve(model, "mlp_out", LAYER)
    with torch.no_grad():
        out = module(upd.key[None])[0]
    assert torch.allclose(out, upd.value, atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in model.parameters())

    handle.undo()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} not restored exactly"


class FixedMoment:
    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix, self.calls = matrix, 0

    def get(self, model, tokenizer, layout, layer):
        self.calls += 1
        return self.matrix


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_update_with_real_second_moment_is_the_c_weighted_solution(tiny, requests_, random_text_second_moment, arch):
    model, tok = tiny(arch)
    c = random_text_second_moment(model, LAYER)
    provider = FixedMoment(c)
    editor = rome(mom2_adjustment=True, stats_provider=provider, v_num_grad_steps=5)
    handle = editor.edit(model, tok, requests_[:1])
    (upd,) = editor.last_updates
    (delta,) = handle.deltas().values()
    delta = delta.double()
    if delta.shape[0] != upd.value.shape[0]:  # GPT-2 Conv1D stores [in, out]
        delta = delta.T
    c64, k = c.double(), upd.key.double()
    # left = C^-1 k*, Delta W = outer(right, left), W' k* = v*
    assert torch.allclose(c64 @ upd.left, k, atol=1e-8 * k.norm(), rtol=1e-6)
    assert torch.allclose(delta, upd.delta(), atol=1e-6 * upd.delta().abs().max())
    with torch.no_grad():
        out = resolve(model, "mlp_out", LAYER)(upd.key[None])[0]
    assert torch.allclose(out, upd.value, atol=1e-5, rtol=1e-4)
    # C-weighted: Delta W C = r k*^T / (k*^T C^-1 k*) with r = v* - W k*, i.e. among all updates
    # with Delta W k* = r it has the least sum over keys of ||Delta W k||^2 (tr(Delta W C Delta W^T))
    residual = upd.right * torch.dot(upd.left, k)
    expected = torch.outer(residual, k) / torch.dot(k, upd.left)
    assert torch.allclose(delta @ c64, expected, atol=1e-4 * expected.abs().max())
    cost = lambda d: torch.trace(d @ c64 @ d.T)  # noqa: E731
    other = torch.randn_like(delta)
    other -= torch.outer(other @ k, k) / k.dot(k)  # keeps Delta W k* unchanged
    assert cost(delta) < cost(delta + 1e-2 * other / other.norm() * delta.norm())
    # C matters: the update's input direction is not k* itself (as with C = I) ...
    assert (upd.left / upd.left.norm() - k / k.norm()).norm() > 1e-2
    # ... and C is fetched and factorised once per editor
    editor.edit(model, tok, requests_[1:2])
    assert provider.calls == 1


def test_batch_is_applied_sequentially_and_undone_as_one(tiny, requests_):
    model, tok = tiny("gpt_neox")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    editor = rome(v_num_grad_steps=4)
    handle = editor.edit(model, tok, requests_[:2])
    assert len(editor.last_updates) == 2
    assert set(editor.last_timings) == {"keys", "values", "update"} and all(v > 0 for v in editor.last_timings.values())
    assert editor.last_counts == {"value_steps": sum(u.steps for u in editor.last_updates)}
    (delta,) = handle.deltas().values()
    s = torch.linalg.svdvals(delta.double())
    assert s[2] / s[0] < 1e-4  # two rank-one updates
    # the later update is the last write, so its property holds exactly on the final weight
    upd = editor.last_updates[1]
    with torch.no_grad():
        out = resolve(model, "mlp_out", LAYER)(upd.key[None])[0]
    assert torch.allclose(out, upd.value, atol=1e-5, rtol=1e-4)
    handle.undo()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_failed_request_leaves_the_model_unchanged(check_failed_batch_is_undone):
    check_failed_batch_is_undone(rome(v_num_grad_steps=2))


def test_subject_not_in_prompt_is_a_clear_error(tiny_tok):
    with pytest.raises(ValueError, match="subject 'Paris' not found in prompt"):
        subject_last_token_positions(tiny_tok, ["The Eiffel Tower is in"], ["Paris"])
    # text in a context prefix is not the subject
    with pytest.raises(ValueError, match="not found"):
        subject_last_token_positions(tiny_tok, ["Paris. The Eiffel Tower is in"], ["Paris"], search_from=[7])


def test_layer_out_of_range_is_the_layouts_error(tiny, requests_):
    model, tok = tiny("gpt2")
    with pytest.raises(IndexError, match="^editor.layer=9: layer 9 does not exist: the model has 4 layers"):
        rome(layer=9).edit(model, tok, requests_[:1])
    with pytest.raises(TypeError, match="one layer"):
        rome(layer=[1, 2])


def test_subject_positions_at_start_with_bos_and_without_offsets(tiny_tok):
    tok = tiny_tok
    prompts = ["Danielle Darrieux's mother tongue is", "The mother tongue of Danielle Darrieux is"]
    subjects = ["Danielle Darrieux"] * 2
    pos = subject_last_token_positions(tok, prompts, subjects)
    for p, i in zip(prompts, pos):
        tokens = tok.convert_ids_to_tokens(tok(p)["input_ids"])
        assert tokens[i].endswith("x") and not tokens[i + 1].endswith("x")
    # a tokenizer that adds BOS shifts every position by one
    bos_tok = tok.__class__(tokenizer_object=tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str()),
                            eos_token=tok.eos_token, bos_token=tok.bos_token, pad_token=tok.pad_token)
    bos_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, tok.bos_token_id)])
    assert bos_tok(prompts[0])["input_ids"][0] == tok.bos_token_id
    assert subject_last_token_positions(bos_tok, prompts, subjects) == [i + 1 for i in pos]

    class Slow:  # a tokenizer without offset mappings: ROME's prefix-length rule
        is_fast = False

        def __call__(self, text, add_special_tokens=True):
            return bos_tok(text, add_special_tokens=add_special_tokens)

    assert subject_last_token_positions(Slow(), prompts, subjects) == [i + 1 for i in pos]


def test_context_templates_are_deterministic_and_cached(tiny):
    model, tok = tiny("gpt2")
    rng_before = torch.random.get_rng_state()
    a = context_templates(model, tok, length_params=[[5, 3], [8, 2]], seed=3)
    b = context_templates(model, tok, length_params=[[5, 3], [8, 2]], seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert a == b and len(a) == 6 and a[0] == "{}"
    assert all(t.count("{}") == 1 and t.endswith(". {}") for t in a[1:])
    assert context_templates(model, tok, fixed=["{}", "Note: {}"]) == ["{}", "Note: {}"]
    with pytest.raises(ValueError, match="exactly one"):
        context_templates(model, tok, fixed=["no placeholder"])
    # document_start: generation reads it first, the templates never contain it, the prefix
    # length leaves it out; without it the templates are exactly the ones above
    seen = []
    generate = model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"].clone())
        return generate(**kwargs)

    model.generate = spy
    try:
        started = context_templates(model, tok, length_params=[[5, 3], [8, 2]], seed=3, document_start=tok.eos_token)
    finally:
        del model.generate
    eos = tok.eos_token_id
    assert all(ids.shape[1] >= 2 and bool((ids[:, 0] == eos).all()) and bool((ids[:, 1:] != eos).all()) for ids in seen)
    assert len(started) == 6 and all(tok.eos_token not in t for t in started)
    assert started != a and context_templates(model, tok, length_params=[[5, 3], [8, 2]], seed=3) == a
    editor = rome(context_templates=None, context_template_length_params=[[5, 2]], v_num_grad_steps=1)
    editor.prepare(model, tok)
    cached = editor.templates
    assert len(cached) == 3
    editor.edit(model, tok, [EditRequest(prompt="Toko Yasuda plays", target_new="piano", subject="Toko Yasuda")])
    assert editor.templates is cached


def test_extra_context_templates_are_appended_checked_and_keep_the_subject_key(tiny, requests_):
    model, tok = tiny("llama")
    generated = rome(context_templates=None, context_template_length_params=[[5, 2]],
                     extra_context_templates=["{} Answer:"], v_num_grad_steps=1)
    generated.prepare(model, tok)
    assert len(generated.templates) == 4 and generated.templates[-1] == "{} Answer:"
    fixed = rome(extra_context_templates=["Q: {} A:"])
    fixed.prepare(model, tok)
    assert fixed.templates == TEMPLATES + ["Q: {} A:"]
    with pytest.raises(ValueError, match="exactly one"):
        rome(extra_context_templates=["no placeholder"])  # at construction, not at the first edit
    # text after the prompt cannot change the key at the subject's last token (causal attention)
    layout = layout_for(model)
    bare = compute_keys(model, tok, layout, LAYER, requests_[:2], ["{}"])
    suffixed = compute_keys(model, tok, layout, LAYER, requests_[:2], ["{} Answer:"])
    torch.testing.assert_close(suffixed, bare, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("layer", [LAYER, 3])  # 3: the last block
def test_keys_match_a_plain_forward(tiny, requests_, arch, layer):
    """compute_keys stops after the edited block; the keys equal a full forward's."""
    model, tok = tiny(arch)
    layout = layout_for(model)
    keys = compute_keys(model, tok, layout, layer, requests_[:2], TEMPLATES, batch_size=3)
    name = layout.name("mlp_out", layer)
    for r, req in enumerate(requests_[:2]):
        per_template = []
        for t in TEMPLATES:
            prompt = fill_template(t, req.prompt)
            (pos,) = subject_last_token_positions(tok, [prompt], [req.subject], search_from=[t.index("{}")])
            with torch.no_grad(), capture(model, [name], what="input") as seen:
                model(**tok(prompt, return_tensors="pt"))
            per_template.append(seen[name][0, pos])
        assert torch.allclose(keys[r], torch.stack(per_template).mean(0), atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_values_with_and_without_the_shortcuts_agree(tiny, requests_, arch, monkeypatch):
    """Replaying frozen blocks and caching the tokens before the subject change nothing."""
    hp = ValueHParams(num_grad_steps=3, lr=0.5, weight_decay=1e-3, clamp_norm_factor=4.0, kl_factor=0.0625,
                         stop_loss=None)
    # a one-token subject opening the prompt (no BOS): rows whose prefix before the subject is empty
    first = EditRequest(prompt="The Eiffel Tower is in", target_new="Rome", subject="The")
    three = [requests_[0], first, requests_[1]]
    for reqs, templates in ((three, TEMPLATES), ([first], ["{}"])):
        results = []
        for shortcuts in (True, False):
            model, tok = tiny(arch)
            with monkeypatch.context() as m:
                if not shortcuts:
                    m.setattr(value_search, "frozen_prefix", lambda *a, **k: contextlib.nullcontext())
                results.append(value_targets(model, tok, layout_for(model), 2, reqs, templates, hp,
                                                reuse_prefix=shortcuts))
        assert torch.allclose(results[0].original, results[1].original, atol=1e-6, rtol=1e-5)
        assert torch.allclose(results[0].values, results[1].values, atol=1e-5, rtol=1e-4)
        assert results[0].nll == pytest.approx(results[1].nll, rel=1e-4, abs=1e-5)
    # requests are optimised independently: each alone gives the same delta as in the batch
    together = value_targets(*tiny(arch), layout_for(model), 2, three, TEMPLATES, hp)
    alone = value_targets(*tiny(arch), layout_for(model), 2, three[2:], TEMPLATES, hp)
    assert torch.allclose(alone.delta[0], together.delta[2], atol=1e-5, rtol=1e-4)


def test_value_clamp_and_early_stop(tiny, requests_):
    model, tok = tiny("gpt2")
    layout = layout_for(model)
    hp = ValueHParams(num_grad_steps=10, lr=5.0, weight_decay=0.0, clamp_norm_factor=0.5, kl_factor=0.0,
                         stop_loss=None)
    vt = value_targets(model, tok, layout, LAYER, requests_[:1], TEMPLATES, hp)
    with torch.no_grad(), capture(model, [layout.name("mlp_out", LAYER)], what="output") as seen:
        model(**tok(requests_[0].prompt, return_tensors="pt"))
    (pos,) = subject_last_token_positions(tok, [requests_[0].prompt], [requests_[0].subject])
    v_orig_norm = seen[layout.name("mlp_out", LAYER)][0, pos].norm()
    assert vt.delta.norm() <= 0.5 * v_orig_norm * (1 + 1e-5)
    assert vt.steps == [10]
    stop = ValueHParams(num_grad_steps=10, lr=0.5, weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.0,
                           stop_loss=100.0)
    vt = value_targets(model, tok, layout, LAYER, requests_[:1], TEMPLATES, stop)
    assert vt.steps == [1] and torch.count_nonzero(vt.delta) == 0
    # stop_on="nll": the decay term no longer keeps the optimisation from stopping. The runs
    # follow the same trajectory until they stop, so the lowest NLL of a free run is a threshold
    # the NLL criterion meets by that pass while the total (NLL + decay > NLL) does not.
    free = ValueHParams(num_grad_steps=10, lr=0.5, weight_decay=1.0, clamp_norm_factor=4.0, kl_factor=0.0,
                           stop_loss=None)
    history = [h[0] for h in value_targets(model, tok, layout, LAYER, requests_[:1], TEMPLATES, free).history]
    best = min(range(1, len(history)), key=history.__getitem__)
    assert history[best] < history[0] - 1e-3
    by_nll = ValueHParams(**{**free.__dict__, "stop_loss": history[best] + 1e-6, "stop_on": "nll"})
    by_loss = ValueHParams(**{**by_nll.__dict__, "stop_on": "loss"})
    steps_nll = value_targets(model, tok, layout, LAYER, requests_[:1], TEMPLATES, by_nll).steps[0]
    assert 1 < steps_nll <= best + 1
    assert value_targets(model, tok, layout, LAYER, requests_[:1], TEMPLATES, by_loss).steps[0] > steps_nll
    with pytest.raises(ValueError, match="stop_on"):
        ValueHParams(**{**by_nll.__dict__, "stop_on": "total"})


def test_extra_corpora_add_weighted_second_moments(tiny, fake_stats):
    """C = C_corpus + sum_i weight_i C_i, each term from its own (cached) statistics."""
    calls, settings = fake_stats
    model, _ = tiny("llama")
    layout = layout_for(model)
    provider = CachedStatsProvider({**settings, "extra_corpora": [{"corpus": "q.txt", "weight": 0.5, "n_samples": 3}]})
    got = provider.get_many(model, None, layout, [0, 1])
    assert calls[1:] == [("get_many", [0, 1], {"corpus": "wikitext", "n_samples": 10, "dtype": "float32"}, "tiny_llama"),
                         ("get_many", [0, 1], {"corpus": "q.txt", "n_samples": 3, "dtype": "float32"}, "tiny_llama")]
    assert torch.equal(got[1], torch.eye(got[1].shape[0]) * 4.5)  # fake C = 3 I: 3 I + 0.5 * 3 I
    for bad, match in [({"weight": 1.0}, "corpus"), ({"corpus": "q.txt"}, "weight"),
                       ({"corpus": "q.txt", "weight": -1}, ">= 0"), ("q.txt", "mapping")]:
        with pytest.raises(ValueError, match=rf"extra_corpora\[0\].*{match}"):
            CachedStatsProvider({**settings, "extra_corpora": [bad]})


def test_extra_corpora_with_the_real_statistics(tiny, real_stats, tmp_path):
    model, tok = tiny("gpt2")
    layout = layout_for(model)
    questions = tmp_path / "questions.txt"
    questions.write_text("\n".join(f"who wrote book number {i}?" for i in range(16)))
    plain = CachedStatsProvider(real_stats).get(model, tok, layout, 1)
    alone = CachedStatsProvider({**real_stats, "corpus": str(questions), "n_samples": 16}).get(model, tok, layout, 1)
    mixed = CachedStatsProvider({**real_stats, "extra_corpora": [
        {"corpus": str(questions), "weight": 2.0, "n_samples": 16}]}).get(model, tok, layout, 1)
    torch.testing.assert_close(mixed, plain + 2.0 * alone)
    assert not torch.allclose(alone, plain, rtol=0.1)  # the question text is a different distribution


def test_stats_adapter_passes_settings_and_unwraps_the_matrix(tiny, requests_, fake_stats):
    """The default C provider's contract with lit_edit.editors.locate.stats (faked here)."""
    calls, stats = fake_stats
    model, tok = tiny("llama")
    editor = rome(mom2_adjustment=True, stats=stats, v_num_grad_steps=2)
    editor.edit(model, tok, requests_[:1])
    assert calls == [("init", "/tmp/stats"),
                     ("get_many", [LAYER], {"corpus": "wikitext", "n_samples": 10, "dtype": "float32"}, "tiny_llama")]
    # C = 3 I: the update is the identity one (scaling C changes nothing in ROME)
    upd = editor.last_updates[0]
    assert torch.allclose(upd.left / upd.left.norm(), upd.key.double() / upd.key.norm(), atol=1e-12)
    with pytest.raises(ValueError, match="cache_dir"):
        CachedStatsProvider({})


@pytest.mark.parametrize("fast", [False, True])
def test_auto_autocast_follows_the_models_device_at_each_optimisation(tiny, monkeypatch, fast):
    """"auto" is decided when values are optimised: Lightning moves the model after the editor's setup."""
    import lit_edit.utils.precision as precision
    monkeypatch.setattr(precision, "fast_bf16", lambda device: fast)
    model, _ = tiny("llama")
    editor = rome(v_autocast="auto")
    assert editor.hp.autocast is None  # nothing decided before a model is seen
    assert editor.value_hp(model).autocast == ("bf16" if fast else None)
    assert rome(v_autocast="bf16").value_hp(model).autocast == "bf16"  # explicit settings stay
    with pytest.raises(ValueError, match="v_autocast must be null, 'bf16' or 'auto', got 'fp8'"):
        rome(v_autocast="fp8")


def test_config_builds_the_editor(editor_from_config):
    editor = editor_from_config("rome", 3)
    assert isinstance(editor, ROMEEditor) and editor.name == "rome" and editor.layer == 3
    assert editor.mom2_adjustment and editor.stats["cache_dir"] == "/tmp/cache/stats"
    assert editor.hp.num_grad_steps == 20 and editor.hp.lr == 0.5 and editor.hp.clamp_norm_factor == 4


def test_default_provider_with_the_stats_module(tiny, requests_, real_stats, tmp_path):
    """mom2_adjustment with the real on-disk statistics (a small text file as corpus)."""
    model, tok = tiny("gpt2")
    editor = rome(mom2_adjustment=True, stats=real_stats, v_num_grad_steps=2)
    handle = editor.edit(model, tok, requests_[:1])
    (upd,) = editor.last_updates
    with torch.no_grad():
        out = resolve(model, "mlp_out", LAYER)(upd.key[None])[0]
    assert torch.allclose(out, upd.value, atol=1e-5, rtol=1e-4)
    assert any((tmp_path / "stats").rglob("*")), "statistics were not cached on disk"
    handle.undo()


@pytest.mark.parametrize("shortcuts", [True, False])
def test_dropping_finished_requests_from_the_forward_changes_nothing(tiny, requests_, shortcuts, monkeypatch):
    """Compaction only removes rows whose delta is frozen: same values, NLLs and step counts."""
    model, tok = tiny("llama")
    layout = layout_for(model)
    built = []  # rows of every forward built: the compacted run must rebuild with fewer
    name = "_prefix_cached_forward" if shortcuts else "_full_forward"
    original = getattr(value_search, name)
    monkeypatch.setattr(value_search, name, lambda m, t, ids, *a, **k: built.append(len(ids)) or original(m, t, ids, *a, **k))
    results = []
    for compact_below in (0.0, 0.99):
        hp = ValueHParams(num_grad_steps=12, lr=0.5, weight_decay=1e-3, clamp_norm_factor=4.0, kl_factor=0.0625,
                             stop_loss=None, stop_on="nll", compact_below=compact_below)
        free = value_targets(model, tok, layout, 1, requests_[:3], TEMPLATES, hp, reuse_prefix=shortcuts)
        # a stop threshold between the requests' final NLLs: they finish at different steps
        hp = dataclasses.replace(hp, stop_loss=sorted(free.nll)[1] + 1e-3)
        built.clear()
        results.append(value_targets(model, tok, layout, 1, requests_[:3], TEMPLATES, hp, reuse_prefix=shortcuts))
    # the compacted run rebuilt its forward with fewer rows each time
    assert len(built) > 1 and built == sorted(built, reverse=True) and len(set(built)) == len(built), built
    plain, compacted = results
    assert len(set(plain.steps)) > 1, plain.steps  # the test needs requests that stop at different steps
    assert plain.steps == compacted.steps
    assert torch.allclose(plain.values, compacted.values, atol=1e-5, rtol=1e-4)
    assert compacted.nll == pytest.approx(plain.nll, rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="compact_below"):
        ValueHParams(num_grad_steps=1, lr=1, weight_decay=0, clamp_norm_factor=1, kl_factor=0, stop_loss=None,
                        compact_below=1.0)


def test_bf16_autocast_values_are_close_to_float32(each_tiny, requests_):
    """bf16 changes the targets by the rounding of the steps only: the first step is float32, so the
    unedited outputs are exact, and every weight and the attention setting come back unchanged."""
    arch, model, tok = each_tiny
    layout = layout_for(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attention = getattr(model.config, "_attn_implementation", None)
    hp = ValueHParams(num_grad_steps=4, lr=0.5, weight_decay=1e-3, clamp_norm_factor=4.0, kl_factor=0.0625,
                         stop_loss=None)
    full = value_targets(model, tok, layout, 1, requests_[:2], TEMPLATES, hp)
    half = value_targets(model, tok, layout, 1, requests_[:2], TEMPLATES, dataclasses.replace(hp, autocast="bf16"))
    assert full.values.dtype == half.values.dtype == torch.float32
    assert torch.equal(full.original, half.original)  # the float32 first step
    assert not torch.equal(full.values, half.values)  # bf16 did run
    assert torch.allclose(full.values, half.values, atol=0.05 * full.values.abs().max().item())
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items()), arch
    assert getattr(model.config, "_attn_implementation", None) == attention
    with pytest.raises(ValueError, match="autocast"):
        dataclasses.replace(hp, autocast="fp8")


def test_a_second_moment_from_too_little_variety_is_refused_with_the_reason():
    """Keys that span only part of the space (one sentence repeated, however many tokens) give a
    singular C; the solver says so and what to do, rather than writing through a garbage inverse."""
    from lit_edit.editors.rome import CholeskySolver

    g = torch.Generator().manual_seed(0)
    keys = torch.randn(4096, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"C of layer 5 \(8x8\) is not positive definite .*more varied"):
        CholeskySolver(keys.T @ keys / len(keys), what="C of layer 5")
    spanning = torch.randn(4096, 8, generator=g, dtype=torch.float64)
    assert CholeskySolver(spanning.T @ spanning / len(spanning)).dim == 8
