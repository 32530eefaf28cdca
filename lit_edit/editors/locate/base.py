"""What ROME and MEMIT share: the ``v*`` settings, context templates and key statistics ``C``.

:class:`LocateEditor` holds the constructor parameters both editors take and their one-off
preparation (resolve the edited layers, generate the context templates once, fetch the
second moment ``C = E[k k^T]`` of every edited layer once); a subclass names its layers
(:attr:`LocateEditor.edited_layers`), says what it keeps of ``C`` (:meth:`LocateEditor._use_moments`)
and implements ``edit``. :class:`CachedStatsProvider` is the default source of ``C``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence

from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.base import CallbackEditor, EditInterrupted, WeightSnapshot
from lit_edit.editors.locate.prompts import ROME_LENGTH_PARAMS, context_templates, split_template
from lit_edit.editors.locate.value_cache import ValueCache
from lit_edit.editors.locate.values import (ChunkStore, ValueHParams, ValueTargets, check_chunk_size,
                                            resolve_chunk_size)
from lit_edit.models.layouts import ModelLayout, canonical_shape, resolve, weight_view
from lit_edit.models.loading import model_fingerprint
from lit_edit.utils.precision import check_autocast, resolve_autocast

class SecondMomentProvider(Protocol):
    """Anything that returns ``C = E[k k^T]`` (``[d_in, d_in]``) of ``mlp_out``'s input at a layer.

    The return value may be the matrix itself or an object with a ``.matrix`` attribute
    (``lit_edit.editors.locate.stats.SecondMoment``).
    """

    def get(self, model: nn.Module, tokenizer, layout: ModelLayout, layer: int) -> Any: ...


class CachedStatsProvider:
    """Adapter to :class:`lit_edit.editors.locate.stats.SecondMomentStats` (imported when first used).

    ``settings`` are the editor config's ``stats`` section: ``cache_dir`` and ``model_id``
    are for the cache itself, every other non-null key goes to ``StatsConfig`` (``corpus``,
    ``n_samples``, ``max_length``, ``token_budget``, ``dtype``, ``data_root``).
    ``model_id`` defaults to the model's ``config.name_or_path``.

    ``extra_corpora`` (a list of mappings with ``corpus``, ``weight`` and optionally any other
    ``StatsConfig`` key) adds further corpora: ``C = C_corpus + sum_i weight_i C_i``, every term
    a per-token mean cached on its own. It exists for text the main corpus hardly has (questions,
    for a question-answering benchmark): the editor's ``lambda C`` then protects that text's
    keys as well (``lit_edit/editors/memit.py`` says what it measured).
    """

    _OWN_KEYS = ("cache_dir", "model_id", "extra_corpora")

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        if not self.settings.get("cache_dir"):
            raise ValueError("stats.cache_dir is required for the covariance statistics cache")
        self.extra = [self._check_extra(i, spec) for i, spec in enumerate(self.settings.get("extra_corpora") or [])]
        self._stats = None

    @staticmethod
    def _check_extra(index: int, spec: Any) -> tuple[dict[str, Any], float]:
        """``(StatsConfig overrides, weight)`` of one ``extra_corpora`` entry, or a readable error."""
        if not isinstance(spec, Mapping) or not spec.get("corpus") or "weight" not in spec:
            raise ValueError(f"stats.extra_corpora[{index}] must be a mapping with 'corpus' and 'weight', got {spec!r}")
        weight = float(spec["weight"])
        if not weight >= 0:
            raise ValueError(f"stats.extra_corpora[{index}].weight must be >= 0, got {spec['weight']!r}")
        return {k: v for k, v in spec.items() if k != "weight" and v is not None}, weight

    def _cache_configs_model_id(self, model: nn.Module) -> tuple[Any, list[tuple[Any, float]], str]:
        """The statistics cache (created once), ``(StatsConfig, weight)`` per corpus (the main one
        first, weight 1) and the model id for ``model``."""
        from lit_edit.editors.locate.stats import SecondMomentStats, StatsConfig

        if self._stats is None:
            self._stats = SecondMomentStats(self.settings["cache_dir"])
        base = {k: v for k, v in self.settings.items() if k not in self._OWN_KEYS and v is not None}
        configs = [(StatsConfig(**base), 1.0)]
        configs += [(StatsConfig(**{**base, **overrides}), weight) for overrides, weight in self.extra]
        model_id = self.settings.get("model_id") or getattr(model.config, "name_or_path", None) or type(model).__name__
        return self._stats, configs, model_id

    def get(self, model: nn.Module, tokenizer, layout: ModelLayout, layer: int) -> Tensor:
        return self.get_many(model, tokenizer, layout, [layer])[int(layer)]

    def get_many(self, model: nn.Module, tokenizer, layout: ModelLayout, layers: Sequence[int]) -> dict[int, Tensor]:
        """``C`` of several layers, each corpus read in one pass for all of them."""
        stats, configs, model_id = self._cache_configs_model_id(model)
        layers = [int(layer) for layer in layers]
        moments: dict[int, Tensor] = {}
        for cfg, weight in configs:
            found = stats.get_many(model, tokenizer, layout, layers, cfg, model_id)
            for layer in layers:
                term = found[layer].matrix if weight == 1.0 else weight * found[layer].matrix
                moments[layer] = term if layer not in moments else moments[layer] + term
        return moments


class LocateEditor(CallbackEditor):
    """Base of locate-then-edit editors on ``mlp_out`` (ROME, MEMIT).

    Args (keyword only, as in ``configs/editor/*.yaml``):
        v_num_grad_steps, v_lr, v_weight_decay, clamp_norm_factor, kl_factor, v_stop_loss, v_stop_on:
            the ``v*``/``z*`` optimisation (:class:`~lit_edit.editors.locate.values.ValueHParams`).
        mom2_adjustment: use the second moment ``C`` of keys (True) or ``C = I``.
        context_template_length_params: ``[[prefix_tokens, how_many], ...]`` of generated
            prefixes, besides the bare prompt (default: the class's ``default_length_params``).
        context_templates: a fixed list of templates (each with one ``{}``) instead.
        extra_context_templates: templates appended to the generated (or fixed) ones, e.g. with
            text *after* the prompt (``"{} Answer:"``): a ``v*``/``z*`` trained only on prompts
            that end right after the subject never has to carry the fact across words between
            the subject and the answer, which a rephrase often puts there. The generated
            prefixes come before the prompt and cannot teach that. Empty (ROME, MEMIT): none.
        context_template_seed: seed of the prefix sampling (deterministic templates).
        context_template_start: text the model's pretraining documents start with (e.g.
            SmolLM2's ``"<|endoftext|>"``), given before the start words when the prefixes are generated
            (:func:`~lit_edit.editors.locate.prompts.context_templates`' ``document_start``);
            ``None``: none (MEMIT's code).
        stats: settings of the default statistics provider (:attr:`default_stats_provider`).
        stats_provider: any object with ``get(model, tokenizer, layout, layer)`` returning
            ``C`` (and optionally ``get_many(model, tokenizer, layout, layers)``); overrides ``stats``.
        max_length: longest templated prompt + target, in tokens.
        v_chunk_size: optimise ``v*``/``z*`` for at most this many requests at a time (same
            result, bounded memory; ``None``: all requests of an ``edit`` call together);
            ``"auto"``: by the model's device (:func:`resolve_chunk_size`).
        v_autocast: ``None`` (float32) or ``"bf16"``: the ``v*``/``z*`` steps after a float32 first
            one in bfloat16 (:class:`~lit_edit.editors.locate.values.ValueHParams`); ``"auto"``:
            bf16 where bfloat16 products are the faster on the model's device (a CPU with AMX, a CUDA GPU
            with bf16), else float32
            (:func:`~lit_edit.utils.precision.resolve_autocast`), decided at each optimisation
            because Lightning moves the model to its device after the editor's ``setup``.
        v_share_subject: requests of one ``edit`` call with the same subject share one
            ``v*``/``z*`` delta (``ValueHParams.share_subject``; batch editors).
        v_cache_dir: keep optimised targets on disk there
            (:class:`~lit_edit.editors.locate.value_cache.ValueCache`) for editors that look
            them up through :meth:`_cached_targets`; ``None`` disables it.
        name: the editor's name in results (default: the class's ``name``).
    """

    algorithm: ClassVar[str] = "locate-then-edit"
    #: the provider built from ``stats`` when no ``stats_provider`` is given
    default_stats_provider: ClassVar[type] = CachedStatsProvider
    #: ``context_template_length_params`` when the constructor is not given any
    default_length_params: ClassVar[Sequence[Sequence[int]]] = ROME_LENGTH_PARAMS

    def __init__(
        self,
        *,
        v_num_grad_steps: int,
        v_lr: float,
        v_weight_decay: float,
        clamp_norm_factor: float,
        kl_factor: float,
        v_stop_loss: float | None,
        mom2_adjustment: bool,
        v_stop_on: str = "loss",
        context_template_length_params: Sequence[Sequence[int]] | None = None,
        context_templates: Sequence[str] | None = None,
        extra_context_templates: Sequence[str] = (),
        context_template_seed: int = 0,
        context_template_start: str | None = None,
        stats: Mapping[str, Any] | None = None,
        stats_provider: SecondMomentProvider | None = None,
        max_length: int = 128,
        v_chunk_size: int | str | None = None,
        v_autocast: str | None = None,
        v_share_subject: bool = False,
        v_cache_dir: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.v_autocast = check_autocast(v_autocast, "v_autocast")
        # the value optimisation's settings; autocast "auto" is resolved per call (value_hp)
        self.hp = ValueHParams(
            num_grad_steps=int(v_num_grad_steps), lr=float(v_lr), weight_decay=float(v_weight_decay),
            clamp_norm_factor=float(clamp_norm_factor), kl_factor=float(kl_factor),
            stop_loss=None if v_stop_loss is None else float(v_stop_loss), stop_on=str(v_stop_on),
            autocast=None if v_autocast == "auto" else v_autocast, share_subject=bool(v_share_subject),
        )
        self.mom2_adjustment = bool(mom2_adjustment)
        if context_template_length_params is None:
            context_template_length_params = self.default_length_params
        self.context_template_length_params = [tuple(int(x) for x in p) for p in context_template_length_params]
        self.fixed_templates = list(context_templates) if context_templates is not None else None
        self.extra_templates = [str(t) for t in extra_context_templates]
        for template in self.extra_templates:
            split_template(template)  # exactly one "{}", else a readable error now, not at the first edit
        self.context_template_seed = int(context_template_seed)
        self.context_template_start = context_template_start or None
        self.stats = dict(stats or {})
        self.stats_provider = stats_provider
        self.max_length = max_length
        self.v_chunk_size = check_chunk_size(v_chunk_size)
        self.value_cache = ValueCache(v_cache_dir) if v_cache_dir else None
        # caches (visible, cleared by clear_cache): templates and what _use_moments made of C
        self.templates: list[str] | None = None
        self._prepared_moments: Any = None

    # -- what a subclass provides ----------------------------------------------------------------
    @property
    def edited_layers(self) -> list[int]:
        """The blocks whose ``mlp_out`` this editor writes, ascending."""
        raise NotImplementedError

    def configured_layers(self) -> list[int]:
        return self.edited_layers

    @property
    def value_site(self) -> tuple[str, int]:
        """``(layout module, layer)`` whose output at the subject's last token holds the value
        target (read by the value-ceiling diagnostic, :mod:`lit_edit.editors.locate.ceiling`)."""
        raise NotImplementedError(f"{type(self).__name__} has no value site")

    def initial_value_targets(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> ValueTargets:
        """The value targets the first write of an edit of ``requests`` aims at, on ``model`` as it is."""
        raise NotImplementedError(f"{type(self).__name__} has no value targets")

    def _use_moments(self, moments: dict[int, Tensor]) -> Any:
        """What the editor keeps of ``C`` per edited layer (checked ``[d_in, d_in]``), cached until clear_cache."""
        raise NotImplementedError

    def _fetch_moments(self, provider: Any, model: nn.Module, tokenizer) -> Mapping[int, Any]:
        """``C`` (or objects with ``.matrix``) per edited layer: one ``provider.get_many`` call for all
        of them (one corpus pass) when the provider has it, else one ``provider.get`` per layer."""
        if hasattr(provider, "get_many"):
            return provider.get_many(model, tokenizer, self.layout, list(self.edited_layers))
        return {layer: provider.get(model, tokenizer, self.layout, layer) for layer in self.edited_layers}

    # -- preparation ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, tokenizer, layout: ModelLayout | None = None) -> None:
        """Resolve the layers, generate the context templates, load ``C`` of every layer (once)."""
        super().prepare(model, tokenizer, layout)  # a layer the model lacks fails here, naming the setting
        if self.templates is None:
            self.templates = context_templates(
                model, tokenizer, length_params=self.context_template_length_params,
                seed=self.context_template_seed, fixed=self.fixed_templates,
                document_start=self.context_template_start,
            ) + self.extra_templates
            # logged under the subclass's module (lit_edit.editors.rome / .memit), as before
            logging.getLogger(type(self).__module__).info("%s context templates: %s", self.algorithm, self.templates)
        if self.mom2_adjustment and self._prepared_moments is None:
            self._prepared_moments = self._use_moments(self._second_moments(model, tokenizer))

    def _second_moments(self, model: nn.Module, tokenizer) -> dict[int, Tensor]:
        """``C`` of every edited layer from the provider, shape-checked against ``mlp_out``'s input."""
        provider = self.stats_provider
        if provider is None:
            provider = self.default_stats_provider(self.stats)
        found = self._fetch_moments(provider, model, tokenizer)
        moments = {}
        for layer in self.edited_layers:
            matrix = getattr(found[layer], "matrix", found[layer])
            d_in = canonical_shape(resolve(model, "mlp_out", layer, self.layout))[1]
            if tuple(matrix.shape) != (d_in, d_in):
                raise ValueError(f"second moment for layer {layer} has shape {tuple(matrix.shape)}, "
                                 f"expected [{d_in}, {d_in}] (the input width of mlp_out)")
            moments[layer] = matrix
        return moments

    def clear_cache(self) -> None:
        """Forget templates and ``C`` (e.g. before using the editor on another model)."""
        self.templates = None
        self._prepared_moments = None
        self.layout = None

    def ensure_prepared(self, model: nn.Module, tokenizer) -> ModelLayout:
        if self.layout is None or self.templates is None or (self.mom2_adjustment and self._prepared_moments is None):
            self.prepare(model, tokenizer, self.layout)
        assert self.layout is not None
        return self.layout

    # -- editing helpers -----------------------------------------------------------------------
    def value_hp(self, model: nn.Module) -> ValueHParams:
        """:attr:`hp` with ``v_autocast`` resolved for the device ``model`` is on now."""
        autocast = resolve_autocast(self.v_autocast, next(model.parameters()).device)
        return self.hp if autocast == self.hp.autocast else dataclasses.replace(self.hp, autocast=autocast)

    def chunk_size(self, model: nn.Module) -> int | None:
        """``v_chunk_size`` resolved for the device ``model`` is on now."""
        return resolve_chunk_size(self.v_chunk_size, next(model.parameters()).device)

    def _require_subjects(self, requests: Sequence[EditRequest]) -> None:
        for r in requests:
            if not r.subject:
                raise ValueError(f"{self.algorithm} needs the request's subject; "
                                 f"request {r.source or r.prompt!r} has none")

    def _cached_targets(self, model: nn.Module, tokenizer, layer: int, module: str,
                        compute: Callable[[ChunkStore], ValueTargets]) -> ValueTargets:
        """``compute(store)``: the value optimisation of ``module`` at ``layer``, which asks ``store``
        for each chunk of requests (:func:`~lit_edit.editors.locate.values.joint_value_targets`);
        the store answers from :attr:`value_cache` and keeps what was optimised, chunk by chunk.

        Before optimising a chunk it asks :attr:`stop_requested`: a SIGTERM in a batch of hours
        stops at the next chunk (``EditInterrupted``) instead of at the batch's end, and with the
        cache the finished chunks are what the same command resumes from."""
        cache = self.value_cache

        def unless_stopped(requests: Sequence[EditRequest],
                           optimise: Callable[[], dict[str, ValueTargets]]) -> dict[str, ValueTargets]:
            if self.stop_requested():
                kept = ("nothing of it is kept (editor.v_cache_dir keeps finished chunks)" if cache is None else
                        f"the finished chunks are in the z* cache {cache.directory}: "
                        "the same command resumes after them")
                raise EditInterrupted(f"{self.name}: stopped on SIGTERM before optimising the z* of its next chunk "
                                      f"({len(requests)} request(s), layer {layer}); {kept}")
            return optimise()

        if cache is None:
            return compute(unless_stopped)
        hp, device = self.value_hp(model), next(model.parameters()).device
        weights = model_fingerprint(model, samples=None)  # once: the weights do not change while z* is optimised

        def store(requests: Sequence[EditRequest],
                  optimise: Callable[[], dict[str, ValueTargets]]) -> dict[str, ValueTargets]:
            key = cache.key(model, tokenizer, layer=layer, modules=[module], requests=requests,
                            templates=self.templates, hp=hp, max_length=self.max_length, weights=weights)
            hits = cache.hits
            found = cache.get_or_compute(key, lambda: unless_stopped(requests, optimise)[module], device=device)
            if cache.hits > hits:  # the edit's time does not include this optimisation: say so beside it
                self._count("cached_values", len(requests))
            return {module: found}

        return compute(store)

    def _snapshot(self, layout: ModelLayout, modules: Mapping[int, nn.Module]) -> WeightSnapshot:
        """Copies of the weights of ``modules`` (``mlp_out`` per edited layer) before the edit."""
        return WeightSnapshot({f"{layout.name('mlp_out', layer)}.weight": weight_view(module)[0]
                               for layer, module in modules.items()})
