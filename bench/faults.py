"""Fault bench: the daemon as a process against the Bot API test double, one fault class at a time.

    python bench/faults.py [--only NAME ...]

Each class runs a counting bot (the counter, or a bench bot that counts the same way) with
a fresh database and a fresh double, pushes traffic from several chats (every chat's reply
is its message count, so a lost update shows as a missing number and a repeated reply as a
number seen twice), injects its fault, and prints:
  lost        messages that never got their reply (a faulty message: never got the error text)
  duplicates  replies sent twice
  recover_s   from the fault to the reply to a sentinel message pushed right after it
  peak_rss_mb the daemon's peak resident memory (VmHWM, read while it runs: a process that
              dies by itself is read up to its last check; the highest of a run's processes)
  exit        the daemon's exit status after SIGTERM at the end
Classes:
  malformed   one update in five is malformed (a string, bad ids, a chat id over int64, a
              callback_query.message that is a string, nesting 500 deep), mixed into traffic
  retry_after getUpdates answers 429 with retry_after "soon", NaN, Infinity, -1 and true
  oversize    a 100 MiB getUpdates answer
  deep        an update nested 900 levels deep (it parses; the depth cap rejects it)
  blip404     one 404 on getUpdates mid-run (confirmed with getMe; no exit)
  send_faults 1% each of sendMessage calls fail with 500, 429 (retry_after 1), a dropped connection
  kill9       SIGKILL mid-run, then a restart on the same database
  regex       a handler pattern that backtracks (^(a|aa)+$) gets hostile messages in one chat
  template    a template bomb: a 300 MB repetition and three nested loops over 4,000 characters
  hung        a Python handler hangs forever on one update (delegates: max 2, update_timeout 2)
  poison      an update that ends the process (os._exit); restarted each time, as systemd would
  reload      SIGHUP with a bot file holding a Latin-1 byte under traffic, then a good file
  db_in_use   a second daemon on the same database, while the first one answers
A `note` column says how the faulty messages were answered and what the class measured
besides (restarts, quarantined updates, the second daemon's exit).
The bots of the last classes are in tests/handlers/bench_faults (hostile, stuck).
A getUpdates answer nested 100,000 deep cannot be sent through the double (it serialises
answers from Python objects); tests/test_intake.py covers it against a raw server.
Bounded: every wait has a deadline; the whole bench takes a few minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fake_telegram import FakeTelegram  # noqa: E402

TOKEN = "123456:FAULT-token_abcdefghijklmnopqrstuvwxyz"
CHATS = 20
PER_CHAT = 10
SENTINEL_CHAT = 9_999_999
COUNTER = ROOT / "handlers" / "counter"
BENCH_BOTS = ROOT / "tests" / "handlers" / "bench_faults"
HOSTILE_ERROR = "Sorry, that broke."                  # tests/handlers/bench_faults/hostile
STUCK_ERROR = "That one could not be handled."        # tests/handlers/bench_faults/stuck
BASE_CONFIG = "polling: {timeout: 2}\nhooks: {port: 0}\n"
MAX_RESTARTS = 6                                      # poison: a supervisor that gives up


@dataclass(frozen=True)
class Setup:
    """What a class runs: which bot, which daemon config, how much log."""

    handlers: Path = COUNTER
    config: str = BASE_CONFIG
    log_level: str = "WARNING"
    copy_handlers: bool = False     # the bot is copied into the scratch dir, to be rewritten


@dataclass
class Outcome:
    lost: int
    duplicates: int
    recover_s: float
    note: str = ""


@dataclass
class Faulty:
    """A chat that gets faulty messages: each must be answered with `error_text`."""

    chat: int
    error_text: str
    count: int


class Run:
    """A bot as a process, with its own database, against its own test double."""

    def __init__(self, setup: Setup = Setup()) -> None:
        self.setup = setup
        self.scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-faults-")
        self.dir = Path(self.scratch.name)
        self.db = self.dir / "faults.sqlite3"
        self.handlers = setup.handlers
        if setup.copy_handlers:
            self.handlers = Path(shutil.copytree(setup.handlers, self.dir / "bot"))
        self.telegram = FakeTelegram(TOKEN).start()
        (self.dir / "config.yaml").write_text(setup.config)
        self.logs = 0
        self.peak_kib = 0
        self.statuses: list[int | None] = []   # exit statuses of processes that ended
        self.process = self._start()

    def spawn(self) -> subprocess.Popen:
        """One more `chatdaemon run` on this run's database; its output in a log of its own."""
        self.logs += 1
        log = open(self.dir / f"daemon-{self.logs}.log", "wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(self.handlers),
             "--db", str(self.db), "--api-url", self.telegram.url,
             "--rate-limits", "off", "--config", str(self.dir / "config.yaml"),
             "--log-level", self.setup.log_level],
            env={**os.environ, "CHATDAEMON_TOKEN": TOKEN}, stdout=log, stderr=subprocess.STDOUT,
            cwd=str(ROOT))
        log.close()
        return process

    def _start(self) -> subprocess.Popen:
        since = len(self.telegram.calls_to("getUpdates"))
        process = self.spawn()
        settled = self.telegram.wait_for(   # past its probes (one of them long): it stores
            lambda: sum(str(c["params"].get("timeout")) == "2"
                        for c in self.telegram.calls_to("getUpdates")[since:]) >= 2, 30)
        if not settled:
            raise RuntimeError("the daemon did not start polling")
        return process

    def log(self) -> str:
        """Every daemon's output of this run, oldest first."""
        return "".join((self.dir / f"daemon-{n}.log").read_text(errors="replace")
                       for n in range(1, self.logs + 1))

    def sample(self) -> None:
        """Keep the daemon's VmHWM. Not wait4's ru_maxrss: a child keeps the bench's own
        peak from before its exec, and the bench holds a 100 MiB answer in `oversize`."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
        except OSError:
            pass  # already gone

    def ended(self) -> bool:
        """Whether the daemon ended (sampled while it runs, reaped when it ended)."""
        if self.process.returncode is not None:
            return True
        self.sample()
        if self.process.poll() is None:
            return False
        self.statuses.append(self.process.returncode)
        return True

    def wait_ended(self, timeout: float) -> int | None:
        """The daemon's exit status once it ended, None when it still runs after `timeout`."""
        if self.telegram.wait_for(self.ended, timeout):
            return self.process.returncode
        return None

    def restart_after_kill9(self) -> None:
        self.sample()
        self.process.send_signal(signal.SIGKILL)
        self.wait_ended(10)
        self.process = self._start()

    def threads(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0

    def push_traffic(self, base: int) -> dict[int, int]:
        chats = [base + c for c in range(CHATS)]
        self.telegram.push_many([(chat, "m") for _ in range(PER_CHAT) for chat in chats])
        return {chat: PER_CHAT for chat in chats}

    def sentinel(self, timeout: float = 60) -> float:
        """Push a message to a chat of its own; seconds until its reply arrives."""
        before = len(self.telegram.sent_to(SENTINEL_CHAT))
        began = time.monotonic()
        self.telegram.push_message(SENTINEL_CHAT, "m")
        if not self.telegram.wait_for(
                lambda: len(self.telegram.sent_to(SENTINEL_CHAT)) > before, timeout):
            return math.inf
        return time.monotonic() - began

    def counts(self, chat: int) -> list[int]:
        """The counts a chat was sent ("7", or "v2 7" after a reload), other replies left out."""
        words = (text.rsplit(" ", 1)[-1] for text in self.telegram.sent_to(chat))
        return [int(word) for word in words if word.isdigit()]

    def errors(self, faulty: Faulty) -> int:
        return self.telegram.sent_to(faulty.chat).count(faulty.error_text)

    def tally(self, pushed: dict[int, int], timeout: float = 60,
              faulty: Faulty | None = None) -> tuple[int, int]:
        """(lost, duplicates) once every chat got its last count or the deadline passed.

        A faulty chat's messages are lost when they got no error text."""
        self.telegram.wait_for(lambda: all(
            n in self.counts(chat) for chat, n in pushed.items()) and (
            faulty is None or self.errors(faulty) >= faulty.count), timeout)
        lost = duplicates = 0
        for chat, n in pushed.items():
            replies = self.counts(chat)
            lost += len(set(range(1, n + 1)) - set(replies))
            duplicates += len(replies) - len(set(replies))
        if faulty is not None:
            lost += max(0, faulty.count - self.errors(faulty))
            duplicates += max(0, self.errors(faulty) - faulty.count)
        return lost, duplicates

    def status(self) -> dict:
        """What `chatdaemon status --json` says about this run's database."""
        result = subprocess.run(
            [sys.executable, "-m", "chatdaemon", "status", "--db", str(self.db), "--json"],
            capture_output=True, text=True, timeout=60, cwd=str(ROOT))
        return json.loads(result.stdout)

    def close(self) -> int | None:
        """SIGTERM; the exit status (-9 when it had to be killed after 30 s)."""
        if not self.ended():
            self.process.send_signal(signal.SIGTERM)
            if self.wait_ended(30) is None:
                self.process.kill()
                self.process.wait(10)
        self.telegram.stop()
        self.scratch.cleanup()
        return self.process.returncode

def malformed(run: Run) -> Outcome:
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
    return Outcome(*run.tally(pushed), time.monotonic() - began)


def retry_after(run: Run) -> Outcome:
    pushed = run.push_traffic(2_000_000)
    began = time.monotonic()
    for value in ("soon", math.nan, math.inf, -1, True):
        run.telegram.set_next_response("getUpdates", 429, {
            "ok": False, "error_code": 429, "description": "Too Many Requests",
            "parameters": {"retry_after": value}})
    recover = run.sentinel(timeout=90)
    return Outcome(*run.tally(pushed), recover if recover < math.inf else time.monotonic() - began)


def oversize(run: Run) -> Outcome:
    pushed = run.push_traffic(3_000_000)
    run.tally(pushed)
    run.telegram.set_next_response("getUpdates", 200, {"ok": True, "result": [
        {"update_id": 5, "message": {"message_id": 1, "chat": {"id": 3}, "text": "x" * (100 << 20)}}]})
    recover = run.sentinel()
    more = run.push_traffic(3_100_000)
    return Outcome(*run.tally({**pushed, **more}), recover)


def deep(run: Run) -> Outcome:
    nested: dict = {}
    inner = nested
    for _ in range(900):
        inner["x"] = {}
        inner = inner["x"]
    pushed = run.push_traffic(4_000_000)
    run.telegram.push_update({"message": {"message_id": 1, "chat": {"id": 4, "type": "private"},
                                          "text": "deep", "x": nested}})
    recover = run.sentinel()
    return Outcome(*run.tally(pushed), recover)


def blip404(run: Run) -> Outcome:
    pushed = run.push_traffic(5_000_000)
    run.telegram.set_next_response("getUpdates", 404, {"ok": False, "error_code": 404,
                                                       "description": "Not Found"})
    recover = run.sentinel()
    more = run.push_traffic(5_100_000)
    return Outcome(*run.tally({**pushed, **more}), recover)


def send_faults(run: Run) -> Outcome:
    run.telegram.set_faults("sendMessage", p500=0.01, p429=0.01, pdrop=0.01, retry_after=1, seed=7)
    began = time.monotonic()
    pushed: dict[int, int] = {}
    for _ in range(5):
        for chat, n in run.push_traffic(6_000_000).items():
            pushed[chat] = pushed.get(chat, 0) + n
    return Outcome(*run.tally(pushed, timeout=120), time.monotonic() - began)


def kill9(run: Run) -> Outcome:
    pushed = run.push_traffic(7_000_000)
    total = sum(pushed.values())
    run.telegram.wait_for_sent(total // 3, 60)
    killed = time.monotonic()
    run.restart_after_kill9()
    run.sentinel()
    # recovery: a new process, its probes, the replay, the sentinel
    return Outcome(*run.tally(pushed), time.monotonic() - killed)


# -- faults inside the daemon: a bot's own handlers, its file, its database ------------------

def add(pushed: dict[int, int], more: dict[int, int]) -> dict[int, int]:
    """Counts of two rounds of traffic, added chat by chat."""
    return {chat: pushed.get(chat, 0) + more.get(chat, 0) for chat in {*pushed, *more}}


def attack(run: Run, base: int, texts: list[str]) -> Outcome:
    """Hostile messages in one chat between two counted ones, the other chats chatting on."""
    faulty = Faulty(base, HOSTILE_ERROR, len(texts))
    began = time.monotonic()
    run.telegram.push_many([(faulty.chat, text) for text in ["m", *texts, "m"]])
    pushed = {faulty.chat: 2, **run.push_traffic(base + 1)}
    recover = run.sentinel()
    lost, duplicates = run.tally(pushed, faulty=faulty)
    others = max(max(run.telegram.sent_times(chat), default=began)
                 for chat in pushed if chat != faulty.chat) - began
    hostile = max(run.telegram.sent_times(faulty.chat), default=began) - began
    note = (f"{run.errors(faulty)}/{faulty.count} hostile got the error text; other chats "
            f"done at {others:.1f} s, the hostile chat at {hostile:.1f} s")
    return Outcome(lost, duplicates, recover, note)


def regex(run: Run) -> Outcome:
    return attack(run, 8_000_000, ["a" * 34 + "!"] * 8)


def template(run: Run) -> Outcome:
    return attack(run, 9_000_000, ["/mul 300000000"] * 3 + ["/loops " + "x" * 4000] * 3)


def quarantine_note(run: Run, faulty: Faulty) -> str:
    """How many updates `chatdaemon status` counts as quarantined; how many of them the
    inbox's quarantined column places in chats other than the faulty one."""
    total = run.status()["quarantined"]
    with closing(sqlite3.connect(f"{run.db.as_uri()}?mode=ro", uri=True)) as db:
        elsewhere = db.execute("SELECT COUNT(*) FROM inbox WHERE quarantined IS NOT NULL"
                               " AND chat_id != ?", (faulty.chat,)).fetchone()[0]
    return f"{total} quarantined, {elsewhere} of them in other chats"


def hung(run: Run) -> Outcome:
    faulty = Faulty(10_000_000, STUCK_ERROR, 1)
    began = time.monotonic()
    run.telegram.push_many([(faulty.chat, text) for text in ("m", "hang", "m")])
    pushed = {faulty.chat: 2, **run.push_traffic(faulty.chat + 1)}
    recover = run.sentinel()  # a chat of its own, while the hung update holds one of two slots
    lost, duplicates = run.tally(pushed, faulty=faulty)
    answered = run.telegram.sent_times(faulty.chat)
    set_aside = answered[1] - began if len(answered) > 1 else math.inf
    tries = run.log().count("still not done after 2 s")
    note = (f"given up {tries} times, error text after {set_aside:.1f} s; "
            f"{quarantine_note(run, faulty)}; {run.threads()} threads left")
    return Outcome(lost, duplicates, recover, note)


def poison(run: Run) -> Outcome:
    faulty = Faulty(11_000_000, STUCK_ERROR, 1)
    pushed = run.push_traffic(faulty.chat + 1)
    run.telegram.push_many([(faulty.chat, text) for text in ("m", "die", "m")])
    pushed = add({faulty.chat: 2, **pushed}, run.push_traffic(faulty.chat + 1))
    began = time.monotonic()
    restarts = 0
    # as systemd's Restart=on-failure would: start it again each time it dies, until it
    # answered the poison (set aside) or the supervisor gives up
    while restarts < MAX_RESTARTS and run.telegram.wait_for(
            lambda: run.ended() or run.errors(faulty) > 0, 60) and run.ended():
        restarts += 1
        run.process = run.spawn()
    moved_on = time.monotonic() - began
    recover = run.sentinel()
    lost, duplicates = run.tally(pushed, faulty=faulty, timeout=30)
    collateral = sum(run.telegram.sent_to(chat).count(STUCK_ERROR)
                     for chat in pushed if chat != faulty.chat)
    note = (f"{restarts} restarts (exit {', '.join(map(str, run.statuses))}), chat moved on after "
            f"{moved_on:.1f} s; {quarantine_note(run, faulty)}; "
            f"{collateral} messages of other chats got the error text")
    return Outcome(lost, duplicates, recover, note)


BROKEN_BOT = b"# caf\xe9: a Latin-1 byte where UTF-8 is expected\npython: counter:MessageCounter\n"
NEW_BOT = """\
# the counter again, in YAML, saying which bot answers
handlers:
  - name: count
    response: "v2 {{ (vars['count']|default(0)|int) + 1 }}"
    save: {count: "{{ (vars['count']|default(0)|int) + 1 }}"}
"""


def reload(run: Run) -> Outcome:
    bot_file = run.handlers / "bot.yaml"
    pushed = run.push_traffic(12_000_000)
    bot_file.write_bytes(BROKEN_BOT)
    run.process.send_signal(signal.SIGHUP)   # under traffic: the first round is in flight
    run.telegram.wait_for(lambda: "reload failed" in run.log(), 30)
    recover = run.sentinel()
    pushed = add(pushed, run.push_traffic(12_000_000))
    run.tally(pushed)                         # the old bot answered all of that
    old = sum(not text.startswith("v2 ") for chat in pushed for text in run.telegram.sent_to(chat))
    bot_file.write_text(NEW_BOT)
    run.process.send_signal(signal.SIGHUP)
    run.telegram.wait_for(lambda: "reloaded:" in run.log(), 30)
    pushed = add(pushed, run.push_traffic(12_000_000))
    lost, duplicates = run.tally(pushed)
    new = sum(text.startswith("v2 ") for chat in pushed for text in run.telegram.sent_to(chat))
    failure = next((line.split("reload failed; ", 1)[1] for line in run.log().splitlines()
                    if "reload failed; " in line), "no reload failure logged")
    failure = failure.replace(f"{run.dir}/", "")
    note = f"old bot answered {old}, the new one {new}; {failure}"
    return Outcome(lost, duplicates, recover, note)


def db_in_use(run: Run) -> Outcome:
    pushed = run.push_traffic(13_000_000)
    began = time.monotonic()
    second = run.spawn()
    log = run.dir / f"daemon-{run.logs}.log"
    try:
        status: int | None = second.wait(30)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait(10)
        status = None
    refused = time.monotonic() - began
    recover = run.sentinel()
    pushed = add(pushed, run.push_traffic(13_000_000))
    lost, duplicates = run.tally(pushed)
    said = (log.read_text(errors="replace").strip().splitlines() or ["(nothing)"])[-1]
    note = f"second daemon: exit {status} after {refused:.2f} s: {said.replace(f'{run.dir}/', '')}"
    return Outcome(lost, duplicates, recover, note)


CLASSES = {
    "malformed": (malformed, Setup()), "retry_after": (retry_after, Setup()),
    "oversize": (oversize, Setup()), "deep": (deep, Setup()), "blip404": (blip404, Setup()),
    "send_faults": (send_faults, Setup()), "kill9": (kill9, Setup()),
    "regex": (regex, Setup(BENCH_BOTS / "hostile")),
    "template": (template, Setup(BENCH_BOTS / "hostile")),
    "hung": (hung, Setup(BENCH_BOTS / "stuck",
                         BASE_CONFIG + "delegates: {max: 2, update_timeout: 2}\n")),
    "poison": (poison, Setup(BENCH_BOTS / "stuck")),
    "reload": (reload, Setup(COUNTER, log_level="INFO", copy_handlers=True)),
    "db_in_use": (db_in_use, Setup()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CLASSES), default=list(CLASSES))
    args = parser.parse_args()
    print(f"{'fault':12s} {'lost':>5s} {'dups':>5s} {'recover_s':>10s} {'peak_rss_mb':>12s}  "
          f"{'exit':>4s}  note", flush=True)
    for name in args.only:
        function, setup = CLASSES[name]
        run = Run(setup)
        try:
            outcome = function(run)
        finally:
            status = run.close()
        print(f"{name:12s} {outcome.lost:5d} {outcome.duplicates:5d} {outcome.recover_s:10.2f} "
              f"{run.peak_kib / 1024:12.1f}  {status!s:>4s}  {outcome.note}", flush=True)


if __name__ == "__main__":
    main()
