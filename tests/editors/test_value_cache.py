"""The z* cache: a hit gives exactly the optimised targets, and anything they depend on changes the key."""

from __future__ import annotations

import dataclasses
import os
import signal

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import lit_edit.editors.locate.values as values_module
from lit_edit.editors.base import EditInterrupted
from lit_edit.editors.locate.value_cache import ValueCache
from lit_edit.editors.memit import MEMITEditor
from lit_edit.evaluation.loop import EditingLoop, EvalConfig
from lit_edit.models.layouts import canonical_weight, resolve

from _support.locate import tiny_value_settings

LAYERS = [1, 2]

pytestmark = pytest.mark.usefixtures("one_thread")


def memit(cache_dir, **overrides) -> MEMITEditor:
    return MEMITEditor(**tiny_value_settings(**{"layers": LAYERS, "v_num_grad_steps": 6, "mom2_update_weight": 1e-2,
                                                "v_cache_dir": str(cache_dir), **overrides}))


def written(model) -> list[torch.Tensor]:
    return [canonical_weight(resolve(model, "mlp_out", layer)).detach().clone() for layer in LAYERS]


class Killed(Exception):
    """Stands for a job stopped mid-batch (a kill, a lost machine)."""


def optimises(requests, kwargs) -> bool:
    """Whether a ``joint_value_targets`` call optimises z* itself: not a cache lookup, not a chunk split."""
    chunked = kwargs.get("chunk_size") is not None and len(requests) > kwargs["chunk_size"]
    return kwargs.get("store") is None and not chunked


@pytest.fixture
def chunk_optimisations(monkeypatch):
    """The subjects of every chunk whose z* is really optimised (not looked up); ``kill_after[0] = n``
    stops the batch when the (n+1)-th optimisation starts."""
    optimised: list[list[str]] = []
    kill_after: list[int | None] = [None]
    real = values_module.joint_value_targets

    def watching(model, tokenizer, layout, layer, requests, *args, **kwargs):
        if optimises(requests, kwargs):
            if kill_after[0] is not None and len(optimised) == kill_after[0]:
                raise Killed
            optimised.append([r.subject for r in requests])
        return real(model, tokenizer, layout, layer, requests, *args, **kwargs)

    monkeypatch.setattr(values_module, "joint_value_targets", watching)
    return optimised, kill_after


@pytest.fixture
def counted_optimisation(chunk_optimisations):
    """One entry per real z* optimisation of a (one-chunk) batch."""
    return chunk_optimisations[0]


def test_a_hit_reproduces_the_edit_without_optimising(tiny, facts_ending_with_subject, tmp_path, counted_optimisation):
    reqs = facts_ending_with_subject
    first_model, tok = tiny("llama")
    first = memit(tmp_path)
    first.edit(first_model, tok, reqs)
    assert len(counted_optimisation) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1

    second_model, _ = tiny("llama")
    second = memit(tmp_path)
    second.edit(second_model, tok, reqs)
    assert len(counted_optimisation) == 1 and second.value_cache.hits == 1
    assert "cached_values" not in first.last_counts and second.last_counts["cached_values"] == len(reqs)
    assert second.last_counts["value_steps"] == first.last_counts["value_steps"] == sum(first.last_targets.steps)
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


@pytest.mark.parametrize("rounds", [1, 2])
def test_a_stopped_batch_resumes_at_its_first_unfinished_chunk(tiny, facts_ending_with_subject, tmp_path,
                                                               chunk_optimisations, rounds):
    reqs = facts_ending_with_subject
    optimised, kill_after = chunk_optimisations
    tok = tiny("llama")[1]
    reference = tiny("llama")[0]
    memit(tmp_path / "reference", v_chunk_size=1, rounds=rounds).edit(reference, tok, reqs)
    per_run = len(optimised)
    assert per_run == len(reqs) * rounds and all(len(chunk) == 1 for chunk in optimised)

    optimised.clear()
    kill_after[0] = per_run - 2  # stopped in the last round, two chunks before the end
    model = tiny("llama")[0]
    before = written(model)
    with pytest.raises(Killed):
        memit(tmp_path / "resumed", v_chunk_size=1, rounds=rounds).edit(model, tok, reqs)
    assert all(torch.equal(a, b) for a, b in zip(before, written(model)))  # nothing half-written
    assert len(list((tmp_path / "resumed").glob("*.safetensors"))) == per_run - 2  # the finished chunks stay

    optimised.clear()
    kill_after[0] = None
    resumed = memit(tmp_path / "resumed", v_chunk_size=1, rounds=rounds)
    resumed.edit(model, tok, reqs)
    assert optimised == [[r.subject] for r in reqs[-2:]]  # only the two it had not finished
    assert resumed.value_cache.hits == per_run - 2
    assert resumed.last_counts["cached_values"] == per_run - 2  # the run's time leaves them out: reported
    for a, b in zip(written(reference), written(model)):
        assert torch.equal(a, b)


def batch_edit_in_the_loop(model, tok, editor, requests) -> None:
    """``edit.py``'s path for one batch: the editor is a Trainer callback, all requests one test batch."""
    loop = EditingLoop(model, tok, editor, EvalConfig(mode="batch", batch_size=len(requests), fluency=False))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[editor])
    trainer.test(loop, dataloaders=DataLoader(requests, batch_size=len(requests), collate_fn=list), verbose=False)


