"""The telepot-style programming model: `ChatHandler`, its `sender`, `listener` and `glance()`.

A ChatHandler instance serves one chat from its delegate thread. It sees that chat's
updates one at a time, in update_id order, and keeps what it must remember in `self.vars`
and `self.state`: both are saved with the update's "done" mark when the handler returns.

A handler knows nothing of the thread that runs it: it talks to a `ChatContext` (the
update transaction implements it), never to the delegator.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from .errors import BadToken, TelegramError

if TYPE_CHECKING:
    from .sender import Sender
    from .store import Conversation

log = logging.getLogger(__name__)

# What a user is told when handling their update fails, unless the bot or the config says otherwise.
DEFAULT_ERROR_TEXT = "Sorry, something went wrong on my side. Please try again later."

CONTENT_TYPES = (
    "text", "animation", "audio", "document", "photo", "sticker", "story", "video",
    "video_note", "voice", "contact", "dice", "game", "poll", "venue", "location",
    "new_chat_members", "left_chat_member", "new_chat_title", "new_chat_photo",
    "delete_chat_photo", "group_chat_created", "supergroup_chat_created",
    "channel_chat_created", "migrate_to_chat_id", "migrate_from_chat_id", "pinned_message",
    "invoice", "successful_payment", "users_shared", "chat_shared", "web_app_data",
)

# Positional parameters after chat_id, so `sender.sendPhoto(photo, caption=...)` reads as in telepot.
_POSITIONAL = {
    "sendMessage": ("text",), "sendPhoto": ("photo",), "sendAudio": ("audio",),
    "sendDocument": ("document",), "sendVideo": ("video",), "sendAnimation": ("animation",),
    "sendVoice": ("voice",), "sendVideoNote": ("video_note",), "sendSticker": ("sticker",),
    "sendLocation": ("latitude", "longitude"), "sendContact": ("phone_number", "first_name"),
    "sendChatAction": ("action",), "sendDice": (), "sendPoll": ("question", "options"),
    "forwardMessage": ("from_chat_id", "message_id"), "copyMessage": ("from_chat_id", "message_id"),
    "editMessageText": ("message_id", "text"), "editMessageReplyMarkup": ("message_id",),
    "deleteMessage": ("message_id",), "pinChatMessage": ("message_id",),
}


MIN_SCHEDULE_SECONDS = 5
DAEMON_TIMERS = "chatdaemon."   # schedules the daemon keeps for a chat (handoff, session)

# Methods that take no chat_id: the sender must not add one.
_NO_CHAT_ID = {"answerCallbackQuery", "answerInlineQuery", "getMe", "getFile"}


class ChatContext(Protocol):
    """What a chat's handler may ask of the transaction running its update."""

    def next_payload(self, timeout: float | None) -> dict:
        """Commit the update in hand, then wait for the chat's next one (listener.wait)."""

    def callback_answered(self, query_id: str | None) -> None:
        """The handler answered this button press itself; no automatic answer is owed."""

    def migrated(self, old_chat_id: int, new_chat_id: int) -> None:
        """A send found the group moved to a supergroup: the conversation moves with this commit."""

    def check_current(self) -> None:
        """Raise Abandoned when the update was given up: its handler may no longer send."""

    def refused(self) -> None:
        """Telegram rejected the token on a send: this update must not be marked done."""


def glance(msg: dict, flavor: str | None = None) -> tuple:
    """telepot's glance: the few fields a handler looks at first.

    - a chat message → (content_type, chat_type, chat_id)
    - a callback query → (query_id, from_id, data)
    """
    flavor = flavor or ("callback_query" if "data" in msg and "chat_instance" in msg else "chat")
    if flavor == "callback_query":
        return msg["id"], msg["from"]["id"], msg.get("data")
    content_type = next((t for t in CONTENT_TYPES if t in msg), None)
    chat = msg.get("chat", {})
    return content_type, chat.get("type"), chat.get("id")


class BotSender:
    """Any Bot API method, by name: `bot.sendMessage(chat_id=…, text=…)`, through the sender."""

    def __init__(self, sender: Sender, context: ChatContext | None = None):
        self._sender = sender
        self._context = context

    def call(self, method: str, **params: Any) -> Any:
        context = self._context
        if context is None:
            return self._sender.call(method, params)
        try:
            return self._sender.call(method, params, check=context.check_current)
        except BadToken:
            context.refused()  # even if the handler swallows it, the update stays pending
            raise

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda **params: self.call(method, **params)


class ChatSender:
    """telepot's Sender: the send methods with this chat's id filled in."""

    def __init__(self, sender: Sender, chat_id: int, context: ChatContext | None = None):
        self._sender = sender
        self._chat_id = chat_id
        self._context = context

    def sendMessage(self, text: str, **params: Any) -> Any:  # noqa: N802 - Bot API name
        return self.call("sendMessage", text=text, **params)

    def call(self, method: str, *args: Any, **params: Any) -> Any:
        names = _POSITIONAL.get(method, ())
        if len(args) > len(names):
            raise TypeError(f"{method} takes at most {len(names)} positional arguments")
        params.update(zip(names, args, strict=False))
        if method not in _NO_CHAT_ID:
            params.setdefault("chat_id", self._chat_id)
        if method == "answerCallbackQuery":
            return self._answer_callback(params)
        return self._send(method, params)

    def _send(self, method: str, params: dict) -> Any:
        """Through the sender, with this chat's transaction hearing of a migration."""
        context = self._context
        if context is None:
            return self._sender.call(method, params)
        try:
            return self._sender.call(method, params, on_migrate=context.migrated,
                                     check=context.check_current)
        except BadToken:
            context.refused()  # even if the handler swallows it, the update stays pending
            raise

    def _answer_callback(self, params: dict) -> Any:
        """Best effort: a press that waited in the inbox (downtime, a backlog) is too old for
        Telegram to accept an answer (400), but it must still be handled, not fail."""
        if self._context is not None:
            self._context.callback_answered(params.get("callback_query_id"))
        try:
            return self._send("answerCallbackQuery", params)
        except TelegramError as exc:
            description = exc.description.lower()
            if exc.status != 400 or "query" not in description or not (
                    "too old" in description or "invalid" in description):
                raise  # a real mistake (text too long, a bad url) is the handler's to see
            log.info("chat %s: button press no longer answerable: %s", self._chat_id, exc.description)
            return False

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **params: self.call(method, *args, **params)


