"""Lightning's tqdm bar, closed when a run stops on an exception.

Lightning closes its bars at the end of each loop, which a stop (SIGTERM, an editor's
error, Ctrl+C) skips: the open bar then lingers until the interpreter tears it down and
prints its last refresh wherever the output has got to by then - after the run's own
message, or after pytest's summary for a run stopped inside a test. Closing it in
``on_exception`` ends its line where the run stopped.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar

_BARS = ("train_progress_bar", "val_progress_bar", "test_progress_bar", "predict_progress_bar")


class ClosingTQDMProgressBar(TQDMProgressBar):
    """:class:`~lightning.pytorch.callbacks.TQDMProgressBar` that closes its open bars on a stop."""

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        for name in _BARS:
            try:
                bar = getattr(self, name)
            except TypeError:  # Lightning's accessor for a bar this run never opened
                continue
            bar.close()  # a no-op for a bar its loop already closed
