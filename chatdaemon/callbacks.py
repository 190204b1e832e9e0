"""Callback tokens: the secret in a conversation's callback URL, and the result POSTed to it.

A request step that names `{{ conversation.callback_url }}` gets a URL ending in a fresh
token (`secrets.token_urlsafe`, 256 bits) bound to its chat and handler. The database keeps
only the token's SHA-256, with its creation time and expiry: a copy of the database gives
no token away, and a lookup compares digests the caller cannot choose, so its timing says
nothing about a real token. A result POSTed to the URL becomes a daemon-made inbox row of
kind "callback" in that chat (durably, before the POST is answered), handled in order with
the chat's other updates.

A token stays valid until it expires, so an upstream may post progress more than once or
retry a POST whose answer it did not get. Expired tokens are deleted by `prune`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .store import Store

KIND = "callback"                 # the inbox kind of a delivered result
TOKEN_BYTES = 32                  # 256 bits of randomness per token
DEFAULT_EXPIRY = 24 * 3600.0      # seconds a callback URL is accepted
PATH = "/callbacks/"              # the hook server's path; the token follows it
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,128}")


@dataclass(frozen=True)
class Callback:
    """What a token stands for."""

    chat_id: int
    handler: str
    created: float
    expires: float


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(token: str) -> bool:
    """Whether `token` could be one at all (a cheap refusal before any database read)."""
    return _TOKEN_SHAPE.fullmatch(token) is not None


def create(store: Store, chat_id: int, handler: str, expiry: float = DEFAULT_EXPIRY,
           now: float | None = None) -> str:
    """A new token for `chat_id` and `handler`, valid for `expiry` seconds.

    Its row is committed with fsync before the token is returned: the request that hands
    it to an upstream goes out only after that, so a result posted back finds it even after
    a crash or a power cut in between.
    """
    now = time.time() if now is None else now
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with store.writing(durable=True) as db:
        db.execute("INSERT INTO callback_tokens(digest, chat_id, handler, created, expires)"
                   " VALUES (?, ?, ?, ?, ?)", (digest(token), chat_id, handler, now, now + expiry))
    return token


def find(store: Store, token: str, now: float | None = None) -> Callback | None:
    """What a token stands for, or None when it is unknown or expired."""
    if not looks_like_token(token):
        return None
    now = time.time() if now is None else now
    with store.reading() as db:
        row = db.execute("SELECT chat_id, handler, created, expires FROM callback_tokens"
                         " WHERE digest = ? AND expires > ?", (digest(token), now)).fetchone()
    return Callback(*row) if row else None


def deliver(store: Store, token: str, data: Any, now: float | None = None) -> Callback | None:
    """Queue `data` as a callback row in the token's chat, durably; None (nothing queued)
    when the token is unknown or expired."""
    found = find(store, token, now)
    if found is None:
        return None
    store.add_local([(found.chat_id, KIND, {"handler": found.handler, "data": data})])
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
