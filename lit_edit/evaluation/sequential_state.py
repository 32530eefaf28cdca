"""What a sequential run saves as it goes, so that ``resume=`` can continue it after a stop.

Single and batch runs resume from their records alone (:mod:`lit_edit.evaluation.resume`):
their edits are independent. A sequential run's edits build on one another, so continuing one
needs the model exactly as the stopped run had edited it, and whatever the editor remembers of
past edits (AlphaEdit's keys). Every ``eval.state_every`` edits the loop saves that, with the
per-edit records and the curve so far, to ``sequential_state.pt`` in the run directory:

- the edited parameters' *values*, not their updates: copying values back is bit-exact, while
  ``w + ((w + d) - w)`` is not always ``w + d`` in floating point;
- the unedited model's fingerprint (:func:`~lit_edit.models.loading.model_fingerprint`), so a
  run resumed on another model (or another checkpoint of the same one) is refused rather than
  silently mixed;
- written to a temporary file and moved into place, so a stop during the save leaves the
  previous state whole.

The file is the run's own scratch: the loop removes it once the run has written its summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from lit_edit.editors.base import EditHandle, Editor, MemorySnapshot, WeightSnapshot
from lit_edit.editors.prune import originals
from lit_edit.models.cache import atomic_file
from lit_edit.models.loading import model_fingerprint

STATE_FILE = "sequential_state.pt"
FORMAT = 3  # 3: the number of edits is that of the records; 2: one fingerprint of the whole model


@dataclass
class SequentialState:
    """A sequential run after its first ``n_edits`` edits (one record each)."""

    weights: dict[str, Tensor]             # edited parameters' current values, by ``named_parameters`` name
    base_fingerprint: str                  # model_fingerprint of the model before the first edit
    records: list[dict[str, Any]]          # per-edit records so far, edit 0 first
    curve: list[dict[str, Any]] = field(default_factory=list)
    model_scores: dict[str, list[float]] = field(default_factory=dict)  # "perplexity@after_50": [...]
    editor_state: dict[str, Any] = field(default_factory=dict)

    @property
    def n_edits(self) -> int:
        return len(self.records)

    @classmethod
    def capture(cls, model: nn.Module, base_fingerprint: str, handles: Iterable[EditHandle], editor: Editor,
                records: list[dict[str, Any]], curve: list[dict[str, Any]],
                model_scores: dict[str, list[float]]) -> SequentialState:
        """The state of ``model`` edited through ``handles`` (all :class:`WeightSnapshot`; check first)."""
        names = {id(p): name for name, p in model.named_parameters()}
        weights = {}
        for handle_name, (param, _) in originals(handles).items():
            name = names.get(id(param))
            if name is None:
                raise ValueError(f"edited tensor {handle_name!r} is not a parameter of the model, so it cannot be saved")
            weights[name] = param.detach().cpu().clone()
        return cls(weights=weights, base_fingerprint=base_fingerprint, records=[dict(r) for r in records],
                   curve=[dict(p) for p in curve], model_scores={k: list(v) for k, v in model_scores.items()},
                   editor_state=editor.sequence_state())

    @staticmethod
    def savable(handles: Iterable[EditHandle]) -> bool:
        """Whether every edit so far is a weight change (others, e.g. hooks, have no values to save)."""
        return all(isinstance(h, WeightSnapshot) for h in handles)

    def save(self, path: Path) -> None:
        with atomic_file(path) as tmp:
            torch.save({"format": FORMAT, **asdict(self)}, tmp)

    @classmethod
    def load(cls, path: Path) -> SequentialState:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same answer
            raise ValueError(f"{path}: not a readable sequential state ({type(err).__name__}: {err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a sequential state of format {FORMAT} "
                             f"(format {data.get('format') if isinstance(data, dict) else None!r})")
        data.pop("format")
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"{path}: {err}") from err

    def apply(self, model: nn.Module, editor: Editor, where: Path | str) -> MemorySnapshot:
        """Write the saved values into ``model`` (checked to be the model that was edited) and
        the editor's memory into ``editor``; the handle undoes both."""
        here = model_fingerprint(model)
        if here != self.base_fingerprint:
            raise ValueError(f"{where}: this model is not the one that run started from (fingerprint "
                             f"{here} here, {self.base_fingerprint} there): another model or checkpoint")
        params = dict(model.named_parameters())
        for name, value in self.weights.items():
            param = params.get(name)
            if param is None:
                raise ValueError(f"{where}: the saved run edited {name!r}, which this model does not have")
            if tuple(param.shape) != tuple(value.shape):
                raise ValueError(f"{where}: {name} is {tuple(value.shape)} there and {tuple(param.shape)} here: "
                                 "another model")
        # undo: the unedited weights and the editor's memory as they are now, before the saved ones
        handle = MemorySnapshot({name: params[name] for name in self.weights}, editor)
        with torch.no_grad():
            for name, value in self.weights.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        editor.load_sequence_state(self.editor_state)
        return handle
