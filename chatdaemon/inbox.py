"""What an incoming update is to chatdaemon: its kind and its seed (the chat it belongs to).

The durable inbox itself lives in the store (`Store.add_updates`, `pending`, `finish`);
this module turns Telegram's update dicts into inbox rows, or into rejections with a
reason. An update is untrusted input: every field is checked before it is used, and
nothing here raises on any JSON value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .store import LOCAL_BASE, InboxRow

# Update kinds that carry a chat: the chat id is the seed that picks the delegate.
_CHAT_KINDS = (
    "message", "edited_message", "channel_post", "edited_channel_post",
    "business_message", "edited_business_message", "my_chat_member", "chat_member",
    "chat_join_request", "message_reaction", "message_reaction_count", "chat_boost",
    "removed_chat_boost",
)

# What the poller asks Telegram for on the first getUpdates of every run.
DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1   # what SQLite's INTEGER holds
MAX_DEPTH = 64   # real updates nest about 6 deep; the templates and the store recurse
MAX_REJECTED_TEXT = 64 * 1024   # how much of a rejected update is kept for a person to read


@dataclass(frozen=True)
class Rejection:
    """An update that cannot be an inbox row: why, and the update as it came."""

    reason: str
    update: object
    update_id: int | None   # its usable id, when it has one (the offset may still move past it)

    def payload_text(self) -> str:
        """The update as JSON for the `rejected` table, cut at MAX_REJECTED_TEXT characters."""
        try:
            text = json.dumps(self.update)
        except (ValueError, TypeError, RecursionError):
            text = f"<a {type(self.update).__name__} that cannot be written as JSON>"
        if len(text) > MAX_REJECTED_TEXT:
            text = text[:MAX_REJECTED_TEXT] + f"... <{len(text) - MAX_REJECTED_TEXT} more characters>"
        return text


class _Malformed(Exception):
    """Raised inside this module while reading an update; becomes a Rejection."""


def kind_of(update: dict) -> str:
    """The update's kind: the one key besides update_id ('message', 'callback_query', …)."""
    for key in update:
        if key != "update_id":
            return str(key)
    return "empty"


def usable_update_id(update: object) -> int | None:
    """The update's id when it can acknowledge it: an int (not a bool), 0 ≤ id < 2**63 - 1.

    A negative offset means "keep only the last N updates" to Telegram, and id + 1 must
    still fit in int64, so ids outside that range can never be acknowledged one by one.
    """
    update_id = update.get("update_id") if isinstance(update, dict) else None
    if isinstance(update_id, int) and not isinstance(update_id, bool) \
            and 0 <= update_id < INT64_MAX:
        return update_id
    return None


def chat_of(update: dict) -> int | None:
    """The chat id an update belongs to, or None when it belongs to no chat (or is malformed)."""
    try:
        return _chat_id(update)
    except _Malformed:
        return None


def parse_update(update: object) -> InboxRow | Rejection:
    """An inbox row for an update that can be one; otherwise a Rejection saying why."""
    update_id = usable_update_id(update)
    try:
        if not isinstance(update, dict):
            raise _Malformed(f"the update is a {type(update).__name__}, not an object")
        if update_id is None:
            raise _Malformed(f"update_id {_show(update.get('update_id'))} is not an id")
        if update_id >= LOCAL_BASE:   # the inbox numbers its own rows (hooks, schedules) from here
            raise _Malformed(f"update_id {update_id} is in the range kept for local rows")
        _check_depth(update)
        return InboxRow(update_id, _chat_id(update), kind_of(update), update)
    except _Malformed as exc:
        return Rejection(str(exc), update, update_id)


def to_row(update: object) -> InboxRow | None:
    """An inbox row for a well-formed update; None when it cannot be one."""
    parsed = parse_update(update)
    return parsed if isinstance(parsed, InboxRow) else None


def payload_of(row: InboxRow) -> dict:
    """The object a handler receives: the message, callback query, … inside the update."""
    body = row.payload.get(row.kind)
    return body if isinstance(body, dict) else {}


def _chat_id(update: dict) -> int | None:
    kind = kind_of(update)
    if kind in _CHAT_KINDS:
        chat = _object(update.get(kind), kind).get("chat")
        where = f"{kind}.chat"
    elif kind == "callback_query":
        query = _object(update.get(kind), kind)
        message = query.get("message")
        if message is None:   # a press on an inline message: the chat is the user's
            chat, where = query.get("from"), "callback_query.from"
        else:
            chat = _object(message, "callback_query.message").get("chat")
            where = "callback_query.message.chat"
    else:
        return None
    if chat is None:
        return None
    return _id_in(_object(chat, where), where)


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is a {type(value).__name__}, not an object")
    return value


def _id_in(chat: dict, where: str) -> int:
    chat_id = chat.get("id")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int) \
            or not INT64_MIN <= chat_id <= INT64_MAX:
        raise _Malformed(f"{where}.id {_show(chat_id)} is not a chat id")
    return chat_id


def _check_depth(update: dict) -> None:
    """Refuse nesting deeper than MAX_DEPTH, walking with a stack of our own (no recursion)."""
    stack: list[tuple[dict | list, int]] = [(update, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _Malformed(f"the update is nested deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def _show(value: object) -> str:
    """A short, safe rendering of a bad value for a log line."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"(a {value.bit_length()}-bit int)"
    text = repr(value) if isinstance(value, int | float | str | bool | None) \
        else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."
