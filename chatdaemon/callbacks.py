"""Callback tokens: the secret in a conversation's callback URL, and the result POSTed to it.

A request step that names `{{ conversation.callback_url }}` gets a URL ending in a fresh
token (`secrets.token_urlsafe`, 256 bits) bound to its chat and handler. The database keeps
only the token's SHA-256, with its creation time and expiry: a copy of the database gives
no token away, and a lookup compares digests the caller cannot choose, so its timing says
nothing about a real token. A result POSTed to the URL becomes a daemon-made inbox row of
kind "callback" in that chat (durably, before the POST is answered), handled in order with
the chat's other updates.

A token stays valid until it expires, so an upstream may post progress more than once or
retry a POST whose answer it did not get. Expired tokens are deleted by `prune`; forgetting
a chat (or a group member) deletes the tokens it handed out (`forget`).

In a group keeping a conversation per member (`conversation: per_user`) a token also names
the member whose request made it, and the result meets that member's conversation. The
member is kept in the `handler` column as JSON, `{"handler": NAME, "member": USER_ID}`; a
token of a chat's own conversation keeps the handler's name as it is (unless the name
itself starts as that JSON would).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import inbox

if TYPE_CHECKING:
    from .store import Store

KIND = "callback"                 # the inbox kind of a delivered result
TOKEN_BYTES = 32                  # 256 bits of randomness per token
DEFAULT_EXPIRY = 24 * 3600.0      # seconds a callback URL is accepted
PATH = "/callbacks/"              # the hook server's path; the token follows it
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_JSON_MARK = '{"handler": '        # how a handler column holding JSON starts
# SQL: the member a token's handler column names, or NULL (never an error on a plain name)
_MEMBER = (f"(CASE WHEN substr(handler, 1, {len(_JSON_MARK)}) = '{_JSON_MARK}'"
           " AND json_valid(handler) THEN json_extract(handler, '$.member') END)")


@dataclass(frozen=True)
class Callback:
    """What a token stands for."""

    chat_id: int
    handler: str
    created: float
    expires: float
    member: int | None = None   # the group member whose conversation it answers (per_user)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(token: str) -> bool:
    """Whether `token` could be one at all (a cheap refusal before any database read)."""
    return _TOKEN_SHAPE.fullmatch(token) is not None


def create(store: Store, chat_id: int, handler: str, expiry: float = DEFAULT_EXPIRY,
           now: float | None = None, member: int | None = None) -> str:
    """A new token for `chat_id` and `handler` (and `member`'s conversation there), valid
    for `expiry` seconds.

    Its row is committed with fsync before the token is returned: the request that hands
    it to an upstream goes out only after that, so a result posted back finds it even after
    a crash or a power cut in between.
    """
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with store.writing(durable=True) as db:
        db.execute("INSERT INTO callback_tokens(digest, chat_id, handler, created, expires)"
                   " VALUES (?, ?, ?, ?, ?)", (digest(token), chat_id, _stored(handler, member), now,
                                              now + expiry))
    return token


def _stored(handler: str, member: int | None) -> str:
    """The handler column: the name, or with a member both as JSON (and so is a name that
    would read as JSON itself)."""
    if member is None and not handler.startswith(_JSON_MARK):
        return handler
    return json.dumps({"handler": handler, "member": member})


def _read(stored: str) -> tuple[str, int | None]:
    """(handler, member) of a stored handler column (see `_stored`)."""
    if stored.startswith(_JSON_MARK):
        try:
            value = json.loads(stored)
        except ValueError:
            return stored, None
        if isinstance(value, dict) and value.keys() == {"handler", "member"} \
                and isinstance(value["handler"], str) \
                and (value["member"] is None or type(value["member"]) is int):
            return value["handler"], value["member"]
    return stored, None


def _callback(row: tuple) -> Callback:
    chat_id, stored, created, expires = row
    handler, member = _read(stored)
    return Callback(chat_id, handler, created, expires, member)


def find(store: Store, token: str, now: float | None = None) -> Callback | None:
    """What a token stands for, or None when it is unknown or expired."""
    if not looks_like_token(token):
        return None
    now = time.time() if now is None else now
    with store.reading() as db:
        return _live(db, token, now)


def _live(db: sqlite3.Connection, token: str, now: float) -> Callback | None:
    row = db.execute("SELECT chat_id, handler, created, expires FROM callback_tokens"
                     " WHERE digest = ? AND expires > ?", (digest(token), now)).fetchone()
    return _callback(row) if row else None


def deliver(store: Store, token: str, data: Any, now: float | None = None) -> Callback | None:
    """Queue `data` as a callback row in the token's chat, durably; None (nothing queued)
    when the token is unknown or expired."""
    if not looks_like_token(token):
        return None
    now = time.time() if now is None else now
    # the token is looked up in the commit that queues its result: forgetting the chat
    # (which deletes its tokens and marks its waiting results done) commits before or after
    # this, never between a lookup and the insert, so no result outlives a /forget
    with store.writing(durable=True) as db:
        found = _live(db, token, now)
        if found is None:
            return None
        payload = {"handler": found.handler, "data": data}
        if found.member is not None:
            payload["member"] = found.member   # whose conversation it meets (transaction.member_of)
        inbox.insert_local(db, [(found.chat_id, KIND, payload)], time.time())
    return found


def prune(store: Store, now: float | None = None) -> int:
    """Delete expired tokens; how many went."""
    now = time.time() if now is None else now
    with store.reading() as db:   # the usual case: nothing expired, and no write transaction
        if db.execute("SELECT 1 FROM callback_tokens WHERE expires <= ? LIMIT 1",
                      (now,)).fetchone() is None:
            return 0
    with store.writing() as db:
        return db.execute("DELETE FROM callback_tokens WHERE expires <= ?", (now,)).rowcount


def move(old_chat_id: int, new_chat_id: int) -> Callable[[sqlite3.Connection], None]:
    """A write for the commit that moves a group's conversation to its supergroup: the
    callback URLs the group handed out answer in the supergroup from then on."""
    def write(db: sqlite3.Connection) -> None:
        db.execute("UPDATE callback_tokens SET chat_id = ? WHERE chat_id = ?",
                   (new_chat_id, old_chat_id))
    return write


def forget(db: sqlite3.Connection, chat_id: int | None, member: int | None = None) -> None:
    """Delete the tokens a chat handed out (`member` None), a member's in a chat, or with
    `chat_id` None a person's in every group: a result posted later finds nothing (404)."""
    if member is None:
        db.execute("DELETE FROM callback_tokens WHERE chat_id = ?", (chat_id,))
        return
    db.execute(f"DELETE FROM callback_tokens WHERE (? IS NULL OR chat_id = ?) AND {_MEMBER} = ?",
               (chat_id, chat_id, member))


def export(db: sqlite3.Connection, chat_id: int) -> list[dict[str, Any]]:
    """The tokens a chat (or a person, as a group member) handed out, as export shows them:
    never the digest."""
    rows = db.execute("SELECT chat_id, handler, created, expires FROM callback_tokens"
                      f" WHERE chat_id = ? OR {_MEMBER} = ? ORDER BY created",
                      (chat_id, chat_id)).fetchall()
    found = [_callback(row) for row in rows]
    return [{"chat_id": c.chat_id, "handler": c.handler, "member": c.member,
             "created": c.created, "expires": c.expires} for c in found]
