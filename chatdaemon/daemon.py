"""Living as a service: systemd's notify protocol, and `--daemon` mode with a kernel-locked pidfile.

sd_notify is spoken directly over $NOTIFY_SOCKET (a datagram socket): READY=1 once the
database is open and the first getUpdates has returned, EXTEND_TIMEOUT_USEC= while start-up
keeps retrying without a network (a Pi booting before its Wi-Fi), STATUS= with a short
summary, WATCHDOG=1 only while the poll loop makes progress (a wedged poller is restarted by
systemd; a network outage is not a reason to restart), STOPPING=1 on shutdown.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ChatdaemonError, ConfigError

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

EXTEND_EVERY = 10.0   # seconds between EXTEND_TIMEOUT_USEC messages while start-up retries
EXTEND_BY = 120.0     # each one gives start-up this much more time (a call ≤ 40 s + a wait ≤ 30 s)


class Notifier:
    """Sends sd_notify messages when $NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self._ready_sent = False
        self._last_status = ""
        self._last_watchdog = 0.0
        self._last_extend = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.enabled:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def tick(self, app: App) -> None:
        """Called about once a second by the daemon's supervising loop."""
        poller = app.poller
        if poller is None:
            return
        if not self._ready_sent and poller.polls > 0:
            self._ready_sent = True
            self.send("READY=1", f"STATUS={status_line(app)}")
        self._send_status(app)
        if not self._ready_sent:
            if poller.alive():
                self.starting(app)
        else:
            self._feed_watchdog(poller.alive())

    def starting(self, app: App) -> None:
        """Start-up is retrying (no network yet): ask systemd for more time, now and then."""
        if self._ready_sent:
            return
        now = time.monotonic()
        if now - self._last_extend >= EXTEND_EVERY:
            self._last_extend = now
            extend = max(EXTEND_BY, app.start_wait + 60.0)  # a long 429 retry_after too
            self.send(f"EXTEND_TIMEOUT_USEC={int(extend * 1e6)}",
                      f"STATUS=starting; {app.start_error or 'waiting for the first poll'}")

    def _send_status(self, app: App) -> None:
        line = status_line(app)
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def _feed_watchdog(self, poll_loop_alive: bool) -> None:
        """WATCHDOG=1 only while the poll loop keeps its bounds (see Poller.alive)."""
        if self.watchdog_interval is None or not poll_loop_alive:
            return  # the poller is wedged: let systemd see it
        now = time.monotonic()
        if now - self._last_watchdog >= self.watchdog_interval / 3:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self, app: App) -> None:
        self.send("STOPPING=1", "STATUS=stopping")


def status_line(app: App) -> str:
    status = app.status()
    age = status["last_poll_age"]
    poll = "waiting for the first poll" if age is None else f"last poll {age:.0f} s ago"
    line = (f"polling; {status['delegates']} chat(s) active, {status['waiting_chats']} waiting, "
            f"backlog {status['backlog']}; {poll}")
    if status["last_error"]:
        line += f"; last error: {status['last_error']}"
    return line


class PidFile:
    """A pidfile held with flock: refused while a live process holds it, free after kill -9.

    Usable as python-daemon's `pidfile` (a context manager entered after detaching).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._fd: int | None = None

    def check_free(self) -> None:
        """Fail now, in the foreground, if another process holds the pidfile (writes nothing)."""
        os.close(self._lock())

    def acquire(self) -> None:
        fd = self._lock()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _lock(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open pidfile {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"already running: pidfile {self.path} is held by pid {holder}") \
                    from None
            raise
        return fd

    def release(self, remove: bool = True) -> None:
        if self._fd is None:
            return
        if remove:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_detached(pidfile: PidFile, log_path: str, working_directory: str,
                 main: Callable[[], None]) -> None:
    """Run `main` as a daemon; return in the foreground once the daemon holds its pidfile.

    The foreground process forks; the child detaches with python-daemon's DaemonContext
    (umask 077, stdout and stderr to `log_path`, our flock pidfile) and reports over a pipe
    when it is ready, so whoever started it finds the right pid in the pidfile.
    """
    import daemon  # python-daemon; imported here so the foreground path never needs it

    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        ready = _read_within(read_end, 30.0)
        os.close(read_end)
        os.waitpid(child, 0)  # python-daemon's first fork: it exits as soon as it forked again
        if ready != b"ready":
            raise ChatdaemonError(f"the daemon did not start; see {log_path}")
        return
    os.close(read_end)
    status = 1
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        log_file = os.fdopen(fd, "a", buffering=1)
        context = daemon.DaemonContext(
            umask=0o077, working_directory=working_directory, pidfile=pidfile,
            stdout=log_file, stderr=log_file, detach_process=True, files_preserve=[write_end])
        with context:
            os.write(write_end, b"ready")
            os.close(write_end)
            main()
        status = 0
    except ChatdaemonError as exc:
        print(f"chatdaemon: {exc}", file=sys.stderr, flush=True)
        status = exc.exit_status
    except BaseException:
        from .logs import redact
        print(redact(traceback.format_exc()), file=sys.stderr, flush=True)
    finally:
        os._exit(status)


def _read_within(fd: int, seconds: float) -> bytes:
    readable, _, _ = select.select([fd], [], [], seconds)
    return os.read(fd, 16) if readable else b""
