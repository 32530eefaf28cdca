"""PMET: Precise Model Editing in a Transformer (Li et al., AAAI 2024, arXiv:2308.08742).

MEMIT optimises the whole residual stream ``z`` at its last edited layer and writes that
target into MLP weights only, although part of ``z`` comes from attention. PMET splits the
target by component: at the last edited layer it optimises one delta on the *attention*
output and one on the *MLP* output together (same loss as MEMIT's ``z*``, a weight decay
and a norm clamp per component; :func:`~lit_edit.editors.locate.values.joint_value_targets`),
then writes only the MLP part into the MLP down projections of the layer range, each
layer taking ``1/sqrt(remaining)`` of what is left (MEMIT takes ``1/remaining``), with the
current MLP output at the last layer re-read after every write. The attention delta only
shapes the optimisation: it absorbs what attention would have to change, so the MLP
target is what the MLP itself should say.

Deviations from the reference code (EasyEdit's ``pmet_main.py``): its step-wise switch of
the NLL weight to 0.1 once every target token is the argmax is not reproduced (the
``v_stop_loss``/``v_stop_on`` early stop covers the same ground), and keys, ``z`` and
targets are averaged over the context templates as in :mod:`lit_edit.editors.memit`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

from lit_edit.data.schema import EditRequest
from lit_edit.editors.locate.keys import subject_states
from lit_edit.editors.locate.values import ValueTargets, joint_value_targets
from lit_edit.editors.memit import MEMITEditor
from lit_edit.models.layouts import ModelLayout


class PMETEditor(MEMITEditor):
    """PMET on ``mlp_out`` of ``layers``; hyperparameters come from ``configs/editor/pmet.yaml``.

    Takes MEMIT's arguments (:class:`~lit_edit.editors.memit.MEMITEditor`); the value
    settings (``v_*``, ``clamp_norm_factor``, ``kl_factor``) apply to both component deltas.
    """

    name = "pmet"
    algorithm = "PMET"
    # MEMIT carries its residual-stream shares through a post-MLP norm; PMET's target is the last
    # layer's MLP output before that norm, whose change is not a residual-stream change to share
    needs_unnormalised_mlp_output = ("PMET's target is the last layer's MLP output, shared over the lower layers "
                                     "as if it were added to the residual stream as it is")

    def __init__(self, **settings: Any) -> None:
        if settings.get("layer_weights") is not None:
            raise ValueError("PMET shares the residual over its layers by 1/sqrt(remaining layers); "
                             "layer_weights is MEMIT's rule and PMET would ignore it, so it is refused")
        super().__init__(**settings)
        # diagnostics of the latest edit: the attention-output target that was optimised
        # alongside the MLP one but is not written
        self.last_attention_targets: ValueTargets | None = None

    def _value_targets(self, model: nn.Module, tokenizer, layout: ModelLayout,
                       requests: Sequence[EditRequest]) -> ValueTargets:
        found = joint_value_targets(model, tokenizer, layout, self.layers[-1], requests, self.templates,
                                    self.value_hp(model),
                                    modules=["attn_out", "mlp_out"], max_length=self.max_length,
                                    chunk_size=self.chunk_size(model))
        self.last_attention_targets = found["attn_out"]
        return found["mlp_out"]

    @property
    def value_site(self) -> tuple[str, int]:
        """The FFN half of PMET's joint target: a ceiling measured here leaves out the attention
        delta optimised with it (``last_attention_targets``), so it understates the joint target."""
        return "mlp_out", self.layers[-1]

    def _current_z(self, model: nn.Module, tokenizer, layout: ModelLayout, requests: Sequence[EditRequest]) -> Tensor:
        return subject_states(model, tokenizer, layout, "mlp_out", self.layers[-1], requests, self.templates,
                              what="output")

    def _residual_share(self, i: int) -> float:
        return 1.0 / math.sqrt(len(self.layers) - i)
