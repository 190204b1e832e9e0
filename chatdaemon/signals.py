"""The stop and reload signals of `chatdaemon run`, caught from its first moment.

Loading the config and the bot (a handler module may take seconds to import) happens before
the daemon runs. Until then a signal is only remembered, never fatal: SIGHUP's default
action would end the process, and SIGTERM would skip the clean stop. The daemon takes the
remembered signals over when it starts (see App._install_signals).
"""

from __future__ import annotations

import signal

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
