"""Causal tracing on tiny models: shapes, exact sanity identities, hook hygiene, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from lit_edit.models.layouts import layout_for
from lit_edit.models.tiny import TINY_ARCHS
from lit_edit.trace import subject_token_span, trace, trace_many, window_layers
from lit_edit.trace.__main__ import main
from lit_edit.trace.causal import embedding_noise_level

PROMPT = "The Space Needle is located in the city of"
SUBJECT = "Space Needle"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _last_logits(model, tokenizer, prompt=PROMPT):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_trace_shapes_sanity_and_hooks_removed(tiny, arch):
    model, tok = tiny(arch)
    layout = layout_for(model)
    before = _last_logits(model, tok)
    result = trace(model, tok, layout, PROMPT, SUBJECT, samples=3, window=2)

    n_tokens, n_layers = len(tok(PROMPT)["input_ids"]), model.config.num_hidden_layers
    assert set(result.scores) == {"hidden", "mlp", "attn"}
    for scores in result.scores.values():
        assert scores.shape == (n_tokens, n_layers)
        assert torch.isfinite(scores).all()
    start, end = result.subject_span
    assert "".join(result.tokens[start:end]).strip() == SUBJECT
    assert result.clean_prob > 0 and 0 < result.corrupted_prob < 1
    assert result.answer_id == int(before.argmax())
    # Restoring the last block's output at the last token gives back the clean run exactly.
    assert result.scores["hidden"][-1, -1].item() == pytest.approx(result.clean_prob, abs=1e-6)
    # Positions before the subject are untouched by the noise: indirect effect 0.
    assert torch.all(result.effects("hidden")[:start] == 0)
    # Hooks are gone: the model answers as before.
    torch.testing.assert_close(_last_logits(model, tok), before, rtol=0, atol=0)

    summary = result.layer_summary()
    assert {k: len(v) for k, v in summary.items()} == {"hidden": n_layers, "mlp": n_layers, "attn": n_layers}
    json.dumps(result.to_dict())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_noise_has_no_effect(tiny, arch):
    model, tok = tiny(arch)
    result = trace(model, tok, layout_for(model), PROMPT, SUBJECT, noise=0.0, samples=2)
    assert result.corrupted_prob == pytest.approx(result.clean_prob, abs=1e-6)
    for kind in result.scores:
        torch.testing.assert_close(result.scores[kind], torch.full_like(result.scores[kind], result.clean_prob),
                                   rtol=0, atol=1e-6)
        assert result.effects(kind).abs().max() < 1e-6


def test_given_answer_positions_and_window(tiny, tiny_tok):
    model, tok = tiny("llama")
    layout = layout_for(model)
    last = subject_token_span(tok, PROMPT, SUBJECT)[1] - 1
    result = trace(model, tok, layout, PROMPT, SUBJECT, answer="Seattle", kinds=("mlp",), samples=2, positions=[last])
    assert result.answer_id == tok(" Seattle", add_special_tokens=False)["input_ids"][0]
    assert torch.isfinite(result.scores["mlp"][last]).all()
    assert torch.isnan(result.scores["mlp"][last + 1]).all()
    assert list(window_layers(0, 10, 30)) == list(range(0, 5))
    assert list(window_layers(15, 10, 30)) == list(range(10, 20))
    assert list(window_layers(29, 10, 30)) == list(range(24, 30))
    with pytest.raises(ValueError, match="unknown trace kind"):
        trace(model, tok, layout, PROMPT, SUBJECT, kinds=("mlp_out",))


def test_trace_many_averages(tiny, requests_):
    model, tok = tiny("gpt2")
    summary = trace_many(model, tok, layout_for(model), requests_[:2], samples=2, kinds=("mlp",), progress=False)
    assert summary.n == 2 and summary.mean_effect["mlp"].shape == (model.config.num_hidden_layers,)
    manual = sum(torch.tensor(r["effect"]["mlp"]) for r in summary.records) / 2
    torch.testing.assert_close(summary.mean_effect["mlp"], manual)
    json.dumps(summary.to_dict())


def test_cli_writes_json_and_pngs_and_refuses_overwrite(tmp_path, capsys):
    args = ["--model", "tiny_llama", "--prompt", PROMPT, "--subject", SUBJECT, "--samples", "2",
            "--out", str(tmp_path)]
    assert main(args) == 0
    data = json.loads((tmp_path / "trace.json").read_text())
    assert data["model"] == "tiny_llama" and len(data["scores"]["mlp"]) == len(data["tokens"])
    for kind in ("hidden", "mlp", "attn"):
        png = tmp_path / f"trace_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = (tmp_path / "trace.json").read_bytes()
    with pytest.raises(SystemExit) as err:
        main(args)
    assert err.value.code != 0
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "trace.json").read_bytes() == written


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_noise_is_sized_from_what_the_embedding_outputs(tiny, arch):
    """Gemma scales the looked-up rows by sqrt(hidden): noise sized from the bare matrix would be 8x too
    small on the tiny model (25x on Gemma 3 270M); Llama's embedding outputs its rows as they are."""
    model, _ = tiny(arch)
    weight_std = float(model.get_input_embeddings().weight.std())
    scale = model.config.hidden_size**0.5 if arch == "gemma3" else 1.0
    assert embedding_noise_level(model, layout_for(model)) == pytest.approx(3 * weight_std * scale, rel=1e-4)
    assert embedding_noise_level(model, layout_for(model), chunk=7) == pytest.approx(3 * weight_std * scale, rel=1e-4)
