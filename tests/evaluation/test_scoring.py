"""Batched teacher-forced scoring equals a plain full forward, whatever the padding."""

from __future__ import annotations

import pytest
import torch

from lit_edit.evaluation.scoring import teacher_forced
from lit_edit.models.tiny import TINY_ARCHS
from lit_edit.utils.tokens import answer_batch, join_answer, tokenize_pairs

PROMPTS = ["The capital of France is", "Danielle Darrieux speaks", "Q: who wrote Hamlet?\nA:"]
ANSWERS = ["Paris", "fluent French and some English", "William Shakespeare"]


def reference(model, tok, prompt, answer):
    """Prompt+answer through the full model, one at a time, no padding."""
    p = tok(prompt)["input_ids"]
    a = tok(join_answer(prompt, answer), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + a])
    logits = model(input_ids=ids).logits[0, len(p) - 1 : len(p) + len(a) - 1]
    logp = torch.log_softmax(logits, -1)[torch.arange(len(a)), torch.tensor(a)]
    return logits.argmax(-1), torch.tensor(a), -logp.mean()


def test_join_answer_spacing():
    assert join_answer("The capital is", "Paris") == " Paris"
    assert join_answer("Q:\n", "Paris") == "Paris"
    assert join_answer("The capital is", " Paris") == " Paris"


@pytest.mark.parametrize("arch", TINY_ARCHS)
@pytest.mark.parametrize("budget", [10_000, 12])  # one padded batch / one probe per batch
def test_matches_unpadded_full_forward(tiny, arch, budget):
    model, tok = tiny(arch)
    pairs = tokenize_pairs(tok, PROMPTS, ANSWERS)
    tf = teacher_forced(model, pairs, pad_id=tok.pad_token_id, token_budget=budget)
    for i, (p, a) in enumerate(zip(PROMPTS, ANSWERS)):
        pred, label, nll = reference(model, tok, p, a)
        n = len(label)
        assert tf.mask[i].sum() == n and tf.mask[i, :n].all()
        assert torch.equal(tf.label_ids[i, :n], label)
        assert torch.equal(tf.pred_ids[i, :n], pred)
        assert torch.allclose(tf.nll[i], nll, atol=1e-5)


def test_long_prompt_is_truncated_on_the_left(tiny_tok):
    pairs = tokenize_pairs(tiny_tok, [("word " * 300).strip()], ["Paris"], max_length=32)
    assert len(pairs.ids[0]) == 32
    assert pairs.ids[0][-pairs.answer_len(0):] == tiny_tok(" Paris", add_special_tokens=False)["input_ids"]


def test_prompt_last_positions(tiny_tok):
    pairs = tokenize_pairs(tiny_tok, ["a b c", "a"], ["d e", "f"])
    b = answer_batch(pairs, [0, 1], pad_id=0, from_last_prompt=True)
    for k in range(len(b.rows)):
        assert b.cols[k] == pairs.n_prompt[int(b.pair[k])] - 1
    tf_cols = answer_batch(pairs, [0, 1], pad_id=0).cols
    assert tf_cols.tolist() == [pairs.n_prompt[0] - 1 + j for j in range(pairs.answer_len(0))] + [pairs.n_prompt[1] - 1]


def test_empty_answer_is_an_error(tiny_tok):
    with pytest.raises(ValueError, match="is empty"):
        tokenize_pairs(tiny_tok, ["The capital is"], [""])
