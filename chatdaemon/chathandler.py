"""The telepot-style programming model: `ChatHandler`, its `sender`, `listener` and `glance()`.

A ChatHandler instance serves one chat from its delegate thread. It sees that chat's
updates one at a time, in update_id order, and keeps what it must remember in `self.vars`
and `self.state`: both are saved with the update's "done" mark when the handler returns.

A handler knows nothing of the thread that runs it: it talks to a `ChatContext` (the
update transaction implements it), never to the delegator.

Its life cycle keeps telepot's promises: made when its chat's first update arrives (a
constructor may take telepot's `(seed_tuple, **kwargs)` instead of chatdaemon's three
arguments), `open(initial_msg[, seed])` before that first Telegram update (True: the
update is handled, `on_chat_message` does not see it), then `on_…` per update until it
ends: `close()`, an error, the idle timeout, an eviction or a reload — each ending gives
`on_close` its reason as an exception (see errors.HandlerClosed).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, ClassVar, Protocol

from .arguments import SIGNATURES, bind_arguments, to_parameters
from .errors import (
    BadToken,
    HandlerClosed,
    IdleTerminate,
    StopListening,
    TelegramError,
    is_stale_callback,
)

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

# A chat's sender takes the parameters after chat_id positionally, in telepot 12's order
# (arguments.SIGNATURES) where telepot's method starts with chat_id; these are the others:
# newer methods, and the edits, which a chat's sender takes by message_id.
_SENDER_POSITIONAL = {
    "sendAnimation": ("animation",), "sendDice": (), "sendPoll": ("question", "options"),
    "copyMessage": ("from_chat_id", "message_id"),
    "editMessageText": ("message_id", "text"), "editMessageReplyMarkup": ("message_id",),
    "deleteMessage": ("message_id",),
}


MIN_SCHEDULE_SECONDS = 5
DAEMON_TIMERS = "chatdaemon."   # schedules the daemon keeps for a chat (handoff, session)

KEYBOARD = "chatdaemon:keyboard"   # state_context key: the labels of the latest reply keyboard
KEYBOARD_ONCE = "chatdaemon:keyboard_once"   # and whether it is one-time (it picks once)
MAX_TYPED_CHOICE = 3               # digits of a typed number that picks a keyboard's option

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

    def waiting(self, paced: bool) -> contextlib.AbstractContextManager[None]:
        """Entered around a send's wait for Telegram (`paced`: its flood limits' pace)."""

    def refused(self) -> None:
        """Telegram rejected the token on a send: this update must not be marked done."""

    def payload(self) -> dict | None:
        """The update in hand (a message, a button press, …); None between updates."""


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


def sender_positional(method: str) -> tuple[str, ...]:
    """The parameters a chat's sender takes positionally for `method` (chat_id is filled in)."""
    names = SIGNATURES.get(method, ())
    if names[:1] == ("chat_id",):
        return names[1:]
    return _SENDER_POSITIONAL.get(method, ())


class BotSender:
    """Any Bot API method, by name, through the sender, with telepot 12's arguments:
    `bot.sendMessage(chat_id, text)` or `bot.sendMessage(chat_id=…, text=…)`."""

    def __init__(self, sender: Sender, context: ChatContext | None = None):
        self._sender = sender
        self._context = context

    def call(self, method: str, *args: Any, **params: Any) -> Any:
        bound = bind_arguments(method, args, params)
        context = self._context
        if context is None:
            return self._sender.call(method, bound)
        if method == "answerCallbackQuery":
            context.callback_answered(bound.get("callback_query_id"))
        try:
            return self._sender.call(method, bound, check=context.check_current,
                                     waiting=context.waiting)
        except BadToken:
            context.refused()  # even if the handler swallows it, the update stays pending
            raise

    def download_file(self, file_id: str, dest: str | os.PathLike | IO[bytes]) -> None:
        """Save the file `file_id` (getFile) to `dest`: a path, or a file opened for binary writing."""
        found = self.call("getFile", file_id=file_id)
        path = found.get("file_path") if isinstance(found, dict) else None
        if not isinstance(path, str) or not path:
            raise TelegramError("getFile", 400, f"no file_path for file {file_id!r}")
        download = getattr(getattr(self._sender, "api", None), "download", None)
        if download is None:
            raise TelegramError("download_file", 501, "this Bot API connection cannot download files")
        if hasattr(dest, "write"):
            download(path, dest)
            return
        try:
            with open(dest, "wb") as handle:
                download(path, handle)
        except BaseException:
            os.unlink(dest)  # no half-written file is left behind
            raise

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **params: self.call(method, *args, **params)


