"""Benchmark: the daemon as a process against the Bot API test double, numbers printed.

    python bench/bench.py [--only NAME ...] [--repeat N] [--against DIR] [--tls | --both]

--against DIR runs each workload on another checkout (an older build) and on this one in
turn, --repeat times each, and prints both medians: before/after figures from runs that
shared the machine's load. CHATDAEMON_BENCH_TREE=DIR runs the daemon (and dbsize's store)
from another checkout alone; the workloads, the test double and the counters stay this file's.

--tls runs the workloads that can (throughput, cpu_single, connections; these by default) with
the daemon talking HTTPS to the test double, as it talks to api.telegram.org: TLS on a socket
with Python's own timeouts, where plain HTTP has blocking sockets with kernel timeouts. The
double serves a certificate made by openssl for the run, and the daemon verifies it as usual,
trusting it through SSL_CERT_FILE. Lines are labelled TLS; without openssl they say "skipped"
and why. --both alternates plain and TLS runs (plain, TLS, plain, TLS, …), prints both medians
and the TLS/plain ratio of the CPU per message. --against DIR with --tls compares the two
trees over TLS.

Workloads (rate limits off, as for a local Bot API server; durability on):
  throughput  20,000 messages over 1,000 chats, all injected at once → messages/s, and the
              daemon's CPU milliseconds per message (utime + stime from /proc/PID/stat)
  cpu_single  500 messages over 10 chats sent one at a time, each waiting for its reply →
              the daemon's CPU milliseconds per message when messages arrive singly
  latency     a steady 500 msg/s over 200 chats for 10 s → reply latency p50/p99
  footprint   10,000 chats sending one message each → peak threads, peak RSS
  faults      2,000 messages while 1% each of sendMessage calls fail with 500, with 429
              (retry_after 1) and with the connection dropped after acceptance → missing/duplicate
  pipeline    the YAML `signup` bot over 1,000 chats (3 messages each) vs the counter on the same shape
  help        `chatdaemon --help` wall time
  telepot     telepot's counter (handlers/telepot) under `chatdaemon telepot` vs the native counter,
              10,000 messages over 500 chats → messages/s and CPU seconds of each
  idle        the counter (Python) and the signup (YAML) bot after start-up and a few messages,
              polling as in production (25 s): RSS, and wake-ups per second over 15 s of idleness
              (voluntary context switches summed over /proc/PID/task/*/status); the counter
              once more with its hook server listening
  threads64   64 chats kept busy at once (64 delegate threads): peak VmSize, VmRSS, threads;
              then the same with MALLOC_ARENA_MAX=2 in the environment (as the systemd units set it)
  connections the throughput load while /proc/PID/net/tcp is sampled: peak established
              connections from the daemon to the Bot API, and messages/s
  writes      storage writes of the counter bot, on a real disk (--scratch, default /var/tmp; tmpfs
              counts nothing): bytes per update when 200 messages come one at a time 0.05 s apart
              and in 5 bursts of 100, from the process's write_bytes over its whole life (wait4's
              ru_oublock, so the last checkpoint counts) minus an idle run's; fsync + fdatasync
              calls per getUpdates batch that carried updates (strace -f, skipped without strace)
  ticks       a pimonitor-like bot with a 5 s schedule, idle for 60 s: bytes and write
              transactions (WAL commits, counted from the WAL's frames) per tick
  dbsize      50,000 updates through the store with default retention, their handled time
              spread over 3 days: database size before and after a prune
Speeds are medians over --repeat runs; the machine is shared, so compare ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# the checkout whose daemon runs (python -m chatdaemon from there)
TREE = Path(os.environ.get("CHATDAEMON_BENCH_TREE", str(ROOT))).resolve()

from fake_telegram import FakeTelegram, TLSUnavailable  # noqa: E402
from procstat import Peaks, status_fields, wait_until, wakeups_per_second  # noqa: E402

TOKEN = "123456:BENCH-token_abcdefghijklmnopqrstuvwxyz"
WARM_UP_CHAT = 999_999_999


class Run:
    """One daemon process with a fresh database against a fresh test double."""

    def __init__(self, handlers: str, config: str = "", poll_timeout: int = 5, hook_port: int = 0,
                 env: dict | None = None, scratch: str | None = None, tls: bool = False) -> None:
        self.scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-bench-", dir=scratch)
        self.handlers = handlers if os.path.isabs(handlers) else str(ROOT / "handlers" / handlers)
        self.telegram = FakeTelegram(TOKEN, tls=tls).start()
        if tls:   # the daemon verifies the double's certificate as it would Telegram's
            env = {**(env or {}), "SSL_CERT_FILE": str(self.telegram.cert_file)}
        config_path = Path(self.scratch.name) / "config.yaml"
        config_path.write_text(f"polling: {{timeout: {poll_timeout}}}\nhooks: {{port: {hook_port}}}\n"
                               + config)
        self.log = open(Path(self.scratch.name) / "daemon.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatdaemon", "run", "--handlers", self.handlers,
             "--db", str(Path(self.scratch.name) / "bench.sqlite3"), "--api-url", self.telegram.url,
             "--rate-limits", "off", "--config", str(config_path), "--log-level", "WARNING"],
            env={**os.environ, "CHATDAEMON_TOKEN": TOKEN, **(env or {})}, stdout=self.log,
            stderr=subprocess.STDOUT, cwd=str(TREE))
        ok = self.telegram.wait_for(
            lambda: any(c["method"] == "getUpdates" for c in self.telegram.calls), 30)
        if not ok:
            raise RuntimeError("the daemon did not start polling")
        self._warm_up()

    def _warm_up(self) -> None:
        """One message answered before the clock starts: the figures measure handling, not
        start-up (a new poller first makes sure no other process polls the token)."""
        self.telegram.push_message(WARM_UP_CHAT, "/start")
        if not self.telegram.wait_for_sent(1, timeout=60):
            raise RuntimeError("the daemon did not answer its warm-up message")
        self.telegram.reset()

    def sample(self) -> tuple[int, int]:
        """(threads, RSS in KiB) of the daemon process now."""
        threads = rss = 0
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return threads, rss

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.telegram.stop()
        self.log.close()
        self.scratch.cleanup()


def throughput(messages: int = 20000, chats: int = 1000, tls: bool = False) -> dict:
    run = Run("counter", tls=tls)
    try:
        batch = [(1_000_000 + i % chats, "m") for i in range(messages)]
        cpu = cpu_seconds(run.process.pid)
        began = time.monotonic()
        run.telegram.push_many(batch)
        if not run.telegram.wait_for_sent(messages, timeout=600):
            raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        elapsed = time.monotonic() - began
        cpu = settled_cpu_seconds(run.process.pid) - cpu
        return {"msgs_per_s": messages / elapsed, "seconds": elapsed,
                "cpu_ms_per_msg": 1000 * cpu / messages}
    finally:
        run.close()


def cpu_single(messages: int = 500, chats: int = 10, tls: bool = False) -> dict:
    """Messages arriving singly: each one waits for the reply to the one before."""
    run = Run("counter", tls=tls)
    try:
        cpu = cpu_seconds(run.process.pid)
        for i in range(messages):
            run.telegram.push_message(1_500_000 + i % chats, "m")
            if not run.telegram.wait_for_sent(i + 1, timeout=30):
                raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        cpu = settled_cpu_seconds(run.process.pid) - cpu
        return {"cpu_ms_per_msg": 1000 * cpu / messages}
    finally:
        run.close()


def settled_cpu_seconds(pid: int, quiet: float = 0.3, limit: float = 5.0) -> float:
    """The process's CPU seconds once it stops using CPU (the last replies' commits done):
    read again until a `quiet` interval adds less than one clock tick, within `limit` s."""
    tick = 1 / os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < tick:
            return now
        last = now
    return last


def latency(rate: int = 500, chats: int = 200, seconds: float = 10.0) -> dict:
    run = Run("counter")
    try:
        pushed: dict[int, list[float]] = {}
        total = int(rate * seconds)
        began = time.monotonic()
        for i in range(total):
            due = began + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            chat = 2_000_000 + i % chats
            pushed.setdefault(chat, []).append(time.monotonic())
            run.telegram.push_message(chat, "m")
        if not run.telegram.wait_for_sent(total, timeout=120):
            raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        seen: dict[int, int] = {}
        delays = []
        for record in list(run.telegram.sent):
            k = seen.get(record["chat_id"], 0)
            seen[record["chat_id"]] = k + 1
            delays.append(record["time"] - pushed[record["chat_id"]][k])
        delays.sort()
        return {"p50_ms": 1000 * delays[len(delays) // 2],
                "p99_ms": 1000 * delays[int(len(delays) * 0.99)],
                "achieved_rate": total / (time.monotonic() - began)}
    finally:
        run.close()


def footprint(chats: int = 10000) -> dict:
    run = Run("counter")
    try:
        peak_threads, peak_rss = run.sample()
        stop = threading.Event()

        def watch():
            nonlocal peak_threads, peak_rss
            while not stop.is_set():
                threads, rss = run.sample()
                peak_threads, peak_rss = max(peak_threads, threads), max(peak_rss, rss)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        run.telegram.push_many([(3_000_000 + i, "m") for i in range(chats)])
        done = run.telegram.wait_for_sent(chats, timeout=600)
        stop.set()
        watcher.join()
        if not done:
            raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        return {"peak_threads": peak_threads, "peak_rss_mb": peak_rss / 1024}
    finally:
        run.close()


def faults(messages: int = 2000, chats: int = 200) -> dict:
    run = Run("counter")
    try:
        run.telegram.set_faults("sendMessage", p500=0.01, p429=0.01, pdrop=0.01, retry_after=1,
                                seed=7)
        per_chat = messages // chats
        run.telegram.push_many([(4_000_000 + c, "m") for _ in range(per_chat) for c in range(chats)])
        expected = list(range(1, per_chat + 1))
        done = run.telegram.wait_for(
            lambda: all(run.telegram.sent_to(4_000_000 + c)[-1:] == [str(per_chat)]
                        for c in range(chats)), timeout=300)
        time.sleep(1.0)
        missing = duplicates = 0
        for c in range(chats):
            replies = [int(t) for t in run.telegram.sent_to(4_000_000 + c)]
            missing += len(set(expected) - set(replies))
            duplicates += len(replies) - len(set(replies))
        return {"finished": done, "missing": missing, "duplicates": duplicates,
                "faults": dict(run.telegram.faults_injected)}
    finally:
        run.close()


def pipeline(chats: int = 1000) -> dict:
    """The signup bot's three-step conversation vs the counter on the same messages."""
    def rate(handlers: str) -> float:
        run = Run(handlers)
        try:
            began = time.monotonic()
            for text in ("/start", "Ann", "ann@example.org"):
                run.telegram.push_many([(5_000_000 + c, text) for c in range(chats)])
            if not run.telegram.wait_for_sent(3 * chats, timeout=600):
                raise RuntimeError(f"only {len(run.telegram.sent)} replies")
            return 3 * chats / (time.monotonic() - began)
        finally:
            run.close()
    counter, signup = rate("counter"), rate("signup")
    return {"signup_msgs_per_s": signup, "counter_msgs_per_s": counter, "ratio": signup / counter}


