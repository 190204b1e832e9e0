"""Side by side: the per-chat counter in chatdaemon and in three other Telegram libraries.

    python bench/compare.py [--venv DIR] [--only NAME ...] [--w1]

The peers, pinned (PINS), are installed with pip into a scratch virtual environment on first
use (default ~/.cache/chatdaemon-compare); each runs the same job in its own idiom
(bench/peers/*.py): every message in a chat is answered with how many that chat has sent.
Every bot is a process pointed at its own fresh Bot API test double (tests/fake_telegram.py)
on 127.0.0.1, long-polling with a 5 s timeout; chatdaemon runs handlers/counter with rate
limits off, as for a local Bot API server. `bare-threads` (bench/peers/bare_threads.py) is
no library: chatdaemon's model alone in the standard library, without its checks, to show how
fast the model itself goes here. Three phases per bot, each on a fresh process:

  burst   5,000 messages over 250 chats (--w1: 20,000 over 1,000), pushed at once → messages/s,
          CPU seconds and ms per message, peak RSS, peak threads
  steady  200 messages/s for 10 s over 100 chats → reply latency p50 / p99
  kill    3,000 messages at 200/s over 100 chats, the bot killed with SIGKILL halfway and
          started again at once (same files) → what the crash cost

Each phase starts its clock once the bot has answered one warm-up message; the burst phase
also reports how long that first answer took from the process start ("first reply s").

Each chat's n-th message must be answered "n": a value never answered is missing, one
answered twice a duplicate, an answer lower than the one before out of order. Bounded: every
wait has a deadline, and a whole run takes a few minutes. Never run by the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from fake_telegram import FakeTelegram  # noqa: E402
from procstat import Peaks, cpu_seconds  # noqa: E402

TOKEN = "123456:COMPARE-token_abcdefghijklmnopqrstuvwxyz"
WARM_UP_CHAT = 999_999   # one message answered before each phase starts its clock; never judged
POLL_TIMEOUT = 5
PINS = {"python-telegram-bot": "22.5", "aiogram": "3.22.0", "pyTelegramBotAPI": "4.29.1"}
PEERS = {"python-telegram-bot": "ptb_counter.py", "aiogram": "aiogram_counter.py",
         "aiogram-seq": "aiogram_counter.py sequential", "pyTelegramBotAPI": "telebot_counter.py"}
ORDER_KEEPING_PEER = "aiogram-seq"   # the fastest peer that keeps each chat's order
BARE = "bare-threads"   # the model without chatdaemon: a reference, no library
DEFAULT_VENV = Path.home() / ".cache" / "chatdaemon-compare"


# -- the contestants --------------------------------------------------------------------------

@dataclass
class Contestant:
    name: str
    command: Callable[[str, Path], list[str]]   # (API URL, state directory) -> argv
    cwd: Path


def chatdaemon_command(api_url: str, state: Path) -> list[str]:
    config = state / "config.yaml"
    config.write_text(f"polling: {{timeout: {POLL_TIMEOUT}}}\nhooks: {{port: 0}}\n")
    return [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(ROOT / "handlers" / "counter"),
            "--db", str(state / "counter.sqlite3"), "--api-url", api_url, "--rate-limits", "off",
            "--config", str(config), "--log-level", "WARNING"]


def bare_threads_command(api_url: str, state: Path) -> list[str]:
    """chatdaemon's model alone, in the standard library (bench/peers/bare_threads.py)."""
    return [sys.executable, str(ROOT / "bench" / "peers" / "bare_threads.py"), api_url, TOKEN,
            str(POLL_TIMEOUT), str(state)]


def peer_command(python: Path, script: str) -> Callable[[str, Path], list[str]]:
    """`script` is the peer's file, then any arguments of its own after the common three."""
    name, *extra = script.split()
    def command(api_url: str, state: Path) -> list[str]:
        return [str(python), str(ROOT / "bench" / "peers" / name), api_url, TOKEN,
                str(POLL_TIMEOUT), *extra]
    return command


def ensure_venv(venv: Path) -> Path:
    """The scratch environment with the pinned peers; created (pip, the registry) once."""
    python = venv / "bin" / "python"
    wanted = [f"{name}=={version}" for name, version in PINS.items()]
    if python.exists() and installed(python) == PINS:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *wanted], check=True, timeout=600)
    return python


def installed(python: Path) -> dict[str, str]:
    script = ("import importlib.metadata as m\n"
              f"for n in {list(PINS)!r}:\n"
              "    try: print(n, m.version(n))\n"
              "    except m.PackageNotFoundError: pass\n")
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())


# -- one bot process ----------------------------------------------------------------------------

