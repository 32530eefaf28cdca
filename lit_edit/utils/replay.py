"""Skip the frozen bottom of a network while optimising something above it.

Fine-tuning one MLP at layer L (FT-L/FT-M) or optimising a value vector at layer L (ROME,
MEMIT) runs the same prompts through the model for dozens of steps, yet blocks below L
compute exactly the same thing every step. :func:`frozen_prefix` runs those blocks once,
then swaps them for modules that replay their recorded outputs, so each step only pays
for the blocks that can change. The swap is undone on exit, exceptions included.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from lit_edit.models.layouts import ModelLayout, get_module


class _StopForward(Exception):
    """Raised by the recording hook once the last frozen block has run."""


class _Replay(nn.Module):
    """Stands in for a block: ignores its inputs and returns the recorded output.

    Attribute look-ups fall through to the original block because some decoders read
    per-block attributes (``attention_type``, ``layer_idx``) while looping over layers.
    """

    def __init__(self, original: nn.Module, output: Any) -> None:
        super().__init__()
        self._original = [original]  # a list, so it is not registered as a submodule
        self._output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_original"][0], name)


@contextmanager
def frozen_prefix(model: nn.Module, layout: ModelLayout, first_live: int, forward: Callable[[], Any]) -> Iterator[None]:
    """Within the context, blocks ``[0, first_live)`` replay what they produced for ``forward()``.

    ``forward`` must perform exactly the forward call the caller will repeat inside the
    context (same inputs); replayed blocks would otherwise return stale activations.
    """
    blocks = get_module(model, layout.layers)
    if first_live <= 0:
        yield
        return
    if first_live > len(blocks):
        raise IndexError(f"first live block {first_live} is beyond the model's {len(blocks)} blocks")
    recorded: dict[int, Any] = {}

    def record(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            recorded[i] = output
            if i == first_live - 1:
                raise _StopForward

        return hook

    handles = [blocks[i].register_forward_hook(record(i)) for i in range(first_live)]
    try:
        with torch.no_grad():
            forward()
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    originals = [blocks[i] for i in range(first_live)]
    for i in range(first_live):
        blocks[i] = _Replay(originals[i], recorded[i])
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
