"""The stop and reload signals of `chatdaemon run`, caught from its first moment.

Loading the config and the bot (a handler module may take seconds to import) happens before
the daemon runs. Until then a signal is only remembered, never fatal: SIGHUP's default
action would end the process, and SIGTERM would skip the clean stop. The daemon takes the
remembered signals over when it starts (see App._install_signals), through a SignalRelay.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class EarlySignals:
    """SIGHUP, SIGTERM and SIGINT received before the daemon took them over."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def install(self) -> None:
        for signum in (signal.SIGHUP, *STOP_SIGNALS):
            signal.signal(signum, self._remember)

    def _remember(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    @property
    def stop(self) -> bool:
        return any(signum in STOP_SIGNALS for signum in self.received)

    @property
    def reload(self) -> bool:
        return signal.SIGHUP in self.received


class SignalRelay:
    """Acts on SIGTERM, SIGINT and SIGHUP in a thread of its own, never in a signal handler.

    A Python signal handler runs in the main thread between two of its bytecodes, possibly
    while that thread holds a lock: the one inside the threading.Event its loop waits on, say.
    A handler that then sets that Event waits for the lock forever, and the daemon hangs on
    SIGTERM or SIGHUP. So the handlers here do nothing; the interpreter's C-level handler
    writes each signal's number to a pipe (signal.set_wakeup_fd), and the relay thread reads
    it and calls `on_stop(signum)` or, for SIGHUP, `on_hangup()`, where taking a lock is safe.
    """

    def __init__(self, on_stop: Callable[[int], None], on_hangup: Callable[[], None]) -> None:
        self.on_stop = on_stop
        self.on_hangup = on_hangup

    def install(self) -> None:
        """Take the three signals over (from the main thread, as signal.signal requires)."""
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)   # a signal never blocks on a full pipe
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, *STOP_SIGNALS):
            signal.signal(signum, _carried_by_the_pipe)
        threading.Thread(target=self._relay, args=(read_end,), name="signals", daemon=True).start()

    def _relay(self, read_end: int) -> None:
        while True:
            received = os.read(read_end, 64)
            if not received:
                return
            for signum in received:
                self.dispatch(signum)

    def dispatch(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            self.on_stop(signum)
        elif signum == signal.SIGHUP:
            self.on_hangup()


def _carried_by_the_pipe(signum: int, frame: object) -> None:
    """A Python handler must be set for the wake-up pipe to carry the signal; it does nothing."""
