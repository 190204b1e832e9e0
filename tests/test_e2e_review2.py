"""The real daemon over plain HTTP (blocking sockets with kernel timeouts) told to stop in the
middle of a long poll."""

from __future__ import annotations

import time

from conftest import wait_until

UNIT_STOP_SECONDS = 30   # TimeoutStopSec in systemd/chatdaemon.service
LONG_POLL = 40


def test_sigterm_during_a_40_second_long_poll_stops_well_within_the_units_timeout(
        telegram, start_daemon):
    daemon = start_daemon(config={"polling": {"timeout": LONG_POLL}})

    telegram.push_update({"message": {"message_id": 1, "date": 0, "text": "hi",
                                      "chat": {"id": 77, "type": "private"}}})
    assert telegram.wait_for_sent(1, timeout=30), daemon.log()

    def long_poll_open() -> bool:
        """The latest getUpdates is a long poll after the one the update ended (the start-up
        probes long-poll once): nothing is pushed after it, so the test double holds it."""
        polls = telegram.calls_to("getUpdates")
        long_polls = [call for call in polls if call["params"].get("timeout") == LONG_POLL]
        return len(long_polls) >= 2 and polls[-1] is long_polls[-1]

    assert wait_until(long_poll_open, timeout=30), daemon.log()
    started = time.monotonic()
    assert daemon.stop(timeout=UNIT_STOP_SECONDS) == 0, daemon.log()
    took = time.monotonic() - started
    assert took < 10, f"stopping took {took:.1f} s with a long poll open"
    assert "received SIGTERM" in daemon.log()
