"""Shared pieces of locate-then-edit editors (ROME, MEMIT, PMET, AlphaEdit).

- :mod:`.prompts`: context templates, the prompt in each, and the subject's last token.
- :mod:`.keys`: ``k*``, the down projection's input there, averaged over the templates.
- :mod:`.values`: ``v*`` / ``z*``, the output that makes the model say the target (optimised).
- :mod:`.value_cache`: optimised values kept on disk, keyed by everything they depend on.
- :mod:`.corpus`: which texts key statistics are estimated over, and their content hash.
- :mod:`.stats`: ``C = E[k k^T]`` of MLP keys per layer, cached in memory and on disk.
- :mod:`.base`: the editor base class that ROME, MEMIT, PMET and AlphaEdit share.
- :mod:`.ceiling`: the value-ceiling diagnostic (``edit.py mode=value_ceiling``).
"""

from lit_edit.editors.locate.corpus import corpus_id, text_samples
from lit_edit.editors.locate.stats import SecondMoment, SecondMomentStats, StatsConfig, tokenizer_fingerprint

__all__ = ["SecondMoment", "SecondMomentStats", "StatsConfig", "corpus_id", "text_samples", "tokenizer_fingerprint"]