def help_time(runs: int = 7) -> dict:
    times = []
    for _ in range(runs):
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "chatdaemon", "--help"], capture_output=True, check=True,
                       cwd=str(ROOT))
        times.append(time.monotonic() - began)
    return {"median_s": statistics.median(times)}


class TelepotRun(Run):
    """handlers/telepot/counter.py under `chatdaemon telepot`, against a fresh test double."""

    def __init__(self) -> None:  # same set-up as Run, another command
        self.scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-bench-")
        self.telegram = FakeTelegram(TOKEN).start()
        config_path = Path(self.scratch.name) / "config.yaml"
        config_path.write_text("polling: {timeout: 5}\nhooks: {port: 0}\nlog_level: WARNING\n")
        self.log = open(Path(self.scratch.name) / "daemon.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatdaemon", "telepot", "--api-url", self.telegram.url,
             "--db", str(Path(self.scratch.name) / "bench.sqlite3"), "--rate-limits", "off",
             "--config", str(config_path), str(ROOT / "handlers" / "telepot" / "counter.py"), TOKEN],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        if not self.telegram.wait_for(
                lambda: any(c["method"] == "getUpdates" for c in self.telegram.calls), 30):
            raise RuntimeError("the daemon did not start polling")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def telepot(messages: int = 10000, chats: int = 500) -> dict:
    """telepot's counter under `chatdaemon telepot` vs the native counter, same load."""
    def measure(run: Run) -> tuple[float, float]:
        try:
            cpu = cpu_seconds(run.process.pid)
            began = time.monotonic()
            run.telegram.push_many([(6_000_000 + i % chats, "m") for i in range(messages)])
            if not run.telegram.wait_for_sent(messages, timeout=600):
                raise RuntimeError(f"only {len(run.telegram.sent)} replies")
            return messages / (time.monotonic() - began), cpu_seconds(run.process.pid) - cpu
        finally:
            run.close()
    native_rate, native_cpu = measure(Run("counter"))
    telepot_rate, telepot_cpu = measure(TelepotRun())
    return {"telepot_msgs_per_s": telepot_rate, "native_msgs_per_s": native_rate,
            "telepot_cpu_s": telepot_cpu, "native_cpu_s": native_cpu}


