"""What an incoming update is to chatdaemon: its kind and its seed (the chat it belongs to).

The durable inbox itself lives in the store (`Store.add_updates`, `pending`, `finish`);
this module turns Telegram's update dicts into inbox rows.
"""

from __future__ import annotations

from .store import InboxRow

# Update kinds that carry a chat: the chat id is the seed that picks the delegate.
_CHAT_KINDS = (
    "message", "edited_message", "channel_post", "edited_channel_post",
    "business_message", "edited_business_message", "my_chat_member", "chat_member",
    "chat_join_request", "message_reaction", "message_reaction_count", "chat_boost",
    "removed_chat_boost",
)

# What the poller asks Telegram for on the first getUpdates of every run.
DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")


def kind_of(update: dict) -> str:
    """The update's kind: the one key besides update_id ('message', 'callback_query', …)."""
    for key in update:
        if key != "update_id":
            return key
    return "empty"


def chat_of(update: dict) -> int | None:
    """The chat id an update belongs to, or None when it belongs to no chat."""
    kind = kind_of(update)
    body = update.get(kind)
    if not isinstance(body, dict):
        return None
    if kind in _CHAT_KINDS:
        chat = body.get("chat")
    elif kind == "callback_query":
        message = body.get("message") or {}
        chat = message.get("chat") or body.get("from")
    else:
        return None
    if isinstance(chat, dict) and isinstance(chat.get("id"), int):
        return chat["id"]
    return None


def to_row(update: dict) -> InboxRow | None:
    """An inbox row for a well-formed update; None when it has no integer update_id."""
    update_id = update.get("update_id") if isinstance(update, dict) else None
    if not isinstance(update_id, int) or isinstance(update_id, bool):
        return None
    return InboxRow(update_id, chat_of(update), kind_of(update), update)


def payload_of(row: InboxRow) -> dict:
    """The object a handler receives: the message, callback query, … inside the update."""
    body = row.payload.get(row.kind)
    return body if isinstance(body, dict) else {}
