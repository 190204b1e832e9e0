"""The handoff tables: who is with a human, what they wrote, and which operator message is about whom.

Reads take the store's connection for a moment (`Store.reading`). Writes are functions of
a connection, handed to the update transaction (`stage`), so that they commit with the
update that caused them: a person's message is queued exactly when its update is done.

Who writes what (so that two chats' delegates never fight over a row):
- a person's chat alone opens and closes its handoff row;
- an operator's chat adds the mappings of the messages it was sent, and marks a person's
  messages read when it answers them or shows them.
Everything a chat asks of another chat goes through the inbox as a daemon-made row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .store import LOCAL_BASE, Store

Write = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Person:
    chat_id: int
    name: str
    username: str | None
    started: float = 0.0

    def describe(self) -> str:
        """How operators see a person: name, @username, chat id."""
        handle = f"@{self.username}, " if self.username else ""
        return f"{self.name} ({handle}chat {self.chat_id})"


@dataclass(frozen=True)
class Waiting:
    person: Person
    unread: int
    oldest: float | None


# -- reads ---------------------------------------------------------------------------------

def person_with_human(store: Store, chat_id: int) -> Person | None:
    """The person of this chat if it is with a human now, else None."""
    with store.reading() as db:
        row = db.execute("SELECT chat_id, name, username, started FROM handoffs WHERE chat_id = ?",
                         (chat_id,)).fetchone()
    return Person(*row) if row else None


def chat_of_message(store: Store, operator: int, message_id: int) -> int | None:
    """The person an operator's message (one the bot sent them) is about."""
    with store.reading() as db:
        row = db.execute("SELECT chat_id FROM operator_messages WHERE operator = ? AND message_id = ?",
                         (operator, message_id)).fetchone()
    return row[0] if row else None


def waiting(store: Store) -> list[Waiting]:
    """Everyone with a human, the one whose oldest unread message waits longest first."""
    with store.reading() as db:
        rows = db.execute(
            "SELECT h.chat_id, h.name, h.username, h.started, COUNT(m.id), MIN(m.received)"
            " FROM handoffs h LEFT JOIN handoff_messages m ON m.chat_id = h.chat_id AND m.unread = 1"
            " GROUP BY h.chat_id ORDER BY MIN(m.received) IS NULL, MIN(m.received), h.started"
        ).fetchall()
    return [Waiting(Person(*row[:4]), row[4], row[5]) for row in rows]


def unread_messages(store: Store, chat_id: int) -> list[tuple[int, str]]:
    """(id, text) of a person's unread messages, oldest first."""
    with store.reading() as db:
        return db.execute("SELECT id, text FROM handoff_messages WHERE chat_id = ? AND unread = 1"
                          " ORDER BY id", (chat_id,)).fetchall()


def unread_count(store: Store, chat_id: int) -> int:
    with store.reading() as db:
        (count,) = db.execute("SELECT COUNT(*) FROM handoff_messages WHERE chat_id = ?"
                              " AND unread = 1", (chat_id,)).fetchone()
    return count


def oldest_unread(store: Store, chat_id: int) -> float | None:
    with store.reading() as db:
        (oldest,) = db.execute("SELECT MIN(received) FROM handoff_messages WHERE chat_id = ?"
                               " AND unread = 1", (chat_id,)).fetchone()
    return oldest


def button_data(store: Store, token: str) -> str | None:
    with store.reading() as db:
        row = db.execute("SELECT data FROM button_tokens WHERE token = ?", (token,)).fetchone()
    return row[0] if row else None


# -- writes, staged with an update ---------------------------------------------------------

def open_handoff(person: Person) -> Write:
    def write(db: sqlite3.Connection) -> None:
        db.execute("INSERT OR REPLACE INTO handoffs(chat_id, name, username, started)"
                   " VALUES (?, ?, ?, ?)", (person.chat_id, person.name, person.username,
                                            time.time()))
    return write


def close_handoff(chat_id: int) -> Write:
    """The chat is back with the bot: its row, what it wrote and the operator messages about
    it go (an operator replying to an old message is told the chat is not waiting: the
    message names the chat)."""
    def write(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM handoffs WHERE chat_id = ?", (chat_id,))
        db.execute("DELETE FROM handoff_messages WHERE chat_id = ?", (chat_id,))
        db.execute("DELETE FROM operator_messages WHERE chat_id = ?", (chat_id,))
    return write


def keep_message(chat_id: int, text: str) -> Write:
    def write(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO handoff_messages(chat_id, received, text) VALUES (?, ?, ?)",
                   (chat_id, time.time(), text))
    return write


def mark_read(chat_id: int, up_to: int | None = None) -> Write:
    """A person's messages were answered (all of them) or shown (those up to id `up_to`)."""
    def write(db: sqlite3.Connection) -> None:
        db.execute("UPDATE handoff_messages SET unread = 0 WHERE chat_id = ? AND id <= ?",
                   (chat_id, up_to if up_to is not None else 1 << 62))
    return write


def map_message(operator: int, message_id: int, chat_id: int) -> Write:
    def write(db: sqlite3.Connection) -> None:
        db.execute("INSERT OR REPLACE INTO operator_messages(operator, message_id, chat_id, sent)"
                   " VALUES (?, ?, ?, ?)", (operator, message_id, chat_id, time.time()))
    return write


def queue_rows(items: Sequence[tuple[int, str, dict]]) -> Write:
    """Daemon-made inbox rows (chat_id, kind, payload), like Store.add_local but inside the
    update's transaction: they exist exactly when the update that made them is done."""
    def write(db: sqlite3.Connection) -> None:
        (top,) = db.execute("SELECT MAX(update_id) FROM inbox WHERE update_id >= ?",
                            (LOCAL_BASE,)).fetchone()
        first = LOCAL_BASE if top is None else top + 1
        now = time.time()
        db.executemany(
            "INSERT INTO inbox(update_id, chat_id, kind, payload, done, received)"
            " VALUES (?, ?, ?, ?, 0, ?)",
            [(first + index, chat_id, kind, json.dumps({kind: payload}), now)
             for index, (chat_id, kind, payload) in enumerate(items)])
    return write


def keep_button_data(token: str, data: str, chat_id: int) -> Write:
    """Keep long button data under its token; sent again, the token is as new (retention
    prunes tokens by age: see conversations.prune_button_tokens)."""
    def write(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO button_tokens(token, data, chat_id, created) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT(token) DO UPDATE SET created = excluded.created",
                   (token, data, chat_id, time.time()))
    return write
