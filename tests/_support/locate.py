"""Settings under which the locate-then-edit value search converges on tiny random models.

The papers' values (configs/editor/*.yaml) are set for trained models. The tests use
generous ones instead - no weight decay, a norm clamp that never binds, lr 1 - so that the
search reaches the target within a few steps on a 4-layer random model and a test can check
that the edit lands. Every editor test that optimises values starts from these, so one
change here moves them all together.
"""

from __future__ import annotations

from typing import Any

#: fixed context templates: no prefix generation (and no sampling) in most tests
TEMPLATES: list[str] = ["{}", "The weather is nice. {}"]


def tiny_value_settings(**overrides: Any) -> dict[str, Any]:
    """Editor keywords for the value search (plus ``context_templates``), with ``overrides`` on top.

    ``mom2_adjustment`` is off (C = I) unless a test turns it on: most editor tests check the
    algebra of the write, not the statistics.
    """
    settings: dict[str, Any] = dict(v_num_grad_steps=25, v_lr=1.0, v_weight_decay=0.0, clamp_norm_factor=1e4,
                                    kl_factor=0.0625, v_stop_loss=5e-2, mom2_adjustment=False,
                                    context_templates=list(TEMPLATES))
    return {**settings, **overrides}


def additive_mlp_archs() -> tuple[str, ...]:
    """The tiny architectures whose MLP output is added to the residual as it is.

    PMET and KN refuse the others (Gemma 3's post-MLP norm; see ``require_unnormalised_mlp_output``;
    MEMIT and AlphaEdit carry their targets through it); read from the layouts, not listed by hand.
    """
    from lit_edit.models.layouts import layout_for
    from lit_edit.models.tiny import TINY_ARCHS, tiny_config

    return tuple(a for a in TINY_ARCHS if layout_for(tiny_config(a, 1000, 0, 1)).mlp_out_norm is None)