class Bot:
    """A contestant's process against one test double; restartable with the same files."""

    def __init__(self, contestant: Contestant, telegram: FakeTelegram, state: Path):
        self.contestant = contestant
        self.telegram = telegram
        self.state = state
        self.log = open(state / "bot.log", "ab")
        self.process: subprocess.Popen | None = None

    def start(self, warm_up: bool = False) -> None:
        """Start the process and wait for its first getUpdates; `warm_up`: then also for the
        answer to one message, so that the measured phase starts with the bot answering
        (chatdaemon, for one, holds updates for about a second while it makes sure no other
        process polls the token). `first_reply_s` is that wait, from the process start."""
        began = time.monotonic()
        polls = len(self.telegram.calls_to("getUpdates"))
        env = {**os.environ, "CHATDAEMON_TOKEN": TOKEN}
        self.process = subprocess.Popen(self.contestant.command(self.telegram.url, self.state),
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=str(self.contestant.cwd))
        if not self.telegram.wait_for(lambda: len(self.telegram.calls_to("getUpdates")) > polls, 60):
            raise RuntimeError(f"{self.contestant.name} did not start polling; see {self.log.name}")
        if warm_up:
            self.telegram.push_message(WARM_UP_CHAT, "m")
            if not self.telegram.wait_for(lambda: self.telegram.sent_to(WARM_UP_CHAT), 60):
                raise RuntimeError(f"{self.contestant.name} did not answer; see {self.log.name}")
            self.first_reply_s = time.monotonic() - began

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


class Phase:
    """A fresh test double, scratch files and the bot started against them."""

    def __init__(self, contestant: Contestant):
        self.contestant = contestant

    def __enter__(self) -> tuple[Bot, FakeTelegram]:
        self.scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-compare-")
        self.telegram = FakeTelegram(TOKEN).start()
        self.bot = Bot(self.contestant, self.telegram, Path(self.scratch.name))
        self.bot.start(warm_up=True)
        return self.bot, self.telegram

    def __exit__(self, *exc: object) -> None:
        self.bot.stop()
        self.telegram.stop()
        self.scratch.cleanup()


# -- judging the replies ------------------------------------------------------------------------

def judge(telegram: FakeTelegram, pushed: dict[int, int]) -> dict[str, int]:
    """Missing, duplicate and out-of-order answers over every chat (chat -> messages pushed)."""
    missing = duplicates = disorder = 0
    for chat, count in pushed.items():
        replies = [int(text) for text in telegram.sent_to(chat) if text.isdigit()]
        missing += len(set(range(1, count + 1)) - set(replies))
        duplicates += len(replies) - len(set(replies))
        disorder += sum(1 for a, b in itertools.pairwise(replies) if b < a)
    return {"missing": missing, "duplicates": duplicates, "out_of_order": disorder}


def settle(telegram: FakeTelegram, expected: int, timeout: float) -> None:
    """Wait until `expected` replies arrived, or nothing new came for 3 s, or `timeout`."""
    deadline = time.monotonic() + timeout
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(telegram.sent)
        if count >= expected:
            return
        if count != last:
            last, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since > 3.0 and not telegram.pending():
            return
        telegram.wait_for(lambda seen=count: len(telegram.sent) != seen, 0.5)


def push_steadily(telegram: FakeTelegram, rate: float, total: int, chats: int, base: int,
                  at: Callable[[int], None] | None = None) -> dict[int, list[float]]:
    """Push `total` messages at `rate`/s round-robin over `chats`; call at(i) before the i-th."""
    times: dict[int, list[float]] = {}
    began = time.monotonic()
    for i in range(total):
        if at is not None:
            at(i)
        pause = began + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        chat = base + i % chats
        times.setdefault(chat, []).append(time.monotonic())
        telegram.push_message(chat, "m")
    return times


# -- the phases ------------------------------------------------------------------------------

BURST = (5000, 250)     # messages, chats of the burst phase
W1 = (20000, 1000)      # --w1: the 20,000-message / 1,000-chat load the throughput bench uses


