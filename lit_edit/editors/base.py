"""What every editor is: ``edit(model, tokenizer, requests) -> handle`` and ``handle.undo()``.

The evaluation loop owns everything else (pre-edit predictions, metrics, when to undo);
an editor only changes the model and knows how to take the change back. Training-free
editors are Lightning callbacks so the ``Trainer`` runs their one-off preparation
(covariance statistics, codebooks) in ``setup`` with the loop's model in hand.
"""

from __future__ import annotations

import abc
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator, Sequence

import lightning as L
import torch
from torch import nn

from lit_edit.data.schema import EditRequest
from lit_edit.evaluation.efficiency import Stopwatch
from lit_edit.models.layouts import ModelLayout, check_layers, layout_for, require_unnormalised_mlp_output
from lit_edit.utils.signals import Interrupted


class EditHandle(abc.ABC):
    """Proof of one applied edit; ``undo`` restores the model exactly as it was before it."""

    @abc.abstractmethod
    def undo(self) -> None: ...


class WeightSnapshot(EditHandle):
    """Copies of the parameters an edit is about to change, taken before it changes them.

    Restoring by copying the saved tensors (rather than subtracting a delta) is what makes
    undo bit-exact: floating-point ``(w + d) - d`` is not always ``w``.
    """

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = dict(params)
        self.saved = {name: p.detach().clone() for name, p in self.params.items()}
        self._undone = False

    def deltas(self) -> dict[str, torch.Tensor]:
        """Current value minus saved value per parameter (what the edit wrote)."""
        return {name: p.detach() - self.saved[name] for name, p in self.params.items()}

    @torch.no_grad()
    def undo(self) -> None:
        if self._undone:
            raise RuntimeError("this edit was already undone")
        for name, p in self.params.items():
            p.copy_(self.saved[name])
        self._undone = True


class MemorySnapshot(WeightSnapshot):
    """A :class:`WeightSnapshot` whose ``undo`` also puts back the editor's memory of past edits.

    For editors that remember earlier edits (:meth:`Editor.sequence_state`, AlphaEdit's past
    keys): undoing an edit must forget it there too, or later edits would keep sparing keys of
    an edit that no longer exists. The memory is taken when the snapshot is.
    """

    def __init__(self, params: dict[str, nn.Parameter], editor: "Editor") -> None:
        super().__init__(params)
        self.editor = editor
        self.memory = editor.sequence_state()

    def undo(self) -> None:
        super().undo()
        self.editor.load_sequence_state(self.memory)


class EditInterrupted(Interrupted):
    """SIGTERM honoured inside one long edit, at a point where the work done so far is kept.

    Lightning looks at SIGTERM only between batches, and a batch edit of 1000 facts is one
    batch of hours: a scheduler's stop would wait for its end (or its SIGKILL). The message
    says where to resume, and the process exits with status 1 (:mod:`lit_edit.utils.signals`).
    """


def _never() -> bool:
    return False


class Editor(abc.ABC):
    """A knowledge editor. Subclasses implement :meth:`edit`; :meth:`prepare` is optional."""

    #: short name used in results and run directories
    name: str = "editor"
    #: the algorithm's name in log lines and error messages
    algorithm: ClassVar[str] = "editor"
    #: why the editor's math needs the MLP output added to the residual stream as it is (None: it
    #: does not); :meth:`prepare` then refuses a model that normalises it first (Gemma 2/3,
    #: :attr:`ModelLayout.mlp_out_norm`), before any statistics are computed
    needs_unnormalised_mlp_output: ClassVar[str | None] = None

    def __init__(self, name: str | None = None) -> None:
        self.layout: ModelLayout | None = None
        if name is not None:
            self.name = name
        # seconds per phase of the latest edit() call ("keys", "values", "update", ...): the
        # loop writes them next to each edit's time, which is the profile of where time goes
        self.last_timings: dict[str, float] = {}
        # countable work of the latest edit() call, summed over its requests (ROME:
        # "value_steps", the v*/z* forward passes): seconds alone do not say whether an edit was
        # slow because each step was or because it took many; the loop reports both per edit
        self.last_counts: dict[str, float] = {}
        # asked between the kept pieces of one long edit (MEMIT's z* chunks), which then raise
        # EditInterrupted; CallbackEditor points it at the Trainer's SIGTERM flag
        self.stop_requested: Callable[[], bool] = _never

    def _count(self, name: str, amount: float) -> None:
        """Add ``amount`` to ``last_counts[name]``."""
        self.last_counts[name] = self.last_counts.get(name, 0.0) + float(amount)

    @contextmanager
    def _phase(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        """Add the wall time of the block to ``last_timings[name]`` (GPU synchronised)."""
        watch = Stopwatch(device)
        with watch:
            yield
        self.last_timings[name] = self.last_timings.get(name, 0.0) + watch.last

    def configured_layers(self) -> Sequence[int] | None:
        """The blocks the configuration names for this editor (None: none, or every block)."""
        return None

    def layers_override(self, layers: Sequence[int]) -> str:
        """The override that set :meth:`configured_layers`, as an error message names it."""
        return f"editor.layers={list(layers)}"

    def prepare(self, model: nn.Module, tokenizer, layout: ModelLayout | None = None) -> None:
        """One-off work before the first edit (resolve modules, load statistics)."""
        layout = layout or layout_for(model)
        layers = self.configured_layers()
        if layers is not None:
            check_layers(model, layers, setting=self.layers_override(layers), layout=layout)
        if self.needs_unnormalised_mlp_output is not None:
            require_unnormalised_mlp_output(model, layout, self.algorithm, self.needs_unnormalised_mlp_output)
        self.layout = layout

    def ensure_prepared(self, model: nn.Module, tokenizer) -> ModelLayout:
        if self.layout is None:
            self.prepare(model, tokenizer)
        assert self.layout is not None
        return self.layout

    @abc.abstractmethod
    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> EditHandle:
        """Apply ``requests`` to ``model`` in place and return how to take them back."""

    def sequence_state(self) -> dict[str, Any]:
        """What the editor remembers of the edits made so far (tensors, numbers, lists, dicts).

        A sequential run saves it beside the edited weights, so a resumed run edits on with the
        same memory. Editors that carry nothing from one edit to the next return ``{}``;
        one that does (AlphaEdit's past keys) must override this and :meth:`load_sequence_state`,
        or its resumed runs would forget.
        """
        return {}

    def load_sequence_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`sequence_state` returned."""
        if state:
            raise ValueError(f"editor {self.name!r} keeps nothing between edits, but was given a saved memory "
                             f"of {sorted(state)}: a state saved by another editor")


class CallbackEditor(Editor, L.Callback):
    """A training-free editor plugged into the Trainer; prepares itself at ``setup``."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.stop_requested = lambda: bool(trainer.received_sigterm)
        self.prepare(pl_module.model, pl_module.tokenizer, getattr(pl_module, "layout", None))


class NoEdit(CallbackEditor):
    """Changes nothing: measures the unedited model with the same loop (a baseline row)."""

    name = "none"

    def edit(self, model: nn.Module, tokenizer, requests: Sequence[EditRequest]) -> EditHandle:
        return WeightSnapshot({})  # a snapshot of no weights: nothing to undo, nothing to save
