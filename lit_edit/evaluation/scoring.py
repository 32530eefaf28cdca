"""Batched teacher-forced scoring of (prompt, answer) probes.

Every metric of the loop reduces to "what does the model predict at each answer token
when fed the gold prefix". Probes are tokenised once, sorted by length, packed into
right-padded micro-batches under a token budget, and only answer positions go through
the LM head. That is what makes 100 ZsRE records score in seconds rather than the
minute a prompt-at-a-time loop takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from lit_edit.utils.forward import logits_at
from lit_edit.utils.tokens import TokenizedPairs, answer_batch


@dataclass
class TeacherForced:
    """Answer-aligned results: row i, column j is the j-th answer token of probe i."""

    pred_ids: Tensor  # [N, T] argmax prediction at each answer token
    label_ids: Tensor  # [N, T] the answer tokens
    mask: Tensor  # [N, T] True where column j < answer length
    nll: Tensor  # [N] mean negative log-likelihood of the answer tokens
    logits: Tensor | None = None  # [N, T, V] only when asked for (KL-based metrics)


def _micro_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Group indices (sorted by length) so that rows * max_len stays under the budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def teacher_forced(
    model: nn.Module,
    pairs: TokenizedPairs,
    *,
    pad_id: int,
    token_budget: int = 4096,
    keep_logits: bool = False,
) -> TeacherForced:
    """Score every probe of ``pairs`` in padded micro-batches; see :class:`TeacherForced`."""
    device = next(model.parameters()).device
    n = len(pairs)
    width = max((len(x) - k for x, k in zip(pairs.ids, pairs.n_prompt)), default=1)
    pred = torch.zeros(n, width, dtype=torch.long)
    label = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.bool)
    nll = torch.zeros(n)
    kept: Tensor | None = None
    for batch in _micro_batches([len(x) for x in pairs.ids], token_budget):
        b = answer_batch(pairs, batch, pad_id).to(device)
        logits = logits_at(model, b.input_ids, b.attention_mask, b.rows, b.cols).float()
        logp = torch.log_softmax(logits, dim=-1).gather(1, b.targets[:, None]).squeeze(1)
        r_idx, c_idx = b.pair.cpu(), b.slot.cpu()
        pred[r_idx, c_idx] = logits.argmax(-1).cpu()
        label[r_idx, c_idx] = b.targets.cpu()
        mask[r_idx, c_idx] = True
        nll.index_add_(0, r_idx, -logp.cpu())
        if keep_logits:
            if kept is None:
                kept = torch.zeros(n, width, logits.shape[-1])
            kept[r_idx, c_idx] = logits.cpu()
    nll = nll / mask.sum(1).clamp(min=1)
    return TeacherForced(pred, label, mask, nll, kept)


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
) -> list[str]:
    """Greedy continuations (new text only), batched with left padding as generation needs."""
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = old_side
    return out