def burst(contestant: Contestant, messages: int = BURST[0], chats: int = BURST[1]) -> dict:
    with Phase(contestant) as (bot, telegram):
        pid = bot.process.pid
        cpu = cpu_seconds(pid)
        with Peaks(pid, interval=0.05) as peaks:
            began = time.monotonic()
            telegram.push_many([(1_000_000 + i % chats, "m") for i in range(messages)])
            settle(telegram, messages + 1, 180)   # and the warm-up's reply
            elapsed = time.monotonic() - began
        spent = cpu_seconds(pid) - cpu
        result = {"msgs_per_s": min(len(telegram.sent) - 1, messages) / elapsed,
                  "first_reply_s": bot.first_reply_s,
                  "cpu_s": spent, "cpu_ms_per_msg": 1000 * spent / messages,
                  "peak_rss_mb": peaks.peak["VmRSS"] / 1024,
                  "threads": peaks.peak["Threads"]}
        result.update(judge(telegram, {1_000_000 + c: messages // chats for c in range(chats)}))
        return result


def steady(contestant: Contestant, rate: float = 200, seconds: float = 10, chats: int = 100) -> dict:
    with Phase(contestant) as (_, telegram):
        total = int(rate * seconds)
        pushed = push_steadily(telegram, rate, total, chats, 2_000_000)
        settle(telegram, total + 1, 60)
        delays = []
        for chat, times in pushed.items():
            for when, sent in zip(times, telegram.sent_times(chat), strict=False):  # unanswered: none
                delays.append(sent - when)
        delays.sort()
        if not delays:
            return {"p50_ms": float("nan"), "p99_ms": float("nan")}
        return {"p50_ms": 1000 * delays[len(delays) // 2],
                "p99_ms": 1000 * delays[min(len(delays) - 1, int(len(delays) * 0.99))]}


def kill(contestant: Contestant, rate: float = 200, total: int = 3000, chats: int = 100) -> dict:
    with Phase(contestant) as (bot, telegram):
        def crash_halfway(i: int) -> None:
            if i == total // 2:
                bot.kill()
                bot.process = subprocess.Popen(  # started again at once, as systemd would
                    contestant.command(telegram.url, bot.state), env={**os.environ,
                                                                      "CHATDAEMON_TOKEN": TOKEN},
                    stdout=bot.log, stderr=subprocess.STDOUT, cwd=str(contestant.cwd))
        pushed = push_steadily(telegram, rate, total, chats, 3_000_000, at=crash_halfway)
        settle(telegram, total + 1, 90)
        result = judge(telegram, {chat: len(times) for chat, times in pushed.items()})
        result["replies"] = len(telegram.sent) - 1
        return {f"kill_{key}": value for key, value in result.items()}



# -- the table ---------------------------------------------------------------------------------

COLUMNS = [("msgs_per_s", "msg/s", "{:.0f}"), ("cpu_s", "CPU s", "{:.1f}"),
           ("cpu_ms_per_msg", "CPU ms/msg", "{:.3f}"),
           ("peak_rss_mb", "peak RSS MB", "{:.1f}"), ("threads", "threads", "{}"),
           ("first_reply_s", "first reply s", "{:.2f}"),
           ("p50_ms", "p50 ms", "{:.1f}"), ("p99_ms", "p99 ms", "{:.1f}"),
           ("missing", "missing", "{}"), ("duplicates", "dup", "{}"), ("out_of_order", "ooo", "{}"),
           ("kill_replies", "kill: replies", "{}"), ("kill_missing", "kill: missing", "{}"),
           ("kill_duplicates", "kill: dup", "{}"), ("kill_out_of_order", "kill: ooo", "{}")]


def table(results: dict[str, dict]) -> str:
    head = "| bot | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for name, result in results.items():
        cells = [fmt.format(result[key]) if key in result else "?" for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(python: Path | None) -> str:
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{name} {version}" for name, version in
                         (installed(python) if python else {}).items())
    from chatdaemon import __version__
    return (f"{os.cpu_count()} CPU(s), {model}; Python {platform.python_version()}; "
            f"chatdaemon {__version__}; {versions}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--only", nargs="*", choices=["chatdaemon", *PEERS, BARE],
                        default=["chatdaemon", *PEERS, BARE])
    parser.add_argument("--w1", action="store_true",
                        help="a burst of 20,000 messages over 1,000 chats instead of 5,000 over 250")
    args = parser.parse_args()
    messages, chats = W1 if args.w1 else BURST
    phases: dict[str, Callable[[Contestant], dict]] = {
        "burst": lambda contestant: burst(contestant, messages, chats), "steady": steady, "kill": kill}
    python = ensure_venv(args.venv) if set(args.only) & set(PEERS) else None
    contestants = {"chatdaemon": Contestant("chatdaemon", chatdaemon_command, ROOT),
                   BARE: Contestant(BARE, bare_threads_command, ROOT)}
    for name, script in PEERS.items():
        contestants[name] = Contestant(name, peer_command(python, script), ROOT / "bench" / "peers")
    results: dict[str, dict] = {}
    began = time.monotonic()
    for name in args.only:
        results[name] = {}
        for phase_name, phase in phases.items():
            try:
                results[name].update(phase(contestants[name]))
            except RuntimeError as exc:
                print(f"{name} {phase_name}: {exc}", file=sys.stderr)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(machine(python))
    print(f"burst: {messages} messages over {chats} chats")
    print(table(results))
    ours, theirs = (results.get(name, {}).get("msgs_per_s") for name in ("chatdaemon", ORDER_KEEPING_PEER))
    if ours and theirs:
        print(f"chatdaemon / {ORDER_KEEPING_PEER} msg/s in this run: {ours / theirs:.2f}")
    bare = results.get(BARE, {}).get("msgs_per_s")
    if bare and theirs:
        print(f"{BARE} / {ORDER_KEEPING_PEER} msg/s in this run: {bare / theirs:.2f}")
    print(f"({time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
