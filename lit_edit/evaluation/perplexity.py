"""Perplexity of held-out text: the general-ability check of sequential editing.

Sequential editing can leave every edited fact in place while the model quietly stops
being a language model (PRUNE, Ma et al. 2024; Gupta et al. 2024 on "model collapse"). The
standard signal is perplexity on WikiText-2's test split, measured before the first edit
and again at each evaluation point of a sequential run.

How: the file is read as one text, tokenised once, its first ``n_tokens`` tokens are cut
into non-overlapping windows of ``window`` tokens (the last may be shorter), and
``exp(mean NLL)`` over every predicted token is returned. Non-overlapping windows give a
slightly higher number than a sliding window (the first tokens of each window see little
context), but they are what small-budget comparisons need: before/after numbers are
measured the same way, so their ratio is what matters. The tokens are prepared once per
:class:`PerplexityProbe` (the text does not change between evaluation points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lit_edit.utils.forward import logits_at
from lit_edit.utils.tokens import pad_right


@dataclass(frozen=True)
class PerplexityConfig:
    """What to measure perplexity on (``configs/eval/*.yaml``: ``perplexity_*``)."""

    path: str
    n_tokens: int = 8192
    window: int = 512
    token_budget: int = 2048

    def __post_init__(self) -> None:
        if self.n_tokens < 2 or self.window < 2:
            raise ValueError(f"perplexity needs n_tokens >= 2 and window >= 2, got {self.n_tokens}, {self.window}")
        if self.token_budget < self.window:
            raise ValueError(f"perplexity token_budget ({self.token_budget}) must hold one window ({self.window})")


class PerplexityProbe:
    """Fixed token windows of a text file; :meth:`__call__` gives the model's perplexity on them."""

    def __init__(self, cfg: PerplexityConfig, tokenizer) -> None:
        path = Path(cfg.path)
        if not path.is_file():
            raise FileNotFoundError(f"perplexity text {path} does not exist (eval.perplexity_path)")
        text = path.read_text(encoding="utf-8")
        # tokenising 1 MB takes seconds; ~8 characters per token is a generous upper bound
        ids = tokenizer(text[: cfg.n_tokens * 8], add_special_tokens=False)["input_ids"][: cfg.n_tokens]
        if len(ids) < 2:
            raise ValueError(f"perplexity text {path} has fewer than 2 tokens")
        self.cfg = cfg
        self.windows: list[Tensor] = [torch.tensor(ids[i : i + cfg.window]) for i in range(0, len(ids), cfg.window)]
        self.windows = [w for w in self.windows if len(w) >= 2]
        self.n_predicted = sum(len(w) - 1 for w in self.windows)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        device = next(model.parameters()).device
        per_batch = max(1, self.cfg.token_budget // self.cfg.window)
        total = 0.0
        for lo in range(0, len(self.windows), per_batch):
            chunk = self.windows[lo : lo + per_batch]
            ids, mask = pad_right(chunk, 0)  # pad id 0: padded positions are masked and never scored
            rows = torch.cat([torch.full((len(w) - 1,), r) for r, w in enumerate(chunk)])
            cols = torch.cat([torch.arange(len(w) - 1) for w in chunk])
            targets = ids[rows, cols + 1]
            ids, mask = ids.to(device), mask.to(device)
            logits = logits_at(model, ids, mask, rows.to(device), cols.to(device)).float()
            total += float(nn.functional.cross_entropy(logits, targets.to(device), reduction="sum"))
        return math.exp(total / self.n_predicted)
