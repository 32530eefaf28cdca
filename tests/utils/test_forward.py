"""utils.forward: which models have a sliding attention window."""

from __future__ import annotations

from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

from lit_edit.utils.forward import attention_window


def test_attention_window_is_the_sliding_layers_window_or_none():
    assert attention_window(LlamaConfig()) is None
    assert attention_window(MistralConfig(sliding_window=None)) is None
    assert attention_window(MistralConfig(sliding_window=4096)) == 4096
    assert attention_window(Qwen2Config(sliding_window=4096, use_sliding_window=False)) is None
    gemma = dict(num_hidden_layers=2, sliding_window=8)
    assert attention_window(Gemma3TextConfig(layer_types=["sliding_attention", "full_attention"], **gemma)) == 8
    assert attention_window(Gemma3TextConfig(layer_types=["full_attention", "full_attention"], **gemma)) is None


def test_attention_window_reads_the_model_config(tiny):
    assert attention_window(tiny("gemma3")[0]) == 8
    assert attention_window(tiny("llama")[0]) is None
