"""Living as a service: systemd's notify protocol, and `--daemon` mode with a kernel-locked pidfile.

`--daemon` tells the truth: the process that started it returns 0 only once the detached
daemon polls, or prints the daemon's error and exits with its status; a refused start
leaves no pidfile and no new database. `stop` sends SIGTERM and waits for the pidfile's
lock to go; SIGHUP reopens the log file.

sd_notify is spoken directly over $NOTIFY_SOCKET (a datagram socket): READY=1 once the
database is open and the first getUpdates has returned, EXTEND_TIMEOUT_USEC= while start-up
keeps retrying without a network (a Pi booting before its Wi-Fi), STATUS= with a short
summary, WATCHDOG=1 only while the poll loop makes progress (a wedged poller is restarted by
systemd; a network outage is not a reason to restart), STOPPING=1 on shutdown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import sqlite3
import stat
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ChatdaemonError, ConfigError, ShuttingDown

if TYPE_CHECKING:
    from .app import Daemon, StartUp

log = logging.getLogger(__name__)

EXTEND_EVERY = 10.0   # seconds between EXTEND_TIMEOUT_USEC messages while start-up retries
EXTEND_BY = 120.0     # each one gives start-up this much more time (a call ≤ 40 s + a wait ≤ 30 s)


class Notifier:
    """Sends sd_notify messages when $NOTIFY_SOCKET is set; does nothing otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env: Mapping[str, str] = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
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
        # one assignment per line: a newline inside a field (STATUS= carries the Bot API's
        # error description) would read as assignments of its own (WATCHDOG=1, MAINPID=…)
        message = "\n".join(" ".join(field.splitlines()) for field in fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)

    def tick(self, app: Daemon) -> None:
        """Called about once a second by the daemon's supervising loop."""
        if not self.enabled:
            return   # no systemd to tell; the status line would count the backlog for nobody
        poller = app.poller
        if not self._ready_sent and poller.polls > 0:
            self._ready_sent = True
            self.send("READY=1", f"STATUS={status_line(app)}")
        self._send_status(app)
        if not self._ready_sent:
            if poller.alive():
                self.starting(app)
        else:
            self._feed_watchdog(poller.alive())

    def starting(self, app: StartUp | Daemon) -> None:
        """Start-up is retrying (no network yet): ask systemd for more time, now and then."""
        if self._ready_sent:
            return
        now = time.monotonic()
        if now - self._last_extend >= EXTEND_EVERY:
            self._last_extend = now
            extend = max(EXTEND_BY, app.start_wait + 60.0)  # a long 429 retry_after too
            self.send(f"EXTEND_TIMEOUT_USEC={int(extend * 1e6)}",
                      f"STATUS=starting; {app.start_error or 'waiting for the first poll'}")

    def _send_status(self, app: Daemon) -> None:
        line = status_line(app)
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    @property
    def tick_every(self) -> float | None:
        """How often tick() must run: WATCHDOG=1 goes out when a third of the interval has
        passed, so ticks every interval/2.5 feed it about then (48 s for WatchdogSec=120)."""
        return None if self.watchdog_interval is None else self.watchdog_interval / 2.5

    def _feed_watchdog(self, poll_loop_alive: bool) -> None:
        """WATCHDOG=1 only while the poll loop keeps its bounds (see Poller.alive)."""
        if self.watchdog_interval is None or not poll_loop_alive:
            return  # the poller is wedged: let systemd see it
        now = time.monotonic()
        if now - self._last_watchdog >= self.watchdog_interval / 3:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self, app: Daemon) -> None:
        self.send("STOPPING=1", "STATUS=stopping")


def status_line(app: Daemon) -> str:
    status = app.status()
    age = status["last_poll_age"]
    poll = "waiting for the first poll" if age is None else f"last poll {age:.0f} s ago"
    line = (f"polling; {status['delegates']} chat(s) active, {status['waiting_chats']} waiting, "
            f"backlog {status['backlog']}; {poll}")
    if status["last_error"]:
        line += f"; last error: {status['last_error']}"
    return line


# -- --daemon mode: files, the start report, stop ---------------------------------------------

