"""Where things live inside a transformer: module-name templates per architecture.

Editors never hard-code ``model.layers.5.mlp.down_proj``; they ask a :class:`ModelLayout` for
the ``mlp_out`` template of layer 5. A template is a dotted module path with ``{}`` where the
layer index goes. Built-in layouts cover the architectures the project tests on; any other
model works once its config yaml supplies the templates (``layout_for(model, overrides)``).

The weight helpers at the bottom hide GPT-2's ``Conv1D`` (whose weight is stored as
``[in_features, out_features]``): editors read and update weights in the canonical
``nn.Linear`` orientation ``[out_features, in_features]`` and never branch on the layer type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class ModelLayout:
    """Module-name templates of one architecture (``{}`` = layer index).

    Attributes:
        layers: path of the ``nn.ModuleList`` of blocks (no placeholder).
        mlp: the MLP block of a layer.
        mlp_in: first MLP projection(s) (Llama has two: gate and up).
        mlp_out: the MLP down projection, whose input is the "key" and output the "value" of
            locate-then-edit methods (ROME/MEMIT edit this weight).
        attn: the attention block of a layer.
        attn_out: the attention output projection.
        embed: token embedding (no placeholder).
        final_norm: norm before the LM head (no placeholder).
        lm_head: output projection to the vocabulary (no placeholder).
        mlp_out_norm: a norm between ``mlp_out`` and the residual add (Gemma 2/3's
            ``post_feedforward_layernorm``), or None where the MLP's output is added as it is.
            It rescales whatever ``mlp_out`` writes, so methods that write a residual-stream
            target into ``mlp_out`` must carry it back through the norm (MEMIT, AlphaEdit:
            ``editors/locate/norm_target.py``) or refuse the model (PMET, KN).
    """

    layers: str
    mlp: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    attn: str
    attn_out: str
    embed: str
    final_norm: str
    lm_head: str
    mlp_out_norm: str | None = None

    @property
    def layer(self) -> str:
        """Template of a whole block, e.g. ``model.layers.{}`` (its output is the residual stream)."""
        return self.layers + ".{}"

    def template(self, key: str) -> str:
        """The template stored under a field name (``"mlp_out"``) or ``"layer"``."""
        if key == "layer":
            return self.layer
        value = getattr(self, key, None)
        if not isinstance(value, str):
            names = [f.name for f in dataclasses.fields(self) if f.name != "mlp_in"] + ["layer"]
            raise KeyError(f"{key!r} is not a single-template field of ModelLayout; use one of {names}")
        return value

    def name(self, key: str, layer: int | None = None) -> str:
        """Module name of field ``key`` at ``layer``: ``layout.name("mlp_out", 3)``."""
        return module_name(self.template(key), layer)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "ModelLayout":
        """A copy with some templates replaced (unknown keys are an error)."""
        return dataclasses.replace(self, **_clean_overrides(overrides))


def _llama_like(prefix: str = "model", post_norms: bool = False) -> ModelLayout:
    block = prefix + ".layers.{}"
    return ModelLayout(
        layers=f"{prefix}.layers",
        mlp=f"{block}.mlp",
        mlp_in=(f"{block}.mlp.gate_proj", f"{block}.mlp.up_proj"),
        mlp_out=f"{block}.mlp.down_proj",
        attn=f"{block}.self_attn",
        attn_out=f"{block}.self_attn.o_proj",
        embed=f"{prefix}.embed_tokens",
        final_norm=f"{prefix}.norm",
        lm_head="lm_head",
        mlp_out_norm=f"{block}.post_feedforward_layernorm" if post_norms else None,
    )


def _gpt_like(attn_out: str, mlp_in: str, mlp_out: str) -> ModelLayout:
    return ModelLayout(
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_in=(f"transformer.h.{{}}.mlp.{mlp_in}",),
        mlp_out=f"transformer.h.{{}}.mlp.{mlp_out}",
        attn="transformer.h.{}.attn",
        attn_out=f"transformer.h.{{}}.attn.{attn_out}",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    )


#: Built-in layouts keyed by ``config.model_type`` (read-only mapping).
BUILTIN_LAYOUTS: Mapping[str, ModelLayout] = MappingProxyType(
    {
        # Llama-style names (checked against transformers 5.x modeling files).
        **{t: _llama_like() for t in ("llama", "mistral", "qwen2", "qwen3", "gemma")},
        # Gemma 2/3 also normalise each sublayer's output before the residual add ("sandwich" norms).
        **{t: _llama_like(post_norms=True) for t in ("gemma2", "gemma3_text")},
        # Gemma3ForConditionalGeneration wraps the text model one level deeper.
        "gemma3": _llama_like("model.language_model", post_norms=True),
        "gpt2": _gpt_like(attn_out="c_proj", mlp_in="c_fc", mlp_out="c_proj"),
        "gptj": _gpt_like(attn_out="out_proj", mlp_in="fc_in", mlp_out="fc_out"),
        "gpt_neox": ModelLayout(
            layers="gpt_neox.layers",
            mlp="gpt_neox.layers.{}.mlp",
            mlp_in=("gpt_neox.layers.{}.mlp.dense_h_to_4h",),
            mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
            attn="gpt_neox.layers.{}.attention",
            attn_out="gpt_neox.layers.{}.attention.dense",
            embed="gpt_neox.embed_in",
            final_norm="gpt_neox.final_layer_norm",
            lm_head="lm_head",
        ),
    }
)

_FIELDS = tuple(f.name for f in dataclasses.fields(ModelLayout))
_REQUIRED = tuple(f.name for f in dataclasses.fields(ModelLayout) if f.default is dataclasses.MISSING)


def _clean_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Validate override keys and normalise ``mlp_in`` (a yaml string or list) to a tuple."""
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise KeyError(f"unknown layout template(s) {unknown}; valid keys are {list(_FIELDS)}")
    clean = dict(overrides)
    if "mlp_in" in clean:
        value = clean["mlp_in"]
        clean["mlp_in"] = (value,) if isinstance(value, str) else tuple(value)
    return clean


