"""SIGINT / SIGTERM as exceptions, so a stopped run gets the same bookkeeping as a finished one.

Outside training a signal stops at once (:func:`stop_on_signals`); inside it the first one is
only noted and honoured between optimizer steps (:func:`deferred_stop`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run.

    ``saved`` says what ``checkpoints/last.pt`` holds when the trainer wrote it on the way out
    (None when the signal arrived outside training).
    """

    def __init__(self, signum: int, saved: str | None = None) -> None:
        self.signum = int(signum)
        self.saved = saved
        super().__init__(self.signal_name)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        # The shell convention for "killed by signal N"; 130 for Ctrl-C, 143 for SIGTERM.
        return 128 + self.signum


class StopRequest:
    """The signal noted by :func:`deferred_stop`, None until one arrives."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signum_or_term(self) -> int:
        # Under torchrun a rank may stop because another rank was signalled.
        return self.signum if self.signum is not None else signal.SIGTERM


@contextmanager
def signal_handlers(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block, the previous ones restored after;
    signal.signal only works in the main thread, so elsewhere the defaults stay."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted`.

    SIGTERM's default would end the process without running any cleanup, leaving
    ``status: running`` behind; as an exception it gets the same bookkeeping as Ctrl-C.
    """

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    with signal_handlers(handler):
        yield


@contextmanager
def deferred_stop() -> Iterator[StopRequest]:
    """The first SIGINT/SIGTERM is only noted, so training stops between optimizer steps.

    An exception raised inside ``optimizer.step()`` could leave parameters half updated; the
    loop checks the request at step boundaries instead. A second signal raises at once.
    """
    request = StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = signum
        log.warning(
            "%s received: saving and stopping after the current optimizer step "
            "(send it again to stop at once)",
            signal.Signals(signum).name,
        )

    with signal_handlers(handler):
        yield request
