"""Model loading, architecture layouts (module-name templates) and tiny test models."""

from lit_edit.models.layouts import (
    ModelLayout,
    add_to_weight,
    canonical_shape,
    canonical_weight,
    get_module,
    layout_for,
    module_name,
    num_layers,
    resolve,
    set_weight,
    weight_view,
)
from lit_edit.models.loading import ModelSpec, load_model, model_fingerprint

__all__ = [
    "ModelLayout", "ModelSpec", "add_to_weight", "canonical_shape", "canonical_weight", "get_module",
    "layout_for", "load_model", "model_fingerprint", "module_name", "num_layers", "resolve",
    "set_weight", "weight_view",
]
