"""Metric definitions against hand-computed values."""

import math
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_edit.evaluation.metrics import (
    MeanValue,
    PerEditMean,
    ProbabilityComparison,
    exact_match,
    kl_divergence,
    mean_token_nll,
    normalize_answer,
    token_accuracy,
    token_agreement,
)

PAD = 0


def test_token_accuracy_ignores_padding_and_prompt():
    # row 0: 3 answer tokens, 2 right -> 2/3; the pad position (pred == label == PAD) must not count
    # row 1: single-token target, right -> 1; row 2: multi-token target, all wrong -> 0
    pred = torch.tensor([[7, 5, 6, 9, PAD], [1, 4, PAD, PAD, PAD], [3, 3, 3, 3, 3]])
    label = torch.tensor([[8, 5, 6, 1, PAD], [2, 4, PAD, PAD, PAD], [3, 1, 2, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    acc = token_accuracy(pred, label, mask)
    assert acc.dtype == torch.float32
    torch.testing.assert_close(acc, torch.tensor([2 / 3, 1.0, 0.0]))


def test_token_accuracy_empty_mask_is_an_error():
    ids = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"\[1\]"):
        token_accuracy(ids, ids, mask)


def test_token_agreement():
    pre = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    post = torch.tensor([[1, 0, 3, 4], [0, 0, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(token_agreement(pre, post, mask), torch.tensor([0.75, 1.0]))


def test_mean_token_nll_matches_hand_log_softmax():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [9.0, -9.0]]])  # V = 2
    labels = torch.tensor([[0, 1, -100]])  # last position is padding with an ignore label
    mask = torch.tensor([[True, True, False]])
    # -log softmax: pos 0 -> log 2; pos 1 -> -(0 - log(e^2 + 1)) = log(1 + e^2)
    expected = (math.log(2) + math.log(1 + math.e**2)) / 2
    torch.testing.assert_close(mean_token_nll(logits, labels, mask), torch.tensor([expected]))


def test_kl_divergence():
    logits = torch.randn(2, 3, 5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(kl_divergence(logits, logits, mask), torch.zeros(2), atol=1e-6, rtol=0)
    # 2-token vocab: pre = (1/2, 1/2), post = softmax(log 3, 0) = (3/4, 1/4)
    pre = torch.tensor([[[0.0, 0.0], [5.0, 5.0]]])
    post = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    torch.testing.assert_close(kl_divergence(pre, post, torch.tensor([[True, False]])), torch.tensor([expected]))


def test_normalize_and_exact_match_with_aliases():
    assert normalize_answer("  The Eiffel-Tower, in  PARIS! ") == "eiffeltower in paris"
    generated = ["Paris, France.", "the United States of America", "Parisian cafés", "London", "The"]
    answers = [["Paris"], ["USA", "United States"], ["Paris"], ["Paris", "london"], ["the"]]
    torch.testing.assert_close(exact_match(generated, answers), torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_per_edit_mean_weights_edits_equally():
    metric = PerEditMean()
    metric.update(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))  # edit A: mean 0.5
    metric.update(torch.tensor([1.0]), torch.tensor([7]))  # edit B: mean 1
    torch.testing.assert_close(metric.compute(), torch.tensor(0.75))  # not 2/3
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns on compute before update
        assert torch.isnan(metric.compute())


def test_per_edit_standard_error_is_over_edits():
    metric = PerEditMean()
    metric.update(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]))  # edit 0: 0.5
    assert torch.isnan(metric.standard_error())  # one edit: no spread to measure
    metric.update(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([3, 5, 5]))  # edits 3: 1.0, 5: 0.5
    means = torch.tensor([0.5, 1.0, 0.5])  # per edit, not per probe
    torch.testing.assert_close(metric.standard_error(), means.std() / 3**0.5)
    torch.testing.assert_close(metric.compute(), means.mean())
    mean, error = metric.mean_and_error()
    torch.testing.assert_close(mean, means.mean())
    torch.testing.assert_close(error, means.std() / 3**0.5)


def test_probability_comparison_and_mean_value():
    cmp = ProbabilityComparison()
    # edit 0: [1 < 2 yes, 3 < 1 no] -> 0.5; edit 1: [0.5 < 0.6 yes] -> 1
    cmp.update(torch.tensor([1.0, 3.0, 0.5]), torch.tensor([2.0, 1.0, 0.6]), torch.tensor([0, 0, 1]))
    torch.testing.assert_close(cmp.compute(), torch.tensor(0.75))
    mean = MeanValue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.isnan(mean.compute())
    mean.update(2.0)
    mean.update(torch.tensor([1.0, 6.0]))
    torch.testing.assert_close(mean.compute(), torch.tensor(3.0))


def _ddp_worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    per_edit, empty, mean = PerEditMean(), PerEditMean(), MeanValue()
    if rank == 0:  # rank 1 holds no per-edit data at all: the empty-rank corner case
        per_edit.update(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    else:  # the edit seen on both ranks is one edit
        per_edit.update(torch.tensor([1.0, 0.0]), torch.tensor([1, 2]))
    mean.update(torch.tensor([float(rank)]))
    both = tuple(x.item() for x in per_edit.mean_and_error())
    queue.put((rank, per_edit.compute().item(), per_edit.standard_error().item(), empty.compute().item(),
               empty.standard_error().item(), mean.compute().item(), both))
    dist.destroy_process_group()


def test_states_sync_under_ddp():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(port, queue), nprocs=2, start_method="spawn")
    results = sorted(queue.get() for _ in range(2))
    # edits: 0 -> 0.5 (rank 0), 1 -> (1 + 1) / 2 = 1 (both ranks), 2 -> 0 (rank 1)
    expected_se = torch.tensor([0.5, 1.0, 0.0]).std().item() / 3**0.5
    for _, per_edit, se, empty, empty_se, mean, both in results:
        assert per_edit == pytest.approx(0.5)  # (0.5 + 1 + 0) / 3 on both ranks
        assert se == pytest.approx(expected_se)
        assert both == pytest.approx((0.5, expected_se))  # one gather gives both
        assert math.isnan(empty) and math.isnan(empty_se)
        assert mean == pytest.approx(0.5)