def layout_for(model: nn.Module | Any, overrides: Mapping[str, Any] | None = None) -> ModelLayout:
    """Layout of ``model`` (or of a config) chosen by ``config.model_type``.

    ``overrides`` (e.g. the ``layout:`` section of a model yaml) replace built-in templates,
    or, for an architecture without a built-in layout, must supply all of them.
    """
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    overrides = dict(overrides or {})
    if model_type in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[model_type].with_overrides(overrides)
    missing = [f for f in _REQUIRED if f not in overrides]
    if missing:
        raise ValueError(
            f"no built-in layout for model_type {model_type!r} (known: {sorted(BUILTIN_LAYOUTS)}). "
            f"Supply module templates in the model config, e.g. `layout: {{mlp_out: "
            f"'model.layers.{{}}.mlp.down_proj', ...}}`; missing here: {missing}"
        )
    return ModelLayout(**_clean_overrides(overrides))


def require_unnormalised_mlp_output(model: nn.Module, layout: ModelLayout, method: str, why: str) -> None:
    """Refuse a model whose MLP output is normalised before the residual add, saying ``why`` it matters.

    For the methods whose math takes ``mlp_out``'s output as what the block adds to the residual
    stream; Gemma 2/3 rescale it to the norm's gain first.
    """
    if layout.mlp_out_norm is None:
        return
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise ValueError(
        f"{method} cannot edit this model ({model_type}): the output of {layout.mlp_out!r} is normalised "
        f"({layout.mlp_out_norm!r}) before it reaches the residual stream, and {why}. ROME, FT-L/FT-M and "
        "the learned editors optimise or train through that norm, and MEMIT and AlphaEdit carry their targets back "
        "through it: they work on it."
    )


