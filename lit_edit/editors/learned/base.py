"""Learned editors: LightningModules trained to turn an edit request into a weight update.

MEND and KE share everything but the network that maps "what the base model's gradient
says" to a weight update, so this module holds the rest once:

* **The frozen base model is not part of the editor.** It is kept outside the registered
  submodules (in :class:`_Attached`), so it never reaches ``state_dict``, checkpoints, DDP's
  parameter broadcast or the optimizer. Checkpoints hold the editor's own weights plus
  :class:`BaseModelInfo`: the base model's name, :func:`~lit_edit.models.loading.model_fingerprint`,
  its :class:`~lit_edit.models.loading.ModelSpec` (to rebuild it), layout overrides and the
  shapes of the edited matrices (so the editor's networks can be built without the model).
* **One step = two passes over the top of the model.** Pass 1 runs the edit prompts (and the
  rephrase and locality inputs, batched together) through the unedited model and records,
  for every edited matrix ``W`` (a :class:`EditTarget`), its input ``u`` and the gradient
  ``delta`` of the edit loss w.r.t. its output at every token of the edit prompts
  (:class:`EditSignal`). The subclass maps that signal to low-rank factors ``(left, right)``
  with ``dW = left^T @ right`` (:meth:`LearnedEditor.edit_factors`). Pass 2 runs the same
  inputs with ``W + dW`` substituted through ``torch.func.functional_call``, so the edit
  and locality losses are differentiable w.r.t. the editor network. Blocks below the lowest
  edited layer compute the same thing in both passes; they run once and are replayed
  (:func:`lit_edit.utils.replay.frozen_prefix`).
* **At edit time** only pass 1 runs on the requests, the update is written in place and a
  :class:`~lit_edit.editors.base.WeightSnapshot` (bit-exact undo) is returned, so the shared
  :class:`~lit_edit.evaluation.loop.EditingLoop` evaluates a trained editor like any other.
* **Objective**: ``L_edit`` is the NLL of ``target_new`` on the rephrase (MEND's
  ``edit_outer``), the prompt, or both (``edit_loss_on``); ``L_loc`` is
  ``KL(base || edited)`` of the next-token distributions at the answer positions of the
  locality inputs. The subclass combines them (:meth:`LearnedEditor.combine_losses`).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call

from lit_edit.data.schema import EditRequest
from lit_edit.data.training import EditBatch
from lit_edit.editors.base import Editor, WeightSnapshot
from lit_edit.models.layouts import ModelLayout, layout_for, module_name, num_layers, resolve, weight_view
from lit_edit.models.loading import ModelSpec, load_model, model_fingerprint
from lit_edit.utils.forward import decoder_body, head_logits
from lit_edit.utils.hooks import capture
from lit_edit.utils.replay import frozen_prefix
from lit_edit.utils.tokens import AnswerBatch, TokenizedPairs, answer_batch, tokenize_pairs

log = logging.getLogger(__name__)

EditLossOn = Literal["rephrase", "prompt", "both"]
EDIT_LOSS_ON = ("rephrase", "prompt", "both")
#: key of the lit-edit record inside a Lightning checkpoint
CKPT_KEY = "lit_edit"


class BaseModelMismatch(ValueError):
    """A trained editor met a model other than the one it was trained on."""


# --- what the editor edits and which model it belongs to -----------------------------------------


@dataclass(frozen=True)
class EditTarget:
    """One edited weight matrix: module name, layout field, layer and canonical ``(out, in)`` shape."""

    name: str
    field: str
    layer: int
    shape: tuple[int, int]

    @property
    def param(self) -> str:
        return self.name + ".weight"


def resolve_targets(model: nn.Module, layout: ModelLayout, layers: Sequence[int], modules: Sequence[str]) -> list[EditTarget]:
    """The matrices of ``modules`` (layout fields; ``mlp_in`` may name several) at ``layers``.

    Negative layers count from the top (``-1`` is the last block), so "the last three blocks"
    is ``[-3, -2, -1]`` for any depth. Unknown fields and missing layers are errors that say so.
    """
    if not layers:
        raise ValueError("a learned editor needs at least one layer to edit (model.layers.<editor>)")
    if not modules:
        raise ValueError("a learned editor needs at least one module field to edit (e.g. [mlp_in, mlp_out])")
    n = num_layers(model, layout)
    targets: list[EditTarget] = []
    for raw in layers:
        layer = int(raw) + n if int(raw) < 0 else int(raw)
        if not 0 <= layer < n:
            raise IndexError(f"layer {raw} does not exist: model has {n} layers (0..{n - 1}, or -{n}..-1)")
        for field_name in modules:
            if field_name == "mlp_in":
                templates = layout.mlp_in
            else:
                templates = (layout.template(field_name),)
            for template in templates:
                module = resolve(model, template, layer, layout)
                weight, transposed = weight_view(module)
                shape = tuple(weight.T.shape if transposed else weight.shape)
                targets.append(EditTarget(module_name(template, layer), field_name, layer, shape))  # type: ignore[arg-type]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate edited modules {names}: check layers/modules")
    return targets


@dataclass
class BaseModelInfo:
    """The base model a learned editor belongs to; stored in its hyperparameters and checkpoint."""

    name: str
    fingerprint: str
    spec: dict[str, Any]
    layout: dict[str, Any]
    targets: list[EditTarget]
    embed_dim: int
    vocab_size: int

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["targets"] = [dict(asdict(t), shape=list(t.shape)) for t in self.targets]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaseModelInfo":
        data = dict(data)
        data["targets"] = [EditTarget(t["name"], t["field"], int(t["layer"]), tuple(t["shape"])) for t in data["targets"]]
        return cls(**data)

    @classmethod
    def describe(cls, model: nn.Module, spec: dict[str, Any], layout_overrides: dict[str, Any],
                 layers: Sequence[int], modules: Sequence[str]) -> "BaseModelInfo":
        layout = layout_for(model, layout_overrides)
        embed = model.get_input_embeddings()
        return cls(
            name=str(spec.get("name") or getattr(model.config, "name_or_path", "") or type(model).__name__),
            fingerprint=model_fingerprint(model),
            spec=dict(spec),
            layout=dict(layout_overrides),
            targets=resolve_targets(model, layout, layers, modules),
            embed_dim=int(embed.weight.shape[1]),
            vocab_size=int(embed.weight.shape[0]),
        )


@dataclass
class _Attached:
    """The frozen base model used for training; a plain object so nn.Module does not register it."""

    model: nn.Module
    tokenizer: Any
    layout: ModelLayout


# --- the signal an editor network sees -----------------------------------------------------------


@dataclass
class EditSignal:
    """Per edited matrix, what the unedited model's gradient on the edit prompts is made of.

    For ``W`` (canonical ``[out, in]``) the edit-loss gradient is ``sum_t delta_t u_t^T`` over
    the tokens ``t`` of the edit prompts (right padding excluded); MEND transforms the ``u``
    and ``delta`` rows, KE reweights them. ``token_edit[t]`` says which edit token ``t``
    belongs to. ``update_stats`` is True only in training steps (running normalisation).
    """

    u: dict[str, Tensor]
    delta: dict[str, Tensor]
    token_edit: Tensor
    requests: list[EditRequest]
    model: nn.Module
    tokenizer: Any
    update_stats: bool = False

    @property
    def n_edits(self) -> int:
        return len(self.requests)


@dataclass
class _Rows:
    """Row indices of each input kind in one padded batch (edit prompts first)."""

    pairs: TokenizedPairs
    edit: list[int]
    rephrase: list[int] = field(default_factory=list)
    loc: list[int] = field(default_factory=list)


class _ReverseGrad(torch.autograd.Function):
    """Identity forward, negated gradient: gradient *ascent* on a Lagrange multiplier (KE)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        return -grad