class Listener:
    """Lets a handler written in telepot's blocking style wait for the chat's next update."""

    def __init__(self, context: ChatContext):
        self._context = context

    def wait(self, timeout: float | None = None) -> dict:
        """Return the next message (or callback query, …) of this chat.

        Everything the handler did so far commits first, with the update it was handling;
        keep in `self.vars` what must survive a restart while waiting. Raises WaitTooLong
        after `timeout` seconds without an update.
        """
        return self._context.next_payload(timeout)


class ChatHandler:
    """Base class of a chat's handler; subclass it and define the `on_…` methods you need."""

    def __init__(self, context: ChatContext, conversation: Conversation, sender: Sender):
        self.chat_id: int = conversation.chat_id
        self._conversation = conversation
        self.sender = ChatSender(sender, conversation.chat_id, context)
        self.bot = BotSender(sender, context)
        self.listener = Listener(context)
        self.log = logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")

    @property
    def vars(self) -> dict:
        """What this conversation remembers; saved with each update's done mark."""
        return self._conversation.vars

    @vars.setter
    def vars(self, value: dict) -> None:
        self._conversation.vars = dict(value)

    @property
    def state(self) -> str | None:
        """The conversation's state name; saved with each update's done mark."""
        return self._conversation.state

    @state.setter
    def state(self, value: str | None) -> None:
        self._conversation.state = value

    def start_schedule(self, name: str, every: float) -> None:
        """Tick `on_schedule` every `every` seconds for this chat, across restarts, until stopped.

        Takes effect with this update's commit. Ticks missed while the daemon was down are
        coalesced into one.
        """
        if every < MIN_SCHEDULE_SECONDS:
            raise ValueError(f"a schedule ticks at most every {MIN_SCHEDULE_SECONDS} seconds")
        self._conversation.schedules[name] = {"every": float(every)}

    def stop_schedule(self, name: str | None = None) -> None:
        """Stop one schedule, or all of this chat's schedules (the daemon's own timers, named
        "chatdaemon.…" — a handoff's, a session's — keep running)."""
        if name is None:
            for own in [key for key in self._conversation.schedules
                        if not key.startswith(DAEMON_TIMERS)]:
                del self._conversation.schedules[own]
        else:
            self._conversation.schedules.pop(name, None)

    handoff_requested = False   # set by handoff(); the chat goes to a human after this update
    handoff_note: str | None = None

    def handoff(self, note: str | None = None) -> None:
        """Put this chat with a human once the current update is handled: the operators are
        told (with `note`, or else what the person wrote), and the person's next messages go
        to them instead of to this handler, until an operator sends /done (or nobody answers
        within the daemon's handoff_timeout)."""
        self.handoff_requested = True
        self.handoff_note = note

    @property
    def schedules(self) -> dict:
        """This chat's running schedules: name → {"every": seconds}."""
        return dict(self._conversation.schedules)

    def on_update(self, kind: str, payload: dict) -> None:
        """Route one update to the method for its kind."""
        if kind == "message":
            self.on_chat_message(payload)
        elif kind == "edited_message":
            self.on_edited_chat_message(payload)
        elif kind == "callback_query":
            self.on_callback_query(payload)
        elif kind == "hook":
            self.on_hook(payload)
        elif kind == "schedule":
            if payload.get("name") in self._conversation.schedules:
                self.on_schedule(payload)  # a tick queued before its schedule was stopped is dropped
        else:
            self.on_other(kind, payload)

    def on_chat_message(self, msg: dict) -> None:
        """A new message in this chat."""

    def on_edited_chat_message(self, msg: dict) -> None:
        """A message of this chat was edited."""

    def on_callback_query(self, query: dict) -> None:
        """An inline button was pressed; answered automatically if you do not answer it."""

    def on_hook(self, notification: dict) -> None:
        """A notification hook's message for this chat: sent as rendered when it was posted."""
        self.sender.sendMessage(**notification["message"])

    def on_schedule(self, tick: dict) -> None:
        """A tick of a schedule this chat started (`tick["name"]`): nothing by default."""

    def on_other(self, kind: str, payload: dict) -> None:
        """An update of another kind (my_chat_member, channel_post, …): ignored by default."""
        log.info("chat %s: no handler for a %s update; marked done", self.chat_id, kind)

    def on_close(self, reason: str) -> None:
        """The delegate is going away: 'idle' (timeout), 'evicted' (its slot went to another chat)
        or 'reload' (a new bot takes over). Changes to `vars` and `state` made here are saved."""
