"""A SIGTERM stop that exits non-zero and says what it kept.

Lightning traps SIGTERM (a scheduler's stop, a preemption, ``kill``) and raises a bare
``SIGTERMException`` at the next batch. That is a ``SystemExit`` without a code, so the
process exits with status 0: a shell's ``&&``, a job array or a W&B sweep agent reads the
stopped run as a finished one, and the user learns neither how far it got nor what is on
disk. The entry points wrap their ``Trainer`` call in :func:`explain_sigterm`, which turns
that exception into :class:`Interrupted`: status 1 and a message saying what was kept.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class Interrupted(SIGTERMException):
    """A SIGTERM stop with a message. As a ``SystemExit`` whose code is a string, the
    process prints the message and exits with status 1.
    """


@contextmanager
def explain_sigterm(note: Callable[[], str]) -> Iterator[None]:
    """Re-raise a SIGTERM stop of the block as :class:`Interrupted` with ``note()`` appended.

    ``note`` is called only on a stop, when the state it describes (steps done, files
    written) is final. A stop that already has a message (an editor's own, such as MEMIT's
    between z* chunks) keeps it in front of the note. The message is also logged, so the run
    directory's log says why the run has no summary. Under DDP every rank gets the SIGTERM
    (Lightning forwards it); only rank 0 says why, the others exit with status 1 silently, so a
    stopped two-process run prints its note once, not once per process.
    """
    try:
        yield
    except SIGTERMException as stop:
        if getattr(rank_zero_only, "rank", 0) != 0:
            raise Interrupted(1) from None
        said = stop.code if isinstance(stop.code, str) else ""
        message = "; ".join(part for part in (said, note()) if part)
        # the progress bar's line has no newline until the bar closes, which a stop skips: end it,
        # or the message lands at the end of that line (in a terminal, and in a log of stdout and stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()
        logging.getLogger(__name__).error(message)
        raise Interrupted(message) from None
