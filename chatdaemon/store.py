"""The SQLite store: the connection, its transactions and the schema's migrations.

What is stored lives in the modules that own it, as SQL run on the connection this store
hands them: the inbox of updates (inbox.py), conversations (conversations.py) and
schedules (schedules.py). `Store` keeps their public methods in one place, each one a lock
or one transaction around them.

All access goes through one connection guarded by one lock. SQLite admits one writer at a
time anyway; serialising in Python instead of in SQLite's busy handler keeps commits from
sleeping in back-off under load, and keeps the connection out of two threads at once.

Updates finish in group commits: each `finish` joins a queue, and the thread that takes the
lock commits every finish queued by then in one transaction, in the order they came. Under
load one BEGIN/COMMIT (and one write of the pages they share) serves several chats; a lone
update commits alone, as before. Each finish is still all or nothing on its own: when one of
a group fails (its guard refuses, a write fails), the group rolls back and each of them is
committed alone, so only the failing one is refused.

Two durability levels share that connection:
- the inbox batch commits with synchronous=FULL, because its return gates the
  acknowledgement of those updates to Telegram;
- conversation state + "done" commit with synchronous=NORMAL (WAL): after a power cut they
  roll back together, the update replays, and the state still changes exactly once.

What reaches the SD card: 512-byte pages (a commit writes each page it touches whole to the
WAL) holding updates stored deflated, one fsync per getUpdates batch, checkpoints every 4 MB
of WAL. What stays on it:
`apply_retention` deletes handled updates by age and size (never unhandled ones) and gives
the freed pages back to the file system (incremental auto-vacuum).

Opening holds the database for this process and this bot (see dbfile.py): a locked
database, another bot's, a newer or foreign schema, or a damaged file is refused before
anything in it changes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from . import conversations, inbox, schedules
from .conversations import Conversation, Snapshot
from .dbfile import (
    FileLock,
    PrivateUmask,
    check_schema,
    claim,
    companions,
    make_private,
    unreadable,
)
from .errors import ConfigError, ShuttingDown
from .inbox import KEEP_DONE_AT_LEAST_SECONDS, KEEP_DONE_SECONDS, LOCAL_BASE, InboxRow

log = logging.getLogger(__name__)

__all__ = ["KEEP_DONE_SECONDS", "LOCAL_BASE", "MIGRATIONS", "Conversation", "InboxRow", "Pruned",
           "Retention", "Store", "create_private_file"]

DEFAULT_MAX_DATABASE_BYTES = 64 * 2 ** 20
KEEP_BUTTON_TOKENS_SECONDS = 30 * 86400   # long button data, without forget_conversations_after
MIN_FIT_BATCH = 20   # rows deleted at least per round of a prune to fit the size cap
FIT_ROUNDS = 100   # a prune to fit the size cap stops after this many batches, done or not


@dataclass(frozen=True)
class Retention:
    """How long and how much the database keeps of what is finished."""

    keep_handled: float = KEEP_DONE_SECONDS     # seconds a handled update is kept
    max_database_bytes: int = DEFAULT_MAX_DATABASE_BYTES   # 0: no cap
    forget_conversations_after: float | None = None   # seconds idle; None: kept for ever


@dataclass
class Pruned:
    """What one prune removed."""

    updates: int = 0          # handled updates deleted
    conversations: int = 0    # idle conversations deleted
    freed_bytes: int = 0      # given back to the file system
    over_cap_bytes: int = 0   # still above the size cap when nothing more could go

    def __bool__(self) -> bool:
        return bool(self.updates or self.conversations or self.freed_bytes)

MIGRATIONS: list[str] = [
    # 1: the inbox and the conversations
    """
    CREATE TABLE inbox (
        update_id INTEGER PRIMARY KEY,
        chat_id   INTEGER,
        kind      TEXT NOT NULL,
        payload   TEXT NOT NULL,
        done      INTEGER NOT NULL DEFAULT 0,
        received  REAL NOT NULL,
        handled   REAL
    );
    CREATE INDEX inbox_pending ON inbox(chat_id, update_id) WHERE done = 0;
    CREATE TABLE conversations (
        chat_id INTEGER PRIMARY KEY,
        state   TEXT,
        vars    TEXT NOT NULL DEFAULT '{}',
        updated REAL NOT NULL
    );
    """,
    # 2: the context of each state's transition (the pipeline's state_context)
    """
    ALTER TABLE conversations ADD COLUMN state_context TEXT NOT NULL DEFAULT '{}';
    """,
    # 3: per-chat schedules; the conversation holds them, this table indexes when they are due
    """
    ALTER TABLE conversations ADD COLUMN schedules TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE schedules (
        chat_id INTEGER NOT NULL,
        name    TEXT NOT NULL,
        every   REAL NOT NULL,
        next_at REAL NOT NULL,
        PRIMARY KEY (chat_id, name)
    );
    CREATE INDEX schedules_due ON schedules(next_at);
    """,
    # 4: who the database belongs to; attempts and quarantine for updates that keep failing;
    #    updates too malformed to be inbox rows, kept for the owner to see
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN quarantined TEXT;
    CREATE TABLE rejected (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        received REAL NOT NULL,
        reason   TEXT NOT NULL,
        payload  TEXT NOT NULL
    );
    """,
    # 5: schedules have one home, their table: the conversation's JSON copy moves there (the
    #    table already held each one; a missing row starts an interval from now) and its
    #    column stays empty (kept: dropping a column needs SQLite 3.35, older than some Pis)
    """
    INSERT OR IGNORE INTO schedules(chat_id, name, every, next_at)
        SELECT c.chat_id, s.key, CAST(json_extract(s.value, '$.every') AS REAL),
               CAST(strftime('%s', 'now') AS REAL) + json_extract(s.value, '$.every')
        FROM conversations AS c, json_each(CASE WHEN json_valid(c.schedules) THEN CASE
            WHEN json_type(c.schedules) = 'object' THEN c.schedules END END) AS s
        WHERE CASE WHEN s.type = 'object' THEN json_type(s.value, '$.every') END
            IN ('integer', 'real');
    UPDATE conversations SET schedules = '{}' WHERE schedules != '{}';
    """,
    # 6: people: who is with a human, their queued messages, which operator message is about
    #    whom, and button data too long for Telegram kept under a short token
    """
    CREATE TABLE handoffs (
        chat_id  INTEGER PRIMARY KEY,
        name     TEXT NOT NULL,
        username TEXT,
        started  REAL NOT NULL
    );
    CREATE TABLE handoff_messages (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id  INTEGER NOT NULL,
        received REAL NOT NULL,
        text     TEXT NOT NULL,
        unread   INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX handoff_messages_chat ON handoff_messages(chat_id, id);
    CREATE TABLE operator_messages (
        operator   INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        chat_id    INTEGER NOT NULL,
        sent       REAL NOT NULL,
        PRIMARY KEY (operator, message_id)
    );
    CREATE INDEX operator_messages_chat ON operator_messages(chat_id);
    CREATE TABLE button_tokens (
        token   TEXT PRIMARY KEY,
        data    TEXT NOT NULL,
        chat_id INTEGER NOT NULL,
        created REAL NOT NULL
    );
    """,
    # 7: callback tokens: the SHA-256 of the secret in a conversation's callback URL, the
    #    chat and handler it answers in, and when it stops being accepted
    """
    CREATE TABLE callback_tokens (
        digest  TEXT PRIMARY KEY,
        chat_id INTEGER NOT NULL,
        handler TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL
    );
    CREATE INDEX callback_tokens_expires ON callback_tokens(expires);
    """,
    # 8: conversations kept per member of a group (`conversation: per_user`)
    """
    CREATE TABLE member_conversations (
        chat_id       INTEGER NOT NULL,
        user_id       INTEGER NOT NULL,
        state         TEXT,
        vars          TEXT NOT NULL DEFAULT '{}',
        state_context TEXT NOT NULL DEFAULT '{}',
        updated       REAL NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    );
    CREATE INDEX member_conversations_user ON member_conversations(user_id);
    """,
]


