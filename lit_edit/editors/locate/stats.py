"""Second moment ``C = E[k k^T]`` of MLP keys, computed once per model/layer/corpus and cached.

ROME, MEMIT, PMET and AlphaEdit all need, for the edited MLP down projection (``mlp_out``),
the uncentered covariance of its input ``k`` (dimension ``in_features`` of the canonical
``[out, in]`` weight) over ordinary text. This module computes it and keeps it:

    stats = SecondMomentStats("~/.cache/lit_edit/stats")
    cfg = StatsConfig(corpus="wikitext", n_samples=1000, max_length=256)
    c = stats.get(model, tok, layout, layer=5, cfg=cfg, model_id="smollm2_135m")
    c.matrix          # float32 [d_in, d_in] on the model's device
    c.n_tokens        # tokens it was estimated from
    c.source, c.seconds, c.timing   # "computed" | "disk" | "memory", and where the time went

``get_many(..., layers=[3, 4, 5, 6, 7])`` captures several layers in ONE pass over the
corpus (MEMIT). Estimation: documents are tokenised (truncated to ``max_length``), sorted by
length, right-padded into batches of at most ``token_budget`` tokens and run through the
model under ``no_grad`` with ``use_cache=False``; the keys of non-padding tokens are
accumulated as ``sum k k^T`` and a token count, in ``float32`` or ``float64``. The forward
stops right after the deepest requested layer's ``mlp_out`` (later blocks and the LM head
cannot change the keys), which makes shallow layers several times cheaper.

Disk cache (one safetensors file per layer, tensor ``"second_moment"`` holding ``C`` in the
accumulation dtype, provenance in its string metadata)::

    <cache_dir>/<model_id>/<mlp_out module name>/<corpus_id>-n<n_samples>-len<max_length>-<dtype>.safetensors

``corpus_id`` hashes the selected texts (:mod:`.corpus`), so an edited corpus file gets a new
file. ``token_budget`` is not part of the key: it only changes batching, not the estimate
(up to float rounding). ``max_length`` is the effective one (capped at the model's maximum
positions). A ``/`` in ``model_id`` (hub ids) becomes ``--``.

Stale-cache policy. A file is used only if its metadata matches: module, corpus id, sample
count, max length, dtype, ``d_in``, the tokenizer's fingerprint and the model's weight
fingerprint (:func:`lit_edit.models.loading.model_fingerprint`). A mismatch is never used
and never deleted or overwritten: a ``UserWarning`` says why, and the statistics go to (or
come from) the sibling file ``<stem>-fp<model fingerprint>-tok<tokenizer fingerprint>.safetensors``.
If that file exists and also mismatches, ``get`` raises ``RuntimeError`` before computing
anything. Files are written to a temporary name and moved into place with ``os.replace``;
a file that appeared meanwhile (another process) is kept.

Sequential editing. The fingerprint is that of the weights at call time, so after an edit
a new ``get`` would no longer match the base model's statistics. Either fetch statistics
(``get_many``) before the first edit - the in-memory layer then serves them - or pass
``fingerprint=`` computed on the unedited model.

Returned matrices are shared with the in-memory cache: treat them as read-only (``clone``
before modifying in place).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from lit_edit.editors.locate.corpus import Source, as_source, source_signature, text_samples, texts_id, warn_if_short
from lit_edit.models.cache import atomic_file
from lit_edit.models.layouts import ModelLayout, canonical_shape, resolve
from lit_edit.models.loading import model_fingerprint
from lit_edit.utils.hooks import capture, patch_output
from lit_edit.utils.tokens import pad_right

FORMAT = "lit_edit.second_moment/1"
TENSOR = "second_moment"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class StatsConfig:
    """How to estimate ``C`` (the knobs an editor yaml exposes).

    Attributes:
        corpus: ``"wikitext"``, a path (text file or ``datasets`` directory) or another source of
            :mod:`.corpus`; a list of sources is one corpus, their documents in order.
        n_samples: number of documents (the first ``n_samples``, in corpus order).
        max_length: tokens per document (longer ones are truncated; capped at the model's
            maximum positions).
        token_budget: padded tokens per forward batch (memory knob; not part of the cache key).
        dtype: accumulation dtype, ``"float32"`` or ``"float64"`` (part of the cache key).
        data_root: where ``wikitext`` lives (default: ``$LIT_EDIT_DATA`` or ``../shared/data``).
    """

    corpus: Source = "wikitext"
    n_samples: int = 1000
    max_length: int = 256
    token_budget: int = 8192
    dtype: str = "float32"
    data_root: str | None = None

    def __post_init__(self) -> None:
        self.corpus = as_source(self.corpus)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        for name in ("n_samples", "max_length", "token_budget"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class SecondMoment:
    """``C = E[k k^T]`` of one layer's ``mlp_out`` input, and where it came from.

    Attributes:
        matrix: float32 ``[d_in, d_in]`` on the model's device (read-only by convention).
        n_tokens: number of (non-padding) tokens averaged over.
        key: cache key ``<model_id>/<module>/<corpus_id>-n..-len..-<dtype>``.
        layer, module: which layer / module name.
        source: ``"computed"``, ``"disk"`` or ``"memory"`` for this call.
        seconds: wall time of the call that produced this object (for ``get_many`` computing
            several layers in one pass, the whole call).
        timing: breakdown in seconds (``fingerprint``, ``corpus``, ``compute`` | ``load``, ``save``).
        path: the cache file it was loaded from or written to.
        fingerprint: model fingerprint the statistics belong to.
    """

    matrix: Tensor
    n_tokens: int
    key: str
    layer: int = -1
    module: str = ""
    source: Literal["computed", "disk", "memory"] = "computed"
    seconds: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    fingerprint: str = ""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Short hash of how a tokenizer splits a fixed probe (class, size, pad id and the ids)."""
    probe = "The Eiffel Tower (1889) is 330 m tall; Zürich, naïve, 東京 <unk> @-@ 3.14\n  x"
    ids = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    blob = json.dumps([type(tokenizer).__name__, len(tokenizer), tokenizer.pad_token_id, ids])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _model_max_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


