"""On-disk cache of optimised value targets (``z*``/``v*``), keyed by everything they depend on.

The ``z*`` optimisation is most of the cost of a batch edit (SmolLM2, 100 ZsRE facts: ~25 min
of one CPU core against seconds for keys and the least-squares write). It depends only on the
model's weights, the tokenizer, the requests (prompt, subject, target), the context
templates, the layer/module and the optimisation settings - not on ``lambda``, the edited
layer range below the last one, nor the update rule. So MEMIT at another ``lambda``, or
AlphaEdit on the same batch with the same ``z*`` settings, reuses the targets instead of
optimising them again.

Entries are per chunk of requests (``v_chunk_size``; the whole batch when it is one chunk),
written as each chunk finishes, so a batch edit that stops after hours keeps what it optimised and
the same command resumes at the first chunk it had not finished
(:func:`~lit_edit.editors.locate.values.joint_value_targets`, ``store``).

Key: a SHA-256 over a JSON description of those inputs, with the weights hashed in full
(``model_fingerprint(samples=None)``, every element of every parameter: a sampled fingerprint could miss a sparse edit, and a wrong
hit would silently write the wrong targets). One ``<key>.safetensors`` file per entry holds
``values``, ``original`` and ``delta`` plus the per-request diagnostics in its metadata.
Files are written to a temporary name and moved into place; an existing entry is never
overwritten (the same key always means the same targets). ``history`` is not stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.locate.values import ValueHParams, ValueTargets
from lit_edit.editors.locate.stats import tokenizer_fingerprint
from lit_edit.models.cache import atomic_file
from lit_edit.models.loading import model_fingerprint

FORMAT = "lit_edit.value_targets/1"
_TENSORS = ("values", "original", "delta")
_LISTS = ("steps", "nll", "loss", "delta_ratio")


class ValueCache:
    """Value targets on disk under ``directory`` (created when first written)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0

    def key(self, model: nn.Module, tokenizer, *, layer: int, modules: Sequence[str],
            requests: Sequence[EditRequest], templates: Sequence[str], hp: ValueHParams, max_length: int,
            weights: str | None = None) -> str:
        """The entry's name: a hash of every input the targets depend on. ``weights``: the model's
        full fingerprint when the caller already has it (``model_fingerprint(model, samples=None)``)."""
        blob = json.dumps({
            "format": FORMAT,
            "weights": weights or model_fingerprint(model, samples=None),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "layer": int(layer),
            "modules": list(modules),
            "requests": [[r.prompt, r.subject, r.target_new] for r in requests],
            "templates": list(templates),
            "hp": dataclasses.asdict(hp),
            "max_length": int(max_length),
            # bf16 targets from before the float32 first step and the bfloat16 weight copies
            # (ValueHParams.autocast) must not be found again; float32 keys are unchanged
            **({"autocast_scheme": 2} if hp.autocast else {}),
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, device: torch.device | str = "cpu") -> ValueTargets | None:
        """The cached targets, or ``None``; a file that is not such an entry raises (it is never replaced)."""
        path = self.path(key)
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise RuntimeError(f"{path} is not a value-target cache entry (format {meta.get('format')!r}); "
                                   f"move it away or use another v_cache_dir")
            tensors = {name: f.get_tensor(name).to(device) for name in _TENSORS}
        lists = json.loads(meta["lists"])
        return ValueTargets(**tensors, **{name: lists[name] for name in _LISTS})

    def save(self, key: str, targets: ValueTargets) -> Path:
        """Write the entry unless it exists (atomically: temporary file, then ``os.replace``)."""
        path = self.path(key)
        if path.exists():
            return path
        tensors = {name: getattr(targets, name).detach().float().cpu().contiguous() for name in _TENSORS}
        meta = {"format": FORMAT, "lists": json.dumps({name: getattr(targets, name) for name in _LISTS})}
        with atomic_file(path, keep_existing=True) as tmp:  # another process's entry, written meanwhile, stays
            save_file(tensors, str(tmp), metadata=meta)
        return path

    def get_or_compute(self, key: str, compute: Callable[[], ValueTargets],
                       device: torch.device | str = "cpu") -> ValueTargets:
        found = self.load(key, device)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        targets = compute()
        self.save(key, targets)
        return targets