class ChatSender:
    """telepot's Sender: the send methods with this chat's id filled in."""

    def __init__(self, sender: Sender, chat_id: int, context: ChatContext | None = None,
                 on_sent: Callable[[dict], None] | None = None):
        self._sender = sender
        self._chat_id = chat_id
        self._context = context
        self._on_sent = on_sent   # hears the parameters of each message sent to this chat

    def sendMessage(self, text: Any, *args: Any, **params: Any) -> Any:  # noqa: N802 - Bot API name
        return self.call("sendMessage", text, *args, **params)

    def call(self, method: str, *args: Any, **params: Any) -> Any:
        names = sender_positional(method)
        if len(args) > len(names):
            raise TypeError(f"{method} takes at most {len(names)} positional arguments")
        for name in names[:len(args)]:
            if name in params:
                raise TypeError(f"{method}() got multiple values for argument {name!r}")
        params.update(zip(names, args, strict=False))
        params = to_parameters(params)  # files → uploads, a number as text → its digits
        if method not in _NO_CHAT_ID:
            params.setdefault("chat_id", self._chat_id)
        if method == "answerCallbackQuery":
            return self._answer_callback(params)
        sent = self._send(method, params)
        if method == "sendMessage" and self._on_sent is not None \
                and params.get("chat_id") == self._chat_id:
            self._on_sent(params)
        return sent

    def _send(self, method: str, params: dict) -> Any:
        """Through the sender, with this chat's transaction hearing of a migration."""
        context = self._context
        if context is None:
            return self._sender.call(method, params)
        try:
            return self._sender.call(method, params, on_migrate=context.migrated,
                                     check=context.check_current, waiting=context.waiting)
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
            if not is_stale_callback(exc):
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


class SeedTuple(tuple):
    """telepot's `(bot, initial_msg, seed)` for a constructor written as telepot's
    `__init__(self, seed_tuple, **kwargs)`; it carries what chatdaemon's own three
    arguments would have given."""

    context: Any = None
    conversation: Any = None
    sender: Any = None


# telepot's ChatHandler options, accepted from a ported constructor and left to the daemon:
# its idle timeout applies, and a chat's button presses always reach its handler.
TELEPOT_OPTIONS = frozenset({"timeout", "include_callback_query", "event_space"})


def keyboard_labels(markup: Any) -> list[str | None] | None:
    """The labels of a reply keyboard, in order; [] when the markup removes the keyboard;
    None when it says nothing of one (no markup, inline buttons). Untrusted shapes allowed:
    a handler may pass the markup as JSON text. A button that sends something other than its
    label (a contact, a location, a poll, a web app, users or a chat) counts as None: typing
    its number cannot stand for tapping it."""
    markup = _markup_of(markup)
    if markup is None:
        return None
    if markup.get("remove_keyboard"):
        return []
    rows = markup.get("keyboard")
    if not isinstance(rows, list):
        return None
    labels: list[str | None] = []
    for row in rows:
        for button in row if isinstance(row, list) else ():
            label = button.get("text") if isinstance(button, dict) else button
            if isinstance(label, str):
                labels.append(None if _sends_more_than_text(button) else label)
    return labels


def _sends_more_than_text(button: Any) -> bool:
    """Whether a tap on a reply keyboard's button sends something else than its label."""
    return isinstance(button, dict) and any(value for key, value in button.items()
                                            if key != "text")


def _markup_of(markup: Any) -> dict | None:
    """reply_markup as a dict (a handler may pass it as JSON text); None if it is not one."""
    if isinstance(markup, str):
        try:
            markup = json.loads(markup)
        except ValueError:
            return None
    return markup if isinstance(markup, dict) else None


@functools.cache
def _open_takes_seed(cls: type[ChatHandler]) -> bool:
    """Whether `cls.open` takes telepot's (initial_msg, seed) or just (initial_msg); asked
    once per class, not for every chat that starts."""
    try:
        inspect.signature(cls.open).bind(None, {}, 0)   # unbound: self, initial_msg, seed
    except TypeError:
        return False
    return True


