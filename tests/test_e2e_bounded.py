"""The daemon as a process running a hostile bot: every attack answered, other chats too."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TEST_HANDLERS
from test_bounded import HOSTILE_TEXT, TrickleServer

HOSTILE = TEST_HANDLERS / "hostile"
ERROR_TEXT = "Sorry, that broke."
ATTACKS = [HOSTILE_TEXT] * 4 + ["/mul 300000000", "/loops " + "x" * 4000,
                                "/print " + "y" * 4000, "/deep", "/nest compare",
                                "/nest print", "/nest json", "/nest pprint"]


@pytest.fixture
def upstream():
    with TrickleServer(pause=0.5) as server:
        yield server


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_attacks_get_the_error_text_and_other_chats_are_answered_meanwhile(
        telegram, start_daemon, upstream):
    daemon = start_daemon(HOSTILE, env={"UPSTREAM_URL": upstream.url})
    for text in ATTACKS:
        telegram.push_message(1, text)
    telegram.push_message(2, "hello")
    telegram.push_message(1, "hello")
    assert telegram.wait_for(lambda: len(telegram.sent_to(1)) >= len(ATTACKS) + 1, 30), \
        f"chat 1 got {telegram.sent_to(1)}; log:\n{daemon.log()[-3000:]}"
    assert telegram.wait_for(lambda: telegram.sent_to(2), 10)
    assert telegram.sent_to(1) == [ERROR_TEXT] * len(ATTACKS) + ["hi 1"]
    assert telegram.sent_to(2) == ["hi 2"]
    # chat 2 did not wait for chat 1's attacks: it was answered before the last of them
    assert telegram.sent_times(2)[0] < telegram.sent_times(1)[len(ATTACKS) - 1]
    peak = peak_rss_mb(daemon.pid)
    assert peak < 120, f"the daemon's peak RSS was {peak:.0f} MB"
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    log = daemon.log()
    assert "handler backtrack" in log and "did not finish within 0.25 s" in log
    assert "handler mul" in log and "past the size bound" in log
    assert "handler loops" in log and "past the iterations bound" in log
    assert "handler print" in log
    assert "handler deep" in log and "RecursionError" in log
    assert log.count("handler nest") == 4  # deep structures end in RecursionError, not SIGSEGV


def test_a_trickling_upstream_costs_its_timeout_and_the_chat_goes_on(
        telegram, start_daemon, upstream):
    daemon = start_daemon(HOSTILE, env={"UPSTREAM_URL": upstream.url})
    telegram.push_message(1, "hello")  # the daemon is up and polling
    assert telegram.wait_for(lambda: telegram.sent_to(1) == ["hi 1"], 15)
    pushed = time.monotonic()
    telegram.push_message(1, "/fetch")
    telegram.push_message(2, "hello")
    telegram.push_message(1, "hello")
    assert telegram.wait_for(lambda: len(telegram.sent_to(1)) >= 3, 15), daemon.log()[-3000:]
    assert telegram.sent_to(1) == ["hi 1", "upstream timed out (timeout)", "hi 1"]
    answered = telegram.sent_times(1)[1] - pushed
    assert 2 <= answered < 3.5, f"the request step answered after {answered:.1f} s (timeout: 2)"
    assert telegram.sent_to(2) == ["hi 2"]
    assert telegram.sent_times(2)[0] < telegram.sent_times(1)[1]  # not held up by chat 1
    assert upstream.requests == ["/slow-headers"]
    assert daemon.stop() == 0
    assert "handler fetch" in daemon.log()


def test_check_names_the_backtracking_pattern_with_its_line():
    env = {**os.environ, "UPSTREAM_URL": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "chatdaemon", "check", "--handlers",
                             str(HOSTILE)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    slow = [line for line in result.stdout.splitlines()
            if "is slow on text like" in line and "handler backtrack" in line]
    assert len(slow) == 1, result.stdout
    assert slow[0].startswith(f"warning: {HOSTILE / 'bot.yaml'}:19: handler backtrack"), slow[0]
