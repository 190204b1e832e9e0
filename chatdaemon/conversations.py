"""Conversations: each chat's state, variables and state context, as kept in SQLite.

A bot with `conversation: per_user` keeps one conversation per member of a group instead
(`member_conversations`, keyed by chat id and the member's user id); what arrives from
nobody in particular (a hook, an operator's answer) meets the chat's own conversation. A
member's schedules are the chat's schedules named `NAME@USER_ID`.

A `Conversation` is what a chat's handler changes while it handles one update; the
update transaction snapshots it before and restores it on failure. Its `schedules` are
the chat's running schedules as the handler sees them; they are stored in their own table
(schedules.py), not in the conversation row.

The functions run on the store's connection inside the transaction the store holds.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from . import inbox, schedules

MEMBER_MARK = "@"   # a member's schedule is stored as NAME@USER_ID (schedule names have no @)


class Snapshot(NamedTuple):
    """A conversation's fields as JSON text: what a rollback restores, what a commit compares
    with the conversation as begun, and what it writes (each field is encoded once)."""

    state: str | None
    vars: str
    state_context: str
    schedules: str


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
    member: int | None = field(default=None, compare=False)   # a group member's user id

    def take(self, other: Conversation) -> None:
        """Become `other` (a chat's handler keeps this object while its members change)."""
        self.chat_id, self.member, self.is_new = other.chat_id, other.member, other.is_new
        self.state, self.vars = other.state, other.vars
        self.state_context, self.schedules = other.state_context, other.schedules
        self.saved_schedules = other.saved_schedules

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, json.dumps(self.vars), json.dumps(self.state_context),
                        json.dumps(self.schedules))

    def restore(self, snapshot: Snapshot) -> None:
        self.state = snapshot.state
        self.vars = json.loads(snapshot.vars)
        self.state_context = json.loads(snapshot.state_context)
        self.schedules = json.loads(snapshot.schedules)


def load(db: sqlite3.Connection, chat_id: int, member: int | None = None) -> Conversation:
    """The chat's conversation, or with `member` that member's conversation in the chat."""
    if member is None:
        row = db.execute("SELECT state, vars, state_context FROM conversations WHERE chat_id = ?",
                         (chat_id,)).fetchone()
    else:
        row = db.execute("SELECT state, vars, state_context FROM member_conversations"
                         " WHERE chat_id = ? AND user_id = ?", (chat_id, member)).fetchone()
    if row is None:  # a chat's schedules are only ever written with its conversation row
        return Conversation(chat_id, None, {}, is_new=True, saved_schedules={}, member=member)
    running = _own_schedules(db, chat_id, member)
    return Conversation(chat_id, row[0], json.loads(row[1]), json.loads(row[2]),
                        running, saved_schedules={name: dict(spec) for name, spec in running.items()},
                        member=member)


def save(db: sqlite3.Connection, conversation: Conversation, now: float,
         encoded: Snapshot | None = None) -> None:
    """Upsert the conversation row and, only when they changed, its schedules.

    `encoded` is the conversation's snapshot as it stands now, when the caller has one: its
    JSON is written as it is, not encoded again."""
    if encoded is None:
        encoded = conversation.snapshot()
    values = (conversation.state, encoded.vars, encoded.state_context, now)
    if conversation.member is None:
        db.execute(
            "INSERT INTO conversations(state, vars, state_context, updated, chat_id)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(chat_id) DO UPDATE SET"
            " state = excluded.state, vars = excluded.vars,"
            " state_context = excluded.state_context, updated = excluded.updated",
            (*values, conversation.chat_id))
    else:
        db.execute(
            "INSERT INTO member_conversations(state, vars, state_context, updated, chat_id, user_id)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(chat_id, user_id) DO UPDATE SET"
            " state = excluded.state, vars = excluded.vars,"
            " state_context = excluded.state_context, updated = excluded.updated",
            (*values, conversation.chat_id, conversation.member))
    # a chat whose schedules did not change (most chats have none) leaves the table untouched
    if conversation.schedules != conversation.saved_schedules:
        member = conversation.member
        saved = conversation.saved_schedules
        if saved is None:   # not known: what the database holds for this conversation alone
            saved = _own_schedules(db, conversation.chat_id, member)
        schedules.save(db, conversation.chat_id, _stored_names(saved, member),
                       _stored_names(conversation.schedules, member), now)


def member_schedule(name: str) -> tuple[str, int | None]:
    """A stored schedule name as (the name its conversation knows, the member or None)."""
    base, mark, user = name.rpartition(MEMBER_MARK)
    if mark and user.lstrip("-").isdigit() and len(user) < 20:
        return base, int(user)
    return name, None


