"""Fixtures shared by the locate-then-edit editor tests (test_rome.py, test_memit.py).

Helpers are fixtures returning functions (test folders are not packages, so a test file
cannot import them). ``one_thread`` is not autouse: the two test files opt in with
``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lit_edit.data.schema import EditRequest
from lit_edit.models.layouts import layout_for, resolve
from lit_edit.models.tiny import tiny_corpus
from lit_edit.utils.hooks import capture

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def one_thread():
    """The machine is shared: one intra-op thread is faster for tiny models and polite."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_text_second_moment(model, layer: int, n_seq: int = 8, seq_len: int = 64) -> torch.Tensor:
    """C = E[k k^T] of mlp_out's input over random token sequences (what the stats cache will provide)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (n_seq, seq_len), generator=gen)
    name = layout_for(model).name("mlp_out", layer)
    with torch.no_grad(), capture(model, [name], what="input") as seen:
        model(input_ids=ids)
    keys = seen[name].reshape(-1, seen[name].shape[-1]).double()
    return (keys.T @ keys / keys.shape[0]).float()


@pytest.fixture
def random_text_second_moment():
    """``random_text_second_moment(model, layer) -> C`` ``[d_in, d_in]`` (float32)."""
    return _random_text_second_moment


@pytest.fixture
def fake_stats(monkeypatch):
    """Replaces ``lit_edit.editors.locate.stats`` by a fake whose ``C`` is ``3 I``.

    Returns ``(calls, settings)``: the calls the fake received, as ``("init", cache_dir)``,
    ``("get", layer, cfg, model_id)`` and ``("get_many", layers, cfg, model_id)`` tuples
    (``cfg`` the ``StatsConfig`` keywords), and an editor's ``stats`` settings for it.
    """
    calls = []

    def second_moment(model, layout, layer):
        d = resolve(model, "mlp_out", layer, layout).weight.shape[1]
        return types.SimpleNamespace(matrix=torch.eye(d) * 3.0, n_tokens=1000, key="k")

    class StatsConfig:
        def __init__(self, **kw):
            self.kw = kw

    class SecondMomentStats:
        def __init__(self, cache_dir):
            calls.append(("init", cache_dir))

        def get(self, model, tokenizer, layout, layer, cfg, model_id):
            calls.append(("get", layer, cfg.kw, model_id))
            return second_moment(model, layout, layer)

        def get_many(self, model, tokenizer, layout, layers, cfg, model_id):
            calls.append(("get_many", list(layers), cfg.kw, model_id))
            return {layer: second_moment(model, layout, layer) for layer in layers}

    fake = types.ModuleType("lit_edit.editors.locate.stats")
    fake.StatsConfig, fake.SecondMomentStats = StatsConfig, SecondMomentStats
    monkeypatch.setitem(sys.modules, "lit_edit.editors.locate.stats", fake)
    settings = dict(cache_dir="/tmp/stats", model_id="tiny_llama", corpus="wikitext", n_samples=10,
                    max_length=None, dtype="float32")
    return calls, settings


@pytest.fixture
def real_stats(tmp_path):
    """``stats`` settings for the real statistics module over a small text file (cache under tmp_path/stats)."""
    pytest.importorskip("lit_edit.editors.locate.stats")
    corpus = tmp_path / "corpus.txt"
    # varied text: C = E[k k^T] is positive definite only if the keys span the key space, and 64
    # copies of one sentence (differing in a number) do not, whatever the token count
    builtin = " ".join(dict.fromkeys(tiny_corpus(max_wiki_lines=0)))
    sentences = [s.strip() for s in builtin.split(". ") if s.strip()]
    corpus.write_text("\n".join(f"Paragraph {i}: " + ". ".join(sentences[(i * 7 + j) % len(sentences)] for j in range(4))
                                + f". It happened {i} times." for i in range(64)))
    return dict(cache_dir=str(tmp_path / "stats"), model_id="tiny_gpt2", corpus=str(corpus), n_samples=64,
                max_length=32, dtype="float64")


@pytest.fixture
def editor_from_config():
    """``editor_from_config(name, layers, layers_key=name)``: configs/editor/<name>.yaml instantiated
    as Hydra does, with ``model.layers.<layers_key>`` set to ``layers`` (PMET and AlphaEdit read
    MEMIT's layers, ``${model.layers.memit}``)."""

    def build(name: str, layers, layers_key: str | None = None):
        from hydra.utils import instantiate

        from lit_edit.cli.common import split_prune

        cfg = OmegaConf.create({
            "editor": OmegaConf.load(CONFIGS / "editor" / f"{name}.yaml"),
            "model": {"layers": {layers_key or name: layers}, "spec": {"name": "tiny_llama"}},
            "paths": {"cache_dir": "/tmp/cache", "data_dir": "/tmp/data"},
        })
        editor_cfg, _ = split_prune(cfg)  # as edit.py does: PRUNE is the loop's business
        return instantiate(editor_cfg, _convert_="all")

    return build


@pytest.fixture
def check_failed_batch_is_undone(tiny, requests_):
    """``check(editor)``: a batch whose second request has no subject fails and leaves the model unchanged."""

    def check(editor) -> None:
        model, tok = tiny("llama")
        before = {k: v.clone() for k, v in model.state_dict().items()}
        no_subject = EditRequest(prompt="The capital of France is", target_new="Rome")
        with pytest.raises(ValueError, match="subject"):
            editor.edit(model, tok, [requests_[0], no_subject])
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    return check


@pytest.fixture
def facts_ending_with_subject() -> list[EditRequest]:
    """Prompts that end with the subject, one-token targets: the first target token is predicted at
    the subject's last token, where locate-then-edit editors write (test_memit.py, test_pmet.py)."""
    facts = [("The mother tongue of Danielle Darrieux", "Danielle Darrieux", "Rome"),
             ("The religion of Edwin of Northumbria", "Edwin of Northumbria", "Paris"),
             ("The instrument of Toko Yasuda", "Toko Yasuda", "Japan"),
             ("The country of Autonomous University of Madrid", "Autonomous University of Madrid", "guitar")]
    return [EditRequest(prompt=p, target_new=t, subject=s) for p, s, t in facts]


@pytest.fixture
def argmax_next():
    """``argmax_next(model, tok, prompt) -> int``: the greedy next token."""

    def run(model, tok, prompt: str) -> int:
        with torch.no_grad():
            return int(model(**tok(prompt, return_tensors="pt")).logits[0, -1].argmax())

    return run