def reverse_grad(x: Tensor) -> Tensor:
    return _ReverseGrad.apply(x)


class RunningNorm(nn.Module):
    """Per-dimension running mean/variance normalisation (MEND's input normalisation).

    Statistics are updated only when asked (training steps), merged across DDP ranks so
    every rank holds the same buffers, and the identity is used until two samples were seen.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        packed = torch.cat([x.new_tensor([float(x.shape[0])]), x.sum(0), (x * x).sum(0)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(packed)
        n, s, sq = packed[0], packed[1 : 1 + x.shape[1]], packed[1 + x.shape[1] :]
        if n < 1:
            return
        mean_b = s / n
        m2_b = (sq - n * mean_b * mean_b).clamp(min=0)
        count, mean = self.count.double(), self.mean.double()
        total = count + n
        diff = mean_b - mean
        self.mean.copy_(mean + diff * n / total)
        self.m2.copy_(self.m2.double() + m2_b + diff * diff * count * n / total)
        self.count.copy_(total)

    def forward(self, x: Tensor) -> Tensor:
        if float(self.count) < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt()
        return (x - self.mean) / (std + self.eps)


# --- the base class ------------------------------------------------------------------------------


class LearnedEditor(L.LightningModule, Editor):
    """Base of editors that are trained (``train.py``) and then edit like any other editor.

    Args (keyword only; subclasses add their own):
        layers: blocks whose matrices are edited (``model.layers.<editor>``; negative = from the top).
        modules: layout fields edited in each of those blocks (``mlp_in`` is gate+up on Llama).
        edit_loss_on: ``rephrase`` (MEND's ``edit_outer``), ``prompt`` or ``both``.
        lr: learning rate of the editor network.
        grad_clip: gradient-norm clip of the editor's parameters (None: no clipping), used
            when the Trainer sets none.
        max_length: longest prompt + answer in tokens.
        name: editor name in results and checkpoint names.
        base: :meth:`BaseModelInfo.as_dict` (set from a checkpoint; training passes ``base_model``).
        base_model, tokenizer, model_spec, layout: the frozen model to train on, its tokenizer,
            its :class:`ModelSpec` fields and layout overrides (training only; never saved).
    """

    name = "learned"

    def __init__(
        self,
        *,
        layers: Sequence[int],
        modules: Sequence[str] = ("mlp_in", "mlp_out"),
        edit_loss_on: EditLossOn = "rephrase",
        lr: float,
        grad_clip: float | None = None,
        max_length: int = 128,
        name: str | None = None,
        base: dict[str, Any] | None = None,
        base_model: nn.Module | None = None,
        tokenizer: Any = None,
        model_spec: dict[str, Any] | None = None,
        layout: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        Editor.__init__(self, name)
        if edit_loss_on not in EDIT_LOSS_ON:
            raise ValueError(f"edit_loss_on must be one of {EDIT_LOSS_ON}, got {edit_loss_on!r}")
        self.save_hyperparameters(ignore=["base_model", "tokenizer", "model_spec", "layout"])
        self._attached: _Attached | None = None
        if base_model is not None:
            if tokenizer is None:
                raise ValueError(f"{type(self).__name__}: training needs the base model's tokenizer too")
            spec = dict(model_spec or {"name": getattr(base_model.config, "name_or_path", type(base_model).__name__)})
            info = BaseModelInfo.describe(base_model, spec, dict(layout or {}), layers, modules)
            self._attached = _Attached(base_model, tokenizer, layout_for(base_model, dict(layout or {})))
        elif base is not None:
            info = BaseModelInfo.from_dict(base)
        else:
            raise ValueError(
                f"{type(self).__name__} ({self.name}) is a learned editor: train it first "
                f"(`python train.py editor={self.name}`) and use the checkpoint "
                f"(`python edit.py ckpt=checkpoints/{self.name}-....ckpt`, or {type(self).__name__}.load_from_checkpoint)"
            )
        self.hparams["base"] = info.as_dict()
        self.base_info = info
        self.targets: list[EditTarget] = list(info.targets)
        #: use the editor on a model whose fingerprint differs from ``base_info`` (edit.py force_ckpt=true)
        self.force_base = False
        self._verified: weakref.ref | None = weakref.ref(base_model) if base_model is not None else None

    # -- subclass interface ------------------------------------------------------------------------
    def edit_factors(self, signal: EditSignal) -> dict[str, tuple[Tensor, Tensor]]:
        """Per target name, ``(left [K, out], right [K, in])`` with ``dW = left^T @ right``."""
        raise NotImplementedError

    def combine_losses(self, edit_loss: Tensor, loc_loss: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective from ``L_edit`` and ``L_loc``, plus extra values to log."""
        raise NotImplementedError

    # -- base model ----------------------------------------------------------------------------------
    @property
    def base_name(self) -> str:
        return self.base_info.name

    def load_base_model(self, cache_dir: str | None = None, device: str | None = None):
        """Rebuild the base model this editor was trained on (from its recorded spec) and check it.

        Returns ``(model, tokenizer)``; the fingerprint must match unless ``force_base`` is set.
        """
        spec = dict(self.base_info.spec)
        if cache_dir is not None:
            spec["cache_dir"] = cache_dir
        if device is not None:
            spec["device"] = device
        model, tokenizer = load_model(ModelSpec(**spec))
        self.check_base(model, name=spec.get("name"))
        return model, tokenizer

    def check_base(self, model: nn.Module, name: str | None = None, force: bool | None = None) -> None:
        """Fail clearly unless ``model`` is the base model this editor was trained on.

        Checked once per model object (the first edit); later edits of a sequential run see
        a model the editor itself changed. Matrix shapes must match even when forced.
        """
        if self._verified is not None and self._verified() is model:
            return
        given = name or getattr(model.config, "name_or_path", None) or type(model).__name__
        trained = f"this {self.name} editor was trained on base model {self.base_name!r}"
        layout = layout_for(model, self.base_info.layout)
        for t in self.targets:
            try:
                module = resolve(model, t.name, None, layout)
            except AttributeError as err:
                raise BaseModelMismatch(f"{trained}, but the model given ({given!r}, {type(model).__name__}) has no "
                                        f"{t.name} to edit: {err}") from err
            weight, transposed = weight_view(module)
            shape = tuple(weight.T.shape if transposed else weight.shape)
            if shape != tuple(t.shape):
                raise BaseModelMismatch(f"{trained}, whose {t.name} is {list(t.shape)} ([out, in]); in the model "
                                        f"given ({given!r}) it is {list(shape)}")
        fingerprint = model_fingerprint(model)
        force = self.force_base if force is None else force
        if fingerprint != self.base_info.fingerprint:
            message = (f"{trained} (weight fingerprint {self.base_info.fingerprint}), but the model given is {given!r} "
                       f"(fingerprint {fingerprint})")
            if not force:
                raise BaseModelMismatch(message + ". Use the model the checkpoint names (edit.py without model=..., "
                                        "or editor.load_base_model()), or force it with edit.py force_ckpt=true / "
                                        "editor.force_base = True.")
            log.warning("%s; used anyway because it was forced", message)
        self._verified = weakref.ref(model)

    def _training_base(self) -> _Attached:
        if self._attached is None:
            raise RuntimeError(f"{self.name}: no base model attached; training builds the editor with base_model=...")
        model = self._attached.model
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        return self._attached

    # -- checkpoints -----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the base model (name + fingerprint) and who wrote the file, next to the weights."""
        checkpoint[CKPT_KEY] = {
            "editor": self.name,
            "editor_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "base_model": self.base_name,
            "base_fingerprint": self.base_info.fingerprint,
            "saved_by_rank": int(self.global_rank),
            "world_size": int(getattr(self.trainer, "world_size", 1)) if self._trainer is not None else 1,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming training (``ckpt_path=``) on another base model is refused unless forced."""
        record = checkpoint.get(CKPT_KEY) or {}
        recorded = record.get("base_fingerprint")
        if recorded is not None and recorded != self.base_info.fingerprint and not self.force_base:
            raise BaseModelMismatch(
                f"checkpoint was trained on base model {record.get('base_model')!r} (fingerprint {recorded}); "
                f"this run's base model is {self.base_name!r} (fingerprint {self.base_info.fingerprint})"
            )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are text (:class:`EditBatch`); tensors are made on the model's device."""
        return batch

    # -- the two passes ------------------------------------------------------------------------
    def _rows(self, tokenizer, requests: Sequence[EditRequest], batch: EditBatch | None) -> _Rows:
        prompts = [r.prompt for r in requests]
        answers = [r.target_new for r in requests]
        n = len(requests)
        rephrase: list[int] = []
        loc: list[int] = []
        if batch is not None:
            prompts += [e.rephrase for e in batch.examples] + [e.loc_prompt for e in batch.examples]
            answers += [e.request.target_new for e in batch.examples] + [e.loc_answer for e in batch.examples]
            rephrase, loc = list(range(n, 2 * n)), list(range(2 * n, 3 * n))
        pairs = tokenize_pairs(tokenizer, prompts, answers, self.hparams.max_length)
        return _Rows(pairs, list(range(n)), rephrase, loc)

    def _relative(self, model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
        """The decoder body and each target's parameter name relative to it (for functional_call)."""
        body = decoder_body(model)
        prefix = next((n for n, m in model.named_modules() if m is body), None)
        if prefix is None:
            raise TypeError(f"{type(model).__name__}: decoder body not found among its modules")
        names = {}
        for t in self.targets:
            if prefix and not t.param.startswith(prefix + "."):
                raise ValueError(f"{t.name} is not inside the decoder body {prefix!r}; learned editors edit blocks only")
            names[t.name] = t.param[len(prefix) + 1 :] if prefix else t.param
        return body, names

    def _signal_and_logits(
        self, model: nn.Module, tokenizer, layout: ModelLayout, rows: _Rows, ab: AnswerBatch,
        requests: list[EditRequest], update_stats: bool,
    ) -> tuple[EditSignal, Tensor, dict[str, tuple[Tensor, bool]]]:
        """Pass 1 on the unedited model: the edit signal and the logits at every answer position."""
        body, rel = self._relative(model)
        weights = {t.name: weight_view(resolve(model, t.name, None, layout)) for t in self.targets}
        names = [t.name for t in self.targets]
        edit_of_row = torch.full((len(rows.pairs),), -1, dtype=torch.long)
        edit_of_row[rows.edit] = torch.arange(len(rows.edit))
        edit_of_row = edit_of_row.to(ab.input_ids.device)
        with torch.enable_grad():
            leaves = {rel[n]: w.detach().requires_grad_(True) for n, (w, _) in weights.items()}
            with capture(model, names, what="input") as ins, capture(model, names, what="output", detach=False) as outs:
                hidden = functional_call(body, leaves, (), dict(input_ids=ab.input_ids, attention_mask=ab.attention_mask,
                                                                  use_cache=False)).last_hidden_state
            logits = head_logits(model, hidden[ab.rows, ab.cols]).float()
            nll = nn.functional.cross_entropy(logits, ab.targets, reduction="none")
            is_edit = edit_of_row[ab.pair] >= 0
            # mean over each edit's answer tokens, summed over edits: a batch of n edits gives every
            # edit the gradient it would get alone (no 1/n dilution of the signal)
            loss = _group_mean(nll[is_edit], edit_of_row[ab.pair][is_edit], len(rows.edit)).sum()
            grads = torch.autograd.grad(loss, [outs[n] for n in names], allow_unused=True)
        token_mask = ab.attention_mask.bool() & (edit_of_row[:, None] >= 0)
        token_edit = edit_of_row[:, None].expand_as(token_mask)[token_mask]
        u, delta = {}, {}
        for n, g in zip(names, grads):
            u[n] = ins[n][token_mask].detach().float()
            out = outs[n]
            delta[n] = (g if g is not None else torch.zeros_like(out))[token_mask].detach().float()
        signal = EditSignal(u, delta, token_edit, list(requests), model, tokenizer, update_stats)
        return signal, logits.detach(), weights

    def _deltas(self, signal: EditSignal) -> dict[str, Tensor]:
        """Canonical ``[out, in]`` weight updates from the subclass's factors."""
        factors = self.edit_factors(signal)
        return {name: left.T @ right for name, (left, right) in factors.items()}

    def _step(self, batch: EditBatch, update_stats: bool) -> dict[str, Tensor]:
        """Losses and metrics of one batch of edits (training and validation)."""
        attached = self._training_base()
        model, tokenizer, layout = attached.model, attached.tokenizer, attached.layout
        device = next(model.parameters()).device
        self._to_device(device)
        requests = batch.requests
        rows = self._rows(tokenizer, requests, batch)
        ab = answer_batch(rows.pairs, range(len(rows.pairs)), tokenizer.pad_token_id).to(device)
        body, rel = self._relative(model)
        kwargs = dict(input_ids=ab.input_ids, attention_mask=ab.attention_mask, use_cache=False)
        first_live = min(t.layer for t in self.targets)
        with frozen_prefix(model, layout, first_live, lambda: body(**kwargs)):
            signal, base_logits, weights = self._signal_and_logits(model, tokenizer, layout, rows, ab, requests,
                                                                   update_stats)
            deltas = self._deltas(signal)
            params = {rel[n]: w + (deltas[n].T if transposed else deltas[n]).to(w.dtype)
                      for n, (w, transposed) in weights.items()}
            hidden = functional_call(body, params, (), kwargs).last_hidden_state
            post_logits = head_logits(model, hidden[ab.rows, ab.cols]).float()
        return self._losses(rows, ab, base_logits, post_logits, deltas)

    def _losses(self, rows: _Rows, ab: AnswerBatch, base_logits: Tensor, post_logits: Tensor,
                deltas: dict[str, Tensor]) -> dict[str, Tensor]:
        n_rows = len(rows.pairs)
        kind = torch.zeros(n_rows, dtype=torch.long)  # 0 edit prompt, 1 rephrase, 2 locality
        kind[rows.rephrase] = 1
        kind[rows.loc] = 2
        tok_kind = kind.to(ab.pair.device)[ab.pair]
        nll = nn.functional.cross_entropy(post_logits, ab.targets, reduction="none")
        correct = (post_logits.argmax(-1) == ab.targets).float()
        correct_pre = (base_logits.argmax(-1) == ab.targets).float()
        loss_kinds = {"rephrase": (1,), "prompt": (0,), "both": (0, 1)}[self.hparams.edit_loss_on]
        on_edit_loss = torch.zeros_like(tok_kind, dtype=torch.bool)
        for k in loss_kinds:
            on_edit_loss |= tok_kind == k
        # per-row mean over answer tokens, then mean over rows (the metrics' definition)
        edit_loss = _row_mean(nll, ab.pair, on_edit_loss, n_rows)
        loc = tok_kind == 2
        base_logp = torch.log_softmax(base_logits[loc], -1)
        post_logp = torch.log_softmax(post_logits[loc], -1)
        loc_loss = (base_logp.exp() * (base_logp - post_logp)).sum(-1).mean() if bool(loc.any()) else post_logits.sum() * 0
        out = {
            "edit_loss": edit_loss,
            "loc_loss": loc_loss,
            "edit_acc": _row_mean(correct, ab.pair, on_edit_loss, n_rows),
            "edit_acc_pre": _row_mean(correct_pre, ab.pair, on_edit_loss, n_rows),
            "prompt_acc": _row_mean(correct, ab.pair, tok_kind == 0, n_rows),
            "rephrase_acc": _row_mean(correct, ab.pair, tok_kind == 1, n_rows),
            "loc_acc": _row_mean((post_logits.argmax(-1) == base_logits.argmax(-1)).float(), ab.pair, loc, n_rows),
            "update_norm": torch.stack([d.detach().norm() for d in deltas.values()]).mean(),
        }
        return out

    # -- Lightning -------------------------------------------------------------------------------
    def _to_device(self, device: torch.device) -> None:
        first = next(iter(self.parameters()), None)
        if first is not None and first.device != device:
            self.to(device)

    def training_step(self, batch: EditBatch, batch_idx: int) -> Tensor:
        out = self._step(batch, update_stats=True)
        loss, extra = self.combine_losses(out["edit_loss"], out["loc_loss"])
        self.log_dict({f"train/{k}": v.detach() for k, v in {**out, **extra}.items()}, batch_size=len(batch))
        self.log("train/loss", loss.detach(), batch_size=len(batch), prog_bar=True)
        return loss

    def validation_step(self, batch: EditBatch, batch_idx: int) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("learned editors need gradients of the base model during validation: "
                               "set trainer.inference_mode=false")
        out = self._step(batch, update_stats=False)
        loss, extra = self.combine_losses(out["edit_loss"], out["loc_loss"])
        values = {**out, **extra, "loss": loss}
        shown = {"val/edit_acc", "val/loc_acc"}
        logged = {f"val/{k}": v.detach() for k, v in values.items()}
        self.log_dict({k: v for k, v in logged.items() if k not in shown}, batch_size=len(batch), sync_dist=True,
                      on_epoch=True)
        self.log_dict({k: logged[k] for k in shown}, batch_size=len(batch), sync_dist=True, on_epoch=True,
                      prog_bar=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """The Trainer's clip if it sets one, else the editor's ``grad_clip`` (MEND: 100)."""
        if gradient_clip_val is None and self.hparams.grad_clip is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # -- editing ---------------------------------------------------------------------------------
    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> WeightSnapshot:
        """Apply ``requests`` together (one update per matrix); ``undo`` restores bit-exactly."""
        requests = list(requests)
        if not requests:
            raise ValueError("no requests to edit")
        self.last_timings = {}
        self.check_base(model)
        layout = layout_for(model, self.base_info.layout)
        device = next(model.parameters()).device
        self._to_device(device)
        with self._phase("gradients", device):
            rows = self._rows(tokenizer, requests, None)
            ab = answer_batch(rows.pairs, range(len(rows.pairs)), tokenizer.pad_token_id).to(device)
            signal, _, weights = self._signal_and_logits(model, tokenizer, layout, rows, ab, requests, False)
        with self._phase("update", device), torch.no_grad():
            deltas = self._deltas(signal)
            snapshot = WeightSnapshot({t.param: weights[t.name][0] for t in self.targets})
            for t in self.targets:
                weight, transposed = weights[t.name]
                weight.add_((deltas[t.name].T if transposed else deltas[t.name]).to(weight.dtype))
        return snapshot


def _group_mean(values: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """Mean of ``values`` per group id (``[n_groups]``; empty groups give 0)."""
    sums = torch.zeros(n_groups, device=values.device, dtype=values.dtype).index_add(0, groups, values)
    counts = torch.bincount(groups, minlength=n_groups).clamp(min=1).to(values.dtype)
    return sums / counts


def _row_mean(values: Tensor, row: Tensor, mask: Tensor, n_rows: int) -> Tensor:
    """Mean over the rows selected by ``mask`` of each row's mean over its tokens."""
    if not bool(mask.any()):
        return values.sum() * 0
    per_row = _group_mean(values[mask], row[mask], n_rows)
    present = torch.zeros(n_rows, dtype=torch.bool, device=values.device)
    present[row[mask]] = True
    return per_row[present].mean()


def load_editor(path: str | Path, *, force: bool = False, map_location: str | torch.device = "cpu") -> LearnedEditor:
    """Load any trained editor from a checkpoint; its class is read from the checkpoint itself."""
    import importlib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    record = checkpoint.get(CKPT_KEY)
    if not record or "editor_class" not in record:
        raise ValueError(f"{path} is not a lit-edit learned-editor checkpoint (no {CKPT_KEY!r} record)")
    module_path, _, cls_name = record["editor_class"].rpartition(".")
    cls = getattr(importlib.import_module(module_path), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, LearnedEditor)):
        raise TypeError(f"{path}: {record['editor_class']} is not a LearnedEditor")
    editor = cls.load_from_checkpoint(path, map_location=map_location)
    editor.force_base = force
    return editor.eval()
