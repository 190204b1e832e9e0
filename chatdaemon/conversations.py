"""Conversations: each chat's state, variables and state context, as kept in SQLite.

A `Conversation` is what a chat's handler changes while it handles one update; the
update transaction snapshots it before and restores it on failure. Its `schedules` are
the chat's running schedules as the handler sees them; they are stored in their own table
(schedules.py), not in the conversation row.

The functions run on the store's connection inside the transaction the store holds.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from . import schedules


@dataclass
class Conversation:
    chat_id: int
    state: str | None
    vars: dict
    state_context: dict = field(default_factory=dict)
    schedules: dict = field(default_factory=dict)   # name -> {"every": seconds}
    is_new: bool = field(default=False, compare=False)  # no row in the database yet
    # the schedules as the database holds them, None when not known (a conversation made by
    # hand): a commit writes the schedules table only when `schedules` differs from this
    saved_schedules: dict | None = field(default=None, compare=False, repr=False)

    def snapshot(self) -> str:
        return json.dumps([self.state, self.vars, self.state_context, self.schedules])

    def restore(self, snapshot: str) -> None:
        self.state, self.vars, self.state_context, self.schedules = json.loads(snapshot)


def load(db: sqlite3.Connection, chat_id: int) -> Conversation:
    row = db.execute("SELECT state, vars, state_context FROM conversations WHERE chat_id = ?",
                     (chat_id,)).fetchone()
    if row is None:  # a chat's schedules are only ever written with its conversation row
        return Conversation(chat_id, None, {}, is_new=True, saved_schedules={})
    running = schedules.of_chat(db, chat_id)
    return Conversation(chat_id, row[0], json.loads(row[1]), json.loads(row[2]),
                        running, saved_schedules={name: dict(spec) for name, spec in running.items()})


def save(db: sqlite3.Connection, conversation: Conversation, now: float) -> None:
    """Upsert the conversation row and, only when they changed, its schedules."""
    db.execute(
        "INSERT INTO conversations(chat_id, state, vars, state_context, updated)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT(chat_id) DO UPDATE SET"
        " state = excluded.state, vars = excluded.vars,"
        " state_context = excluded.state_context, updated = excluded.updated",
        (conversation.chat_id, conversation.state, json.dumps(conversation.vars),
         json.dumps(conversation.state_context), now),
    )
    # a chat whose schedules did not change (most chats have none) leaves the table untouched
    if conversation.schedules != conversation.saved_schedules:
        schedules.save(db, conversation.chat_id, conversation.saved_schedules,
                       conversation.schedules, now)


def mark_saved(conversation: Conversation) -> None:
    """The commit that saved `conversation` returned: it is now what the database holds."""
    conversation.is_new = False
    conversation.saved_schedules = {name: dict(spec)
                                    for name, spec in conversation.schedules.items()}


def copy(db: sqlite3.Connection, old_chat_id: int, new_chat_id: int) -> None:
    """Start `new_chat_id` from `old_chat_id`'s conversation (schedules stay with the old chat);
    a new chat that already has a conversation keeps it."""
    db.execute(
        "INSERT OR IGNORE INTO conversations(chat_id, state, vars, state_context, updated)"
        " SELECT ?, state, vars, state_context, updated FROM conversations WHERE chat_id = ?",
        (new_chat_id, old_chat_id))


def count(db: sqlite3.Connection) -> int:
    (total,) = db.execute("SELECT COUNT(*) FROM conversations").fetchone()
    return total


def prune_idle(db: sqlite3.Connection, before: float) -> int:
    """Delete conversations last saved before `before` that nothing still refers to.

    A chat with an unhandled update, a running schedule or a person with a human keeps its
    conversation, whatever its age.
    """
    cur = db.execute(
        "DELETE FROM conversations WHERE updated < ?"
        " AND chat_id NOT IN (SELECT chat_id FROM inbox WHERE done = 0 AND chat_id IS NOT NULL)"
        " AND chat_id NOT IN (SELECT chat_id FROM schedules)"
        " AND chat_id NOT IN (SELECT chat_id FROM handoffs)", (before,))
    return cur.rowcount