class ChatHandler:
    """Base class of a chat's handler; subclass it and define the `on_…` methods you need."""

    # An update that fails ends the handler (on_close gets the exception), as in telepot:
    # what the instance holds besides vars and state may be half-changed.
    ends_on_error: ClassVar[bool] = True
    # A number typed after a reply keyboard (sendMessage(reply_markup={"keyboard": …})) reaches
    # on_chat_message as the label it picks, as `chatdaemon chat` shows keyboards; a keyboard
    # of numbers leaves typed numbers as they are.
    numbered_choices: ClassVar[bool] = True
    # In groups, keep state and vars per member rather than per chat (as `conversation:
    # per_user` does for a bot definition); the instance itself is still the chat's.
    per_user: ClassVar[bool] = False

    def __init__(self, context: ChatContext | SeedTuple, conversation: Conversation | None = None,
                 sender: Sender | None = None, **telepot_options: Any):
        unknown = set(telepot_options) - TELEPOT_OPTIONS
        if unknown:
            raise TypeError(f"ChatHandler() got unexpected keyword arguments: {sorted(unknown)}")
        if isinstance(context, SeedTuple):
            chat: ChatContext = context.context
            conversation, sender = context.conversation, context.sender
        else:
            chat = context
        if conversation is None or sender is None:
            raise TypeError("ChatHandler(context, conversation, sender), or telepot's (seed_tuple)")
        self.chat_id: int = conversation.chat_id
        self.id: int = conversation.chat_id   # telepot's seed: the chat id
        self._conversation = conversation
        on_sent = self._remember_keyboard if self.numbered_choices else None
        self.sender = ChatSender(sender, conversation.chat_id, chat, on_sent)
        self.administrator = self.sender   # telepot's: kickChatMember(user_id), … for this chat
        self.bot = BotSender(sender, chat)
        self.listener = Listener(chat)
        self.log = logging.getLogger(f"{type(self).__module__}.{type(self).__name__}")

    @property
    def member(self) -> int | None:
        """The user id whose conversation this update met (`per_user` in a group), or None."""
        return self._conversation.member

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
        if not math.isfinite(every):   # NaN would fail the commit; infinity never tick
            raise ValueError(f"a schedule ticks every finite number of seconds, not {every}")
        if every < MIN_SCHEDULE_SECONDS:
            raise ValueError(f"a schedule ticks at most every {MIN_SCHEDULE_SECONDS} seconds")
        if "@" in name:   # NAME@USER_ID is how a group member's schedule is stored
            raise ValueError(f"a schedule name cannot contain '@': {name!r}")
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

    def start(self, payload: dict) -> bool:
        """Run `open` before the first Telegram update; True when it handled the update."""
        # a class is hashable: mypy checks type[...] against its instances' __hash__ here
        if _open_takes_seed(type(self)):  # type: ignore[arg-type]
            return bool(self.open(payload, self.id))
        return bool(self.open(payload))

    def open(self, initial_msg: dict, seed: int | None = None) -> bool | None:
        """The first update this handler sees (a message, or a button press, …), before
        `on_…`: return True to mark it handled, so that `on_chat_message` does not see it.
        A handler starts on its chat's first update and again after each ending (close(),
        an error, the idle timeout, …). telepot's `open(self, initial_msg, seed)` works too."""
        return None

    def close(self, reason: BaseException | None = None) -> None:
        """End this handler: the update in hand commits as far as it got, `on_close` gets
        StopListening (or `reason`), and the chat's next update meets a new handler.

        As in telepot it raises: code after `self.close()` does not run. A `reason` that is
        not a HandlerClosed is an error: the update fails as if the handler had raised it.
        """
        raise reason if reason is not None else StopListening()

    def end(self, reason: BaseException) -> None:
        """The handler ends (the transaction calls this once). For the idle timeout a
        telepot-style `on__idle(event)` runs first, if defined; a close() there makes the
        reason StopListening, and the handler ends either way. Then `on_close(reason)`."""
        on_idle = getattr(self, "on__idle", None)
        if on_idle is not None and isinstance(reason, IdleTerminate):
            try:
                on_idle({"_idle": {"source": "chatdaemon", "seconds": reason.seconds}})
            except HandlerClosed as closed:
                reason = closed
        self.on_close(reason)

    def on_update(self, kind: str, payload: dict) -> None:
        """Route one update to the method for its kind."""
        if kind == "message":
            self.on_chat_message(self._picked(payload) if self.numbered_choices else payload)
        elif kind == "edited_message":
            self.on_edited_chat_message(payload)
        elif kind == "callback_query":
            self.on_callback_query(payload)
        elif kind == "hook":
            self.on_hook(payload)
        elif kind == "callback":
            self.on_callback(payload)
        elif kind == "schedule":
            if payload.get("name") in self._conversation.schedules:
                self.on_schedule(payload)  # a tick queued before its schedule was stopped is dropped
        else:
            self.on_other(kind, payload)

    def on_chat_message(self, msg: dict) -> None:
        """A new message in this chat."""

    def _remember_keyboard(self, params: dict) -> None:
        """A message went out: its reply keyboard's labels are what a typed number picks
        from (kept with the conversation); a keyboard removed picks nothing."""
        markup = params.get("reply_markup")
        labels = keyboard_labels(markup)
        kept = self._conversation.state_context
        if labels:
            kept[KEYBOARD] = labels
            if (_markup_of(markup) or {}).get("one_time_keyboard") is True:
                kept[KEYBOARD_ONCE] = True
            else:
                kept.pop(KEYBOARD_ONCE, None)
        elif labels is not None:
            kept.pop(KEYBOARD, None)
            kept.pop(KEYBOARD_ONCE, None)

    def _picked(self, msg: dict) -> dict:
        """The message as if the option a typed number picks had been tapped (its label as
        the text); the message as it is otherwise."""
        text = msg.get("text")
        kept = self._conversation.state_context
        labels = kept.get(KEYBOARD)
        if kept.pop(KEYBOARD_ONCE, None):
            # a one-time keyboard hides once used: this message is its only pick, and a
            # number typed after it is text (the answer to whatever the bot asks next)
            kept.pop(KEYBOARD, None)
        if not isinstance(text, str) or not isinstance(labels, list):
            return msg
        typed = text.strip()
        if not typed.isdecimal() or len(typed) > MAX_TYPED_CHOICE \
                or not 1 <= int(typed) <= len(labels):
            return msg
        if any(isinstance(label, str) and label.strip().isdecimal() for label in labels):
            return msg   # a keyboard of numbers: the number typed is the answer
        picked = labels[int(typed) - 1]
        if not isinstance(picked, str):
            return msg   # a button that shares a contact, a location, …: no text stands for it
        return {**msg, "text": picked}

    def on_edited_chat_message(self, msg: dict) -> None:
        """A message of this chat was edited."""

    def on_callback_query(self, query: dict) -> None:
        """An inline button was pressed; answered automatically if you do not answer it."""

    def on_hook(self, notification: dict) -> None:
        """A notification hook's message for this chat: sent as rendered when it was posted."""
        self.sender.sendMessage(**notification["message"])

    def on_callback(self, result: dict) -> None:
        """A result POSTed to a callback URL this chat handed out: `result["data"]` is the
        JSON body, `result["handler"]` the handler that made the URL. Dropped by default."""
        log.info("chat %s: a callback result arrived and nothing handles it; dropped",
                 self.chat_id)

    def on_schedule(self, tick: dict) -> None:
        """A tick of a schedule this chat started (`tick["name"]`): nothing by default."""

    def on_other(self, kind: str, payload: dict) -> None:
        """An update of another kind (my_chat_member, channel_post, …): ignored by default."""
        log.info("chat %s: no handler for a %s update; marked done", self.chat_id, kind)

    def on_close(self, reason: BaseException) -> None:
        """This handler ends; `reason` says why, as an exception (telepot's promise):

        - StopListening: the handler called `close()` ("closed")
        - IdleTerminate, a WaitTooLong: no update for the idle timeout ("idle")
        - Evicted: its slot went to a waiting chat ("evicted")
        - Reloaded: a reloaded bot takes over ("reload")
        - WaitTooLong from `listener.wait(timeout)`, or the exception an update failed with

        `str(reason)` is the name in brackets and `reason == "idle"` compares it. Changes to
        `vars` and `state` made here are saved."""
