"""Forward passes that compute logits only where they are needed.

A full causal-LM forward materialises ``[batch, seq, vocab]`` logits; with SmolLM2's 49k
vocabulary that is most of the cost (and memory) of scoring short probes, whose answers
are two or three tokens. Scoring and the fine-tuning editors therefore run the decoder
body once and apply the output head to the few positions that matter.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn


def decoder_body(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (``model.model``, ``transformer``, ``gpt_neox``...)."""
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        raise TypeError(
            f"{type(model).__name__} exposes no decoder body via `base_model`; "
            "lit-edit expects a transformers *ForCausalLM model"
        )
    return body


def forward_with_cache(body: nn.Module, cache: Any, **inputs: Any) -> Any:
    """``body(**inputs)`` continuing from the KV ``cache`` (None: no cache, and none kept).

    transformers 5.24 renamed the decoders' ``past_key_values`` argument to ``cache`` (the old
    name warns and goes in 5.40); earlier versions only know ``past_key_values``. The name is
    read from the forward's signature, so both work.
    """
    return body(**inputs, **{_cache_argument(type(body)): cache}, use_cache=cache is not None)


@functools.lru_cache(maxsize=None)
def _cache_argument(body_class: type) -> str:
    """``"cache"`` or ``"past_key_values"``, read once per class (the forward runs once per optimisation step)."""
    return "cache" if "cache" in inspect.signature(body_class.forward).parameters else "past_key_values"


def prefix_cache(body: nn.Module, input_ids: Tensor) -> Any:
    """The KV cache of ``input_ids`` (no padding), for :func:`forward_with_cache` to continue from."""
    out = body(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=True)
    cache = getattr(out, "cache", None)  # transformers >= 5.24 (see forward_with_cache)
    return cache if cache is not None else out.past_key_values


def attention_window(model: nn.Module) -> int | None:
    """The shortest sliding attention window of the model's layers; None where every layer sees all.

    Gemma 2/3 and Mistral-style models attend over the last ``sliding_window`` positions of the
    *sequence as stored*, padding included. A batch that pads inside its rows (the prefix caches
    of the value search) is only exact while each row fits in the window.
    """
    config = getattr(model, "config", model)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


def head_logits(model: nn.Module, hidden: Tensor) -> Tensor:
    """Apply the LM head (and Gemma-style logit soft-capping) to final hidden states."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def logits_at(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Logits ``[P, vocab]`` at positions ``(rows[i], cols[i])`` of a right-padded batch.

    Right padding keeps every real token at its natural position id, so no position ids
    need to be passed for any architecture.
    """
    hidden = decoder_body(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return head_logits(model, hidden[rows, cols])
