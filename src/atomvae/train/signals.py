"""Ctrl-C and SIGTERM during training: finish the step, write a checkpoint, stop (``--resume`` continues)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopRequest:
    """Ctrl-C (or SIGTERM) during training: the first one finishes the current step, writes a checkpoint and
    stops (``--resume`` then continues exactly); a second one interrupts at once. Installed only in the main
    thread (signal handlers cannot be set elsewhere); the previous handlers are restored on exit.
    ``requested`` says whether a stop was asked for."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}  # the handlers to restore (callables, SIG_DFL, SIG_IGN)

    def __enter__(self) -> StopRequest:
        # SIGTERM (a scheduler ending the job) is treated as the first Ctrl-C: a step ends in well under
        # the usual grace period before SIGKILL.
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\natomvae: stopping after this step with a checkpoint (Ctrl-C again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
