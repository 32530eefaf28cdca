"""Tiny random language models of several architectures, for fast tests.

Every editor is exercised on more than one module layout (Llama, GPT-2 with Conv1D, GPT-J,
GPT-NeoX, and Gemma 3 with its scaled embeddings, post-sublayer norms and sliding-window layers),
so tests build models here instead of downloading anything. The tokenizer is a small byte-level
BPE trained offline (about 0.1 s) and shared by all architectures; pass it around (or a
``cache_dir``) to avoid retraining - nothing is cached at module level.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lit_edit.models.cache import atomic_directory

TINY_ARCHS = ("llama", "gpt2", "gptj", "gpt_neox", "gemma3")
EOS, PAD = "<|endoftext|>", "<|pad|>"
VOCAB_SIZE = 1000
HIDDEN, LAYERS, HEADS, MAX_POS = 64, 4, 4, 256

# A fixed corpus so the tokenizer exists even without the shared data folder; it mimics the
# factual prompts that editing benchmarks use.
_BUILTIN_CORPUS = """\
The capital of France is Paris. The capital of Italy is Rome. The capital of Germany is Berlin.
The Eiffel Tower is located in Paris. The Colosseum is located in Rome.
Danielle Darrieux's mother tongue is French. Edwin of Northumbria's religion is Christianity.
Toko Yasuda plays the guitar. Autonomous University of Madrid is located in Spain.
What is the native language of Barack Obama? English. Who is the author of Hamlet? William Shakespeare.
Which company developed the iPhone? Apple. The official language of Japan is Japanese.
The Space Needle is in Seattle. Lionel Messi plays football for Argentina.
Microsoft was founded by Bill Gates. The mother tongue of Thomas Joannes Stieltjes is Dutch.
In 1905 Albert Einstein published four papers. The river Nile flows through Egypt and Sudan.
She was born in London, England, and studied physics at the University of Cambridge.
0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 , . ; : ! ? ' " ( ) - the a an of in on at to is was
"""


def _data_root() -> Path:
    """``$LIT_EDIT_DATA`` or ``../shared/data`` next to the project root."""
    return Path(os.environ.get("LIT_EDIT_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


def tiny_corpus(max_wiki_lines: int = 400) -> list[str]:
    """Built-in sentences plus the first WikiText-2 lines when the data folder exists.

    Without WikiText the corpus supports fewer BPE merges (vocabulary ~650 instead of 1000);
    models always take ``len(tokenizer)`` as their vocabulary size, so nothing else changes.
    """
    lines = _BUILTIN_CORPUS.splitlines() * 20  # repeat so the factual words win merges
    wiki = _data_root() / "wikitext-2" / "valid.txt"
    if wiki.is_file():
        with wiki.open(encoding="utf-8") as f:
            wiki_lines = [line.strip() for line in f if line.strip() and not line.strip().startswith("=")]
        lines += wiki_lines[:max_wiki_lines]
    return lines


def train_tiny_tokenizer(corpus: list[str] | None = None, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (deterministic for a given corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else tiny_corpus(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def tiny_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The tiny tokenizer, trained once per corpus and kept in ``cache_dir`` when one is given."""
    if cache_dir is None:
        return train_tiny_tokenizer()
    corpus = tiny_corpus()
    key = hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"tiny-tokenizer-{VOCAB_SIZE}-{key}"
    if not (path / "tokenizer.json").is_file():
        with atomic_directory(path) as tmp:
            train_tiny_tokenizer(corpus).save_pretrained(tmp)
    return PreTrainedTokenizerFast.from_pretrained(path)


def tiny_config(arch: str, vocab_size: int, eos_id: int, pad_id: int) -> PretrainedConfig:
    """A small config (4 layers, hidden 64, 4 heads) of ``arch``."""
    ids = dict(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, vocab_size=vocab_size)
    if arch == "llama":
        return LlamaConfig(
            hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=2, max_position_embeddings=MAX_POS, tie_word_embeddings=True, **ids,
        )
    if arch == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POS, **ids)
    if arch == "gptj":
        return GPTJConfig(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=MAX_POS, rotary_dim=8, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            max_position_embeddings=MAX_POS, **ids,
        )
    if arch == "gemma3":
        # every other layer a sliding-window one (window 8, shorter than most test prompts), so the
        # local-attention masks are exercised; Gemma 3 270M alternates 5 local to 1 global
        return Gemma3TextConfig(
            hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            num_key_value_heads=2, head_dim=HIDDEN // HEADS, max_position_embeddings=MAX_POS, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * (LAYERS // 2), **ids,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {TINY_ARCHS}")


_MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "gpt2": GPT2LMHeadModel,
    "gptj": GPTJForCausalLM,
    "gpt_neox": GPTNeoXForCausalLM,
    "gemma3": Gemma3ForCausalLM,
}


def tiny_model(
    arch: str, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random float32 model of ``arch``, identical for the same seed and tokenizer.

    Like ``load_model`` it is in eval mode with every parameter frozen, so editors behave the
    same on tiny and real models (they switch on what they train).
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = tiny_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[arch](config)
        # transformers initialises every bias to zero, and a trained model's are not: at zero an
        # editor that forgot a bias (ROME's W k + b, MEMIT's current output) would pass every test.
        # Drawn like the weights (N(0, initializer_range)); on these models a down projection's bias
        # is then about as large as its output at a token (norm ~0.16 against 0.07-0.2).
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.rsplit(".", 1)[-1] == "bias":
                    param.normal_(0.0, config.initializer_range)
    if arch == "gemma3":
        # Gemma's post-MLP RMSNorm fixes the size of what an MLP adds to the residual at its gain,
        # which initialises to 1; trained, Gemma 3 270M's gains average 8-31 over layers 3-9. At 1 a
        # rewritten MLP output moves this random model's next-token distribution too little for an
        # edit test to see (ROME's target stays below the argmax at any number of steps); at 10 it can.
        with torch.no_grad():
            for block in model.model.layers:
                block.post_feedforward_layernorm.weight.fill_(9.0)  # gain 1 + w
    return model.float().eval().requires_grad_(False), tokenizer