IDLE_SECONDS = 15.0
CONVERSATIONS = {"counter": ["hello", "again", "and again"],
                 "signup": ["/start", "Ann", "ann@example.org"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def idle_figures(handlers: str, chats: int = 3, hooks: bool = False) -> tuple[float, float]:
    """(RSS in MB, wake-ups per second) of an idle daemon that has answered a few messages."""
    run = Run(handlers, poll_timeout=25, hook_port=free_port() if hooks else 0)
    try:
        texts = CONVERSATIONS[handlers]
        for text in texts:
            run.telegram.push_many([(7_000_000 + c, text) for c in range(chats)])
        if not run.telegram.wait_for_sent(len(texts) * chats, timeout=60):
            raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        # let the replies' transactions commit and the poll settle into its long wait
        wait_until(lambda: run.telegram.polling, 10)
        time.sleep(1.0)
        rss = status_fields(run.process.pid)["VmRSS"] / 1024
        return rss, wakeups_per_second(run.process.pid, IDLE_SECONDS)
    finally:
        run.close()


def idle() -> dict:
    counter_rss, counter_wakeups = idle_figures("counter")
    signup_rss, signup_wakeups = idle_figures("signup")
    _, hooks_wakeups = idle_figures("counter", hooks=True)
    return {"counter_rss_mb": counter_rss, "signup_rss_mb": signup_rss,
            "counter_wakeups_per_s": counter_wakeups, "signup_wakeups_per_s": signup_wakeups,
            "counter_with_hook_server_wakeups_per_s": hooks_wakeups}


def threads64() -> dict:
    """64 chat threads, with glibc's default malloc arenas and with MALLOC_ARENA_MAX=2."""
    default, limited = busy_threads(), busy_threads({"MALLOC_ARENA_MAX": "2"})
    return {**default, **{f"arena2_{key}": value for key, value in limited.items()}}


def busy_threads(env: dict | None = None, chats: int = 64, per_chat: int = 200) -> dict:
    """64 chats with messages queued at once, so 64 delegate threads run side by side."""
    run = Run("counter", config="delegates: {max: 64}\n", env=env)
    try:
        with Peaks(run.process.pid) as peaks:
            run.telegram.push_many([(8_000_000 + c, "m") for _ in range(per_chat) for c in range(chats)])
            if not run.telegram.wait_for_sent(chats * per_chat, timeout=600):
                raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        return {"peak_vmsize_mb": peaks.peak["VmSize"] / 1024,
                "peak_rss_mb": peaks.peak["VmRSS"] / 1024, "peak_threads": peaks.peak["Threads"]}
    finally:
        run.close()


def connections(messages: int = 20000, chats: int = 1000, tls: bool = False) -> dict:
    """The throughput load, with the daemon's connections to the Bot API counted meanwhile."""
    run = Run("counter", tls=tls)
    try:
        with Peaks(run.process.pid, port=run.telegram.port, interval=0.01) as peaks:
            began = time.monotonic()
            run.telegram.push_many([(9_000_000 + i % chats, "m") for i in range(messages)])
            if not run.telegram.wait_for_sent(messages, timeout=600):
                raise RuntimeError(f"only {len(run.telegram.sent)} replies")
            elapsed = time.monotonic() - began
        return {"peak_connections": peaks.peak["connections"], "msgs_per_s": messages / elapsed}
    finally:
        run.close()


SCRATCH = os.environ.get("CHATDAEMON_BENCH_DIR", "/var/tmp")

TICKER = '''
from chatdaemon import ChatHandler


class Ticker(ChatHandler):
    def on_chat_message(self, msg):
        self.start_schedule("report", 5)
        self.sender.sendMessage("every 5 s")

    def on_schedule(self, tick):
        self.sender.sendMessage("load 0.42 0.40 0.38, up 3d 4h")
'''


def filesystem(path: str) -> str:
    """The type of the filesystem holding `path` (from /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best, kind = point, fstype
    return kind


def life_write_bytes(run: Run) -> int:
    """Stop the daemon and return what it wrote to storage over its life (ru_oublock × 512)."""
    run.process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(run.process.pid, 0)
    run.process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_oublock * 512


class Strace:
    """fsync/fdatasync calls of a process, counted by strace -f while attached."""

    def __init__(self, pid: int, path: str) -> None:
        self.path = path
        self.process = None
        if shutil.which("strace"):
            self.process = subprocess.Popen(
                ["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", path, "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: os.path.exists(path), 10)
            time.sleep(0.5)   # strace attaches to every thread after creating its output file

    def count(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)
        with open(self.path) as out:
            return sum(1 for line in out if "fsync(" in line or "fdatasync(" in line)


def updates_batches(run: Run) -> int:
    """getUpdates answers that carried updates: each one moves the next call's offset."""
    offsets = [call["params"].get("offset") for call in run.telegram.calls_to("getUpdates")]
    return sum(1 for before, after in zip(offsets, offsets[1:], strict=False) if after != before)


def write_load(pattern: str, messages: int) -> tuple[int, int | None, int]:
    """(bytes written over the run's life, fsyncs seen, batches) for one load pattern."""
    run = Run("counter", scratch=SCRATCH)
    try:
        tracer = Strace(run.process.pid, str(Path(run.scratch.name) / "strace.out")) \
            if pattern != "idle" else None
        if pattern == "one":
            for i in range(messages):
                run.telegram.push_message(5_000_000 + i % 10, "m")
                if not run.telegram.wait_for_sent(i + 1, timeout=30):
                    raise RuntimeError(f"only {len(run.telegram.sent)} replies")
                time.sleep(0.05)
        elif pattern == "burst":
            for burst in range(messages // 100):
                run.telegram.push_many([(5_000_000 + i % 10, "m") for i in range(100)])
                if not run.telegram.wait_for_sent(100 * (burst + 1), timeout=60):
                    raise RuntimeError(f"only {len(run.telegram.sent)} replies")
                time.sleep(0.5)
        else:
            wait_until(lambda: run.telegram.polling, 10)
        time.sleep(0.5)   # the last reply's done mark commits after its send returns
        fsyncs = tracer.count() if tracer else None
        batches = updates_batches(run)
        return life_write_bytes(run), fsyncs, batches
    finally:
        run.close()


def writes() -> dict:
    idle, _, _ = write_load("idle", 0)
    one, one_fsyncs, one_batches = write_load("one", 200)
    burst, burst_fsyncs, burst_batches = write_load("burst", 500)
    result = {"filesystem": filesystem(SCRATCH), "idle_life_kb": idle / 1024,
              "one_at_a_time_kb_per_update": (one - idle) / 200 / 1024,
              "bursts_kb_per_update": (burst - idle) / 500 / 1024}
    if one_fsyncs is not None:
        result["one_at_a_time_fsyncs_per_batch"] = float(one_fsyncs / max(one_batches, 1))
        result["bursts_fsyncs_per_batch"] = float(burst_fsyncs / max(burst_batches, 1))
    else:
        result["fsyncs"] = "skipped: no strace"
    return result


def wal_commits(wal_path: str, seen: set) -> int:
    """New commit frames in a WAL file since `seen` (salt, frame offset) pairs were counted."""
    commits = 0
    try:
        data = Path(wal_path).read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) < 32:
        return 0
    page_size = int.from_bytes(data[8:12], "big")
    salt = data[16:24]
    for offset in range(32, len(data) - 24 + 1, 24 + page_size):
        header = data[offset:offset + 24]
        if header[8:16] != salt:
            break
        if int.from_bytes(header[4:8], "big") and (salt, offset) not in seen:
            seen.add((salt, offset))
            commits += 1
    return commits


def ticks(seconds: float = 60.0) -> dict:
    """Bytes and transactions per tick of a 5 s schedule with nobody talking."""
    scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-ticker-", dir=SCRATCH)
    try:
        Path(scratch.name, "bot.yaml").write_text("python: ticker:Ticker\n")
        Path(scratch.name, "ticker.py").write_text(TICKER)
        run = Run(scratch.name, scratch=SCRATCH)
        try:
            run.telegram.push_message(6_000_000, "/start")
            if not run.telegram.wait_for_sent(1, timeout=30):
                raise RuntimeError("no answer to /start")
            time.sleep(1.0)
            wal = str(Path(run.scratch.name) / "bench.sqlite3-wal")
            seen: set = set()
            wal_commits(wal, seen)
            before = io_write_bytes(run.process.pid)
            sent_before = len(run.telegram.sent)
            commits = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.2)
                commits += wal_commits(wal, seen)
            written = io_write_bytes(run.process.pid) - before
            tick_count = len(run.telegram.sent) - sent_before
            return {"filesystem": filesystem(SCRATCH), "ticks": tick_count,
                    "kb_per_tick": written / max(tick_count, 1) / 1024,
                    "transactions_per_tick": commits / max(tick_count, 1)}
        finally:
            run.close()
    finally:
        scratch.cleanup()


def io_write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def dbsize(updates: int = 50_000, chats: int = 500) -> dict:
    """A database that took `updates` updates, handled over 3 days, then one prune."""
    sys.path.insert(0, str(TREE))
    from chatdaemon.inbox import to_row
    from chatdaemon.store import Retention, Store
    scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-dbsize-", dir=SCRATCH)
    try:
        path = str(Path(scratch.name) / "size.sqlite3")
        store = Store(path)
        began = time.time()
        for first in range(0, updates, 100):
            rows = [to_row(sample_update(n, 1_000 + n % chats)) for n in range(first, first + 100)]
            store.add_updates(rows)
            for row in rows:
                conversation = store.load_conversation(row.chat_id)
                conversation.vars["count"] = conversation.vars.get("count", 0) + 1
                store.finish(row.update_id, conversation)
        with store.writing() as db:   # spread the handled times over the last 3 days
            db.execute("UPDATE inbox SET handled = ? - (? - update_id) * ?",
                       (began, updates, 3 * 86400 / updates))
        store.close()
        before = os.path.getsize(path)
        store = Store(path)
        pruned = store.apply_retention(Retention()).updates   # the defaults: 48 h, 64 MB
        store.close()
        return {"updates": updates, "before_mb": before / 1e6, "pruned": pruned,
                "after_prune_mb": os.path.getsize(path) / 1e6}
    finally:
        scratch.cleanup()


def sample_update(n: int, chat_id: int) -> dict:
    """A text message shaped like Telegram's, about 300 bytes as JSON."""
    person = {"id": chat_id, "is_bot": False, "first_name": "Ada", "username": "ada_l",
              "language_code": "en"}
    return {"update_id": n + 1, "message": {
        "message_id": n + 1, "from": person, "chat": {**person, "type": "private"},
        "date": 1_700_000_000 + n, "text": "hello there"}}


WORKLOADS = {"throughput": throughput, "cpu_single": cpu_single, "latency": latency, "footprint": footprint,
             "faults": faults, "pipeline": pipeline, "help": help_time, "telepot": telepot,
             "idle": idle, "threads64": threads64, "connections": connections,
             "writes": writes, "ticks": ticks, "dbsize": dbsize}


TLS_WORKLOADS = ("throughput", "cpu_single", "connections")   # those that take tls=True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(WORKLOADS),
                        help="the workloads to run (default: all; with --tls or --both, those "
                             "that can run over TLS)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--against", metavar="DIR",
                        help="another checkout: each run of it alternates with one of this tree "
                             "(A B A B …), and both medians are printed")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--tls", action="store_true",
                           help="the daemon talks HTTPS to the test double, verifying a "
                                "certificate made for the run")
    transport.add_argument("--both", action="store_true",
                           help="plain and TLS runs in turn: both medians and TLS/plain ratios")
    args = parser.parse_args()
    if args.both and args.against:
        parser.error("--both compares plain HTTP with TLS on this tree; with --against use --tls")
    tls = args.tls or args.both
    names = args.only if args.only is not None else list(TLS_WORKLOADS if tls else WORKLOADS)
    problem = tls_problem() if tls else None
    for name in names:
        if tls and (problem or name not in TLS_WORKLOADS):
            reason = problem or "this workload runs over plain HTTP only"
            print(f"{name:11s} TLS skipped: {reason}", flush=True)
        elif args.against:
            compare(name, args.repeat, args.against, tls)
        elif args.both:
            plain_and_tls(name, args.repeat)
        else:
            results = [WORKLOADS[name](tls=True) if tls else WORKLOADS[name]()
                       for _ in range(args.repeat)]
            print(f"{name:11s} {'TLS ' if tls else ''}{shown(merged(results))}", flush=True)


