"""The daemon's worker threads block the signals it acts on, so the kernel hands SIGTERM,
SIGHUP and SIGINT to the main thread and never interrupts a worker's blocking call (a recv
whose kernel timeout would start over). Read from /proc: each thread's blocked set."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from chatdaemon.delegator import WORKER_BLOCKED_SIGNALS, shield_from_signals

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"
ACTED_ON = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


def blocked(pid: int, tid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{tid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {number for number in range(1, 65) if mask >> (number - 1) & 1}
    raise AssertionError("no SigBlk line")


def masks(pid: int) -> dict[int, set[int]]:
    found = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            found[int(name)] = blocked(pid, int(name))
        except FileNotFoundError:   # a thread that ended meanwhile
            pass
    return found


def test_a_shielded_thread_blocks_the_signals_the_daemon_acts_on():
    assert WORKER_BLOCKED_SIGNALS == ACTED_ON
    seen: list[set[int]] = []

    def work() -> None:
        shield_from_signals()
        seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(10)
    assert seen and ACTED_ON <= seen[0]
    assert not ACTED_ON & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))   # this thread's own


def test_only_the_main_thread_takes_the_daemons_signals(telegram, start_daemon):
    daemon = start_daemon(HANDLERS / "counter")
    for chat in (1, 2, 3):   # three chat threads, alive for the idle timeout
        telegram.push_message(chat, "m")
    assert telegram.wait_for_sent(3, timeout=10)
    by_thread = masks(daemon.pid)
    main = by_thread.pop(daemon.pid)
    assert not ACTED_ON & main
    shielded = [tid for tid, mask in by_thread.items() if ACTED_ON <= mask]
    assert len(shielded) >= 4    # the poller and the three chat threads at least
    # and the signals still work: SIGHUP reloads, SIGTERM stops with 0
    os.kill(daemon.pid, signal.SIGHUP)
    telegram.push_message(4, "m")
    assert telegram.wait_for_sent(4, timeout=10)
    assert daemon.stop() == 0