EXIT_NOT_RUNNING = 3       # `stop`: no daemon holds the pidfile (the LSB status for "not running")
START_TIMEOUT = 30.0       # the foreground waits this long for the detached daemon's first poll
STOP_TIMEOUT = 30.0        # `stop` waits this long for the daemon to let go of its pidfile


class AlreadyRunning(ConfigError):
    """The pidfile is held (flock) by a live process."""

    def __init__(self, path: str, pid: int | None):
        self.path = path
        self.pid = pid
        super().__init__(f"already running: pidfile {path} is held by pid {pid or '?'}")


class NotRunning(ChatdaemonError):
    """`stop`: no live process holds the pidfile."""

    exit_status = EXIT_NOT_RUNNING

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"not running: {reason} ({path})")


class DidNotStop(ChatdaemonError):
    """`stop`: the daemon still held its pidfile when the timeout ran out."""

    def __init__(self, pid: int, seconds: float):
        self.pid = pid
        self.seconds = seconds
        super().__init__(f"pid {pid} got SIGTERM but was still running after {seconds:.0f} s")


class StartFailed(ChatdaemonError):
    """The detached daemon failed (or died) before its first poll; carries its exit status."""

    def __init__(self, status: int, reason: str, log_path: str):
        self.exit_status = status
        self.reason = reason
        self.log_path = log_path
        super().__init__(f"{reason} (the daemon's log: {log_path})")


def open_regular(path: str, flags: int, what: str, mode: int = 0o600) -> int:
    """Open `path` without following a symlink, and only if it is a regular file.

    A daemon started as root must not write through a link planted where its pidfile or
    log file goes (O_NOFOLLOW), nor into a device or a FIFO (fstat; O_NONBLOCK so that
    opening a FIFO cannot hang). FileNotFoundError passes through when not creating.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
        raise ConfigError(f"cannot create {what} {path}: its directory does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"refusing {what} {path}: it is a symbolic link") from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket
            raise ConfigError(f"refusing {what} {path}: it is not a regular file") from None
        raise ConfigError(f"cannot open {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"refusing {what} {path}: it is not a regular file")
    os.set_blocking(fd, True)
    return fd


PIDFILE_MAX = 32   # bytes: a pid, a newline, some padding; a larger file is not a pidfile


def _holds_a_pid_or_nothing(fd: int) -> bool:
    """Whether the open file is empty or holds just a number (the only files a pidfile's
    start may truncate: never the database, a config or any other file named by mistake)."""
    if os.fstat(fd).st_size > PIDFILE_MAX:
        return False
    text = os.pread(fd, PIDFILE_MAX + 1, 0).decode("ascii", "replace").strip()
    return not text or text.isdigit()


def check_distinct_files(pidfile: str, log_file: str, kept: dict[str, str]) -> None:
    """Refuse a pidfile or log file that is one of the files in `kept` (what → path: the
    database, its companions, the config) or each other: truncated or appended to, the
    file would be lost."""
    seen = {os.path.realpath(path): what for what, path in kept.items() if path}
    for what, path in (("pidfile", pidfile), ("log file", log_file)):
        real = os.path.realpath(path)
        if real in seen:
            raise ConfigError(f"refusing {what} {path}: it is the {seen[real]}")
        seen[real] = what


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() and int(text) > 1 else None


def _is_locked(fd: int) -> bool:
    """True while another process holds the pidfile's flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class PidFile:
    """A pidfile held with flock: refused while a live process holds it, free after kill -9.

    Usable as python-daemon's `pidfile` (a context manager entered after detaching). It is
    created only by the daemon that will hold it, and removed when that daemon stops or
    fails to start.
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self._fd: int | None = None

    def check_free(self) -> None:
        """Fail now, in the foreground, if another process holds the pidfile (creates nothing)."""
        try:
            fd = open_regular(self.path, os.O_RDONLY, "pidfile")
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(self.path)):
                raise ConfigError(f"cannot create pidfile {self.path}: its directory does not exist") \
                    from None
            return
        try:
            if _is_locked(fd):
                raise AlreadyRunning(self.path, _pid_in(fd))
            self._refuse_other_content(fd)
        finally:
            os.close(fd)

    def _refuse_other_content(self, fd: int) -> None:
        if not _holds_a_pid_or_nothing(fd):
            raise ConfigError(f"refusing pidfile {self.path}: the file exists and holds more "
                              "than a pid (another file given as --pidfile?)")

    def acquire(self) -> None:
        fd = open_regular(self.path, os.O_RDWR | os.O_CREAT, "pidfile", 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _pid_in(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(self.path, holder) from None
            raise
        try:
            self._refuse_other_content(fd)   # truncated below: only ever a pidfile
        except ConfigError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> int | None:
        """The pid written in the pidfile, if there is one (for messages; the lock is the truth)."""
        try:
            fd = open_regular(self.path, os.O_RDONLY, "pidfile")
        except (FileNotFoundError, ConfigError):
            return None
        try:
            return _pid_in(fd)
        finally:
            os.close(fd)

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


class LogFile:
    """The detached daemon's stdout and stderr: a regular file, reopened on SIGHUP (logrotate)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def open(self) -> int:
        return open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "log file")

    def check(self) -> None:
        """Fail now, in the foreground, if the daemon could not open it (creates nothing)."""
        try:
            os.close(open_regular(self.path, os.O_WRONLY | os.O_APPEND, "log file"))
        except FileNotFoundError:
            parent = os.path.dirname(self.path)
            if not os.path.isdir(parent):
                raise ConfigError(f"cannot create log file {self.path}: its directory does "
                                  "not exist") from None
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"cannot create log file {self.path}: {parent} is not "
                                  "writable") from None

    def reopen(self) -> None:
        """Point stdout and stderr at a fresh open of the path (logrotate moved the old file)."""
        try:
            fd = self.open()
        except ConfigError as exc:
            log.error("cannot reopen the log file, still writing to the old one: %s", exc)
            return
        # dup2 swaps the file under fds 1 and 2 at once: sys.stderr and every logging
        # handler writing to it carry on, now into the new file
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        log.info("log file reopened")