# The page size new databases get. Every commit writes whole pages to the WAL (a page per
# b-tree page it touches: the inbox row's leaf, the pending index, the conversation), so
# smaller pages are fewer bytes on the SD card per update. 512 bytes is SQLite's smallest:
# an update, stored deflated (inbox.encode_payload), takes about 130 bytes with its row, so
# three share a leaf. One at a time, an update's two commits append about 3 KB to the WAL,
# where 1 KiB pages and JSON text appended 6.8 KB.
PAGE_SIZE = 512
AUTO_VACUUM_INCREMENTAL = 2   # PRAGMA auto_vacuum's value: freed pages can be given back


def shape_file(db: sqlite3.Connection, path: str, empty: bool) -> None:
    """Give the database small pages and incremental auto-vacuum.

    An empty file takes both before its first table. A file made by an earlier version is
    rewritten once with VACUUM (outside WAL: the page size cannot change in WAL mode); when
    that fails (a full disk), it keeps its old shape and still works.
    """
    if empty:
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
        return
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (auto_vacuum,) = db.execute("PRAGMA auto_vacuum").fetchone()
    if page_size == PAGE_SIZE and auto_vacuum == AUTO_VACUUM_INCREMENTAL:
        return
    log.info("database %s: rewriting it once with %d-byte pages and incremental vacuum",
             path, PAGE_SIZE)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute(f"PRAGMA auto_vacuum={AUTO_VACUUM_INCREMENTAL}")
        db.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        log.warning("database %s: could not rewrite it (%s); it keeps its old page size", path, exc)


