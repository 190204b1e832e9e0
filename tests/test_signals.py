"""Stop and reload signals are acted on outside the signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds the lock inside the threading.Event its loop waits on; a handler that sets
the Event then waits for that lock forever. Each test runs in a fresh interpreter, so the
signals and the wake-up pipe are its own, and a hang ends at a bounded timeout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The main thread holds the wake Event's lock when the signal lands (as it does for a moment
# inside every wake.wait() and wake.clear() of the supervising loop), runs a few bytecodes
# there so the handler gets its turn, lets go, then waits for the stop to be seen.
HELD_WHEN_SIGNALLED = """
    import os, signal, sys, threading, time
    sys.path.insert(0, {root!r})
    from chatdaemon.app import App, Controls

    app = App.__new__(App)
    app.controls, app.early = Controls(), None
    app._install_signals()
    watchdog = threading.Timer(5.0, lambda: os._exit(3))   # stuck: the handler took the lock
    watchdog.daemon = True
    watchdog.start()
    with app.controls.wake._cond:
        os.kill(os.getpid(), signal.{signal})
        for _ in range(1000):
            time.sleep(0)
    seen = app.controls.{seen}.wait(5.0)
    print("seen" if seen else "not seen", app.controls.reload_requested, flush=True)
    os._exit(0)
"""


def run_held(signal_name: str, seen: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(HELD_WHEN_SIGNALLED).format(root=str(ROOT), signal=signal_name,
                                                         seen=seen)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)


def test_sigterm_while_the_loop_holds_its_events_lock_still_stops():
    result = run_held("SIGTERM", "stop_event")
    assert result.returncode == 0, ("the stop hung", result.stdout, result.stderr)
    assert result.stdout.split()[0] == "seen", result.stdout


def test_sighup_while_the_loop_holds_its_events_lock_still_asks_for_a_reload():
    result = run_held("SIGHUP", "wake")
    assert result.returncode == 0, ("the reload hung", result.stdout, result.stderr)
    assert result.stdout.split() == ["seen", "True"], result.stdout
