"""Precompute (or time) the second-moment statistics locate-then-edit editors need.

    python -m lit_edit.editors.locate --model smollm2_135m --layers 3 4 5 6 7
    python -m lit_edit.editors.locate --model smollm2_135m --layers 7 --n-samples 1000

Computes ``C = E[k k^T]`` of ``mlp_out``'s input at every given layer in one pass over the
corpus (the defaults are those of ``configs/editor/rome.yaml``: all of WikiText-2), writes
the disk cache the editors read, then loads every layer back from disk and prints both
times. Files already in the cache are loaded, never recomputed or overwritten.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Sequence

import torch

from lit_edit.editors.locate.stats import SecondMomentStats, StatsConfig
from lit_edit.models.layouts import layout_for
from lit_edit.models.loading import load_model, spec_from_name


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIT_EDIT_CACHE", "~/.cache/lit_edit")).expanduser() / "stats"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lit_edit.editors.locate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2_135m", help="smollm2_135m | tiny_<arch> | HF id or local dir")
    p.add_argument("--model-id", default=None, help="cache name of the model (default: --model, as the configs use)")
    p.add_argument("--layers", type=int, nargs="+", required=True)
    p.add_argument("--corpus", nargs="+", default=["wikitext"],
                   help="'wikitext', a text file, a datasets directory, 'json:<path>:<field>' or "
                        "'prompts:<dataset>'; several are one corpus, pooled in order")
    p.add_argument("--n-samples", type=int, default=100000, help="documents (ROME/MEMIT: 100000)")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache-dir", type=Path, default=None, help="default: $LIT_EDIT_CACHE/stats or ~/.cache/lit_edit/stats")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(spec_from_name(args.model))
    layout = layout_for(model)
    settings = {"corpus": args.corpus, "n_samples": args.n_samples, "dtype": args.dtype, "data_root": args.data_root}
    if args.max_length:
        settings["max_length"] = args.max_length
    cfg = StatsConfig(**settings)
    cache_dir = args.cache_dir or default_cache_dir()
    model_id = args.model_id or args.model

    stats = SecondMomentStats(cache_dir)
    t = time.perf_counter()
    found = stats.get_many(model, tok, layout, args.layers, cfg, model_id)
    first = time.perf_counter() - t
    reloader = SecondMomentStats(cache_dir, progress=False)  # a fresh process's view: disk only
    t = time.perf_counter()
    reloader.get_many(model, tok, layout, args.layers, cfg, model_id)
    load = time.perf_counter() - t
    n_tokens = next(iter(found.values())).n_tokens
    sources = sorted({m.source for m in found.values()})
    print(f"layers {args.layers}: {n_tokens} tokens; first call {first:.1f} s ({'/'.join(sources)}), "
          f"load from disk {load:.2f} s")
    for layer, moment in found.items():
        print(f"  layer {layer}: {moment.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