def _safe_model_id(model_id: str) -> str:
    clean = str(model_id).strip().replace("\\", "/").strip("/").replace("/", "--")
    if not clean or clean in (".", "..") or clean.startswith("."):
        raise ValueError(f"model_id {model_id!r} cannot name a cache directory")
    return clean


def _length_batches(lengths: Sequence[int], token_budget: int) -> Iterator[list[int]]:
    """Indices grouped longest first so that ``len(batch) * longest <= token_budget`` (>= 1 each)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep corpus order
    batch: list[int] = []
    for i in order:
        if batch and lengths[batch[0]] * (len(batch) + 1) > token_budget:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


class _StopForward(Exception):
    """Raised after the deepest requested layer: nothing later can change the keys."""


@dataclass
class _Entry:
    layer: int
    module: str
    d_in: int
    key: str
    memory_key: tuple
    path: Path  # canonical file
    alt: Path  # where a fresh computation goes when the canonical file belongs to other weights
    meta: dict[str, str]  # expected metadata (checked fields)
    target: Path | None = None


class SecondMomentStats:
    """Computes, caches (memory + disk) and serves :class:`SecondMoment` statistics.

    Args:
        cache_dir: root of the on-disk cache (created on first write).
        progress: show a ``tqdm`` bar while computing.

    ``timings`` lists one record per returned statistic (key, layer, source, seconds,
    n_tokens, timing breakdown) for benchmarks; ``clear()`` empties the in-memory cache and
    ``timings``. Nothing is shared between instances.
    """

    def __init__(self, cache_dir: str | Path, progress: bool = True) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.progress = progress
        self._memory: dict[tuple, SecondMoment] = {}
        self._corpora: dict[tuple, tuple[list[str], str]] = {}
        self.timings: list[dict[str, Any]] = []

    def clear(self) -> None:
        """Forget every statistic and corpus held in memory (disk files stay)."""
        self._memory.clear()
        self._corpora.clear()
        self.timings.clear()

    # --- public API ----------------------------------------------------------------------------

    def get(
        self,
        model: nn.Module,
        tokenizer: Any,
        layout: ModelLayout,
        layer: int,
        cfg: StatsConfig,
        model_id: str,
        *,
        fingerprint: str | None = None,
    ) -> SecondMoment:
        """``C`` for ``layout.mlp_out`` at ``layer`` (see the module docstring for caching)."""
        return self.get_many(model, tokenizer, layout, [layer], cfg, model_id, fingerprint=fingerprint)[int(layer)]

    def get_many(
        self,
        model: nn.Module,
        tokenizer: Any,
        layout: ModelLayout,
        layers: Sequence[int],
        cfg: StatsConfig,
        model_id: str,
        *,
        fingerprint: str | None = None,
    ) -> dict[int, SecondMoment]:
        """``{layer: C}`` for several layers; the missing ones are computed in one corpus pass."""
        start = time.perf_counter()
        layers = list(dict.fromkeys(int(layer) for layer in layers))
        if not layers:
            raise ValueError("get_many needs at least one layer")
        modules = {layer: resolve(model, "mlp_out", layer, layout) for layer in layers}  # IndexError here
        names = {layer: layout.name("mlp_out", layer) for layer in layers}
        device = next(model.parameters()).device
        max_length = min(int(cfg.max_length), _model_max_length(model) or int(cfg.max_length))

        t = time.perf_counter()
        model_fp = fingerprint or model_fingerprint(model)
        tok_fp = tokenizer_fingerprint(tokenizer)
        timing = {"fingerprint": time.perf_counter() - t}
        t = time.perf_counter()
        texts, cid = self._corpus(cfg)
        timing["corpus"] = time.perf_counter() - t

        entries = {
            layer: self._entry(layer, names[layer], canonical_shape(modules[layer])[1], model_id, cid, cfg,
                               max_length, model_fp, tok_fp)
            for layer in layers
        }
        results: dict[int, SecondMoment] = {}
        missing: list[_Entry] = []
        for layer, entry in entries.items():
            t = time.perf_counter()
            found = self._memory.get(entry.memory_key)
            if found is not None:
                matrix = found.matrix if found.matrix.device == device else found.matrix.to(device)
                timing_here = {**timing, "load": time.perf_counter() - t}
                results[layer] = self._record(found, matrix, "memory", start, timing_here)
                continue
            loaded = self._from_disk(entry, device)
            if loaded is not None:
                matrix, n_tokens, path = loaded
                timing_here = {**timing, "load": time.perf_counter() - t}
                moment = SecondMoment(matrix, n_tokens, entry.key, layer, entry.module, path=path, fingerprint=model_fp)
                self._memory[entry.memory_key] = moment
                results[layer] = self._record(moment, matrix, "disk", start, timing_here)
            else:
                missing.append(entry)

        if missing:
            warn_if_short(cfg.corpus, len(texts), cfg.n_samples, "computing the statistics from all of them")
            t = time.perf_counter()
            sums, n_tokens = self._accumulate(model, tokenizer, texts, [e.module for e in missing], cfg,
                                              max_length, model_id, device)
            compute_seconds = time.perf_counter() - t
            for entry in missing:
                t = time.perf_counter()
                matrix = sums[entry.module] / n_tokens
                path = self._save(entry, matrix, n_tokens, cfg, model_id, compute_seconds)
                timing_here = {**timing, "compute": compute_seconds, "save": time.perf_counter() - t}
                moment = SecondMoment(matrix.to(torch.float32), n_tokens, entry.key, entry.layer, entry.module,
                                      path=path, fingerprint=model_fp)
                self._memory[entry.memory_key] = moment
                results[entry.layer] = self._record(moment, moment.matrix, "computed", start, timing_here)
        return {layer: results[layer] for layer in layers}

    def path_for(
        self, model_id: str, module: str, corpus_id: str, cfg: StatsConfig, max_length: int | None = None
    ) -> Path:
        """Canonical cache file of one statistic (``max_length`` defaults to ``cfg.max_length``)."""
        length = int(max_length or cfg.max_length)
        stem = f"{corpus_id}-n{int(cfg.n_samples)}-len{length}-{cfg.dtype}"
        return self.cache_dir / _safe_model_id(model_id) / module / f"{stem}.safetensors"

    # --- pieces --------------------------------------------------------------------------------

    def _corpus(self, cfg: StatsConfig) -> tuple[list[str], str]:
        """Selected texts and their content id, re-read whenever the source files change."""
        memo = (cfg.corpus, int(cfg.n_samples), cfg.data_root, source_signature(cfg.corpus, cfg.data_root))
        if memo not in self._corpora:
            texts = text_samples(cfg.corpus, int(cfg.n_samples), cfg.data_root, warn=False)
            self._corpora[memo] = (texts, texts_id(texts))
        return self._corpora[memo]

    def _entry(self, layer, module, d_in, model_id, cid, cfg, max_length, model_fp, tok_fp) -> _Entry:
        path = self.path_for(model_id, module, cid, cfg, max_length)
        alt = path.with_name(f"{path.stem}-fp{model_fp}-tok{tok_fp}{path.suffix}")
        meta = {
            "format": FORMAT, "module": module, "corpus_id": cid, "n_samples": str(int(cfg.n_samples)),
            "max_length": str(max_length), "dtype": cfg.dtype, "d_in": str(d_in), "tokenizer": tok_fp,
            "fingerprint": model_fp,
        }
        key = f"{_safe_model_id(model_id)}/{module}/{path.stem}"
        memory_key = (key, model_fp, tok_fp)
        return _Entry(layer, module, d_in, key, memory_key, path, alt, meta)

    def _problem(self, path: Path, expected: dict[str, str]) -> str | None:
        """Why the file at ``path`` cannot serve ``expected`` (``None``: it can)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                shape = f.get_slice(TENSOR).get_shape() if TENSOR in f.keys() else None
        except Exception as exc:  # noqa: BLE001 - any unreadable file is simply not used
            return f"unreadable as safetensors ({type(exc).__name__}: {exc})"
        if shape is None:
            return f"has no {TENSOR!r} tensor"
        wrong = [f"{k}={meta.get(k)!r} (expected {v!r})" for k, v in expected.items() if meta.get(k) != v]
        if meta.get("fingerprint") != expected["fingerprint"]:
            wrong.insert(0, "made for other weights under the same model_id")
        d = int(expected["d_in"])
        if list(shape) != [d, d]:
            wrong.append(f"tensor shape {list(shape)} (expected {[d, d]})")
        try:
            int(meta.get("n_tokens", ""))
        except ValueError:
            wrong.append(f"n_tokens={meta.get('n_tokens')!r}")
        return "; ".join(wrong) or None

    def _from_disk(self, entry: _Entry, device: torch.device) -> tuple[Tensor, int, Path] | None:
        """Load a matching file, or decide (in ``entry.target``) where a fresh one will go."""
        problems = []
        for path in (entry.path, entry.alt):
            if not path.is_file():
                continue
            problem = self._problem(path, entry.meta)
            if problem is None:
                with safe_open(str(path), framework="pt") as f:
                    n_tokens = int(f.metadata()["n_tokens"])
                matrix = load_file(str(path))[TENSOR].to(device=device, dtype=torch.float32)
                return matrix, n_tokens, path
            problems.append((path, problem))
        for path, problem in problems:  # only said when nothing matched: a matching sibling is the plan
            warnings.warn(f"second-moment cache {path} not used (left untouched): {problem}", stacklevel=4)
        if not entry.path.exists():
            entry.target = entry.path
        elif not entry.alt.exists():
            entry.target = entry.alt
        else:
            raise RuntimeError(
                f"cannot cache statistics for {entry.key}: both {entry.path} and {entry.alt} exist and do not "
                f"match this model/tokenizer ({'; '.join(p for _, p in problems)}). Move them away, or use "
                "another cache_dir or model_id."
            )
        return None

    @torch.no_grad()
    def _accumulate(
        self, model, tokenizer, texts, modules, cfg, max_length, model_id, device
    ) -> tuple[dict[str, Tensor], int]:
        """One pass over ``texts``: ``sum k k^T`` per module and the number of real tokens."""
        dtype = _DTYPES[cfg.dtype]
        encoded = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length)
        ids = [list(x) for x in encoded["input_ids"] if len(x) > 0]
        if not ids:
            raise ValueError(f"corpus {cfg.corpus!r} tokenises to no tokens")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        # Modules run in layer order, so the last one in execution order is the deepest.
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        last = max(modules, key=order.__getitem__)

        def stop(_output: Tensor) -> None:
            raise _StopForward

        sums: dict[str, Tensor] = {}
        n_tokens = 0
        total = sum(len(x) for x in ids)
        label = modules[0] if len(modules) == 1 else f"{len(modules)} layers"
        bar = tqdm(total=total, unit="tok", desc=f"E[kk^T] {model_id} {label}", disable=not self.progress,
                   leave=False)
        was_training = model.training
        model.eval()
        try:
            with capture(model, modules, what="input") as keys, patch_output(resolve(model, last), stop):
                for batch in _length_batches([len(x) for x in ids], int(cfg.token_budget)):
                    input_ids, mask = pad_right([ids[i] for i in batch], pad, len(ids[batch[0]]))
                    input_ids, mask = input_ids.to(device), mask.to(device)
                    keys.clear()
                    try:
                        model(input_ids=input_ids, attention_mask=mask, use_cache=False)
                    except _StopForward:
                        pass
                    real = mask.bool()
                    for name in modules:
                        if name not in keys:
                            raise RuntimeError(f"module {name} did not run during the forward pass")
                        k = keys[name][real].to(dtype)  # [n_real, d_in]: padding rows dropped
                        if name not in sums:
                            sums[name] = torch.zeros(k.shape[-1], k.shape[-1], dtype=dtype, device=k.device)
                        sums[name].addmm_(k.T, k)
                    count = int(real.sum())
                    n_tokens += count
                    bar.update(count)
        finally:
            bar.close()
            model.train(was_training)
        return sums, n_tokens

    def _save(self, entry: _Entry, matrix: Tensor, n_tokens: int, cfg: StatsConfig, model_id: str,
              seconds: float) -> Path | None:
        """Write ``matrix`` atomically to ``entry.target``; keep a file another process wrote first."""
        target = entry.target or entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            **entry.meta,
            "model_id": str(model_id),
            "layer": str(entry.layer),
            "corpus": cfg.corpus if isinstance(cfg.corpus, str) else " + ".join(cfg.corpus),
            "n_tokens": str(int(n_tokens)),
            "token_budget": str(int(cfg.token_budget)),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "compute_seconds": f"{seconds:.3f}",
            "statistic": "E[k k^T] over non-padding tokens; k = input of the module",
            "config": json.dumps(asdict(cfg)),
        }
        with atomic_file(target, keep_existing=True) as tmp:  # written by someone else since we looked: theirs stays
            save_file({TENSOR: matrix.detach().contiguous().cpu()}, str(tmp), metadata=meta)
        return target

    def _record(self, moment: SecondMoment, matrix: Tensor, source: str, start: float,
                timing: dict[str, float]) -> SecondMoment:
        out = replace(moment, matrix=matrix, source=source, seconds=time.perf_counter() - start, timing=timing)
        self.timings.append({"key": out.key, "layer": out.layer, "source": source, "seconds": out.seconds,
                             "n_tokens": out.n_tokens, **{f"seconds_{k}": v for k, v in timing.items()}})
        return out
