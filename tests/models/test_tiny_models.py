"""Tiny random models: every architecture runs, is deterministic, fast and frozen."""

import time

import pytest
import torch

from lit_edit.models.tiny import TINY_ARCHS, tiny_model, tiny_tokenizer, train_tiny_tokenizer


def test_forward_with_padding(each_tiny):
    _, model, tok = each_tiny
    batch = tok(["The capital of France is", "Paris"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch.input_ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_deterministic_given_seed(arch, tiny_tok):
    ids = tiny_tok("Danielle Darrieux's mother tongue is", return_tensors="pt").input_ids
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, _ = tiny_model(arch, seed=1, tokenizer=tiny_tok)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left alone
    b, _ = tiny_model(arch, seed=1, tokenizer=tiny_tok)
    c, _ = tiny_model(arch, seed=2, tokenizer=tiny_tok)
    with torch.no_grad():
        la, lb, lc = (m(ids).logits for m in (a, b, c))
    assert torch.equal(la, lb) and not torch.allclose(la, lc)


def test_fast_once_tokenizer_exists(tiny_tok):
    for arch in TINY_ARCHS:
        start = time.perf_counter()
        tiny_model(arch, tokenizer=tiny_tok)
        assert time.perf_counter() - start < 1.0


def test_tokenizer(tiny_tok):
    assert len(tiny_tok) == 1000
    assert tiny_tok.eos_token == "<|endoftext|>" and tiny_tok.pad_token == "<|pad|>"
    assert tiny_tok.pad_token_id != tiny_tok.eos_token_id
    text = "The capital of France is Paris."
    assert tiny_tok.decode(tiny_tok(text).input_ids) == text
    assert len(tiny_tok(" Paris").input_ids) <= 2  # built-in corpus words are merged


def test_tokenizer_cache_dir_and_no_wikitext(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_EDIT_DATA", str(tmp_path / "nowhere"))  # works without shared data
    first = tiny_tokenizer(cache_dir=tmp_path)
    (cached,) = tmp_path.glob("tiny-tokenizer-*")
    assert (cached / "tokenizer.json").is_file()
    again = tiny_tokenizer(cache_dir=tmp_path)
    assert first.get_vocab() == again.get_vocab() == train_tiny_tokenizer().get_vocab()
    assert again.pad_token == "<|pad|>" and 500 < len(again) <= 1000  # smaller corpus, fewer merges
    model, _ = tiny_model("gpt2", tokenizer=again)
    assert model.config.vocab_size == len(again)


def test_unknown_arch(tiny_tok):
    with pytest.raises(ValueError, match="unknown tiny architecture 'bert'"):
        tiny_model("bert", tokenizer=tiny_tok)


def test_biases_are_drawn_not_zero(each_tiny):
    """transformers starts every bias at zero; a trained model's are not, and an editor that drops
    one (W k + b) must fail the editor tests. So every bias the architecture has is drawn."""
    arch, model, _ = each_tiny
    biases = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"}
    if arch in ("llama", "gemma3"):
        assert not biases  # no biases in these layouts
        return
    assert biases and all(p.abs().min() > 0 for p in biases.values())
    assert 0.01 < torch.cat([p.flatten() for p in biases.values()]).std() < 0.04
