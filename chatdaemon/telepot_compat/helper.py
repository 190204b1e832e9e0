"""telepot.helper: ChatHandler and its sender, administrator, editor and listener.

A handler is made by its delegation pattern's factory with a seed tuple (bot, initial
message, seed). Under `chatdaemon telepot` that tuple also carries the chat it serves
(`context`): the listener waits through it, and `vars` is that chat's durable memory.
Plain attributes on `self` live as long as the handler: until `close()`, an error, or
the idle timeout — and, unlike telepot, not across a restart of the process either way.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from . import exception
from .telepot import flavor, message_identifier

log = logging.getLogger(__name__)

SENDER_METHODS = frozenset({
    "sendMessage", "forwardMessage", "sendPhoto", "sendAudio", "sendDocument", "sendSticker",
    "sendVideo", "sendVoice", "sendVideoNote", "sendMediaGroup", "sendLocation", "sendVenue",
    "sendContact", "sendGame", "sendInvoice", "sendChatAction"})
ADMINISTRATOR_METHODS = frozenset({
    "kickChatMember", "unbanChatMember", "restrictChatMember", "promoteChatMember",
    "exportChatInviteLink", "setChatPhoto", "deleteChatPhoto", "setChatTitle",
    "setChatDescription", "pinChatMessage", "unpinChatMessage", "leaveChat", "getChat",
    "getChatAdministrators", "getChatMembersCount", "getChatMember", "setChatStickerSet",
    "deleteChatStickerSet"})
EDITOR_METHODS = frozenset({
    "editMessageText", "editMessageCaption", "editMessageReplyMarkup", "deleteMessage",
    "editMessageLiveLocation", "stopMessageLiveLocation"})

# telepot's helpers for updates that belong to no chat, or for its own event scheduling:
# a program using one learns why at start-up rather than meeting an AttributeError.
NOT_PROVIDED = {
    "Answerer": "inline queries belong to no chat",
    "AnswererMixin": "inline queries belong to no chat",
    "InlineUserHandler": "inline queries belong to no chat",
    "InvoiceHandler": "shipping and pre-checkout queries belong to no chat",
    "CallbackQueryOriginHandler": "button presses go to the chat they were pressed in",
    "InterceptCallbackQueryMixin": "button presses go to the chat they were pressed in",
    "CallbackQueryCoordinator": "button presses go to the chat they were pressed in",
    "StandardEventScheduler": "timed events are not provided; the daemon's idle timeout is",
    "StandardEventMixin": "timed events are not provided; the daemon's idle timeout is",
    "Router": "telepot.routing is not provided; pass message_loop a {flavor: function} table",
    "DefaultRouterMixin": "telepot.routing is not provided; define on_chat_message, "
                          "on_callback_query, … on the handler",
}


def __getattr__(name: str) -> Any:
    if name in NOT_PROVIDED:
        raise exception.Unsupported(f"telepot.helper.{name} is not provided by `chatdaemon "
                                    f"telepot`: {NOT_PROVIDED[name]}")
    raise AttributeError(f"module 'telepot.helper' has no attribute {name!r}")


class _Bound:
    """Bot methods with their first argument filled in."""

    _methods: frozenset[str] = frozenset()

    def __init__(self, bot: Any, first: Any):
        self._bot = bot
        self._first = first

    def __getattr__(self, name: str):
        if name in self._methods:
            return functools.partial(getattr(self._bot, name), self._first)
        raise AttributeError(name)


class Sender(_Bound):
    """The send methods with the chat id filled in: `sender.sendMessage(text)`."""

    _methods = SENDER_METHODS


class Administrator(_Bound):
    """The chat administration methods with the chat id filled in."""

    _methods = ADMINISTRATOR_METHODS


class Editor(_Bound):
    """The edit methods for one message (a message, or its identifier)."""

    _methods = EDITOR_METHODS

    def __init__(self, bot: Any, msg_identifier: Any):
        if isinstance(msg_identifier, dict):
            msg_identifier = message_identifier(msg_identifier)
        super().__init__(bot, msg_identifier)


# -- matching messages (telepot.filtering) ---------------------------------------------------

def match(data: Any, template: Any) -> bool:
    """A template matches: a dict by each key, a function by its answer, a regex by search."""
    if isinstance(template, dict):
        return isinstance(data, dict) and all(
            key in data and match(data[key], value) for key, value in template.items())
    if callable(template):
        return bool(template(data))
    if isinstance(template, re.Pattern):
        return isinstance(data, str) and template.search(data) is not None
    return data == template


def match_all(msg: dict, templates: list) -> bool:
    return all(match(msg, template) for template in templates)


class Listener:
    """Waits for the handler's next captured message (telepot's blocking style)."""

    def __init__(self, context: Any, timeout: float | None = None):
        self._context = context
        self._timeout = timeout
        self._patterns: list[list] = []

    def set_options(self, timeout: float | None = None, **_: Any) -> None:
        self._timeout = timeout

    def capture(self, pattern: list | dict) -> None:
        """Accept messages matching every template of `pattern` (a list, or one template)."""
        self._patterns.append(pattern if isinstance(pattern, list) else [pattern])

    def captures(self, msg: dict) -> bool:
        return any(match_all(msg, pattern) for pattern in self._patterns)

    def wait(self) -> dict:
        """The next captured message of this chat; WaitTooLong after the handler's timeout.

        What the handler did so far commits first, with the update it was handling.
        """
        if self._context is None:
            raise exception.Unsupported("listener.wait() needs the daemon (chatdaemon telepot)")
        return self._context.next_message(self, self._timeout)


# -- handlers --------------------------------------------------------------------------------

class _Handler:
    """What telepot's handlers share: the seed tuple, routing by flavor, close()."""

    def __init__(self, seed_tuple: tuple, **kwargs: Any):
        bot, initial_msg, seed = seed_tuple
        self.bot = bot
        self.id = seed
        self._context = getattr(seed_tuple, "context", None)
        self._plain_vars: dict = {}
        self.listener = Listener(self._context, kwargs.get("timeout"))

    @property
    def vars(self) -> dict:
        """The chat's durable memory: saved with each update, kept across restarts."""
        return self._context.vars if self._context is not None else self._plain_vars

    def open(self, initial_msg: dict, seed: Any) -> Any:
        """Called with the first message; return True to keep it from on_message."""
        return None

    def on_message(self, msg: dict) -> None:
        kind = flavor(msg)
        method = getattr(self, "on_chat_message" if kind == "chat" else f"on_{kind}", None)
        if method is None:
            raise exception.EventNotFound(msg)
        method(msg)

    def on_chat_message(self, msg: dict) -> None:
        log.info("%s has no on_chat_message; message ignored", type(self).__name__)

    def on_callback_query(self, msg: dict) -> None:
        log.info("%s has no on_callback_query; button press ignored", type(self).__name__)

    def on__idle(self, event: dict) -> None:
        raise exception.IdleTerminate(event["_idle"]["seconds"])

    def on_close(self, ex: BaseException) -> None:
        """The handler ends: StopListening (close()), IdleTerminate (timeout) or an error."""

    def close(self, ex: BaseException | None = None) -> None:
        raise ex if ex else exception.StopListening()


