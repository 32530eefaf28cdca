"""Forward passes that compute logits only where they are needed.

A full causal-LM forward materialises ``[batch, seq, vocab]`` logits; with SmolLM2's 49k
vocabulary that is most of the cost (and memory) of scoring short probes, whose answers
are two or three tokens. Scoring and the fine-tuning editors therefore run the decoder
body once and apply the output head to the few positions that matter.
"""

from __future__ import annotations

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
