"""MEND: Model Editor Networks with Gradient Decomposition (Mitchell et al., ICLR 2022).

The gradient of a loss w.r.t. a linear layer's weight is a sum of rank-one terms, one per
token: ``dL/dW = sum_t delta_t u_t^T`` (``u_t`` the layer's input, ``delta_t`` the gradient
w.r.t. its output). MEND never forms that matrix: a small network ``g`` maps each token's
``(u_t, delta_t)`` to a pseudo-pair ``(u~_t, delta~_t)`` and the edit is
``dW = -alpha_l * sum_t delta~_t u~_t^T`` with a learned per-matrix step ``alpha_l``.

``g`` (one per matrix shape when ``shared``, with per-matrix scale/shift "mode" embeddings
so shared weights can still act differently per layer) is a stack of ``n_hidden + 1``
residual layers ``z + act(s_l * (U V z) + b + o_l)`` with low-rank ``U V`` (``rank``), the
last one without activation, initialised to the identity (``V = 0``) so an untrained MEND
is a normalised gradient step. Inputs ``u`` and ``delta`` are normalised per dimension with
running statistics gathered during training (``norm``).

Training (``training_step`` of :class:`~lit_edit.editors.learned.base.LearnedEditor`)
minimises ``cedit * L_edit + cloc * L_loc``: NLL of the new target on the rephrase after
the edit (``edit_loss_on``) and ``KL(base || edited)`` on locality inputs. The network's
parameters train at ``lr`` and the per-matrix steps ``alpha`` at ``lr_lr`` (Adam).

Departures from the reference implementation, all deliberate:

* normalisation statistics are kept per edited matrix even when ``g`` is shared (the
  reference shares them with ``g``); activations of different layers have different scales;
* the activation is ``clamp(min=0)`` (ReLU whose gradient passes at exactly 0), as the
  reference's, because the identity initialisation puts every pre-activation at 0;
* the ``x_only`` / ``delta_only`` / ``one_sided`` ablations and ``train_base`` are not offered.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lit_edit.editors.learned.base import EditSignal, LearnedEditor, RunningNorm


class LowRankResidual(nn.Module):
    """``z + act(scale[mode] * (z V^T U^T) + bias + shift[mode])``, identity at initialisation."""

    def __init__(self, dim: int, rank: int, n_modes: int, activation: bool) -> None:
        super().__init__()
        r = max(1, min(rank, dim))
        self.u = nn.Parameter(torch.empty(dim, r))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))
        self.v = nn.Parameter(torch.zeros(r, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.activation = activation

    def forward(self, z: Tensor, mode: int) -> Tensor:
        pre = (z @ self.v.T) @ self.u.T
        pre = pre * self.mode_scale[mode] + self.mode_shift[mode] + self.bias
        return z + (pre.clamp(min=0) if self.activation else pre)


class EditorNet(nn.Module):
    """MEND's ``g`` for matrices with input size ``d_in`` and output size ``d_out``."""

    def __init__(self, d_in: int, d_out: int, n_modes: int, n_hidden: int, rank: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.layers = nn.ModuleList(
            LowRankResidual(d_in + d_out, rank, n_modes, activation=i < n_hidden) for i in range(n_hidden + 1)
        )

    def forward(self, u: Tensor, delta: Tensor, mode: int) -> tuple[Tensor, Tensor]:
        z = torch.cat([u, delta], dim=-1)
        for layer in self.layers:
            z = layer(z, mode)
        u_t, delta_t = z.split([self.d_in, self.d_out], dim=-1)
        return u_t, delta_t


class MEND(LearnedEditor):
    """MEND as a LightningModule; see the module docstring for the method.

    Args (beyond :class:`LearnedEditor`'s): ``edit_lr`` (initial per-matrix step alpha),
    ``lr_lr`` (learning rate of the alphas), ``cedit``/``cloc`` (loss weights), ``n_hidden``
    (hidden residual layers of ``g``), ``rank`` (rank of ``U V``; capped at the input size),
    ``shared`` (one ``g`` per matrix shape), ``norm`` (running input normalisation).
    """

    name = "mend"

    def __init__(
        self,
        *,
        edit_lr: float = 1e-4,
        lr_lr: float = 1e-4,
        cedit: float = 0.1,
        cloc: float = 1.0,
        n_hidden: int = 1,
        rank: int = 1920,
        shared: bool = True,
        norm: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if n_hidden < 0 or rank < 1:
            raise ValueError(f"MEND needs n_hidden >= 0 and rank >= 1, got n_hidden={n_hidden}, rank={rank}")
        self.cedit, self.cloc = float(cedit), float(cloc)
        # network key and mode of every target: shared -> one net per (in, out) shape
        self._net_of: list[tuple[str, int]] = []
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(self.targets):
            out_dim, in_dim = t.shape
            key = f"{in_dim}x{out_dim}" if shared else f"m{i}"
            groups.setdefault(key, []).append(i)
            self._net_of.append((key, len(groups[key]) - 1))
        self.nets = nn.ModuleDict({
            key: EditorNet(self.targets[members[0]].shape[1], self.targets[members[0]].shape[0], len(members),
                           n_hidden, rank)
            for key, members in groups.items()
        })
        self.norm_u = nn.ModuleList(RunningNorm(t.shape[1]) for t in self.targets) if norm else None
        self.norm_delta = nn.ModuleList(RunningNorm(t.shape[0]) for t in self.targets) if norm else None
        self.edit_lrs = nn.Parameter(torch.full((len(self.targets),), float(edit_lr)))

    def edit_factors(self, signal: EditSignal) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        for i, t in enumerate(self.targets):
            u, delta = signal.u[t.name], signal.delta[t.name]
            if self.norm_u is not None and self.norm_delta is not None:
                if signal.update_stats:
                    self.norm_u[i].update(u)
                    self.norm_delta[i].update(delta)
                u, delta = self.norm_u[i](u), self.norm_delta[i](delta)
            key, mode = self._net_of[i]
            u_t, delta_t = self.nets[key](u, delta, mode)
            out[t.name] = (-self.edit_lrs[i] * delta_t, u_t)
        return out

    def combine_losses(self, edit_loss: Tensor, loc_loss: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.cedit * edit_loss + self.cloc * loc_loss, {"edit_lr_mean": self.edit_lrs.detach().mean()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam: the networks at ``lr`` (MEND: 1e-6), the per-matrix steps at ``lr_lr`` (1e-4)."""
        nets = [p for n, p in self.named_parameters() if n != "edit_lrs"]
        return torch.optim.Adam([{"params": nets, "lr": self.hparams.lr},
                                 {"params": [self.edit_lrs], "lr": self.hparams.lr_lr}])
