"""FT-L and FT-M: fine-tune one MLP projection on the new fact.

FT-L is ROME's fine-tuning baseline: the loss scores every target token at the last
prompt position and the weights stay within an L-infinity ball of ``norm_constraint``
around their original values. FT-M (EasyEdit's "target_new" objective) is plain
teacher-forced cross-entropy on the target tokens only, with no constraint. Both stop
once the loss falls under ``stop_loss`` (1e-2 in ROME's and EasyEdit's implementations).

Only the edited layer and the blocks above it are recomputed per step: blocks below are
replayed (:func:`lit_edit.utils.replay.frozen_prefix`) and the LM head runs on target
positions only, which is where most of the speed over a plain loop comes from.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import CallbackEditor, WeightSnapshot
from lit_edit.models.layouts import resolve, weight_view
from lit_edit.utils.forward import decoder_body, logits_at
from lit_edit.utils.replay import frozen_prefix
from lit_edit.utils.tokens import answer_batch, tokenize_pairs

Objective = Literal["prompt_last", "target_new"]


class FineTuneEditor(CallbackEditor):
    """Adam on the weight of ``module`` (a layout field, default the MLP down projection)."""

    def __init__(
        self,
        *,
        layers: Sequence[int],
        num_steps: int,
        lr: float,
        weight_decay: float,
        norm_constraint: float | None,
        objective: Objective,
        stop_loss: float | None,
        module: str = "mlp_out",
        max_length: int = 128,
        name: str | None = None,
    ) -> None:
        super().__init__(name or ("ft_m" if objective == "target_new" else "ft_l"))
        if objective not in ("prompt_last", "target_new"):
            raise ValueError(f"objective must be 'prompt_last' (FT-L) or 'target_new' (FT-M), got {objective!r}")
        if not layers:
            raise ValueError("FT needs at least one layer to fine-tune")
        self.layers = [int(x) for x in layers]
        self.num_steps = num_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.norm_constraint = norm_constraint
        self.objective = objective
        self.stop_loss = stop_loss
        self.module = module
        self.max_length = max_length
        self.last_steps: int = 0  # optimisation steps taken by the latest edit (diagnostics)

    def configured_layers(self) -> list[int]:
        return self.layers

    def _weights(self, model: nn.Module) -> dict[str, nn.Parameter]:
        layout = self.layout
        out = {}
        for layer in self.layers:
            module = resolve(model, layout.template(self.module), layer, layout)
            out[f"{layout.name(self.module, layer)}.weight"] = weight_view(module)[0]
        return out

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> WeightSnapshot:
        self.ensure_prepared(model, tokenizer)
        device = next(model.parameters()).device
        weights = self._weights(model)
        snapshot = WeightSnapshot(weights)
        pairs = tokenize_pairs(tokenizer, [r.prompt for r in requests], [r.target_new for r in requests], self.max_length)
        batch = answer_batch(pairs, range(len(pairs)), tokenizer.pad_token_id,
                             from_last_prompt=self.objective == "prompt_last").to(device)
        n_pairs = len(pairs)
        opt = torch.optim.Adam(weights.values(), lr=self.lr, weight_decay=self.weight_decay)
        body = decoder_body(model)
        replay = lambda: body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)  # noqa: E731
        for w in weights.values():
            w.requires_grad_(True)
        self.last_steps = 0
        try:
            with frozen_prefix(model, self.layout, min(self.layers), replay), torch.enable_grad():
                for _ in range(self.num_steps):
                    logits = logits_at(model, batch.input_ids, batch.attention_mask, batch.rows, batch.cols)
                    token_nll = nn.functional.cross_entropy(logits.float(), batch.targets, reduction="none")
                    # mean over each pair's target tokens, then over pairs (EasyEdit's reduction)
                    per_pair = torch.zeros(n_pairs, device=device).index_add(0, batch.pair, token_nll)
                    counts = torch.bincount(batch.pair, minlength=n_pairs).clamp(min=1)
                    loss = (per_pair / counts).mean()
                    if self.stop_loss is not None and loss.item() < self.stop_loss:
                        break
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    self.last_steps += 1
                    if self.norm_constraint is not None:
                        eps = self.norm_constraint
                        with torch.no_grad():
                            for name, w in weights.items():
                                saved = snapshot.saved[name]
                                w.copy_(torch.clamp(w, min=saved - eps, max=saved + eps))
        finally:
            for w in weights.values():
                w.requires_grad_(False)
                w.grad = None
        return snapshot