class StartReport:
    """The detached daemon's word to the process that started it, over a pipe.

    Lines of "KIND STATUS TEXT": any number of `starting` while start-up retries (no network
    yet), then exactly one `ready` (the first getUpdates answered) or `failed`; then the
    pipe closes, and later errors go only to the log file.
    """

    def __init__(self, fd: int):
        self._fd: int | None = fd
        self._last_starting = ""

    def tick(self, app: Daemon) -> None:
        if app.poller is not None and app.poller.polls > 0:
            self._finish("ready", 0, "polling")

    def starting(self, app: StartUp | Daemon) -> None:
        text = app.start_error or "starting"
        if text != self._last_starting:
            self._last_starting = text
            self._send("starting", 0, text)

    def failed(self, status: int, reason: str) -> None:
        self._finish("failed", status, reason)

    def _finish(self, kind: str, status: int, text: str) -> None:
        self._send(kind, status, text)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _send(self, kind: str, status: int, text: str) -> None:
        if self._fd is None:
            return
        from .logs import redact
        line = f"{kind} {status} {' '.join(redact(text).split())}\n"
        try:
            os.write(self._fd, line.encode())
        except OSError:  # the foreground process gave up waiting; the log has it all
            os.close(self._fd)
            self._fd = None


@dataclasses.dataclass(frozen=True)
class StartOutcome:
    kind: str          # ready, failed, starting (still, when the wait ran out) or died
    status: int
    text: str


def await_start(fd: int, timeout: float) -> StartOutcome:
    """Read the daemon's start report until `ready`, `failed`, end of pipe or `timeout`."""
    deadline = time.monotonic() + timeout
    outcome = StartOutcome("starting", 0, "waiting for the first poll")
    buffer = b""
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return StartOutcome("died", 1, "the daemon exited during start-up")
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            kind, status, text = (line.decode(errors="replace").split(" ", 2) + ["", ""])[:3]
            outcome = StartOutcome(kind, int(status) if status.isdigit() else 1, text)
            if kind in ("ready", "failed"):
                return outcome
    return outcome


