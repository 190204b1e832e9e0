"""The database as a file: one process holds it, only its owner can read it, and it is ours.

Everything here happens before (or right after) SQLite opens the file, so a mistake with
paths stops the daemon at start instead of dropping or mixing conversations:
- an exclusive `flock` on `<database>.lock`, held for the Store's life and released by the
  kernel when the process dies (kill -9 never leaves it stuck). SQLite's own locks are not
  touched: a read-only reader (`mode=ro`) still works while the daemon runs;
- the database and its -wal and -shm are made 0600, or refused when that is impossible;
- the schema is checked against the migrations this version knows: a newer schema,
  another application's tables, or a file SQLite cannot read are refused with one line.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import sqlite3
import stat
from collections.abc import Sequence

from .errors import DatabaseInUse, DatabaseUnavailable, OtherBotsDatabase, UnusableDatabase

# The owner recorded by `chatdaemon chat`, which has no token (errors.py names it so too).
TERMINAL = "terminal"
OWNER_KEY = "bot"

_CREATED = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I)
# SQLite's errors (their extended names start so) that end by themselves
_PASSING = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_NOMEM")
_DROPPED = re.compile(r"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(\w+)", re.I)


def owner_of_token(token: str) -> str:
    """The bot id: the token's numeric prefix, known without asking Telegram."""
    return token.split(":", 1)[0]


def companions(path: str) -> tuple[str, ...]:
    """The files SQLite keeps beside a WAL database."""
    return (f"{path}-wal", f"{path}-shm")


# -- one process per database ------------------------------------------------------------

class FileLock:
    """An exclusive, non-blocking flock on `<database>.lock` that records its holder's pid."""

    def __init__(self, database: str):
        self.database = database
        # beside the real file: two paths (symlinks) to one database must meet at one lock
        self.path = f"{os.path.realpath(database)}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        # O_CLOEXEC: a handler's subprocess must not inherit (and so keep) the lock
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UnusableDatabase(self.database, f"cannot create its lock file {self.path}: "
                                                  f"{exc.strerror}") from None
        try:
            make_private(self.database, (self.path,))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DatabaseInUse(self.database, holder) from None
            raise UnusableDatabase(self.database, f"cannot lock {self.path}: {exc.strerror}") \
                from None
        except BaseException:
            os.close(fd)
            raise
        os.pwrite(fd, f"{os.getpid():<19}\n".encode(), 0)  # fixed width: no truncate needed
        self._fd = fd

    def release(self) -> None:
        """Unlock by closing; the file stays (removing it could let two processes lock two files)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(database: str) -> int | None:
    """The pid of the process holding `database`'s lock, or None: read from /proc/locks, so
    looking takes no lock of its own (a daemon starting meanwhile is never refused)."""
    try:
        info = os.stat(f"{os.path.realpath(database)}.lock")
        with open("/proc/locks", encoding="ascii", errors="replace") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (a blocked waiter has "->" first)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" \
                and fields[5] == wanted and fields[4].isdigit():
            return int(fields[4])
    return None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


# -- only the owner reads it -------------------------------------------------------------

SQLITE_HEADER = b"SQLite format 3\0"   # the first 16 bytes of every SQLite database


def make_private(database: str, paths: Sequence[str]) -> None:
    """Tighten each existing file in `paths` to 0600; refuse the database if one can't be.

    A database path holding another kind of file (a YAML or a JPEG given as --db) keeps
    its mode: SQLite refuses it next, and a refused start changes nothing in it.
    """
    for path in paths:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UnusableDatabase(database, f"cannot inspect {path}: {exc.strerror}") from None
        if mode & 0o077 == 0 or (path == database and not _empty_or_sqlite(path)):
            continue
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            raise UnusableDatabase(
                database, f"{path} is readable by others (mode {mode:04o}) and cannot be made "
                          f"private: {exc.strerror}") from None


def _empty_or_sqlite(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(SQLITE_HEADER))
    except OSError:
        return True   # unreadable here: chmod decides, and SQLite says why after
    return not head or head == SQLITE_HEADER


class PrivateUmask:
    """umask 077 while SQLite creates files (the -wal and -shm), restored afterwards."""

    def __enter__(self) -> None:
        self._old = os.umask(0o077)

    def __exit__(self, *exc: object) -> None:
        os.umask(self._old)


# -- the schema is ours -------------------------------------------------------------------

def tables_after(migrations: Sequence[str], version: int) -> set[str]:
    """The tables a database at schema `version` has (created minus dropped)."""
    tables: set[str] = set()
    for script in migrations[:version]:
        tables |= {name.lower() for name in _CREATED.findall(script)}
        tables -= {name.lower() for name in _DROPPED.findall(script)}
    return tables


def check_schema(db: sqlite3.Connection, database: str, migrations: Sequence[str]) -> int:
    """The database's schema version, after refusing anything this version cannot use."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    known = len(migrations)
    if version > known or version < 0:
        raise UnusableDatabase(database, f"has schema version {version}, and this chatdaemon "
                                         f"knows versions up to {known} (a newer chatdaemon "
                                         "wrote it: upgrade, or use another --db)")
    tables = {name.lower() for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    foreign = tables - tables_after(migrations, known)
    if foreign or (version == 0 and tables):
        names = ", ".join(sorted(foreign or tables))
        raise UnusableDatabase(database, f"is not a chatdaemon database (it has tables {names}): "
                                         "give the bot its own --db file")
    missing = tables_after(migrations, version) - tables
    if missing:
        raise UnusableDatabase(database, f"is damaged: schema version {version} but no table "
                                         f"{', '.join(sorted(missing))}")
    return version


def claim(db: sqlite3.Connection, database: str, owner: str | None) -> None:
    """Record `owner` in a database that has none; refuse one that belongs to another bot.

    Run inside a write transaction, so two first opens cannot both record themselves.
    """
    row = db.execute("SELECT value FROM meta WHERE key = ?", (OWNER_KEY,)).fetchone()
    if row is None:
        if owner is not None:
            db.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (OWNER_KEY, owner))
        return
    if owner is not None and row[0] != owner:
        raise OtherBotsDatabase(database, recorded=row[0], wanted=owner)


def unreadable(database: str, exc: sqlite3.DatabaseError) -> UnusableDatabase:
    """SQLite could not read the file: say so in one line, with SQLite's own reason."""
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return UnusableDatabase(database, f"is damaged or not an SQLite database ({exc})")
    # a cause that passes (a backup holding the write lock, a full disk) must not end in
    # 78, which a service manager never restarts: the bot would stay down for good
    if name.startswith(_PASSING):
        return DatabaseUnavailable(database, f"cannot be opened for now: {exc}", name)
    return UnusableDatabase(database, f"cannot be opened: {exc}")