@pytest.mark.parametrize("cached", [True, False])
def test_sigterm_stops_a_batch_edit_at_its_next_chunk(tiny, facts_ending_with_subject, tmp_path, monkeypatch, cached):
    """Lightning acts on SIGTERM only between batches; a batch edit checks it between z* chunks."""
    reqs = facts_ending_with_subject
    model, tok = tiny("llama")
    real, optimised = values_module.joint_value_targets, []

    def terminated_after_first(model_, tokenizer, layout, layer, requests, *args, **kwargs):
        out = real(model_, tokenizer, layout, layer, requests, *args, **kwargs)
        if optimises(requests, kwargs):  # one chunk optimised: the scheduler's stop arrives
            optimised.append(requests)
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(values_module, "joint_value_targets", terminated_after_first)
    before = written(model)
    editor = memit(tmp_path, v_chunk_size=1, v_cache_dir=str(tmp_path) if cached else None)
    where = r"stopped on SIGTERM before optimising the z\* of its next chunk \(1 request\(s\), layer 2\)"
    with pytest.raises(EditInterrupted, match=where) as stop:
        batch_edit_in_the_loop(model, tok, editor, reqs)
    assert len(optimised) == 1  # at the next chunk, not at the end of the batch
    assert stop.value.code == str(stop.value)  # SystemExit with a message: exit status 1, not 0
    message = str(stop.value)
    assert f"z* cache {tmp_path}: the same command resumes" in message if cached else "nothing of it is kept" in message
    assert all(torch.equal(a, b) for a, b in zip(before, written(model)))  # nothing written
    assert len(list(tmp_path.glob("*.safetensors"))) == (1 if cached else 0)

    if cached:  # the same command, not stopped, goes on from the finished chunk
        monkeypatch.setattr(values_module, "joint_value_targets", real)
        resumed = memit(tmp_path, v_chunk_size=1)
        batch_edit_in_the_loop(model, tok, resumed, reqs)
        assert resumed.value_cache.hits == 1 and resumed.last_counts["cached_values"] == 1


def test_one_chunk_is_one_entry_keyed_by_the_whole_batch(tiny, facts_ending_with_subject, tmp_path):
    """Without chunking (or a batch within one chunk) the entry's key is that of all requests."""
    model, tok = tiny("llama")
    editor = memit(tmp_path, v_chunk_size=len(facts_ending_with_subject))
    editor.edit(model, tok, facts_ending_with_subject)
    fresh = tiny("llama")[0]
    key = editor.value_cache.key(fresh, tok, layer=LAYERS[-1], modules=["layer"], requests=facts_ending_with_subject,
                                 templates=editor.templates, hp=editor.hp, max_length=editor.max_length)
    assert [p.name for p in tmp_path.glob("*.safetensors")] == [f"{key}.safetensors"]


def test_auto_chunks_by_the_models_device(tiny, facts_ending_with_subject, tmp_path, monkeypatch):
    """v_chunk_size: auto takes the device's size when the values are optimised: on this CPU, with the
    CPU's size set to 3, four requests make two chunks (two cache entries) and with 4 one chunk."""
    import lit_edit.editors.locate.values as values_module

    model, tok = tiny("llama")
    monkeypatch.setattr(values_module, "AUTO_CHUNK_SIZES", {"cpu": 3})
    editor = memit(tmp_path / "three", v_chunk_size="auto")
    assert editor.v_chunk_size == "auto" and editor.chunk_size(model) == 3
    editor.edit(model, tok, facts_ending_with_subject)
    assert len(list((tmp_path / "three").glob("*.safetensors"))) == 2
    monkeypatch.setattr(values_module, "AUTO_CHUNK_SIZES", {"cpu": 4})
    memit(tmp_path / "four", v_chunk_size="auto").edit(tiny("llama")[0], tok, facts_ending_with_subject)
    assert len(list((tmp_path / "four").glob("*.safetensors"))) == 1


def test_chunk_size_settings(tmp_path):
    from lit_edit.editors.locate.values import AUTO_CHUNK_SIZE_ELSEWHERE, AUTO_CHUNK_SIZES, resolve_chunk_size

    assert resolve_chunk_size("auto", "cpu") == AUTO_CHUNK_SIZES["cpu"] == 5
    assert resolve_chunk_size("auto", "cuda:0") == AUTO_CHUNK_SIZE_ELSEWHERE == 25  # no GPU needed to resolve it
    assert resolve_chunk_size(7, "cuda") == 7 and resolve_chunk_size(None, "cpu") is None
    assert resolve_chunk_size("12", "cpu") == 12  # the checked int, not the string it came as
    assert memit(tmp_path, v_chunk_size="12").v_chunk_size == 12  # as a command line gives it
    for bad in (0, -3, "big", 2.5, True):
        with pytest.raises(ValueError, match=r"v_chunk_size must be an integer >= 1, null or 'auto', got"):
            memit(tmp_path, v_chunk_size=bad)
