"""KnowledgeEditor (KE): a hyper-network that predicts weight updates (De Cao et al., EMNLP 2021).

The edit condition (the prompt, the old answer when known, and the new target, as text
``"<prompt> <old> >> <new>"``) is read by a bidirectional LSTM; its final states, through a
``tanh`` layer, give a condition vector ``c``. For every edited matrix ``W`` (``[m, n]`` =
``[out, in]``) a small feed-forward head maps ``c`` to ``alpha, beta in R^m``,
``gamma, delta in R^n`` and a scalar ``eta``, and the update is

    dW = max_scale * sigmoid(eta) * ( grad_W  *  (softmax(alpha) gamma^T)  +  softmax(beta) delta^T )

where ``grad_W`` is the gradient of the edit NLL w.r.t. ``W`` on the unedited model and
``*`` is the element-wise product: a learned rank-one mask on the gradient plus a rank-one
offset. Because ``grad_W = sum_t delta_t u_t^T``, the masked gradient equals
``sum_t (softmax(alpha) * delta_t)(gamma * u_t)^T`` and is applied without forming
``grad_W``; several edits in one call simply add their updates.

Training solves KE's constrained problem ``min L_edit  s.t.  KL(base || edited) <= margin``
with a Lagrange multiplier ``lambda >= 0``: the loss is ``L_edit + lambda * (L_loc - margin)``,
minimised by the hyper-network and *maximised* by ``lambda`` (its gradient is reversed;
``lambda`` is clipped at 0 after each step). As in the reference code the margin starts at
``margin_kl_max`` and shrinks by ``margin_decay`` after every validation whose edit accuracy
exceeds ``margin_threshold``, down to ``margin_kl_min``. Optimiser: centred RMSprop
(``lr`` for the network, ``lr_alpha`` for lambda), linear warm-up then linear decay to
``total_steps``.

Departures from the reference implementation (BART/BERT), all deliberate:

* the LSTM reads the *frozen* base model's input embeddings (the reference trains a copy of
  the embedding matrix: 28M extra parameters for SmolLM2's vocabulary, and a checkpoint that
  would hold a copy of the base model's embeddings);
* edited matrices are the configured ones (default: the same MLP matrices as MEND, as
  EasyEdit does for decoder-only models), not every non-embedding matrix of the model;
* the edit loss is plain NLL (the reference smooths labels with eps 0.1) and only the KL
  constraint is used (the reference's optional L_p constraint on dW is not offered).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.rnn import pack_padded_sequence

from lit_edit.editors.learned.base import EditSignal, LearnedEditor, reverse_grad
from lit_edit.utils.tokens import pad_right


class ConditionEncoder(nn.Module):
    """Bi-LSTM over token embeddings; ``tanh(Linear([h_fwd_last; h_bwd_first]))``."""

    def __init__(self, embed_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, out_dim)

    def forward(self, embedded: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)  # h: [2, batch, hidden] (forward, backward)
        return torch.tanh(self.proj(torch.cat([h[0], h[1]], dim=-1)))


class UpdatePredictor(nn.Module):
    """The per-matrix head: ``c -> (alpha [m], gamma [n], beta [m], delta [n], eta)``."""

    def __init__(self, condition_dim: int, hidden: int, out_dim: int, in_dim: int) -> None:
        super().__init__()
        self.out_dim, self.in_dim = out_dim, in_dim
        self.net = nn.Sequential(
            weight_norm(nn.Linear(condition_dim, hidden)),
            nn.Tanh(),
            weight_norm(nn.Linear(hidden, 2 * (out_dim + in_dim) + 1)),
        )

    def forward(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        alpha, gamma, beta, delta, eta = self.net(c).split(
            [self.out_dim, self.in_dim, self.out_dim, self.in_dim, 1], dim=-1)
        return alpha.softmax(-1), gamma, beta.softmax(-1), delta, eta.squeeze(-1)


class KnowledgeEditor(LearnedEditor):
    """KE as a LightningModule; see the module docstring for the method and its departures.

    Args (beyond :class:`LearnedEditor`'s): ``lr_alpha`` (learning rate of lambda),
    ``margin_kl_max``/``margin_kl_min``/``margin_decay``/``margin_threshold`` (the KL margin
    schedule), ``lstm_hidden``, ``condition_dim``, ``hidden_dim`` (sizes of the encoder and
    heads), ``max_scale`` (bound on the update scale), ``condition_max_length`` (tokens of the
    condition text), ``warmup_steps``/``total_steps`` (learning-rate schedule; ``total_steps <= 0``
    keeps the rate constant after warm-up).
    """

    name = "ke"

    def __init__(
        self,
        *,
        lr_alpha: float = 1e-1,
        margin_kl_max: float = 1e-3,
        margin_kl_min: float = 1e-5,
        margin_decay: float = 0.8,
        margin_threshold: float = 0.9,
        lstm_hidden: int = 256,
        condition_dim: int = 1024,
        hidden_dim: int = 128,
        max_scale: float = 1.0,
        condition_max_length: int = 32,
        warmup_steps: int = 1000,
        total_steps: int = 200000,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("edit_loss_on", "both")
        super().__init__(**kwargs)
        self.encoder = ConditionEncoder(self.base_info.embed_dim, lstm_hidden, condition_dim)
        self.heads = nn.ModuleList(UpdatePredictor(condition_dim, hidden_dim, t.shape[0], t.shape[1])
                                   for t in self.targets)
        self.multiplier = nn.Parameter(torch.ones(()))
        self.register_buffer("margin", torch.tensor(float(margin_kl_max)))

    @staticmethod
    def condition_text(prompt: str, target_new: str, old: str | None) -> str:
        return f"{prompt} {old} >> {target_new}" if old else f"{prompt} >> {target_new}"

    def _condition(self, signal: EditSignal) -> Tensor:
        tok, model = signal.tokenizer, signal.model
        texts = [self.condition_text(r.prompt, r.target_new, r.ground_truth[0] if r.ground_truth else None)
                 for r in signal.requests]
        encoded = tok(texts, add_special_tokens=False)["input_ids"]
        encoded = [ids[: self.hparams.condition_max_length] or [tok.pad_token_id] for ids in encoded]
        # right padding, whatever the tokenizer's default side: pack_padded_sequence expects it
        input_ids, _ = pad_right(encoded, tok.pad_token_id)
        device = next(model.parameters()).device
        with torch.no_grad():
            embedded = model.get_input_embeddings()(input_ids.to(device)).float()
        lengths = torch.tensor([len(ids) for ids in encoded])
        return self.encoder(embedded, lengths)

    def edit_factors(self, signal: EditSignal) -> dict[str, tuple[Tensor, Tensor]]:
        c = self._condition(signal)
        out = {}
        for head, t in zip(self.heads, self.targets):
            alpha, gamma, beta, delta, eta = head(c)
            scale = self.hparams.max_scale * torch.sigmoid(eta)  # [n_edits]
            e = signal.token_edit
            left = torch.cat([(scale[e, None] * alpha[e]) * signal.delta[t.name], scale[:, None] * beta])
            right = torch.cat([gamma[e] * signal.u[t.name], delta])
            out[t.name] = (left, right)
        return out

    def combine_losses(self, edit_loss: Tensor, loc_loss: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        lam = reverse_grad(self.multiplier)
        loss = edit_loss + lam * (loc_loss - self.margin)
        return loss, {"multiplier": self.multiplier.detach(), "margin": self.margin.detach()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.multiplier.clamp_(min=0.0)

    def on_validation_end(self) -> None:
        """Tighten the KL margin once validation edits succeed often enough (reference schedule)."""
        if self.trainer.sanity_checking:
            return
        acc = self.trainer.callback_metrics.get("val/edit_acc")
        if acc is not None and float(acc) > self.hparams.margin_threshold:
            self.margin.fill_(max(float(self.margin) * self.hparams.margin_decay, self.hparams.margin_kl_min))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        learner = [p for n, p in self.named_parameters() if n != "multiplier"]
        optimizer = torch.optim.RMSprop([{"params": learner, "lr": hp.lr},
                                         {"params": [self.multiplier], "lr": hp.lr_alpha}], centered=True)
        warmup, total = max(int(hp.warmup_steps), 0), int(hp.total_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if total <= warmup:
                return 1.0
            return max(0.0, (total - step) / (total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
