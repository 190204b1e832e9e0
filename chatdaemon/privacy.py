"""What the daemon keeps about one chat: exported as data, or forgotten.

Forgetting deletes the conversation (state, variables, schedules) and its members' (a
group's with `conversation: per_user`; a person's chat id is their user id, so forgetting a
person also deletes their conversations in groups), the handoff and its
queued messages, the operator messages that point at the chat and its long button data,
and blanks the payload of the chat's handled inbox rows. The rows themselves stay (empty)
while the inbox keeps them: they are how a re-delivered update is recognised as seen.
Updates still waiting to be handled keep their payload: they have not been answered yet.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from . import callbacks, conversations, inbox
from .inbox import decode_payload

TABLES = ("conversations", "schedules", "handoffs", "handoff_messages", "button_tokens")
MEMBERS = "member_conversations"
CALLBACKS = "callback_tokens"


def export_chat(db: sqlite3.Connection, chat_id: int) -> dict[str, Any]:
    """Everything stored about `chat_id`, as JSON-ready data."""
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found: dict[str, Any] = {"chat_id": chat_id}
    for table in (*TABLES, "operator_messages"):
        if table in names:
            found[table] = _rows(db, f"SELECT * FROM {table} WHERE chat_id = ?", (chat_id,))
    if MEMBERS in names:   # the chat's members', and this person's in groups
        found[MEMBERS] = _rows(db, f"SELECT * FROM {MEMBERS} WHERE chat_id = ? OR user_id = ?"
                                   " ORDER BY chat_id, user_id", (chat_id, chat_id))
    if CALLBACKS in names:   # the callback URLs it handed out (never their digest)
        found[CALLBACKS] = callbacks.export(db, chat_id)
    for row in (*found.get("conversations", []), *found.get(MEMBERS, [])):
        for key in ("vars", "state_context", "schedules"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
    found["inbox"] = _rows(db, "SELECT update_id, kind, payload, done, received, handled FROM inbox"
                               " WHERE chat_id = ? ORDER BY update_id", (chat_id,))
    for row in found["inbox"]:
        row["payload"] = decode_payload(row["payload"])
    return found


def forget_chat(chat_id: int, handling: bool = False):
    """A write (for an update's transaction, or one of its own) deleting what is kept about
    `chat_id`. `handling`: the chat's first unhandled update is the one asking (/forget),
    and is blanked too; the others keep their payload, to be answered."""
    def write(db: sqlite3.Connection) -> None:
        for table in TABLES:
            db.execute(f"DELETE FROM {table} WHERE chat_id = ?", (chat_id,))
        db.execute(f"DELETE FROM {MEMBERS} WHERE chat_id = ?", (chat_id,))
        conversations.forget_member(db, None, chat_id)   # the person's, in every group
        # a result posted to a callback URL it handed out finds nothing (404) from now on
        callbacks.forget(db, chat_id)
        callbacks.forget(db, None, chat_id)
        db.execute("DELETE FROM operator_messages WHERE chat_id = ?", (chat_id,))
        # messages queued for operators about this person go too: done and blank, never
        # deleted (a deleted row's id goes to the next local row, and the operator's
        # delegate sending this one would then mark that row done by its id)
        db.execute("UPDATE inbox SET done = 1, handled = ?, payload = '{}' WHERE done = 0"
                   f" AND kind = 'handoff_notice' AND {inbox.LOCAL_FIELD} = ?",
                   (time.time(), "$.handoff_notice.about", chat_id))
        db.execute("UPDATE inbox SET payload = '{}' WHERE chat_id = ? AND done = 1", (chat_id,))
        # the next ticks of the schedules deleted above, and results posted to its callback
        # URLs, wait in the inbox: they go with them
        db.execute("UPDATE inbox SET done = 1, handled = ?, payload = '{}' WHERE chat_id = ?"
                   " AND done = 0 AND kind IN ('schedule', ?)",
                   (time.time(), chat_id, callbacks.KIND))
        if handling:
            db.execute("UPDATE inbox SET payload = '{}' WHERE update_id = (SELECT MIN(update_id)"
                       " FROM inbox WHERE chat_id = ? AND done = 0)", (chat_id,))
    return write


def forget_member(chat_id: int, member: int):
    """A write for an update's transaction (/forget from a member of a group whose bot keeps
    a conversation per member): that member's conversation there goes, and the update asking."""
    def write(db: sqlite3.Connection) -> None:
        conversations.forget_member(db, chat_id, member)
        callbacks.forget(db, chat_id, member)
        db.execute("UPDATE inbox SET done = 1, handled = ?, payload = '{}' WHERE chat_id = ?"
                   f" AND done = 0 AND kind = ? AND {inbox.LOCAL_FIELD} = ?",
                   (time.time(), chat_id, callbacks.KIND, "$.callback.member", member))
        db.execute("UPDATE inbox SET payload = '{}' WHERE update_id = (SELECT MIN(update_id)"
                   " FROM inbox WHERE chat_id = ? AND done = 0)", (chat_id,))
    return write


def _rows(db: sqlite3.Connection, query: str, params: tuple) -> list[dict[str, Any]]:
    cursor = db.execute(query, params)
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
