"""Benchmark: the daemon as a process against the Bot API test double, numbers printed.

    python bench/bench.py [--only NAME ...] [--repeat N]

Workloads (rate limits off, as for a local Bot API server; durability on):
  throughput  20,000 messages over 1,000 chats, all injected at once → messages/s
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
Speeds are medians over --repeat runs; the machine is shared, so compare ratios.
"""

from __future__ import annotations

import argparse
import os
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

from fake_telegram import FakeTelegram  # noqa: E402
from procstat import Peaks, status_fields, wait_until, wakeups_per_second  # noqa: E402

TOKEN = "123456:BENCH-token_abcdefghijklmnopqrstuvwxyz"


class Run:
    """One daemon process with a fresh database against a fresh test double."""

    def __init__(self, handlers: str, config: str = "", poll_timeout: int = 5, hook_port: int = 0,
                 env: dict | None = None) -> None:
        self.scratch = tempfile.TemporaryDirectory(prefix="chatdaemon-bench-")
        self.telegram = FakeTelegram(TOKEN).start()
        config_path = Path(self.scratch.name) / "config.yaml"
        config_path.write_text(f"polling: {{timeout: {poll_timeout}}}\nhooks: {{port: {hook_port}}}\n"
                               + config)
        self.log = open(Path(self.scratch.name) / "daemon.log", "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(ROOT / "handlers" / handlers),
             "--db", str(Path(self.scratch.name) / "bench.sqlite3"), "--api-url", self.telegram.url,
             "--rate-limits", "off", "--config", str(config_path), "--log-level", "WARNING"],
            env={**os.environ, "CHATDAEMON_TOKEN": TOKEN, **(env or {})}, stdout=self.log,
            stderr=subprocess.STDOUT, cwd=str(ROOT))
        ok = self.telegram.wait_for(
            lambda: any(c["method"] == "getUpdates" for c in self.telegram.calls), 30)
        if not ok:
            raise RuntimeError("the daemon did not start polling")

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


def throughput(messages: int = 20000, chats: int = 1000) -> dict:
    run = Run("counter")
    try:
        batch = [(1_000_000 + i % chats, "m") for i in range(messages)]
        began = time.monotonic()
        run.telegram.push_many(batch)
        if not run.telegram.wait_for_sent(messages, timeout=600):
            raise RuntimeError(f"only {len(run.telegram.sent)} replies")
        elapsed = time.monotonic() - began
        return {"msgs_per_s": messages / elapsed, "seconds": elapsed}
    finally:
        run.close()


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


def connections(messages: int = 20000, chats: int = 1000) -> dict:
    """The throughput load, with the daemon's connections to the Bot API counted meanwhile."""
    run = Run("counter")
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


WORKLOADS = {"throughput": throughput, "latency": latency, "footprint": footprint,
             "faults": faults, "pipeline": pipeline, "help": help_time, "telepot": telepot,
             "idle": idle, "threads64": threads64, "connections": connections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    for name in args.only:
        results = [WORKLOADS[name]() for _ in range(args.repeat)]
        merged = {}
        for key in results[0]:
            values = [r[key] for r in results]
            merged[key] = statistics.median(values) if isinstance(values[0], float) else values[-1]
        shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in merged.items())
        print(f"{name:11s} {shown}", flush=True)


if __name__ == "__main__":
    main()