class ChatHandler(_Handler):
    """One chat's handler: `sender`, `administrator`, `listener`, `chat_id`, `vars`."""

    def __init__(self, seed_tuple: tuple, include_callback_query: bool = False, **kwargs: Any):
        super().__init__(seed_tuple, **kwargs)
        self.chat_id = self.id
        self.sender = Sender(self.bot, self.chat_id)
        self.administrator = Administrator(self.bot, self.chat_id)
        self.listener.capture([{"chat": {"id": self.chat_id}}])
        if include_callback_query:
            self.listener.capture([{"message": {"chat": {"id": self.chat_id}}}])


class Monitor(_Handler):
    """A handler for whatever its `capture` patterns match (seed it per_application)."""

    def __init__(self, seed_tuple: tuple, capture: list, **kwargs: Any):
        super().__init__(seed_tuple, **kwargs)
        for pattern in capture:
            self.listener.capture(pattern)


class UserHandler(_Handler):
    """One user's handler (seeded per_from_id): `user_id`, `sender` to that user."""

    def __init__(self, seed_tuple: tuple, include_callback_query: bool = False, **kwargs: Any):
        super().__init__(seed_tuple, **kwargs)
        self.user_id = self.id
        self.sender = Sender(self.bot, self.user_id)
        self.listener.capture([{"from": {"id": self.user_id}}])