def tls_problem() -> str | None:
    """Why the test double cannot serve TLS on this machine (no openssl, …), or None."""
    try:
        FakeTelegram(TOKEN, tls=True).start().stop()
    except TLSUnavailable as exc:
        return exc.reason
    return None


def plain_and_tls(name: str, repeat: int) -> None:
    """`name` over plain HTTP and over TLS in turn, `repeat` times each: the machine's load
    weighs on both alike. Prints both medians and each figure's TLS/plain ratio of them."""
    plain_runs, tls_runs = [], []
    for _ in range(repeat):
        plain_runs.append(WORKLOADS[name]())
        tls_runs.append(WORKLOADS[name](tls=True))
    plain, tls = merged(plain_runs), merged(tls_runs)
    ratios = {key: tls[key] / plain[key] for key in plain
              if isinstance(plain[key], float) and plain[key]}
    print(f"{name:11s} plain     {shown(plain)}", flush=True)
    print(f"{name:11s} TLS       {shown(tls)}", flush=True)
    print(f"{name:11s} TLS/plain {shown(ratios)}", flush=True)


def merged(results: list[dict]) -> dict:
    """Each figure's median over the runs (the last value of one that is not a number)."""
    out = {}
    for key in results[0]:
        values = [r[key] for r in results]
        out[key] = statistics.median(values) if isinstance(values[0], float) else values[-1]
    return out


