"""Prompt+answer tokenisation and right-padded batches, shared by scoring and editors.

Scoring and fine-tuning must agree on which token ids are "the answer"; both go through
:func:`tokenize_pairs`, so a metric can never measure a different tokenisation from the
one an editor optimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


def join_answer(prompt: str, answer: str) -> str:
    """The answer text as it continues the prompt: one separating space unless one exists."""
    if prompt.endswith((" ", "\n", "\t")) or answer.startswith((" ", "\n")):
        return answer
    return " " + answer


@dataclass
class TokenizedPairs:
    """Prompt+answer token ids per pair; the first ``n_prompt[i]`` ids of ``ids[i]`` are prompt."""

    ids: list[list[int]]
    n_prompt: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    def answer_len(self, i: int) -> int:
        return len(self.ids[i]) - self.n_prompt[i]


def tokenize_pairs(tokenizer, prompts: Sequence[str], answers: Sequence[str], max_length: int = 512) -> TokenizedPairs:
    """Tokenise prompt and answer separately so the answer tokens are known exactly.

    Tokenising the concatenation and searching for the answer is ambiguous under BPE
    merges. Over-long prompts lose tokens on the left, never the answer.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if not prompts:
        return TokenizedPairs([], [])
    for prompt, answer in zip(prompts, answers):
        if not answer.strip():
            raise ValueError(f"answer {answer!r} of prompt {prompt!r} is empty: nothing to score")
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    a_ids = tokenizer([join_answer(p, a) for p, a in zip(prompts, answers)], add_special_tokens=False)["input_ids"]
    ids, n_prompt = [], []
    for p, a, prompt, answer in zip(p_ids, a_ids, prompts, answers):
        if not a:
            raise ValueError(f"answer {answer!r} of prompt {prompt!r} tokenises to nothing")
        p = p[-max(1, max_length - len(a)) :]
        ids.append(list(p) + list(a))
        n_prompt.append(len(p))
    return TokenizedPairs(ids, n_prompt)


@dataclass
class AnswerBatch:
    """A right-padded batch and, per answer token, where it is predicted from.

    ``rows[k], cols[k]`` is the position whose output is scored against ``targets[k]``;
    ``pair[k], slot[k]`` say which pair and which of its answer tokens that is.
    """

    input_ids: Tensor
    attention_mask: Tensor
    rows: Tensor
    cols: Tensor
    targets: Tensor
    pair: Tensor
    slot: Tensor

    def to(self, device: torch.device | str) -> "AnswerBatch":
        return AnswerBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pad_right(ids: Sequence[Sequence[int] | Tensor], pad_id: int, length: int | None = None) -> tuple[Tensor, Tensor]:
    """Token rows right-padded to one length (``length`` or the longest), and their attention mask.

    Right padding keeps every real token at its natural position, so positions found on the
    unpadded text (a subject's last token, an answer's first) index the batch unchanged.
    """
    seq = length or max(len(x) for x in ids)
    input_ids = torch.full((len(ids), seq), pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), seq, dtype=torch.long)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
    return input_ids, mask


def answer_batch(pairs: TokenizedPairs, indices: Sequence[int], pad_id: int, *, from_last_prompt: bool = False) -> AnswerBatch:
    """Pad ``pairs[indices]`` on the right and list the answer-token prediction positions.

    Teacher forcing predicts answer token j from position ``n_prompt + j - 1``.
    ``from_last_prompt`` instead scores every answer token at the last prompt position
    (ROME's FT-L objective); causal attention makes that identical to feeding the prompt
    alone, so one batch serves both objectives.
    """
    ids, att = pad_right([pairs.ids[i] for i in indices], pad_id)
    rows, cols, targets, pair, slot = [], [], [], [], []
    for r, i in enumerate(indices):
        x, k = pairs.ids[i], pairs.n_prompt[i]
        for j in range(len(x) - k):
            rows.append(r)
            cols.append(k - 1 if from_last_prompt else k + j - 1)
            targets.append(x[k + j])
            pair.append(i)
            slot.append(j)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return AnswerBatch(ids, att, as_long(rows), as_long(cols), as_long(targets), as_long(pair), as_long(slot))
