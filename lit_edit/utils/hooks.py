"""Read and patch module inputs/outputs with forward hooks - the one place hooks live.

Locate-then-edit editors read MLP keys (the input of ``mlp_out``) and add a vector to MLP
values (its output); causal tracing corrupts embeddings and restores hidden states. All of
that goes through these context managers, which always remove their hooks on exit, even when
the forward raises, so a failed edit can never leave a model silently patched.

Hidden states are "the main tensor": the first positional argument of a module (or its
``hidden_states`` keyword), and the output itself or its first element when the module
returns a tuple. Patch functions receive and return that tensor; the rest is passed through.

Patches are registered with ``prepend=True``: they run before any other hook on the module,
including the output-capturing hooks transformers 5.x installs (permanently) the first time
``output_hidden_states=True`` is used. So ``output_hidden_states`` and :func:`capture` report
patched values. Nested patches on the same module apply innermost first.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterable, Iterator, Literal

import torch
from torch import nn

from lit_edit.models.layouts import get_module

TensorFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def _main_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError("module was called without a tensor input")


def _main_output(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _replace_main_output(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    return new


@contextmanager
def capture(
    model: nn.Module,
    names: str | Iterable[str],
    what: Literal["input", "output"] = "output",
    detach: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the main input or output tensor of each named module during forwards.

    Yields a dict filled as the model runs: ``name -> tensor`` (the latest call wins when a
    module runs several times). ``detach=False`` keeps the graph for gradient-based editors.

        with capture(model, ["model.layers.3.mlp.down_proj"], what="input") as keys:
            model(**batch)
        k = keys["model.layers.3.mlp.down_proj"]   # [batch, seq, intermediate]
    """
    if what not in ("input", "output"):
        raise ValueError(f"what must be 'input' or 'output', got {what!r}")
    names = [names] if isinstance(names, str) else list(names)
    store: dict[str, torch.Tensor] = {}

    def keep(name: str, tensor: torch.Tensor) -> None:
        store[name] = tensor.detach() if detach else tensor

    with ExitStack() as stack:
        for name in names:
            module = get_module(model, name)
            if what == "input":
                hook = module.register_forward_pre_hook(
                    lambda _m, args, kwargs, name=name: keep(name, _main_input(args, kwargs)), with_kwargs=True
                )
            else:
                hook = module.register_forward_hook(lambda _m, _a, out, name=name: keep(name, _main_output(out)))
            stack.callback(hook.remove)
        yield store


@contextmanager
def patch_output(module: nn.Module, fn: TensorFn) -> Iterator[nn.Module]:
    """Replace the module's main output by ``fn(output)`` (``None`` from ``fn`` keeps it)."""

    def hook(_m: nn.Module, _args: tuple, output: Any) -> Any:
        new = fn(_main_output(output))
        return None if new is None else _replace_main_output(output, new)

    handle = module.register_forward_hook(hook, prepend=True)
    try:
        yield module
    finally:
        handle.remove()


@contextmanager
def patch_input(module: nn.Module, fn: TensorFn) -> Iterator[nn.Module]:
    """Replace the module's main input by ``fn(input)`` before it runs (``None`` keeps it)."""

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> Any:
        new = fn(_main_input(args, kwargs))
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        key = "hidden_states" if "hidden_states" in kwargs else next(
            k for k, v in kwargs.items() if isinstance(v, torch.Tensor)
        )
        return args, {**kwargs, key: new}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
    try:
        yield module
    finally:
        handle.remove()


@contextmanager
def patch_outputs(model: nn.Module, fns: dict[str, TensorFn]) -> Iterator[nn.Module]:
    """:func:`patch_output` on several named modules at once (e.g. restoring layers in tracing)."""
    with ExitStack() as stack:
        for name, fn in fns.items():
            stack.enter_context(patch_output(get_module(model, name), fn))
        yield model
