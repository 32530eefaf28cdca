"""Causal tracing (ROME): where in the network a fact is recalled; ``python -m lit_edit.trace``."""

from lit_edit.trace.causal import (
    KINDS,
    TraceResult,
    TraceSummary,
    embedding_noise_level,
    subject_token_span,
    trace,
    trace_many,
    window_layers,
)

__all__ = [
    "KINDS",
    "TraceResult",
    "TraceSummary",
    "embedding_noise_level",
    "subject_token_span",
    "trace",
    "trace_many",
    "window_layers",
]
