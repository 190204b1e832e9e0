"""Fault bench: the daemon as a process against the Bot API test double, one fault class at a time.

    python bench/faults.py [--only NAME ...]

Each class runs the counter bot with a fresh database and a fresh double, pushes traffic
(every chat's reply is its message count, so a lost update shows as a missing number and a
repeated reply as a number seen twice), injects its fault, and prints:
  lost        messages that never got their reply
  duplicates  replies sent twice
  recover_s   from the fault to the reply to a sentinel message pushed right after it
  peak_rss_mb the daemon's peak resident memory (VmHWM), whole run
Classes:
  malformed   one update in five is malformed (a string, bad ids, a chat id over int64, a
              callback_query.message that is a string, nesting 500 deep), mixed into traffic
  retry_after getUpdates answers 429 with retry_after "soon", NaN, Infinity, -1 and true
  oversize    a 100 MiB getUpdates answer
  deep        an update nested 900 levels deep (it parses; the depth cap rejects it)
  blip404     one 404 on getUpdates mid-run (confirmed with getMe; no exit)
  send_faults 1% each of sendMessage calls fail with 500, 429 (retry_after 1), a dropped connection
  kill9       SIGKILL mid-run, then a restart on the same database
A getUpdates answer nested 100,000 deep cannot be sent through the double (it serialises
answers from Python objects); tests/test_intake.py covers it against a raw server.
Bounded: every wait has a deadline; the whole bench takes about a minute or two.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_telegram import FakeTelegram  # noqa: E402

TOKEN = "123456:FAULT-token_abcdefghijklmnopqrstuvwxyz"
CHATS = 20
PER_CHAT = 10
SENTINEL_CHAT = 9_999_999


class Run:
    """The counter bot as a process, with its own database, against its own test double."""

    def __init__(self) -> None:
        self.scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-faults-")
        self.dir = Path(self.scratch.name)
        self.telegram = FakeTelegram(TOKEN).start()
        (self.dir / "config.yaml").write_text("polling: {timeout: 2}\nhooks: {port: 0}\n")
        self.logs = 0
        self.peak_kib = 0
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        self.logs += 1
        log = open(self.dir / f"daemon-{self.logs}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(ROOT / "handlers" / "counter"),
             "--db", str(self.dir / "faults.sqlite3"), "--api-url", self.telegram.url,
             "--rate-limits", "off", "--config", str(self.dir / "config.yaml"),
             "--log-level", "WARNING"],
            env={**os.environ, "CHATDAEMON_TOKEN": TOKEN}, stdout=log, stderr=subprocess.STDOUT,
            cwd=str(ROOT))
        log.close()
        since = len(self.telegram.calls_to("getUpdates"))
        settled = self.telegram.wait_for(   # past its probes (one of them long): it stores
            lambda: sum(str(c["params"].get("timeout")) == "2"
                        for c in self.telegram.calls_to("getUpdates")[since:]) >= 2, 30)
        if not settled:
            raise RuntimeError("the daemon did not start polling")
        return process

    def restart_after_kill9(self) -> None:
        self.sample()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = self._start()

    def sample(self) -> None:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    self.peak_kib = max(self.peak_kib, int(line.split()[1]))

    def push_traffic(self, base: int) -> dict[int, int]:
        chats = [base + c for c in range(CHATS)]
        self.telegram.push_many([(chat, "m") for _ in range(PER_CHAT) for chat in chats])
        return {chat: PER_CHAT for chat in chats}

    def sentinel(self, timeout: float = 60) -> float:
        """Push a message to a chat of its own; seconds until its reply arrives."""
        before = len(self.telegram.sent_to(SENTINEL_CHAT))
        began = time.monotonic()
        self.telegram.push_message(SENTINEL_CHAT, "sentinel")
        if not self.telegram.wait_for(
                lambda: len(self.telegram.sent_to(SENTINEL_CHAT)) > before, timeout):
            return math.inf
        return time.monotonic() - began

    def tally(self, pushed: dict[int, int], timeout: float = 60) -> tuple[int, int]:
        """(lost, duplicates) once every chat got its last count or the deadline passed."""
        self.telegram.wait_for(lambda: all(
            str(n) in self.telegram.sent_to(chat) for chat, n in pushed.items()), timeout)
        lost = duplicates = 0
        for chat, n in pushed.items():
            replies = [int(text) for text in self.telegram.sent_to(chat)]
            lost += len(set(range(1, n + 1)) - set(replies))
            duplicates += len(replies) - len(set(replies))
        return lost, duplicates

    def close(self) -> int | None:
        self.sample()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = None
        self.telegram.stop()
        self.scratch.cleanup()
        return status


def malformed(run: Run) -> float:
    deep: dict = {}
    inner = deep
    for _ in range(500):
        inner["x"] = {}
        inner = inner["x"]
    bad = itertools.cycle([
        {"callback_query": {"id": "q", "data": "x", "message": "a string"}},
        {"message": {"message_id": 1, "chat": {"id": 2 ** 70}, "text": "m"}},
        {"message": ["not", "an", "object"]},
        {"message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "text": "m", "x": deep}},
    ])
    began = time.monotonic()
    pushed: dict[int, int] = {}
    for i in range(CHATS * PER_CHAT):
        chat = 1_000_000 + i % CHATS
        run.telegram.push_message(chat, "m")
        pushed[chat] = pushed.get(chat, 0) + 1
        if i % 4 == 0:
            run.telegram.push_update(next(bad))
    run.telegram.set_next_response("getUpdates", 200, {"ok": True, "result": [
        {"update_id": 2 ** 63, "message": {}}, {"update_id": True, "message": {}}, "junk"]})
    run.result = run.tally(pushed)
    return time.monotonic() - began


def retry_after(run: Run) -> float:
    pushed = run.push_traffic(2_000_000)
    began = time.monotonic()
    for value in ("soon", math.nan, math.inf, -1, True):
        run.telegram.set_next_response("getUpdates", 429, {
            "ok": False, "error_code": 429, "description": "Too Many Requests",
            "parameters": {"retry_after": value}})
    recover = run.sentinel(timeout=90)
    run.result = run.tally(pushed)
    return recover if recover < math.inf else time.monotonic() - began


def oversize(run: Run) -> float:
    pushed = run.push_traffic(3_000_000)
    run.tally(pushed)
    run.telegram.set_next_response("getUpdates", 200, {"ok": True, "result": [
        {"update_id": 5, "message": {"message_id": 1, "chat": {"id": 3}, "text": "x" * (100 << 20)}}]})
    recover = run.sentinel()
    more = run.push_traffic(3_100_000)
    run.result = run.tally({**pushed, **more})
    return recover


def deep(run: Run) -> float:
    nested: dict = {}
    inner = nested
    for _ in range(900):
        inner["x"] = {}
        inner = inner["x"]
    pushed = run.push_traffic(4_000_000)
    run.telegram.push_update({"message": {"message_id": 1, "chat": {"id": 4, "type": "private"},
                                          "text": "deep", "x": nested}})
    recover = run.sentinel()
    run.result = run.tally(pushed)
    return recover


def blip404(run: Run) -> float:
    pushed = run.push_traffic(5_000_000)
    run.telegram.set_next_response("getUpdates", 404, {"ok": False, "error_code": 404,
                                                       "description": "Not Found"})
    recover = run.sentinel()
    more = run.push_traffic(5_100_000)
    run.result = run.tally({**pushed, **more})
    return recover


def send_faults(run: Run) -> float:
    run.telegram.set_faults("sendMessage", p500=0.01, p429=0.01, pdrop=0.01, retry_after=1, seed=7)
    began = time.monotonic()
    pushed: dict[int, int] = {}
    for _ in range(5):
        for chat, n in run.push_traffic(6_000_000).items():
            pushed[chat] = pushed.get(chat, 0) + n
    run.result = run.tally(pushed, timeout=120)
    return time.monotonic() - began


def kill9(run: Run) -> float:
    pushed = run.push_traffic(7_000_000)
    total = sum(pushed.values())
    run.telegram.wait_for_sent(total // 3, 60)
    killed = time.monotonic()
    run.restart_after_kill9()
    run.sentinel()
    run.result = run.tally(pushed)
    return time.monotonic() - killed  # a new process, its probes, the replay, the sentinel


CLASSES = {"malformed": malformed, "retry_after": retry_after, "oversize": oversize, "deep": deep,
           "blip404": blip404, "send_faults": send_faults, "kill9": kill9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CLASSES), default=list(CLASSES))
    args = parser.parse_args()
    print(f"{'fault':12s} {'lost':>5s} {'dups':>5s} {'recover_s':>10s} {'peak_rss_mb':>12s}  exit")
    for name in args.only:
        run = Run()
        try:
            seconds = CLASSES[name](run)
            lost, duplicates = run.result
        finally:
            status = run.close()
        print(f"{name:12s} {lost:5d} {duplicates:5d} {seconds:10.2f} {run.peak_kib / 1024:12.1f}  "
              f"{status}", flush=True)


if __name__ == "__main__":
    main()
