"""Shared pieces of locate-then-edit editors (ROME, MEMIT, PMET, AlphaEdit).

- :mod:`.corpus`: which texts key statistics are estimated over, and their content hash.
- :mod:`.stats`: ``C = E[k k^T]`` of MLP keys per layer, cached in memory and on disk.
"""

from lit_edit.editors.locate.corpus import corpus_id, text_samples
from lit_edit.editors.locate.stats import SecondMoment, SecondMomentStats, StatsConfig, tokenizer_fingerprint

__all__ = ["SecondMoment", "SecondMomentStats", "StatsConfig", "corpus_id", "text_samples", "tokenizer_fingerprint"]