def module_name(template: str, layer: int | None = None) -> str:
    """Fill ``{}`` in ``template`` with ``layer``; a mismatch (placeholder vs. layer) is an error."""
    has_slot = "{}" in template
    if has_slot and layer is None:
        raise ValueError(f"template {template!r} needs a layer index")
    if not has_slot and layer is not None:
        raise ValueError(f"template {template!r} has no '{{}}' for layer {layer}")
    return template.format(layer) if has_slot else template


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Submodule by dotted name; the error says which part of the path is missing."""
    module, walked = model, []
    for part in name.split(".") if name else []:
        child = module._modules.get(part)
        if child is None:
            where = ".".join(walked) or "<root>"
            children = ", ".join(module._modules) or "none"
            raise AttributeError(
                f"module {name!r} not found: {where} ({type(module).__name__}) has no child {part!r}; "
                f"its children are: {children}"
            )
        module, walked = child, walked + [part]
    return module


def num_layers(model: nn.Module, layout: ModelLayout | None = None) -> int:
    """Number of transformer blocks (length of the ``layers`` ModuleList)."""
    layout = layout or layout_for(model)
    return len(get_module(model, layout.layers))


def check_layers(model: nn.Module, layers: Sequence[int], *, setting: str, layout: ModelLayout | None = None) -> None:
    """Refuse layers ``model`` does not have, naming the setting they came from (``"editor.layers=[3, 99]"``).

    Editors call it in ``prepare``, before statistics or optimisation: a layer list written for a
    deeper model (``model.layers.<editor>`` in a model config, or an override) then fails with the
    override to fix, not with a module lookup deep in the first edit.
    """
    n = num_layers(model, layout)
    missing = [layer for layer in layers if not 0 <= layer < n]
    if missing:
        raise IndexError(f"{setting}: layer {', '.join(map(str, missing))} does not exist: the model "
                         f"has {n} layers (0..{n - 1}); the model config's model.layers.* sets them per model")


def resolve(model: nn.Module, template: str, layer: int | None = None, layout: ModelLayout | None = None) -> nn.Module:
    """The module for ``template`` (or a layout field name like ``"mlp_out"``) at ``layer``.

    Layer indices are checked against the model so a config written for a deeper model fails
    with a readable message instead of an ``AttributeError`` deep in a ModuleList.
    """
    if template == "layer" or (template in _FIELDS and template != "mlp_in"):
        layout = layout or layout_for(model)
        template = layout.template(template)
    if layer is not None:
        n = num_layers(model, layout)
        if not 0 <= layer < n:
            raise IndexError(f"layer {layer} does not exist: model has {n} layers (0..{n - 1})")
    return get_module(model, module_name(template, layer))


# --- weights in canonical [out_features, in_features] orientation -------------------------------


def weight_view(module: nn.Module) -> tuple[nn.Parameter, bool]:
    """The module's weight and whether it is stored transposed (``Conv1D``: ``[in, out]``)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(f"{type(module).__name__} has no 2-D weight to edit")
    return weight, isinstance(module, Conv1D)


def output_at(module: nn.Module, keys: torch.Tensor) -> torch.Tensor:
    """The edited projection's output at ``keys`` ``[n, in]``, without grad, on its device and dtype.

    Read through ``module`` itself rather than as ``W k``, so any bias (GPT-2's ``Conv1D``, GPT-J's
    ``fc_out``) is in it: an update fitted to ``target - output_at(k)`` then makes the edited
    module return ``target`` exactly (and, the map being affine, the output at a template-averaged key
    is the average of the templates' outputs).
    """
    weight, _ = weight_view(module)
    with torch.no_grad():
        return module(keys.to(device=weight.device, dtype=weight.dtype))


def canonical_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out_features, in_features]`` (a view: do not modify it in place)."""
    weight, transposed = weight_view(module)
    return weight.T if transposed else weight


def canonical_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` whatever the storage orientation."""
    return tuple(canonical_weight(module).shape)  # type: ignore[return-value]


def _in_storage_orientation(module: nn.Module, tensor: torch.Tensor, what: str) -> tuple[nn.Parameter, torch.Tensor]:
    """Check ``tensor`` is ``[out, in]`` and return it as the weight stores it (cast to its dtype/device)."""
    weight, transposed = weight_view(module)
    expected = canonical_shape(module)
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{what} has shape {tuple(tensor.shape)}, expected [out, in] = {list(expected)}")
    return weight, (tensor.T if transposed else tensor).to(device=weight.device, dtype=weight.dtype)


@torch.no_grad()
def add_to_weight(module: nn.Module, delta: torch.Tensor) -> None:
    """``W += delta`` with ``delta`` in ``[out_features, in_features]`` (cast to W's dtype/device)."""
    weight, stored = _in_storage_orientation(module, delta, "delta")
    weight.add_(stored)


@torch.no_grad()
def set_weight(module: nn.Module, value: torch.Tensor) -> None:
    """Overwrite the weight with ``value`` given in ``[out_features, in_features]`` (e.g. undo)."""
    weight, stored = _in_storage_orientation(module, value, "value")
    weight.copy_(stored)
