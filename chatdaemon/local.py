"""An in-process stand-in for Telegram: the Bot API calls the daemon makes, answered locally.

`chatdaemon chat` runs the real daemon (inbox, delegates, sender) against this instead of
the network, so what a bot does in the terminal is what it does in Telegram.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import TelegramError
from .textsplit import utf16_len

BOT = {"id": 1, "is_bot": True, "first_name": "chatdaemon", "username": "chatdaemon_local_bot"}


class LocalTelegram:
    """Holds pushed updates for getUpdates and hands every other call to `on_call`."""

    def __init__(self, on_call: Callable[[str, dict], None]):
        self._on_call = on_call
        self._cond = threading.Condition()
        self._pending: list[dict] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)

    # -- the user's side ---------------------------------------------------------------------

    def continue_after(self, update_id: int | None) -> None:
        """Number the next updates above `update_id`, the highest a reused database holds.

        The inbox recognises duplicates by update_id: starting again at 1 in a database a
        session already used would have every new message ignored as seen before.
        """
        with self._cond:
            self._update_ids = itertools.count((update_id or 0) + 1)

    def push(self, kind: str, body: dict) -> int:
        with self._cond:
            update_id = next(self._update_ids)
            if kind == "message":
                body = {"message_id": next(self._message_ids), "date": int(time.time()), **body}
            self._pending.append({"update_id": update_id, kind: body})
            self._cond.notify_all()
        return update_id

    # -- the daemon's side -------------------------------------------------------------------

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        params = params or {}
        if method == "getMe":
            return BOT
        if method == "getUpdates":
            return self._get_updates(params)
        if method == "sendMessage":
            text = params.get("text")
            if not isinstance(text, str) or not text.strip():
                raise TelegramError(method, 400, "Bad Request: message text is empty")
            if utf16_len(text) > 4096:
                raise TelegramError(method, 400, "Bad Request: message is too long")
        self._on_call(method, params)
        if method.startswith(("send", "edit")):
            return {"message_id": next(self._message_ids), "date": int(time.time()),
                    "chat": {"id": params.get("chat_id"), "type": "private"},
                    "text": params.get("text", "")}
        return True

    def _get_updates(self, params: dict) -> list:
        offset = params.get("offset")
        timeout = min(float(params.get("timeout", 0)), 1.0)
        with self._cond:
            if offset is not None:
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
            if not self._pending:
                self._cond.wait(timeout)
            return list(self._pending[: params.get("limit", 100)])
