"""Plots of causal traces: ROME-style heatmaps and per-layer effect curves.

Uses matplotlib's object API on an Agg canvas, so it never touches pyplot's global state
(backend, current figure) of the caller.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lit_edit.trace.causal import TraceResult, TraceSummary

#: ROME's colour maps per kind.
CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
LABELS = {"hidden": "single restored layer", "mlp": "restored MLP", "attn": "restored attention"}


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def heatmap_figure(result: TraceResult, kind: str) -> Figure:
    """Tokens (rows, subject tokens marked ``*``) x layers, colour = p(answer) with the state restored."""
    scores = result.scores[kind].float()
    n_tokens, n_layers = scores.shape
    fig = Figure(figsize=(max(3.5, 0.18 * n_layers + 2), max(2.0, 0.28 * n_tokens + 1)))
    ax = fig.add_subplot(1, 1, 1)
    finite = scores[torch.isfinite(scores)]
    vmax = float(finite.max()) if finite.numel() else 1.0
    image = ax.pcolor(scores.numpy(), cmap=CMAPS.get(kind, "Greys"), vmin=result.corrupted_prob,
                      vmax=max(vmax, result.corrupted_prob + 1e-12))
    ax.invert_yaxis()
    start, end = result.subject_span
    labels = [repr(t)[1:-1] + ("*" if start <= i < end else "") for i, t in enumerate(result.tokens)]
    ax.set_yticks([0.5 + i for i in range(n_tokens)])
    ax.set_yticklabels(labels)
    step = max(1, n_layers // 10)
    ax.set_xticks([0.5 + i for i in range(0, n_layers, step)])
    ax.set_xticklabels(list(range(0, n_layers, step)))
    window = "" if kind == "hidden" else f" (window {result.window})"
    ax.set_title(f"Impact of restoring {'hidden state' if kind == 'hidden' else kind} after corrupted input", fontsize=9)
    ax.set_xlabel(f"{LABELS.get(kind, kind)} at layer{window}")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"p({result.answer.strip()!r})")
    return fig


def save_heatmaps(result: TraceResult, directory: str | Path, prefix: str = "trace") -> list[Path]:
    """One PNG per kind: ``<prefix>_<kind>.png`` in ``directory``."""
    return [_save(heatmap_figure(result, kind), Path(directory) / f"{prefix}_{kind}.png") for kind in result.scores]


def layer_effect_figure(summary: TraceSummary, title: str | None = None) -> Figure:
    """Average indirect effect at the last subject token per layer, one line per kind."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    for kind in summary.kinds:
        effect = summary.mean_effect[kind].float()
        color = {"hidden": "tab:purple", "mlp": "tab:green", "attn": "tab:red"}.get(kind)
        ax.plot(range(len(effect)), effect.numpy(), marker="o", markersize=3, label=kind, color=color)
    ax.axhline(0.0, color="grey", linewidth=0.5)
    ax.set_xlabel("layer (mlp/attn: centre of the restored window)")
    ax.set_ylabel("average indirect effect")
    ax.set_title(title or f"Last subject token, n = {summary.n}")
    ax.legend()
    return fig


def save_layer_effects(summary: TraceSummary, path: str | Path, title: str | None = None) -> Path:
    return _save(layer_effect_figure(summary, title), path)
