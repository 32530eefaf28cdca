"""Values of locate-then-edit editors: the output that makes the model say the new target.

``v*`` (ROME) or ``z*`` (MEMIT, at the block output) is found by optimising a vector
``delta`` added to a module's output at the subject's last token, over the context
templates of :mod:`.prompts`, against the target's NLL, a KL term that keeps what the
model thinks the subject *is*, and a weight decay / norm clamp. The editors then write
``W k* = v*`` with the keys of :mod:`.keys`.

Optimisation replays the frozen blocks below the edited layer
(:func:`lit_edit.utils.replay.frozen_prefix`), runs the LM head only on the scored
positions (:func:`lit_edit.utils.forward.head_logits`, as ``logits_at`` does) and computes
the tokens before the subject - which the optimised vector cannot change - once, keeping
their keys/values in a KV cache: those three are where the speed comes from. Hooks go
through :mod:`lit_edit.utils.hooks` only.

Sources: ROME (Meng et al., 2022, arXiv:2202.05262), ``rome/compute_v.py`` in
kmeng01/rome; MEMIT's ``memit/compute_z.py`` (kmeng01/memit); where this module deviates
from the code it says so at the place.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lit_edit.data.schema import EditRequest
from lit_edit.editors.locate.prompts import (ESSENCE_TEMPLATE, check_subjects, subject_last_token_positions,
                                             templated_prompts)
from lit_edit.models.layouts import ModelLayout, canonical_shape, get_module, resolve
from lit_edit.utils.forward import attention_window, decoder_body, forward_with_cache, head_logits, prefix_cache
from lit_edit.utils.hooks import patch_output
from lit_edit.utils.precision import eager_attention, low_precision_weights
from lit_edit.utils.replay import frozen_prefix
from lit_edit.utils.tokens import answer_batch, pad_right, tokenize_pairs


@dataclass(frozen=True)
class ValueHParams:
    """ROME's ``v*`` optimisation settings (``compute_v``).

    Attributes:
        num_grad_steps: forward passes (ROME: 20; the last one only measures, so at most
            ``num_grad_steps - 1`` Adam updates, as in ROME's loop).
        lr: Adam learning rate (ROME: 0.5).
        weight_decay: ROME's ``v_weight_decay``; the term is ``weight_decay * ||delta|| /
            ||v_orig||^2`` exactly as ROME's code has it (the norm, not its square).
        clamp_norm_factor: ``||delta||`` is projected back into ``clamp_norm_factor * ||v_orig||``.
        kl_factor: weight of KL(edited || original) of the next-token distribution at the
            subject's last token of the essence prompt ``"{subject} is a"``.
        stop_loss: stop once a request's ``stop_on`` value is below this (ROME: 5e-2);
            ``None`` runs every step.
        stop_on: ``"loss"`` (ROME: the total NLL + KL + decay) or ``"nll"`` (the target NLL
            alone). The decay term is ``weight_decay * ||delta|| / ||v_orig||^2``, whose size
            depends on the model's hidden-state norms: where it alone exceeds ``stop_loss``
            (SmolLM2: 0.5 * 100 / 25^2 = 0.08 at the clamp) the total never gets there and
            every edit runs all steps, so such models stop on the NLL.
        compact_below: once the requests still optimising are at most this fraction of the
            rows in the forward, finished requests are dropped from it (their rows only cost
            time: their delta is frozen). Requests stop at very different steps - for 100
            ZsRE facts on SmolLM2, 21 steps on average while each chunk of 25 ran to the cap
            of 40 for its slowest request. 0 never compacts; results are the same either way.
        autocast: ``None`` (float32) or ``"bf16"``: from the second step on, the forward and
            backward run under bfloat16 autocast, with the blocks above ``layer`` and the LM
            head on bfloat16 copies of their weights and, on CPU, eager attention
            (:mod:`lit_edit.utils.precision`); the deltas, Adam, the softmax and the loss stay
            float32. The first step runs in float32, so the unedited outputs (``original``, the
            value the write starts from) and the essence distribution are exact; the targets
            differ from float32 ones by the rounding of the steps. SmolLM2, ROME at layer 7 on a
            2-core CPU: 0.22 s per step against 0.32 s in float32 with the same steps, and ZsRE
            records 0-29 scored the same (configs/model/smollm2_135m.yaml).
        share_subject: requests with the same subject share one delta, optimised on all of
            their prompts. MEMIT-style batch writes key on the subject's last token, and the
            keys of "Q1 about S?" and "Q2 about S?" are nearly the same vector: separate deltas
            ask the least-squares write for different values at (almost) one key, so each fact
            comes out half-written and the update's norm grows. One delta per subject is the
            subject's representation carrying all of its new facts. ``False``: one delta per
            request (ROME/MEMIT's ``compute_v``/``compute_z``); with distinct subjects both agree.
    """

    num_grad_steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    stop_loss: float | None
    stop_on: str = "loss"
    compact_below: float = 0.75
    autocast: str | None = None
    share_subject: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in (None, "bf16"):
            raise ValueError(f"autocast must be null or 'bf16', got {self.autocast!r}")
        if self.stop_on not in ("loss", "nll"):
            raise ValueError(f"stop_on must be 'loss' or 'nll', got {self.stop_on!r}")
        if not 0.0 <= self.compact_below < 1.0:
            raise ValueError(f"compact_below must be in [0, 1), got {self.compact_below}")
        if self.num_grad_steps < 1:
            raise ValueError(f"num_grad_steps must be >= 1, got {self.num_grad_steps}")
        if self.lr <= 0 or self.clamp_norm_factor <= 0:
            raise ValueError("lr and clamp_norm_factor must be positive")
        if self.weight_decay < 0 or self.kl_factor < 0:
            raise ValueError("weight_decay and kl_factor must be >= 0")


@dataclass
class ValueTargets:
    """Result of the ``v*`` optimisation for ``n`` requests (rows).

    ``original`` is the module's output at the subject's last token averaged over the
    context templates - for an affine module exactly ``module(k*)`` with ``k*`` from
    :func:`~lit_edit.editors.locate.keys.compute_keys` - and ``values = original + delta``
    is ``v*``. Locate-then-edit updates therefore write ``module(k*) = v*``, i.e. move the
    averaged output by ``delta``.
    """

    values: Tensor  # [n, d_out] v*
    original: Tensor  # [n, d_out]
    delta: Tensor  # [n, d_out]
    steps: list[int]  # forward passes per request
    nll: list[float]  # target NLL at the returned delta
    loss: list[float]  # total loss at the returned delta
    history: list[list[float]] | None = None  # per forward pass: each request's target NLL, held at its stop (diagnostics)
    delta_ratio: list[float] | None = None  # ||delta|| / ||v_orig|| per request (the clamp binds at clamp_norm_factor)


#: ``store(requests, optimise)``: the targets of one chunk of requests per layout field, from
#: wherever the store keeps them, or ``optimise()``'s (which the store may then keep).
ChunkStore = Callable[[Sequence[EditRequest], Callable[[], dict[str, ValueTargets]]], dict[str, ValueTargets]]


def value_targets(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    hp: ValueHParams,
    *,
    module: str = "mlp_out",
    max_length: int = 128,
    reuse_prefix: bool = True,
    chunk_size: int | None = None,
    progress: bool = True,
    store: ChunkStore | None = None,
) -> ValueTargets:
    """Optimise one ``delta`` per request, added to ``module``'s output at the subject's last token.

    Per request the loss is (ROME ``compute_v``)::

        mean over templates of mean target-token NLL of "<template(prompt)> <target>"
        + kl_factor * KL(edited || original) at the subject's last token of "{subject} is a"
        + weight_decay * ||delta|| / ||v_orig||^2

    with ``v_orig`` the module output for the first template (the bare prompt with the
    default templates). Requests are optimised together but independently: each has its
    own ``delta`` row and loss (summed, so the gradients do not mix), and stops on its own -
    except that with ``hp.share_subject`` the requests about one subject share a row, which
    their summed losses train and which stops once all of them are below ``stop_loss``.
    ``module`` is a layout field: ``"mlp_out"`` (ROME) or ``"layer"`` (MEMIT's residual ``z``).
    The NLL is read at the model's last layer, as in every ROME/MEMIT hparams file.
    :func:`joint_value_targets` optimises deltas at several modules of the layer at once (PMET).

    Speed: blocks below ``layer`` are replayed (:func:`frozen_prefix`), the LM head runs on
    the scored positions only, and with ``reuse_prefix`` the tokens before each row's subject
    token - which ``delta`` cannot influence - run once: their keys/values are kept in a KV
    cache and every step only recomputes the few tokens from the subject on (the subject's
    last token, the rest of the prompt, the target). ``reuse_prefix=False`` recomputes whole
    sequences (for models without a ``past_key_values`` cache); both give the same result.
    """
    return joint_value_targets(model, tokenizer, layout, layer, requests, templates, hp, modules=[module],
                               max_length=max_length, reuse_prefix=reuse_prefix, chunk_size=chunk_size,
                               progress=progress, store=store)[module]


def joint_value_targets(
    model: nn.Module,
    tokenizer,
    layout: ModelLayout,
    layer: int,
    requests: Sequence[EditRequest],
    templates: Sequence[str],
    hp: ValueHParams,
    *,
    modules: Sequence[str],
    max_length: int = 128,
    reuse_prefix: bool = True,
    chunk_size: int | None = None,
    progress: bool = True,
    store: ChunkStore | None = None,
) -> dict[str, ValueTargets]:
    """:func:`value_targets` with one ``delta`` per request *and per module* of ``layer``, optimised together.

    PMET adds a delta to the attention output and one to the MLP output of the same block
    and optimises both against one loss; the weight decay is the sum of each module's term
    and each delta is clamped against its own module's ``||v_orig||``. The result maps each
    layout field to its :class:`ValueTargets` (``steps``, ``nll``, ``loss`` and ``history``
    are shared: there is one loss).

    ``chunk_size`` optimises at most that many requests at a time (never splitting one
    subject's requests under ``share_subject``). Rows never interact (summed losses,
    element-wise Adam), so chunking gives the same values while bounding the activations
    (and KV-cache copies) kept for backward: on SmolLM2 with 6 templates, 100 requests at
    once peaked at 16 GB RSS - chunks are what let a batch of 1000 MEMIT edits run on a laptop.
    With more than one chunk, ``progress`` shows a bar over the requests: a MEMIT batch of 100
    spends most of its minutes here, and one chunk is the unit a user can see move.

    ``store(chunk_requests, optimise)`` (:data:`ChunkStore`), when given, is asked for every
    chunk's targets (for all requests when there is one chunk) and calls ``optimise`` only for
    what it does not have: the z* cache keeps each chunk as it finishes, so a batch of 1000
    edits stopped after hours resumes at the first chunk it had not finished.
    """
    check_subjects(requests)
    group_of = _delta_groups(requests, hp.share_subject)
    if chunk_size is not None and len(requests) > chunk_size:
        chunks = _chunks(group_of, chunk_size)
        parts = []
        with tqdm(total=len(requests), unit="req", desc=f"z* layer {layer}", disable=not progress) as bar:
            for idx in chunks:
                parts.append(joint_value_targets(model, tokenizer, layout, layer, [requests[i] for i in idx],
                                                 templates, hp, modules=modules, max_length=max_length,
                                                 reuse_prefix=reuse_prefix, store=store))
                bar.update(len(idx))
        order = [i for idx in chunks for i in idx]
        back = sorted(range(len(order)), key=order.__getitem__)  # chunk order -> request order
        return {name: _take_targets(_concat_targets([p[name] for p in parts]), back) for name in modules}
    if store is not None:  # one chunk (or all requests): looked up, or optimised and kept, as a whole
        return store(list(requests), lambda: joint_value_targets(
            model, tokenizer, layout, layer, requests, templates, hp, modules=modules, max_length=max_length,
            reuse_prefix=reuse_prefix, progress=progress))
    modules = list(modules)
    if not modules or len(set(modules)) != len(modules):
        raise ValueError(f"modules must be distinct layout fields, got {modules}")
    target_modules = [resolve(model, m, layer, layout) for m in modules]
    n, n_templates = len(requests), len(templates)
    device = next(model.parameters()).device

    # rewriting prompts (every template x request) + one essence prompt per request
    prompts, subjects, starts = templated_prompts(requests, templates)
    answers = [r.target_new for r in requests for _ in range(n_templates)]
    pairs = tokenize_pairs(tokenizer, prompts, answers, max_length)
    subj_pos = subject_last_token_positions(tokenizer, prompts, subjects, search_from=starts)
    full_len = [len(x) for x in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    for i, (pos, kept) in enumerate(zip(subj_pos, pairs.n_prompt)):
        subj_pos[i] = pos - (full_len[i] - kept)  # tokenize_pairs cuts over-long prompts on the left
        if subj_pos[i] < 0:
            raise ValueError(f"prompt {prompts[i]!r} is too long for max_length={max_length}: the subject was cut")
    kl_prompts = [ESSENCE_TEMPLATE.format(r.subject) for r in requests]
    kl_pos = subject_last_token_positions(tokenizer, kl_prompts, [r.subject for r in requests])
    kl_ids = [ids[: p + 1] for ids, p in zip(tokenizer(kl_prompts, add_special_tokens=True)["input_ids"], kl_pos)]

    n_rw = len(pairs)
    # every row: its tokens up to the last one whose output is used, and where delta goes
    rows_ids = [x[:-1] for x in pairs.ids] + kl_ids  # the last target token is never an input
    cut = subj_pos + kl_pos
    widths = [_output_width(model, m) for m in target_modules]
    # one delta row per group (a request, or all requests of one subject with share_subject)
    n_groups = max(group_of) + 1
    group = torch.tensor(group_of, dtype=torch.long, device=device)
    group_size = torch.bincount(group, minlength=n_groups).float()
    deltas = [torch.zeros(n_groups, d, device=device, requires_grad=True) for d in widths]
    recorded: dict[int, Tensor] = {}
    plan: _Plan | None = None

    def build(sub: list[int]) -> _Plan:
        """Rows, forward and index tensors for requests ``sub`` only (global indices)."""
        rw = [i * n_templates + t for i in sub for t in range(n_templates)]
        sel = rw + [n_rw + i for i in sub]
        batch = answer_batch(pairs, rw, tokenizer.pad_token_id)
        local_pair = torch.full((n_rw,), -1, dtype=torch.long)
        local_pair[rw] = torch.arange(len(rw))
        score_rows = torch.cat([batch.rows, torch.arange(len(rw), len(sel))])
        score_cols = torch.cat([batch.cols, torch.tensor([kl_pos[i] for i in sub], dtype=torch.long)])
        sub_ids, sub_cut = [rows_ids[j] for j in sel], [cut[j] for j in sel]
        if reuse_prefix and _prefix_fits_window(model, sub_ids, sub_cut):
            forward, score_cols = _prefix_cached_forward(model, tokenizer, sub_ids, sub_cut, score_rows, score_cols,
                                                         device)
            patch_cols = torch.zeros(len(sel), dtype=torch.long, device=device)
        else:
            forward = _full_forward(model, tokenizer, sub_ids, device)
            patch_cols = torch.tensor(sub_cut, device=device)
        tok_pair = local_pair[batch.pair].to(device)
        return _Plan(
            requests=torch.tensor(sub, dtype=torch.long, device=device), forward=forward,
            rows=score_rows.to(device), cols=score_cols.to(device),
            patch_rows=torch.arange(len(sel), device=device), patch_cols=patch_cols,
            patch_req=torch.tensor([sub[k // n_templates] for k in range(len(rw))] + sub, device=device),
            targets=batch.targets.to(device), tok_pair=tok_pair, n_tok=len(batch.targets),
            tokens_per_pair=torch.bincount(tok_pair, minlength=len(rw)).clamp(min=1).float(),
        )

    def add_delta(m: int) -> Callable[[Tensor], Tensor]:
        def patch(out: Tensor) -> Tensor:
            assert plan is not None
            if m not in recorded:  # first call (all requests, delta zero): the unedited output
                recorded[m] = out[plan.patch_rows, plan.patch_cols].detach().float()
            return out.index_put((plan.patch_rows, plan.patch_cols), deltas[m][group[plan.patch_req]].to(out.dtype),
                                 accumulate=True)
        return patch

    def enter(sub: list[int]) -> contextlib.ExitStack:
        """Build ``sub``'s plan (outside the hooks: its prefix pass must not be patched), then hook it."""
        nonlocal plan
        plan = build(sub)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(frozen_prefix(model, layout, layer, plan.forward))
            for m, target_module in enumerate(target_modules):
                stack.enter_context(patch_output(target_module, add_delta(m)))
        except BaseException:
            stack.close()
            raise
        return stack

    low_precision = hp.autocast == "bf16"
    opt = torch.optim.Adam(deltas, lr=hp.lr)
    group_done = torch.zeros(n_groups, dtype=torch.bool, device=device)
    done = group_done[group]  # per request: its group has stopped
    kept = [torch.zeros_like(d) for d in deltas]
    steps = torch.zeros(n, dtype=torch.long)
    last_nll = torch.zeros(n, device=device)
    last_loss = torch.zeros(n, device=device)
    init_kl: Tensor | None = None
    v_norms: list[Tensor] | None = None
    history: list[list[float]] = []

    with contextlib.ExitStack() as outer:
        outer.enter_context(torch.enable_grad())
        hooks = enter(list(range(n)))
        outer.callback(lambda: hooks.close())
        for step in range(hp.num_grad_steps):
            assert plan is not None
            n_active = int((~done).sum())
            if n_active <= hp.compact_below * len(plan.requests):
                # drop finished requests from the forward: their rows no longer change anything
                hooks.close()
                hooks = enter(torch.nonzero(~done).flatten().tolist())
            if low_precision and step == 1:  # after the exact float32 first step (see ValueHParams.autocast)
                # the blocks above the layer and the head, read as head_logits reads it
                upper = [*get_module(model, layout.layers)[layer + 1:], model.get_output_embeddings()]
                outer.enter_context(low_precision_weights(upper))
                if device.type == "cpu":  # the CPU's bf16 SDPA backward is the slow one
                    outer.enter_context(eager_attention(model))
                outer.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
            sub = plan.requests
            hidden = plan.forward().last_hidden_state
            logits = head_logits(model, hidden[plan.rows, plan.cols])
            logits = logits.float()
            log_probs = torch.log_softmax(logits, dim=-1)
            token_nll = -log_probs[: plan.n_tok].gather(1, plan.targets[:, None]).squeeze(1)
            pair_nll = (torch.zeros(len(sub) * n_templates, device=device).index_add(0, plan.tok_pair, token_nll)
                        / plan.tokens_per_pair)
            nll = pair_nll.view(len(sub), n_templates).mean(1)
            kl_log_probs = log_probs[plan.n_tok :]
            if init_kl is None:  # the first plan holds every request
                init_kl = kl_log_probs.detach().clone()
            kl = (kl_log_probs.exp() * (kl_log_probs - init_kl[sub])).sum(-1)  # KL(edited || original)
            if v_norms is None:  # ROME's ||v_orig||: the value for the first template (the bare prompt)
                v_norms = [recorded[m][:n_rw].view(n, n_templates, w)[:, 0].norm(dim=-1)
                           for m, w in enumerate(widths)]
                # a group's delta is clamped against its requests' mean ||v_orig||
                group_v = [torch.zeros(n_groups, device=device).index_add(0, group, v) / group_size for v in v_norms]
            decay = sum(hp.weight_decay * d[group[sub]].norm(dim=-1) / v[sub] ** 2 for d, v in zip(deltas, v_norms))
            loss = nll + hp.kl_factor * kl + decay
            active = ~done[sub]
            steps[sub[active].cpu()] += 1
            last_nll[sub] = torch.where(active, nll.detach(), last_nll[sub])
            last_loss[sub] = torch.where(active, loss.detach(), last_loss[sub])
            history.append(last_nll.tolist())
            if hp.stop_loss is not None:
                criterion = loss if hp.stop_on == "loss" else nll
                # a group stops once every one of its requests is below stop_loss. Every group
                # not yet done is in the plan (compaction drops only done requests, and a group's
                # requests finish together), so a group with nothing missing is newly done.
                missing = torch.zeros(n_groups, device=device).index_add(
                    0, group[sub], (criterion.detach() >= hp.stop_loss).float())
                newly_groups = ~group_done & (missing == 0)
                for d, k in zip(deltas, kept):
                    k[newly_groups] = d.detach()[newly_groups]
                group_done |= newly_groups
                done = group_done[group]
            if bool(done.all()) or step == hp.num_grad_steps - 1:
                break
            opt.zero_grad(set_to_none=True)
            (loss * (~done[sub])).sum().backward()
            opt.step()
            with torch.no_grad():
                for d, k, v in zip(deltas, kept, group_v):
                    max_norm = hp.clamp_norm_factor * v
                    norms = d.norm(dim=-1)
                    scale = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))
                    d.mul_(scale[:, None])
                    d[group_done] = k[group_done]  # finished groups keep the delta that met stop_loss

    assert v_norms is not None
    out = {}
    for m, name in enumerate(modules):
        final = torch.where(group_done[:, None], kept[m], deltas[m].detach())[group]
        original = recorded[m][:n_rw].view(n, n_templates, widths[m]).mean(1)
        out[name] = ValueTargets(
            values=original + final, original=original, delta=final, steps=steps.tolist(),
            nll=last_nll.tolist(), loss=last_loss.tolist(), history=history,
            delta_ratio=(final.norm(dim=-1) / v_norms[m]).tolist(),
        )
    return out


@dataclass
class _Plan:
    """One layout of the optimised rows: which requests, their forward and where to read/patch."""

    requests: Tensor  # global request indices, in row order
    forward: Callable[[], Any]
    rows: Tensor  # scored (row, column): the answer tokens, then one essence position per request
    cols: Tensor
    patch_rows: Tensor  # where each row's delta is added
    patch_cols: Tensor
    patch_req: Tensor  # the request (global index) whose delta each row gets
    targets: Tensor  # answer token ids
    tok_pair: Tensor  # answer token -> local rewriting row
    n_tok: int
    tokens_per_pair: Tensor


def _concat_targets(parts: Sequence[ValueTargets]) -> ValueTargets:
    """Chunks of requests back into one :class:`ValueTargets` (history: per chunk, concatenated)."""
    return ValueTargets(
        values=torch.cat([p.values for p in parts]), original=torch.cat([p.original for p in parts]),
        delta=torch.cat([p.delta for p in parts]), steps=[x for p in parts for x in p.steps],
        nll=[x for p in parts for x in p.nll], loss=[x for p in parts for x in p.loss],
        history=[h for p in parts for h in (p.history or [])],
        delta_ratio=[x for p in parts for x in (p.delta_ratio or [])],
    )


def _take_targets(vt: ValueTargets, index: Sequence[int]) -> ValueTargets:
    """Rows ``index`` of ``vt``, in that order (``history`` stays per chunk)."""
    idx = torch.tensor(list(index), dtype=torch.long)
    return ValueTargets(
        values=vt.values[idx], original=vt.original[idx], delta=vt.delta[idx],
        steps=[vt.steps[i] for i in index], nll=[vt.nll[i] for i in index], loss=[vt.loss[i] for i in index],
        history=vt.history, delta_ratio=[vt.delta_ratio[i] for i in index] if vt.delta_ratio else vt.delta_ratio,
    )


def _delta_groups(requests: Sequence[EditRequest], share_subject: bool) -> list[int]:
    """The delta row of each request: its own, or its subject's (numbered in order of first appearance)."""
    if not share_subject:
        return list(range(len(requests)))
    first: dict[str, int] = {}
    return [first.setdefault(r.subject, len(first)) for r in requests]


# ``chunk_size="auto"`` by device type. On a CPU a step's cost is moving activations through the
# caches, so smaller chunks are faster as well as smaller. SmolLM2, MEMIT's tuned z* (8 templates,
# 25 ZsRE requests, one round, 2 threads, AMD EPYC): chunks of 5 took 9.2 s per request at 2.29 GB
# peak RSS, chunks of 25 took 12.4 s at 7.01 GB, with the same metrics; Gemma 3 270M, 10.19 s at
# 3.10 GB against 10.70 s at 6.98 GB. Elsewhere (GPUs) 25, the earlier default: no GPU was measured,
# and a GPU wants larger batches.
AUTO_CHUNK_SIZES: Mapping[str, int] = MappingProxyType({"cpu": 5})
AUTO_CHUNK_SIZE_ELSEWHERE = 25


def check_chunk_size(setting: int | str | None, name: str = "v_chunk_size") -> int | str | None:
    """``setting`` as an int >= 1, ``None`` or ``"auto"``; anything else is refused, naming ``name``."""
    if setting is None or setting == "auto":
        return setting
    if isinstance(setting, bool) or not isinstance(setting, (int, str)) or not str(setting).isdigit() \
            or int(setting) < 1:
        raise ValueError(f"{name} must be an integer >= 1, null or 'auto', got {setting!r}")
    return int(setting)


def resolve_chunk_size(setting: int | str | None, device: torch.device | str) -> int | None:
    """The chunk size for ``setting`` on ``device`` (``"auto"``: :data:`AUTO_CHUNK_SIZES`)."""
    checked = check_chunk_size(setting)
    if checked == "auto":
        return AUTO_CHUNK_SIZES.get(torch.device(device).type, AUTO_CHUNK_SIZE_ELSEWHERE)
    return checked  # type: ignore[return-value]


def _chunks(group_of: Sequence[int], size: int) -> list[list[int]]:
    """Request indices in chunks of at most ``size``, never splitting a group (a bigger group is its own chunk)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    chunks: list[list[int]] = []
    for idx in members.values():
        if chunks and len(chunks[-1]) + len(idx) <= size:
            chunks[-1].extend(idx)
        else:
            chunks.append(list(idx))
    return chunks


def _full_forward(model: nn.Module, tokenizer, rows_ids: list[list[int]], device) -> Callable[[], Any]:
    """The decoder body over whole right-padded rows (positions are the natural ones)."""
    input_ids, mask = pad_right(rows_ids, tokenizer.pad_token_id)
    input_ids, mask = input_ids.to(device), mask.to(device)
    body = decoder_body(model)
    return lambda: body(input_ids=input_ids, attention_mask=mask, use_cache=False)


def _prefix_fits_window(model: nn.Module, rows_ids: list[list[int]], cut: list[int]) -> bool:
    """Whether the padded prefix + suffix layout fits every sliding attention window.

    That layout pads each row's prefix to the longest one, so a suffix token sits further from
    its prefix, in stored positions, than in the row itself; a sliding window counts stored
    positions and would drop prefix tokens the whole row still attends to. (Gemma 3 270M's window
    is 512 tokens, far beyond edit prompts; the tiny test model's is 8.)
    """
    window = attention_window(model)
    if window is None:
        return True
    return max(cut) + max(len(ids) - c for ids, c in zip(rows_ids, cut)) <= window


@torch.no_grad()
def _prefix_cached_forward(
    model: nn.Module, tokenizer, rows_ids: list[list[int]], cut: list[int], rows: Tensor, cols: Tensor, device
) -> tuple[Callable[[], Any], Tensor]:
    """Run every row's tokens before ``cut[i]`` once; return a forward over the rest.

    The returned forward feeds only ``rows_ids[i][cut[i]:]`` (right-padded) with a copy of
    the prefixes' KV cache, explicit position ids and a mask that hides the prefixes'
    padding, so its hidden states equal those of the whole rows at columns ``>= cut``.
    Also returns the scored columns shifted into the suffix.
    """
    body = decoder_body(model)
    pad = tokenizer.pad_token_id
    width = max(cut)
    prefix_ids, prefix_mask = pad_right([x[:c] for x, c in zip(rows_ids, cut)], pad, max(width, 1))
    suffix_ids, suffix_mask = pad_right([x[c:] for x, c in zip(rows_ids, cut)], pad)
    cache = None
    if width > 0:
        # No padding mask here: causal attention already keeps the trailing pads out of the real
        # tokens, and rows that are all padding (subject at position 0) would give NaN keys.
        prefix_ids = prefix_ids.to(device)
        cache = prefix_cache(body, prefix_ids)
    else:
        prefix_mask = prefix_mask[:, :0]
    positions = torch.tensor(cut)[:, None] + torch.arange(suffix_ids.shape[1])[None]
    suffix_ids, positions = suffix_ids.to(device), positions.to(device)
    mask = torch.cat([prefix_mask, suffix_mask], dim=1).to(device)

    def forward() -> Any:
        past = copy.deepcopy(cache) if cache is not None else None  # each forward appends to it
        return forward_with_cache(body, past, input_ids=suffix_ids, attention_mask=mask, position_ids=positions)

    return forward, cols - torch.tensor(cut)[rows]


def _output_width(model: nn.Module, module: nn.Module) -> int:
    """Width of the main output of ``module``: ``out_features`` of a projection, else d_model."""
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return canonical_shape(module)[0]
    return int(model.config.hidden_size)
