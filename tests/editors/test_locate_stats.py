"""Second-moment statistics of MLP keys: exact against brute force, cached safely on disk."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch

from lit_edit.data.paths import data_root
from lit_edit.editors.locate.corpus import all_documents, corpus_id, is_heading, text_samples
from lit_edit.editors.locate.stats import SecondMomentStats, StatsConfig, _length_batches
from lit_edit.models.layouts import canonical_shape, layout_for, resolve
from lit_edit.models.tiny import TINY_ARCHS, tiny_model
from lit_edit.utils.hooks import capture

CORPUS = """\
 = Valid Heading = 

The capital of France is Paris. It is on the Seine.
Paris has many museums.

 = = Section = = 

Danielle Darrieux's mother tongue is French, and she acted in more than one hundred films over a long career.

Toko Yasuda plays the guitar.

The Eiffel Tower is located in Paris. The Colosseum is located in Rome. The river Nile flows through Egypt and Sudan, \
and in 1905 Albert Einstein published four papers that changed physics, while Microsoft was founded much later.

Rome.

Which company developed the iPhone? Apple. The official language of Japan is Japanese.

She was born in London, England, and studied physics at the University of Cambridge.
"""


def _wikitext_root():
    try:
        root = data_root()
    except FileNotFoundError:
        return None
    return root if (root / "wikitext-2" / "valid.txt").is_file() else None


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def _cfg(corpus, **kw):
    base = dict(corpus=corpus if isinstance(corpus, list) else str(corpus), n_samples=7, max_length=24,
                token_budget=64, dtype="float64")
    return StatsConfig(**{**base, **kw})


def _brute_force(model, tok, name, texts, max_length):
    """sum k k^T / n over every token, one unpadded document at a time."""
    total, n = None, 0
    for text in texts:
        ids = tok(text, truncation=True, max_length=max_length, return_tensors="pt")["input_ids"]
        with capture(model, name, what="input") as keys, torch.no_grad():
            model(input_ids=ids, use_cache=False)
        k = keys[name][0].double()
        total = k.T @ k if total is None else total + k.T @ k
        n += k.shape[0]
    return (total / n).float(), n


# --- corpus ---------------------------------------------------------------------------------------


def test_corpus_paragraphs_headings_and_ids(tmp_path, corpus):
    docs = all_documents(str(corpus))
    assert docs[0] == "The capital of France is Paris. It is on the Seine.\nParis has many museums."
    assert not any(is_heading(line) for d in docs for line in d.splitlines())
    assert len(docs) == 7 and text_samples(str(corpus), 3) == docs[:3]
    assert is_heading(" = = Section = = ") and not is_heading("a = b")
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n = Head = \ntwo\n\n", encoding="utf-8")
    assert text_samples(str(lines), 2) == ["one", "two"]  # a trailing blank line alone is not "paragraphs"
    stray = tmp_path / "stray.txt"  # one text per line, and one blank line among 60: still lines
    stray.write_text("\n".join(f"text {i}" for i in range(30)) + "\n\n" + "\n".join(f"more {i}" for i in range(30)))
    assert all_documents(str(stray))[:2] == ["text 0", "text 1"] and len(all_documents(str(stray))) == 60
    assert len(all_documents(str(stray), unit="paragraph")) == 2
    assert all_documents(str(corpus), unit="line")[:2] == ["The capital of France is Paris. It is on the Seine.",
                                                           "Paris has many museums."]
    with pytest.warns(UserWarning, match="only 7 documents"):
        assert len(text_samples(str(corpus), 50)) == 7
    before = corpus_id(str(corpus), 4)
    assert before == corpus_id(str(corpus), 4) and before != corpus_id(str(corpus), 5)
    corpus.write_text(CORPUS.replace("Paris", "Lyon"), encoding="utf-8")
    assert corpus_id(str(corpus), 4) != before
    with pytest.raises(FileNotFoundError, match="not found"):
        text_samples(str(tmp_path / "missing.txt"), 3)


def test_corpus_from_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["", " = Head = ", " first doc ", "second doc"]}).save_to_disk(
        str(tmp_path / "ds"))
    assert text_samples(str(tmp_path / "ds"), 2) == ["first doc", "second doc"]


def test_corpus_from_benchmark_prompts(shared_data):
    import json

    raw = json.loads((shared_data / "zsre" / "zsre_mend_train-1k.json").read_text(encoding="utf-8"))
    usable = [r for i, r in enumerate(raw) if i not in (534, 723)]  # the registry's known-invalid records
    loc = all_documents("prompts:zsre_train:locality", str(shared_data))
    assert loc == [r["loc"].strip() for r in usable] and loc[0].startswith("nq question:")
    # fields in the order given, record by record; no fields = all four
    two = all_documents("prompts:zsre_train/train:rephrase,prompt", str(shared_data))
    assert two[:4] == [usable[0]["rephrase"], usable[0]["src"], usable[1]["rephrase"], usable[1]["src"]]
    assert len(all_documents("prompts:zsre_train", str(shared_data))) == 3 * len(usable)  # no portability
    assert corpus_id("prompts:zsre_train:locality", 10, str(shared_data)) != corpus_id(
        "prompts:zsre_train:prompt", 10, str(shared_data))
    with pytest.raises(ValueError, match="unknown field.*answer"):
        all_documents("prompts:zsre_train:answer", str(shared_data))
    with pytest.raises(ValueError, match="unknown dataset 'nosuch'"):
        all_documents("prompts:nosuch", str(shared_data))
    with pytest.raises(ValueError, match="no split 'test'"):
        all_documents("prompts:zsre_train/test", str(shared_data))


def test_corpus_from_a_json_field_and_pooled_sources(tmp_path, corpus):
    import json

    records = [{"passage": " Paris is in France. ", "title": "Paris"}, {"passage": "Rome is in Italy."},
               {"passage": " Paris is in France. "}, {"passage": "  "}]
    (tmp_path / "a.json").write_text(json.dumps(records), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    for name in ("a.json", "b.jsonl"):  # each distinct text once, in first-seen order, blanks dropped
        assert all_documents(f"json:{tmp_path / name}:passage") == ["Paris is in France.", "Rome is in Italy."]
    with pytest.raises(ValueError, match="3 of 4 records .* no string field .title. \\(first: record 1\\)"):
        all_documents(f"json:{tmp_path / 'a.json'}:title")
    with pytest.raises(ValueError, match="expected 'json:<path>:<field>'"):
        all_documents(f"json:{tmp_path / 'a.json'}")
    with pytest.raises(FileNotFoundError, match="not found"):
        all_documents(f"json:{tmp_path / 'missing.json'}:passage")
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json:passage': .*bad.json: invalid JSON at line 1"):
        all_documents(f"json:{tmp_path / 'bad.json'}:passage")
    # a list of sources is one corpus, documents in the order given; its id differs from either part's
    pooled = [str(corpus), f"json:{tmp_path / 'a.json'}:passage"]
    assert all_documents(pooled) == all_documents(str(corpus)) + ["Paris is in France.", "Rome is in Italy."]
    assert text_samples(pooled, 8)[-1] == "Paris is in France."
    assert corpus_id(pooled, 9) not in (corpus_id(str(corpus), 9), corpus_id(pooled[::-1], 9))
    assert StatsConfig(corpus=pooled).corpus == tuple(pooled)
    assert StatsConfig(corpus=[str(corpus)]).corpus == str(corpus)  # one source keeps its old cache key
    with pytest.raises(ValueError, match="non-empty list of sources"):
        StatsConfig(corpus=[])


def test_pooled_statistics_are_the_token_weighted_mean(tiny, corpus, tmp_path):
    import json

    model, tok = tiny("gpt2")
    (tmp_path / "more.jsonl").write_text(json.dumps({"text": "Berlin is the capital of Germany."}) + "\n",
                                         encoding="utf-8")
    extra = f"json:{tmp_path / 'more.jsonl'}:text"
    layout = layout_for(model)
    stats = SecondMomentStats(tmp_path / "cache", progress=False)
    both = _cfg([str(corpus), extra], n_samples=8)
    pooled = stats.get(model, tok, layout, 1, both, "m")
    parts = [stats.get(model, tok, layout, 1, _cfg(source, n_samples=n), "m")
             for source, n in ((corpus, 7), (extra, 1))]
    assert pooled.n_tokens == sum(part.n_tokens for part in parts)
    mean = sum(part.matrix.double() * part.n_tokens for part in parts) / pooled.n_tokens
    torch.testing.assert_close(pooled.matrix.double(), mean, rtol=1e-6, atol=1e-8)
    assert stats.get(model, tok, layout, 1, both, "m").source != "computed"


def test_wikitext_samples_skip_headings():
    root = _wikitext_root()
    if root is None:
        pytest.skip("shared WikiText-2 not available")
    docs = text_samples("wikitext", 6, data_root=str(root))
    assert len(docs) == 6 and all(d and d == d.strip() and not is_heading(d) for d in docs)


def test_length_batches_respect_budget():
    lengths = [3, 9, 1, 9, 5, 2]
    batches = list(_length_batches(lengths, 18))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert all(len(b) == 1 or len(b) * lengths[b[0]] <= 18 for b in batches)
    assert batches[0] == [1, 3]  # longest first, ties in corpus order


# --- statistics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_matches_brute_force(tiny, corpus, tmp_path, arch):
    model, tok = tiny(arch)
    layout, cfg = layout_for(model), _cfg(corpus)
    name = layout.name("mlp_out", 2)
    stats = SecondMomentStats(tmp_path / "cache", progress=False)
    got = stats.get(model, tok, layout, 2, cfg, f"tiny_{arch}")
    expected, n = _brute_force(model, tok, name, text_samples(str(corpus), 7), 24)
    d_in = canonical_shape(resolve(model, name))[1]
    if arch == "gpt2":  # Conv1D: the key is the 4*hidden intermediate activation
        assert d_in == 4 * model.config.n_embd
    assert got.matrix.shape == (d_in, d_in) and got.matrix.dtype == torch.float32
    assert got.n_tokens == n and got.source == "computed" and got.module == name
    torch.testing.assert_close(got.matrix, expected, rtol=1e-5, atol=1e-6)


def test_padding_is_excluded(tiny, corpus, tmp_path):
    model, tok = tiny("llama")
    layout = layout_for(model)
    batched = SecondMomentStats(tmp_path / "a", progress=False).get(
        model, tok, layout, 1, _cfg(corpus, token_budget=4096), "m")
    single = SecondMomentStats(tmp_path / "b", progress=False).get(
        model, tok, layout, 1, _cfg(corpus, token_budget=1), "m")  # one document per forward
    assert batched.n_tokens == single.n_tokens
    torch.testing.assert_close(batched.matrix, single.matrix, rtol=1e-6, atol=1e-7)


def test_cache_hit_skips_the_model(tiny, corpus, tmp_path, monkeypatch):
    model, tok = tiny("gpt2")
    layout, cfg = layout_for(model), _cfg(corpus, n_samples=7, max_length=64)
    first = SecondMomentStats(tmp_path, progress=False).get(model, tok, layout, 3, cfg, "org/tiny")
    expected_path = tmp_path / "org--tiny" / "transformer.h.3.mlp.c_proj" / (
        f"{corpus_id(str(corpus), 7)}-n7-len64-float64.safetensors")
    assert first.path == expected_path and expected_path.is_file()

    def boom(*a, **k):
        raise AssertionError("the model ran although the statistics were cached")

    monkeypatch.setattr(model, "forward", boom)
    stats = SecondMomentStats(tmp_path, progress=False)
    loaded = stats.get(model, tok, layout, 3, cfg, "org/tiny")
    assert loaded.source == "disk" and loaded.n_tokens == first.n_tokens and loaded.key == first.key
    assert torch.equal(loaded.matrix, first.matrix)
    assert loaded.timing["load"] < first.timing["compute"]
    again = stats.get(model, tok, layout, 3, cfg, "org/tiny")
    assert again.source == "memory" and again.matrix is loaded.matrix
    assert [t["source"] for t in stats.timings] == ["disk", "memory"]
    stats.clear()
    assert stats.get(model, tok, layout, 3, cfg, "org/tiny").source == "disk"


def test_short_corpus_warns_when_computing_not_when_loading(tiny, corpus, tmp_path):
    model, tok = tiny("gpt2")
    layout, cfg = layout_for(model), _cfg(corpus, n_samples=50, max_length=64)  # the corpus has 7
    with pytest.warns(UserWarning, match="only 7 documents; computing the statistics from all of them, not 50"):
        first = SecondMomentStats(tmp_path, progress=False).get(model, tok, layout, 3, cfg, "org/tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cached result says nothing about a shortfall it already has
        loaded = SecondMomentStats(tmp_path, progress=False).get(model, tok, layout, 3, cfg, "org/tiny")
    assert loaded.source == "disk" and loaded.n_tokens == first.n_tokens


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_other_weights_under_same_name_are_detected(tiny, tiny_tok, corpus, tmp_path):
    model_a, tok = tiny("llama")
    model_b, _ = tiny_model("llama", seed=1, tokenizer=tiny_tok)
    layout, cfg = layout_for(model_a), _cfg(corpus)
    a = SecondMomentStats(tmp_path, progress=False).get(model_a, tok, layout, 0, cfg, "same")
    kept = _digest(a.path)
    with pytest.warns(UserWarning, match="other weights"):
        b = SecondMomentStats(tmp_path, progress=False).get(model_b, tok, layout, 0, cfg, "same")
    assert b.source == "computed" and b.path != a.path and f"-fp{b.fingerprint}" in b.path.name
    assert not torch.allclose(a.matrix, b.matrix) and _digest(a.path) == kept  # user's file untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each model now finds its own file without complaint
        assert SecondMomentStats(tmp_path, progress=False).get(model_b, tok, layout, 0, cfg, "same").path == b.path
        again_a = SecondMomentStats(tmp_path, progress=False).get(model_a, tok, layout, 0, cfg, "same")
    assert again_a.source == "disk" and torch.equal(again_a.matrix, a.matrix)
    # the base model's statistics can be requested explicitly after the weights changed (sequential edits)
    pinned = SecondMomentStats(tmp_path, progress=False).get(model_b, tok, layout, 0, cfg, "same",
                                                             fingerprint=a.fingerprint)
    assert pinned.source == "disk" and torch.equal(pinned.matrix, a.matrix)


def test_mismatched_metadata_is_not_used(tiny, corpus, tmp_path):
    from safetensors.torch import save_file

    model, tok = tiny("llama")
    layout, cfg = layout_for(model), _cfg(corpus)
    stats = SecondMomentStats(tmp_path, progress=False)
    path = stats.path_for("m", layout.name("mlp_out", 1), corpus_id(str(corpus), 7), cfg)
    path.parent.mkdir(parents=True)
    save_file({"second_moment": torch.zeros(128, 128, dtype=torch.float64)}, str(path),
              metadata={"format": "lit_edit.second_moment/1", "n_tokens": "5", "d_in": "128"})
    kept = _digest(path)
    with pytest.warns(UserWarning, match="not used"):
        got = stats.get(model, tok, layout, 1, cfg, "m")
    assert got.source == "computed" and got.path != path and got.matrix.abs().sum() > 0
    assert _digest(path) == kept
    # both candidate files taken by something else: a clear error, nothing overwritten
    got.path.write_bytes(b"not safetensors")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="Move them away"):
        SecondMomentStats(tmp_path, progress=False).get(model, tok, layout, 1, cfg, "m")
    assert got.path.read_bytes() == b"not safetensors"


def test_changed_corpus_changes_the_key(tiny, corpus, tmp_path):
    model, tok = tiny("llama")
    layout, cfg = layout_for(model), _cfg(corpus)
    stats = SecondMomentStats(tmp_path, progress=False)
    before = stats.get(model, tok, layout, 1, cfg, "m")
    corpus.write_text(CORPUS.replace("Paris", "Marseille"), encoding="utf-8")
    after = stats.get(model, tok, layout, 1, cfg, "m")  # same object, same config: content decides
    assert after.source == "computed" and after.key != before.key and after.path != before.path
    assert not torch.allclose(after.matrix, before.matrix)
    other_dtype = stats.get(model, tok, layout, 1, _cfg(corpus, dtype="float32"), "m")
    assert other_dtype.key != after.key
    torch.testing.assert_close(other_dtype.matrix, after.matrix, rtol=1e-4, atol=1e-5)


def test_get_many_is_one_pass_and_equals_get(tiny, corpus, tmp_path, monkeypatch):
    model, tok = tiny("gpt_neox")
    layout, cfg = layout_for(model), _cfg(corpus, token_budget=4096)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    many = SecondMomentStats(tmp_path / "many", progress=False).get_many(model, tok, layout, [3, 0, 2], cfg, "m")
    one_pass = len(calls)
    assert list(many) == [3, 0, 2] and one_pass == 1  # every document fits one batch here
    for layer in (0, 2, 3):
        single = SecondMomentStats(tmp_path / f"one{layer}", progress=False).get(model, tok, layout, layer, cfg, "m")
        assert torch.equal(single.matrix, many[layer].matrix) and single.n_tokens == many[layer].n_tokens
    # cached layers are loaded, only the new one is computed
    stats = SecondMomentStats(tmp_path / "many", progress=False)
    mixed = stats.get_many(model, tok, layout, [0, 1], cfg, "m")
    assert mixed[0].source == "disk" and mixed[1].source == "computed"


def test_bad_layer_raises_index_error(tiny, corpus, tmp_path):
    model, tok = tiny("llama")
    with pytest.raises(IndexError, match="does not exist"):
        SecondMomentStats(tmp_path / "cache", progress=False).get(model, tok, layout_for(model), 4, _cfg(corpus), "m")
    assert not (tmp_path / "cache").exists()


def test_config_is_validated():
    with pytest.raises(ValueError, match="dtype"):
        StatsConfig(dtype="bfloat16")
    with pytest.raises(ValueError, match="n_samples"):
        StatsConfig(n_samples=0)


def test_wikitext_statistics(tiny, tmp_path):
    root = _wikitext_root()
    if root is None:
        pytest.skip("shared WikiText-2 not available")
    model, tok = tiny("llama")
    cfg = StatsConfig(corpus="wikitext", n_samples=4, max_length=32, token_budget=256, dtype="float32",
                      data_root=str(root))
    got = SecondMomentStats(tmp_path, progress=False).get(model, tok, layout_for(model), 1, cfg, "tiny_llama")
    expected, n = _brute_force(model, tok, layout_for(model).name("mlp_out", 1),
                               text_samples("wikitext", 4, str(root)), 32)
    assert got.n_tokens == n == 4 * 32  # WikiText paragraphs are long: every one is truncated
    torch.testing.assert_close(got.matrix, expected, rtol=1e-4, atol=1e-5)


def test_precompute_cli_computes_then_loads(shared_data, tmp_path, capsys):
    from lit_edit.editors.locate.__main__ import main

    argv = ["--model", "tiny_gpt2", "--layers", "1", "2", "--n-samples", "5", "--cache-dir", str(tmp_path),
            "--data-root", str(shared_data), "--threads", "1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "(computed)" in first and "load from disk" in first
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    assert main(argv) == 0
    assert "(disk)" in capsys.readouterr().out
    assert [f.stat().st_mtime_ns for f in files] == stamps  # served from disk, never rewritten