def _used_bytes(db: sqlite3.Connection) -> int:
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    return (pages - free) * page_size


def create_private_file(path: str) -> None:
    """Create `path` with mode 0600 if it does not exist, whatever the umask."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


class _Finish:
    """One update's finish waiting in the group-commit queue (see Store.finish)."""

    __slots__ = ("write", "done", "error")

    def __init__(self, write: Callable[[sqlite3.Connection], None]) -> None:
        self.write = write
        self.done = False
        self.error: BaseException | None = None


class Store:
    """The database: inbox rows and conversations, each change one transaction."""

    def __init__(self, path: str, owner: str | None = None):
        """Open (creating if needed) the database at `path` for `owner`.

        `owner` is the bot id (a token's numeric prefix) or dbfile.TERMINAL; None neither
        records nor checks one. Raises DatabaseInUse or UnusableDatabase before anything in
        the file changes when the database is not this process's to use.
        """
        self.path = path
        self._lock = threading.Lock()
        self._finishing: collections.deque[_Finish] = collections.deque()   # see finish
        self._closed = False
        self._file_lock: FileLock | None = None
        if path != ":memory:":
            self._check_directory(path)
            self._file_lock = FileLock(path)
            self._file_lock.acquire()  # one process per database: before reading or migrating
        try:
            with PrivateUmask():  # whatever SQLite creates here (-wal, -shm) is 0600
                self._connection = self._connect(path)
                try:
                    self._migrate(owner)
                except BaseException:
                    self._connection.close()
                    raise
        except BaseException:
            self._release_file_lock()
            raise
        if path != ":memory:":
            make_private(path, companions(path))  # left 0644 by an earlier version

    # -- set-up -------------------------------------------------------------------------

    @staticmethod
    def _check_directory(path: str) -> None:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise ConfigError(f"database directory {parent} does not exist")

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        if path != ":memory:":
            try:
                create_private_file(path)
            except OSError as exc:
                raise ConfigError(f"cannot create database {path}: {exc.strerror}") from None
            make_private(path, (path, *companions(path)))
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # a file SQLite can read
        except sqlite3.DatabaseError as exc:
            raise unreadable(path, exc) from None
        return db

    def _migrate(self, owner: str | None = None) -> None:
        """Check the schema is ours (changing nothing), switch to WAL, migrate, claim the owner."""
        db = self._db
        try:
            version = check_schema(db, self.path, MIGRATIONS)
            shape_file(db, self.path, empty=version == 0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=67108864")
            # checkpoint after as many bytes as SQLite's default (1000 pages of 4 KiB) did:
            # each checkpoint costs two fsyncs and rewrites the pages it copies
            db.execute(f"PRAGMA wal_autocheckpoint={4 * 1024 * 1000 // PAGE_SIZE}")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                with self._transaction() as db:
                    for statement in filter(str.strip, script.split(";")):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={number}")
            with self._transaction() as db:
                claim(db, self.path, owner)
        except sqlite3.DatabaseError as exc:
            raise unreadable(self.path, exc) from None

    def close(self) -> None:
        """Checkpoint, close and unlock; any later call raises ShuttingDown."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                pass
            self._connection.close()
            self._release_file_lock()

    def _release_file_lock(self) -> None:
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise ShuttingDown("the store is closed")
        return self._connection

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; `durable` fsyncs its commit (synchronous=FULL)."""
        with self._lock:
            with self._locked_transaction(durable) as db:
                yield db

    @contextlib.contextmanager
    def _locked_transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """`_transaction` for a caller that holds the lock already."""
        db = self._db
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._roll_back(db)
                raise  # the cause (disk full, I/O error), never a failed ROLLBACK's
        finally:
            if durable:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("PRAGMA synchronous=NORMAL")

    def _roll_back(self, db: sqlite3.Connection) -> None:
        """Undo what is left of a failed transaction. SQLite may have rolled it back itself
        (a full disk, an I/O error); a ROLLBACK then fails and must not hide why."""
        if not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("database %s: rolling back failed too: %s", self.path, exc)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads, under the lock (no transaction: each read is one statement)."""
        with self._lock:
            yield self._db

    # -- the inbox (inbox.py) -------------------------------------------------------------

    def add_updates(self, rows: Sequence[InboxRow], done: Iterable[int] = (),
                    rejected: Sequence[tuple[str, str]] = ()) -> list[InboxRow]:
        """Store a getUpdates batch durably (fsync) and return the rows that were new.

        Rows whose id is in `done` are stored already handled (updates no chat can handle).
        `rejected` holds the batch's (reason, update as text) pairs that cannot be rows;
        they commit in the same transaction.
        """
        now = time.time()
        with self._transaction(durable=True) as db:
            inbox.insert_rejected(db, rejected, now)
            return inbox.insert_updates(db, rows, done, now)

    def add_rejected(self, rejected: Sequence[tuple[str, str]]) -> None:
        """Durably keep (reason, update as text) pairs too malformed to be inbox rows."""
        with self._transaction(durable=True) as db:
            inbox.insert_rejected(db, rejected, time.time())

    def add_local(self, items: Sequence[tuple[int, str, dict]]) -> list[int]:
        """Durably queue (chat_id, kind, payload) rows the daemon made; return their ids.

        Committed with fsync before returning, like a getUpdates batch: a hook POST is
        answered only once its notifications are on disk.
        """
        with self._transaction(durable=True) as db:
            return inbox.insert_local(db, items, time.time())

    def last_update_id(self) -> int | None:
        """The highest Telegram-style update id stored (daemon-made rows excluded)."""
        with self._reading() as db:
            return inbox.last_update_id(db)

    def pending_chats(self) -> list[int]:
        """Chats with unhandled updates, the chat with the oldest one first."""
        with self._reading() as db:
            return inbox.pending_chats(db, time.time())

    def pending(self, chat_id: int, limit: int = 20) -> list[InboxRow]:
        """The chat's unhandled updates in update_id order."""
        now = time.time()
        with self._lock:   # _reading's work without its generator: twice per update
            return inbox.pending(self._db, chat_id, limit, now)

    def is_done(self, update_id: int) -> bool:
        with self._reading() as db:
            return inbox.is_done(db, update_id)

    def backlog(self) -> int:
        with self._reading() as db:
            return inbox.backlog(db, time.time())

    def prune(self, keep_seconds: float = KEEP_DONE_SECONDS) -> int:
        """Delete handled rows older than `keep_seconds`; unhandled rows are never pruned."""
        return self.apply_retention(Retention(keep_seconds, max_database_bytes=0)).updates

    def apply_retention(self, retention: Retention, now: float | None = None) -> Pruned:
        """Delete what `retention` no longer keeps, and give the space back to the disk.

        First by age: handled updates, then (when asked) idle conversations. Then, while the
        database is above its size cap, the oldest handled updates down to those received
        in the last KEEP_DONE_AT_LEAST_SECONDS. Unhandled updates are never pruned, whatever
        the cap. (Emptying payloads instead would free no page: SQLite does not merge the
        pages an UPDATE leaves sparse.)
        """
        now = time.time() if now is None else now
        pruned = Pruned()
        with self._transaction() as db:
            pruned.updates = inbox.prune(db, now - retention.keep_handled)
            if retention.forget_conversations_after is not None:
                pruned.conversations = conversations.prune_idle(
                    db, now - retention.forget_conversations_after)
            # long button data goes with its conversation, or by age
            conversations.prune_button_tokens(db, now - (
                retention.forget_conversations_after or KEEP_BUTTON_TOKENS_SECONDS))
        if retention.max_database_bytes:
            self._fit(retention.max_database_bytes, now, pruned)
        pruned.freed_bytes = self._give_back_space()
        return pruned

    def database_bytes(self) -> int:
        """The bytes the database's pages hold (its free pages not counted)."""
        with self._reading() as db:
            return _used_bytes(db)

    def _fit(self, cap: int, now: float, pruned: Pruned) -> None:
        """Delete handled rows, oldest first, in batches until under `cap`."""
        for _ in range(FIT_ROUNDS):
            with self._transaction() as db:
                excess = _used_bytes(db) - cap
                if excess <= 0:
                    return
                # rows to delete: the excess over the mean row's share of the file (rows
                # differ and a delete leaves pages sparse, so later rounds take the rest)
                used = excess + cap
                batch = max(MIN_FIT_BATCH, excess * inbox.row_count(db) // max(1, used))
                # never an unhandled row, nor one Telegram might still re-send
                deleted = inbox.prune_oldest(db, now - KEEP_DONE_AT_LEAST_SECONDS, batch)
                pruned.updates += deleted
                if not deleted:
                    pruned.over_cap_bytes = excess
                    return
        with self._reading() as db:
            pruned.over_cap_bytes = max(0, _used_bytes(db) - cap)

    def _give_back_space(self) -> int:
        """Return free pages to the file system (incremental auto-vacuum), checkpointed."""
        with self._reading() as db:
            (free_pages,) = db.execute("PRAGMA freelist_count").fetchone()
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            (auto_vacuum,) = db.execute("PRAGMA auto_vacuum").fetchone()
            if not free_pages or auto_vacuum != AUTO_VACUUM_INCREMENTAL:
                return 0
            db.executescript("PRAGMA incremental_vacuum;")   # execute() would free one page only
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            (left,) = db.execute("PRAGMA freelist_count").fetchone()
        return (free_pages - left) * page_size

    # -- conversations (conversations.py) -------------------------------------------------

    def load_conversation(self, chat_id: int, member: int | None = None) -> Conversation:
        """The chat's conversation, or one member's in it (`conversation: per_user`)."""
        with self._reading() as db:
            return conversations.load(db, chat_id, member)

    def finish(self, update_id: int | None, conversation: Conversation | None, *,
               moved_to: int | None = None, guard: Callable[[], None] | None = None,
               writes: Sequence[Callable[[sqlite3.Connection], None]] = (),
               encoded: Snapshot | None = None) -> None:
        """Mark an update done and save the conversation it changed, in one transaction.

        This is the one place where an update's effect becomes permanent: state, the
        schedules it started or stopped and the done mark commit together, so a replayed
        update never changes state twice. `moved_to` (a group became that supergroup)
        copies the conversation as it stands after this update to the new chat id in the
        same commit. `guard` runs inside the transaction, under the store's lock, and may
        raise to refuse the commit: a check made there cannot be overtaken by another
        thread's reads. `update_id` None saves the conversation alone (a handler closing).
        `writes` are the update's other changes (a handoff's queue, messages for other
        chats), made after the conversation's. `encoded` is the conversation's snapshot as it
        stands, when the caller has one (its JSON is written as it is).
        """
        now = time.time()

        def write_all(db: sqlite3.Connection) -> None:
            if guard is not None:
                guard()
            if conversation is not None:
                conversations.save(db, conversation, now, encoded)
            if moved_to is not None and conversation is not None:
                conversations.copy(db, conversation.chat_id, moved_to)
            for write in writes:
                write(db)
            if update_id is not None:
                inbox.mark_done(db, update_id, now)
                schedules.rearm_after_tick(db, update_id, now)

        self._commit_in_group(_Finish(write_all))
        if conversation is not None:
            conversations.mark_saved(conversation)

    def _commit_in_group(self, finish: _Finish) -> None:
        """Commit `finish`, with whatever other finishes are queued when this thread gets the
        lock; raise what refused or failed its own commit.

        Invariant: a finish leaves the queue only under the lock, and is marked done (with
        its error, if any) before the lock is released; a thread that finds its own finish
        still queued once it holds the lock commits the queue itself.
        """
        self._finishing.append(finish)
        with self._lock:
            if not finish.done:
                self._commit_queued(finish)
        if finish.error is not None:
            raise finish.error

    def _commit_queued(self, own: _Finish) -> None:
        """Under the lock: every queued finish, in one transaction, in the order queued."""
        group: list[_Finish] = []
        while self._finishing:
            group.append(self._finishing.popleft())
        try:
            self._commit_group(group)
        except BaseException as exc:   # not a failed commit (those are each finish's error)
            own.done, own.error = True, exc
            # the others were not committed: back to the queue, for their own threads to take
            self._finishing.extendleft(reversed([f for f in group if not f.done]))
            raise

    def _commit_group(self, group: list[_Finish]) -> None:
        try:
            with self._locked_transaction() as db:
                for finish in group:
                    finish.write(db)
        except Exception as exc:
            if len(group) == 1:
                group[0].done, group[0].error = True, exc
                return
        else:
            for finish in group:
                finish.done = True
            return
        # one of them failed, or the commit did: each alone, so only what fails is refused.
        # Out of the except block: an error raised alone is its own, not chained (__context__)
        # to what failed the group, which may be another chat's.
        for finish in group:
            try:
                with self._locked_transaction() as db:
                    finish.write(db)
            except Exception as error:
                finish.error = error
            finish.done = True

    def copy_chat(self, old_chat_id: int, new_chat_id: int) -> None:
        """A group became a supergroup: the new chat starts from the group's conversation.

        The old chat's pending updates stay with it (its delegate may be handling one right
        now; its sends are redirected to the new id by the sender). A new chat that already
        has a conversation keeps it.
        """
        with self._transaction() as db:
            conversations.copy(db, old_chat_id, new_chat_id)

    def conversation_count(self) -> int:
        with self._reading() as db:
            return conversations.count(db)

    # -- schedules (schedules.py) ---------------------------------------------------------

    def next_tick_at(self) -> float | None:
        """When the earliest schedule falls due (time.time() seconds), or None with none."""
        with self._reading() as db:
            return schedules.next_due(db)

    def queue_due_ticks(self, now: float) -> list[int]:
        """Queue one tick for every due schedule and re-arm it; return the chats to wake
        (see schedules.queue_due_ticks)."""
        with self._reading() as db:
            if not schedules.anything_to_do(db, now):
                # the usual case: the due ticks wait in the inbox already; no write
                # transaction every second (nor every tick) on an SD card
                return schedules.due_chats(db, now)
        with self._transaction() as db:
            return schedules.queue_due_ticks(db, now, time.time())

    # -- attempts and quarantine (inbox.py) -----------------------------------------------

    def count_interrupted(self) -> int:
        """At start-up after an unclean end: one more attempt for each chat's first pending row.

        That row is the one that was in flight if the process crashed, froze or was killed
        (rows behind it were never started). One transaction for all chats, and none at
        all after a clean stop, so a backlog that merely waited is not counted.
        """
        if self._take_clean_stop():
            return 0
        with self._transaction() as db:
            return inbox.count_interrupted(db, time.time())

    def repeat_suspects(self) -> list[int]:
        """Chats' first pending rows that were cut short before (see inbox.repeat_suspects)."""
        with self._reading() as db:
            return inbox.repeat_suspects(db, time.time())

    def note_clean_stop(self) -> None:
        """Every delegate ended in time: nothing was in flight, so the next start counts nothing."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_stop', '1')")

    def _take_clean_stop(self) -> bool:
        with self._transaction() as db:
            cur = db.execute("DELETE FROM meta WHERE key = 'clean_stop'")
        return cur.rowcount > 0

    def add_attempt(self, update_id: int) -> None:
        """An update's handler ran past its deadline and was given up."""
        with self._transaction() as db:
            inbox.add_attempt(db, update_id)

    def quarantine(self, update_id: int, reason: str) -> None:
        """Set an update aside for good: done, with the reason kept for the owner to see."""
        with self._transaction() as db:
            inbox.quarantine(db, update_id, reason, time.time())
            schedules.rearm_after_tick(db, update_id, time.time())

    def quarantined_count(self) -> int:
        with self._reading() as db:
            return inbox.quarantined_count(db)

    # -- for the modules that keep their own tables (handoffs, privacy) -----------------

    def reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The connection, under the lock, for a few reads."""
        return self._reading()

    def writing(self, durable: bool = False) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One write transaction of its own (not an update's); `durable` fsyncs its commit."""
        return self._transaction(durable)
