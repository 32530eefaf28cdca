"""MEND and KE (learned editors) on the four tiny layouts: edit/undo, the training path, checkpoints."""

from __future__ import annotations


import lightning as L
import pytest
import torch

from lit_edit.data.schema import EditRequest, Probe
from lit_edit.data.training import EditBatch, EditTrainingDataModule, make_examples
from lit_edit.editors.ke import KnowledgeEditor
from lit_edit.editors.learned import BaseModelMismatch, load_editor
from lit_edit.editors.learned.base import RunningNorm
from lit_edit.editors.mend import MEND
from lit_edit.models.tiny import TINY_ARCHS
from lit_edit.utils.forward import logits_at

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = TINY_ARCHS


def build(cls, model, tok, arch: str, **kw):
    spec = {"name": f"tiny_{arch}", "source": "tiny", "path_or_id": arch}
    defaults = dict(rank=16) if cls is MEND else dict(condition_dim=32, hidden_dim=16, lstm_hidden=16, warmup_steps=0)
    return cls(layers=[-2, -1], base_model=model, tokenizer=tok, model_spec=spec, **{"lr": 1e-3, **defaults, **kw})


EDITORS = {"mend": MEND, "ke": KnowledgeEditor}


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", sorted(EDITORS))
def test_edit_writes_only_targets_and_undo_is_bit_exact(tiny, requests_, arch, kind):
    model, tok = tiny(arch)
    editor = build(EDITORS[kind], model, tok, arch)
    before = state(model)
    handle = editor.edit(model, tok, requests_[:2])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {t.param for t in editor.targets}, changed
    assert all(t.layer in (2, 3) for t in editor.targets)  # [-2, -1] of 4 blocks
    handle.undo()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters()), "edit left base parameters trainable"
    assert editor.last_timings.keys() == {"gradients", "update"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", sorted(EDITORS))
def test_training_path_is_the_edit_path(tiny, requests_, arch, kind):
    """Pass 1 (replayed prefix + functional weights) gives the plain model's logits, and pass 2
    gives exactly the logits of the model after ``edit`` wrote the same requests in place."""
    model, tok = tiny(arch)
    editor = build(EDITORS[kind], model, tok, arch, **({"edit_lr": 1e-2} if kind == "mend" else {}))
    seen = {}
    original = editor._losses

    def spy(rows, ab, base_logits, post_logits, deltas):
        seen.update(ab=ab, base=base_logits, post=post_logits)
        return original(rows, ab, base_logits, post_logits, deltas)

    editor._losses = spy
    batch = EditBatch(make_examples(requests_[:2]))
    with torch.no_grad():
        editor._step(batch, update_stats=False)
    ab = seen["ab"]
    with torch.no_grad():
        plain = logits_at(model, ab.input_ids, ab.attention_mask, ab.rows, ab.cols).float()
    torch.testing.assert_close(seen["base"], plain, rtol=1e-5, atol=1e-5)
    handle = editor.edit(model, tok, batch.requests)
    with torch.no_grad():
        edited = logits_at(model, ab.input_ids, ab.attention_mask, ab.rows, ab.cols).float()
    handle.undo()
    assert (edited - plain).abs().max() > 1e-4, "the edit did not change the logits"
    torch.testing.assert_close(seen["post"], edited, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(EDITORS))
def test_batch_edit_is_the_sum_of_single_edits(tiny, requests_, kind):
    """Several edits in one call: each edit's tokens contribute alone (padding must not leak)."""
    model, tok = tiny("gpt2")
    editor = build(EDITORS[kind], model, tok, "gpt2")
    before = state(model)
    single = {}
    for r in requests_[:3]:
        handle = editor.edit(model, tok, [r])
        for k, d in handle.deltas().items():
            single[k] = single.get(k, 0) + d
        handle.undo()
    handle = editor.edit(model, tok, requests_[:3])
    for k, d in handle.deltas().items():
        torch.testing.assert_close(d, single[k], rtol=1e-4, atol=1e-7)
    handle.undo()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", sorted(EDITORS))
def test_training_teaches_the_editor_to_edit(tiny, kind):
    """Optimiser steps on four edits: after training, the edited model predicts the new targets on
    the rephrases (post-edit accuracy 0 -> >= 0.75) and their loss falls; locality stays intact.

    (A random tiny model has near-uniform outputs, so the NLL cannot fall far: accuracy is the
    signal, and the untrained editor's accuracy on the same batch is the baseline.)"""
    model, tok = tiny("llama")
    torch.manual_seed(0)
    kw = dict(lr=1e-2, edit_lr=1e-2, lr_lr=1e-2) if kind == "mend" else dict(lr=1e-2)
    editor = build(EDITORS[kind], model, tok, "llama", **kw)
    reqs = [EditRequest(prompt=f"The mother tongue of {s} is", target_new=t, rephrase_prompts=[f"{s} speaks"],
                        locality={"nq": [Probe("The capital of France is", ("Paris",))]})
            for s, t in [("Danielle Darrieux", "English"), ("Toko Yasuda", "piano"),
                         ("Edwin of Northumbria", "Islam"), ("Barack Obama", "Dutch")]]
    batch = EditBatch(make_examples(reqs))
    opt = editor.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    with torch.no_grad():
        start = editor._step(batch, update_stats=False)
    for _ in range(60):
        out = editor._step(batch, update_stats=True)
        loss, _ = editor.combine_losses(out["edit_loss"], out["loc_loss"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = editor._step(batch, update_stats=False)
    assert float(start["edit_acc"]) <= 0.25 and float(end["edit_acc"]) >= 0.75, (start, end)
    assert float(end["edit_loss"]) < float(start["edit_loss"]) - 0.3
    assert float(end["loc_loss"]) < 1e-2


def test_state_dict_and_hparams_hold_the_editor_not_the_base_model(tiny, arch="llama"):
    model, tok = tiny(arch)
    editor = build(MEND, model, tok, arch)
    keys = list(editor.state_dict())
    assert keys and not any(k.startswith(("model.", "transformer.", "lm_head")) for k in keys), keys
    assert sum(v.numel() for v in editor.state_dict().values()) < sum(p.numel() for p in model.parameters())
    base = editor.hparams["base"]
    assert base["name"] == "tiny_llama" and len(base["fingerprint"]) == 16
    assert [t["name"] for t in base["targets"]] == [t.name for t in editor.targets]
    assert "base_model" not in editor.hparams and "tokenizer" not in editor.hparams


def test_checkpoint_roundtrip_and_base_model_check(tiny, requests_, tmp_path):
    """fit -> checkpoint -> load_editor: same edits; another base model is refused unless forced."""
    model, tok = tiny("llama")
    editor = build(MEND, model, tok, "llama")
    examples = make_examples(requests_)
    loader = torch.utils.data.DataLoader(examples, batch_size=2, collate_fn=lambda b: EditBatch(list(b)))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.fit(editor, train_dataloaders=loader)
    path = tmp_path / "mend.ckpt"
    trainer.save_checkpoint(path)
    record = torch.load(path, weights_only=True)["lit_edit"]
    assert record["base_model"] == "tiny_llama" and record["base_fingerprint"] == editor.base_info.fingerprint
    loaded = load_editor(path)
    assert isinstance(loaded, MEND) and loaded.targets == editor.targets
    for k, v in editor.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    fresh, _ = tiny("llama")
    a = editor.edit(fresh, tok, requests_[:1])
    expected = a.deltas()
    a.undo()
    b = loaded.edit(fresh, tok, requests_[:1])
    for k, d in b.deltas().items():
        torch.testing.assert_close(d, expected[k])
    b.undo()
    rebuilt, _ = loaded.load_base_model()  # from the spec recorded in the checkpoint
    assert all(torch.equal(p, q) for p, q in zip(rebuilt.parameters(), fresh.parameters()))

    from lit_edit.models.tiny import tiny_model

    other, _ = tiny_model("llama", seed=1, tokenizer=tok)
    with pytest.raises(BaseModelMismatch, match=r"trained on base model 'tiny_llama'.*fingerprint.*force"):
        loaded.edit(other, tok, requests_[:1])
    forced = load_editor(path, force=True)
    forced.edit(other, tok, requests_[:1]).undo()
    gpt2, _ = tiny("gpt2")
    with pytest.raises(BaseModelMismatch, match="has no model.layers.2.mlp.gate_proj"):
        forced.edit(gpt2, tok, requests_[:1])


def test_bad_configuration_is_a_clear_error(tiny):
    model, tok = tiny("llama")
    with pytest.raises(IndexError, match="layer 7 does not exist"):
        MEND(layers=[7], lr=1e-3, base_model=model, tokenizer=tok, model_spec={"name": "tiny_llama"})
    with pytest.raises(KeyError, match="mlp_middle"):
        MEND(layers=[1], modules=["mlp_middle"], lr=1e-3, base_model=model, tokenizer=tok, model_spec={"name": "t"})
    with pytest.raises(ValueError, match="edit_loss_on"):
        MEND(layers=[1], edit_loss_on="paraphrase", lr=1e-3, base_model=model, tokenizer=tok, model_spec={"name": "t"})
    with pytest.raises(ValueError, match=r"learned editor: train it first.*train.py editor=mend"):
        MEND(layers=[1], lr=1e-3)


def test_running_norm_merges_batches_exactly():
    torch.manual_seed(0)
    x = torch.randn(300, 5) * torch.tensor([1.0, 2.0, 3.0, 0.5, 10.0]) + 4.0
    norm = RunningNorm(5)
    assert torch.equal(norm(x), x)  # identity before any statistics
    for chunk in x.split([7, 100, 193]):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, x.mean(0))
    torch.testing.assert_close((norm.m2 / (norm.count - 1)).sqrt(), x.std(0))
    torch.testing.assert_close(norm(x).mean(0), torch.zeros(5), atol=1e-5, rtol=0)


def test_examples_fall_back_for_missing_rephrase_and_locality():
    with_loc = EditRequest(prompt="a b", target_new="c", rephrase_prompts=["b a"],
                           locality={"nq": [Probe("q?", ("x",))]})
    bare = EditRequest(prompt="d e", target_new="f")
    examples = make_examples([bare, with_loc])
    assert examples[0].rephrase == "d e" and (examples[0].loc_prompt, examples[0].loc_answer) == ("q?", "x")
    assert examples[1].rephrase == "b a"
    with pytest.raises(ValueError, match="no request has a locality probe"):
        make_examples([bare])


def test_training_data_holds_out_validation_and_uses_counterfact_val(shared_data):
    dm = EditTrainingDataModule("zsre_train", limit=30, val_size=10, seed=1, edits_per_batch=3)
    dm.setup("fit")
    train = {e.request.source for e in dm.train_examples}
    val = {e.request.source for e in dm.val_examples}
    assert len(train) == 30 and len(val) == 10 and not train & val
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, EditBatch) and len(batch) == 3
    assert all(e.rephrase != e.request.prompt and e.loc_prompt for e in batch.examples)
    cf = EditTrainingDataModule("counterfact_train", limit=5, val_name="counterfact_val", val_limit=4)
    cf.setup("fit")
    assert len(cf.train_examples) == 5 and len(cf.val_examples) == 4
    assert all("counterfact-val" in e.request.source for e in cf.val_examples)


def test_ke_multiplier_ascends_on_violated_constraint_and_stays_non_negative(tiny):
    model, tok = tiny("llama")
    editor = build(KnowledgeEditor, model, tok, "llama")
    edit_loss = torch.tensor(1.0, requires_grad=True)
    for kl, sign in ((1.0, -1), (0.0, 1)):  # KL above the margin: lambda must grow (negative gradient)
        editor.multiplier.grad = None
        loss, logged = editor.combine_losses(edit_loss, torch.tensor(kl))
        loss.backward()
        assert torch.sign(editor.multiplier.grad) == sign, (kl, editor.multiplier.grad)
        assert float(logged["margin"]) == pytest.approx(1e-3)
    with torch.no_grad():
        editor.multiplier.fill_(-0.5)
    editor.on_train_batch_end(None, None, 0)
    assert float(editor.multiplier.detach()) == 0.0