def run_detached(pidfile: PidFile, log_file: LogFile, working_directory: str,
                 main: Callable[[StartReport], None],
                 start_timeout: float = START_TIMEOUT) -> StartOutcome:
    """Run `main` as a daemon; in the foreground, return how its start went.

    The foreground process forks; the child detaches with python-daemon's DaemonContext
    (umask 077, stdout and stderr to the log file, our flock pidfile) and runs `main`,
    which tells the foreground over a pipe when it polls or why it failed. A failure before
    that releases (removes) the pidfile on the way out.
    """
    import daemon  # python-daemon; imported here so the foreground path never needs it

    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        try:
            outcome = await_start(read_end, start_timeout)
        finally:
            os.close(read_end)
        os.waitpid(child, 0)  # python-daemon's first fork: it exits as soon as it forked again
        return outcome
    os.close(read_end)
    report = StartReport(write_end)
    status = 1
    detached = False   # before that, stderr is the terminal, and the foreground prints the error
    try:
        log_stream = os.fdopen(log_file.open(), "a", buffering=1)
        context = daemon.DaemonContext(
            umask=0o077, working_directory=working_directory, pidfile=pidfile,
            stdout=log_stream, stderr=log_stream, detach_process=True, files_preserve=[write_end],
            signal_map=detached_signal_map())
        with context:
            detached = True
            main(report)
        status = 0
    except ShuttingDown:
        status = 0
        report.failed(0, "stopped (SIGTERM) before it was polling")
    except ChatdaemonError as exc:
        status = exc.exit_status
        report.failed(status, str(exc))
        if detached:
            _log_in_child(f"chatdaemon: {exc}")
    except BaseException as exc:
        report.failed(1, f"unexpected error: {exc!r}")
        if detached:
            _log_in_child(traceback.format_exc())
    finally:
        os._exit(status)


def detached_signal_map() -> dict[int, object]:
    """python-daemon's signal map, but SIGTERM and SIGHUP keep the handlers they have (the
    CLI's EarlySignals): its default makes SIGTERM raise SystemExit, so a `stop` between
    detaching and the daemon taking its signals over ended it as an unexpected error."""
    from daemon.daemon import make_default_signal_map
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    return {**make_default_signal_map(), **kept}


def _log_in_child(text: str) -> None:
    from .logs import redact
    try:
        print(redact(text), file=sys.stderr, flush=True)
    except OSError:
        pass


def remove_new_database(path: str) -> bool:
    """Remove a database a refused start created, if nothing was stored in it; say if it did.

    Only under the database's own lock: a start refused because another process holds the
    file (two starts at once on a new path) must leave that process's database alone.
    """
    from .dbfile import FileLock
    from .errors import DatabaseInUse, UnusableDatabase
    lock = FileLock(path)
    try:
        lock.acquire()
    except (DatabaseInUse, UnusableDatabase):
        return False
    try:
        return _remove_if_empty(path)
    finally:
        lock.release()


def _remove_if_empty(path: str) -> bool:
    try:
        uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            stored = sum(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                         for table in ("inbox", "conversations") if table in tables)
    except sqlite3.DatabaseError:
        return False
    if stored:
        return False
    lock = os.path.realpath(path) + ".lock"  # held by the caller: unlinked before its release
    for name in [path + suffix for suffix in ("", "-wal", "-shm", "-journal")] + [lock]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    return True


@contextlib.contextmanager
def removing_new_database(path: str, existed: bool) -> Iterator[None]:
    """A start refused with an error leaves no new database behind."""
    try:
        yield
    except ShuttingDown:
        raise
    except ChatdaemonError:
        if not existed and remove_new_database(path):
            log.info("removed %s, created by this refused start", path)
        raise


def stop_daemon(pidfile_path: str, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
    """SIGTERM the daemon holding `pidfile_path`; wait until it lets go. Return (pid, seconds)."""
    path = os.path.abspath(pidfile_path)
    try:
        fd = open_regular(path, os.O_RDONLY, "pidfile")
    except FileNotFoundError:
        raise NotRunning(path, "no pidfile") from None
    try:
        # The lock, not the pid, says whether the daemon lives: a stale pid may be reused.
        if not _is_locked(fd):
            raise NotRunning(path, "the pidfile is not held by any process")
        pid = _pid_in(fd)
        if pid is None:
            raise NotRunning(path, "the pidfile holds no pid yet")
        began = time.monotonic()
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            raise NotRunning(path, f"pid {pid} is gone") from None
        while _is_locked(fd):
            if time.monotonic() - began > timeout:
                raise DidNotStop(pid, timeout)
            time.sleep(0.1)
        return pid, time.monotonic() - began
    finally:
        os.close(fd)