def shown(figures: dict) -> str:
    return ", ".join(f"{k}={v:.{3 if k.startswith('cpu_ms') else 2}f}" if isinstance(v, float)
                     else f"{k}={v}" for k, v in figures.items())


def compare(name: str, repeat: int, other: str, tls: bool = False) -> None:
    """`name` run `repeat` times on each tree, interleaved; the machine's load then weighs on
    both alike. Each run is a process of this file with CHATDAEMON_BENCH_TREE set (and --tls:
    both trees' daemons talk HTTPS)."""
    trees = {"before": str(Path(other).resolve()), "after": str(TREE)}
    results: dict[str, list[dict]] = {label: [] for label in trees}
    command = [sys.executable, __file__, "--only", name] + (["--tls"] if tls else [])
    for _ in range(repeat):
        for label, tree in trees.items():
            out = subprocess.run(
                command, capture_output=True, text=True,
                check=True, env={**os.environ, "CHATDAEMON_BENCH_TREE": tree}).stdout
            results[label].append(parsed(figures_text(out)))
    for label, tree in trees.items():
        print(f"{name:11s} {'TLS ' if tls else ''}{label:6s} {shown(merged(results[label]))}  "
              f"({tree})", flush=True)


def figures_text(line: str) -> str:
    """The k=v part of a printed line, after its labels (the name, and TLS if there)."""
    first = line.index("=")
    return line[line.rfind(" ", 0, first) + 1:]


def parsed(line: str) -> dict:
    """The figures of one printed line back: k=v pairs, with their numbers."""
    figures: dict = {}
    for pair in line.strip().split(", "):
        key, _, value = pair.partition("=")
        for kind in (int, float, str):
            try:
                figures[key] = kind(value)
                break
            except ValueError:
                continue
    return figures


if __name__ == "__main__":
    main()