def _own_schedules(db: sqlite3.Connection, chat_id: int, member: int | None) -> dict[str, dict]:
    """The schedules of one conversation among its chat's: the chat's own, or a member's.

    NAME@USER_ID is a member's only when that member has a conversation in the chat (its
    schedules are written with it): a chat's schedule named so before '@' was refused
    (`alarm@7`) stays the chat's."""
    running = schedules.of_chat(db, chat_id)
    members: set[int] = set()
    if any(MEMBER_MARK in name for name in running):
        members = {user for (user,) in db.execute(
            "SELECT user_id FROM member_conversations WHERE chat_id = ?", (chat_id,))}
    own = {}
    for name, spec in running.items():
        base, owner = member_schedule(name)
        if owner not in members:
            base, owner = name, None
        if owner == member:
            own[base] = spec
    return own


def _stored_names(running: dict, member: int | None) -> dict:
    if member is None:
        return running
    return {f"{name}{MEMBER_MARK}{member}": spec for name, spec in running.items()}


def mark_saved(conversation: Conversation) -> None:
    """The commit that saved `conversation` returned: it is now what the database holds."""
    conversation.is_new = False
    conversation.saved_schedules = {name: dict(spec)
                                    for name, spec in conversation.schedules.items()}


def copy(db: sqlite3.Connection, old_chat_id: int, new_chat_id: int) -> None:
    """Start `new_chat_id` from `old_chat_id`'s conversation and its members' (schedules stay
    with the old chat); a conversation the new chat already has is kept."""
    db.execute(
        "INSERT OR IGNORE INTO conversations(chat_id, state, vars, state_context, updated)"
        " SELECT ?, state, vars, state_context, updated FROM conversations WHERE chat_id = ?",
        (new_chat_id, old_chat_id))
    db.execute(
        "INSERT OR IGNORE INTO member_conversations(chat_id, user_id, state, vars, state_context,"
        " updated) SELECT ?, user_id, state, vars, state_context, updated"
        " FROM member_conversations WHERE chat_id = ?", (new_chat_id, old_chat_id))


def forget_member(db: sqlite3.Connection, chat_id: int | None, member: int) -> None:
    """Delete a member's conversation in a chat (None: in every group) and its schedules."""
    chats = "chat_id = ?" if chat_id is not None else "? IS NULL"
    db.execute(f"DELETE FROM member_conversations WHERE {chats} AND user_id = ?",
               (chat_id, member))
    pattern = f"%{MEMBER_MARK}{member}"
    db.execute(f"DELETE FROM schedules WHERE {chats} AND name LIKE ?", (chat_id, pattern))
    # their next ticks wait in the inbox: they go with them
    # (done with a handled time, so retention prunes them by age like any handled row)
    db.execute(f"UPDATE inbox SET done = 1, handled = ?, payload = '{{}}' WHERE {chats}"
               f" AND done = 0 AND kind = 'schedule' AND {inbox.LOCAL_FIELD} LIKE ?",
               (time.time(), chat_id, "$.schedule.name", pattern))


def stop_member_schedule(db: sqlite3.Connection, chat_id: int, name: str, member: int) -> int:
    """Delete a member's schedule stored as `name` (NAME@USER_ID); 0 when `member` has no
    conversation in the chat (then the name is a chat's own, from before '@' was refused)."""
    return db.execute(
        "DELETE FROM schedules WHERE chat_id = ? AND name = ? AND EXISTS (SELECT 1 FROM"
        " member_conversations WHERE chat_id = ? AND user_id = ?)",
        (chat_id, name, chat_id, member)).rowcount


def prune_button_tokens(db: sqlite3.Connection, before: float) -> int:
    """Delete long button data last sent before `before`, and any whose chat's conversations
    are gone (forgotten or pruned): a press of such a button is answered as expired."""
    cur = db.execute(
        "DELETE FROM button_tokens WHERE created < ?"
        " OR (chat_id NOT IN (SELECT chat_id FROM conversations)"
        " AND chat_id NOT IN (SELECT chat_id FROM member_conversations))", (before,))
    return cur.rowcount


def count(db: sqlite3.Connection) -> int:
    (total,) = db.execute("SELECT COUNT(*) FROM conversations").fetchone()
    return total


def member_count(db: sqlite3.Connection) -> int:
    (total,) = db.execute("SELECT COUNT(*) FROM member_conversations").fetchone()
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
    members = db.execute(
        "DELETE FROM member_conversations AS m WHERE updated < ?"
        " AND chat_id NOT IN (SELECT chat_id FROM inbox WHERE done = 0 AND chat_id IS NOT NULL)"
        " AND NOT EXISTS (SELECT 1 FROM schedules AS s WHERE s.chat_id = m.chat_id"
        " AND s.name LIKE '%' || ? || m.user_id)"
        " AND chat_id NOT IN (SELECT chat_id FROM handoffs)", (before, MEMBER_MARK))
    return cur.rowcount + members.rowcount
