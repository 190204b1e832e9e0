"""What a running process costs, read from /proc: memory, threads, wake-ups, CPU, connections.

Linux only. Every function takes a pid and reads the kernel's own counters, so the same
figures come out for chatdaemon and for any other bot process measured beside it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

ESTABLISHED = "01"


def status_fields(pid: int) -> dict[str, int]:
    """The numeric fields of /proc/PID/status that matter here (sizes in KiB)."""
    wanted = {"Threads", "VmRSS", "VmSize", "VmHWM", "voluntary_ctxt_switches",
              "nonvoluntary_ctxt_switches"}
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in wanted:
                fields[name] = int(value.split()[0])
    return fields


def context_switches(pid: int) -> int:
    """Voluntary context switches summed over every thread of the process.

    A thread that blocks (a sleep, a select, a lock, a read) and is woken again counts one:
    for an idle process this is its number of wake-ups.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            with open(task / "status") as status:
                for line in status:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except FileNotFoundError:  # the thread ended between listing and reading
            continue
    return total


def wakeups_per_second(pid: int, seconds: float) -> float:
    """Voluntary context switches per second over `seconds` of (presumed) idleness."""
    before = context_switches(pid)
    began = time.monotonic()
    time.sleep(seconds)
    return (context_switches(pid) - before) / (time.monotonic() - began)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _remote_port(address: str) -> tuple[str, int]:
    host, port = address.split(":")
    return host, int(port, 16)


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections the process holds to `port` (IPv4 and IPv6 tables)."""
    inodes = _socket_inodes(pid)
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == ESTABLISHED and fields[9] in inodes \
                    and _remote_port(fields[2])[1] == port:
                count += 1
    return count


class Peaks:
    """Samples a process in a thread every `interval` s and keeps the highest of each figure."""

    def __init__(self, pid: int, port: int | None = None, interval: float = 0.02) -> None:
        self.pid = pid
        self.port = port
        self.interval = interval
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="peaks", daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except (FileNotFoundError, ProcessLookupError):
                return  # the process ended
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        fields = status_fields(self.pid)
        if self.port is not None:
            fields["connections"] = connections_to(self.pid, self.port)
        for name, value in fields.items():
            self.peak[name] = max(self.peak.get(name, 0), value)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout` s pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

