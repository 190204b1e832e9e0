"""Human handoff, operators' commands and /forget: what a chat does before (or instead of) its bot.

Every chat's handler is wrapped in a `Desk`. For most updates it only passes them on; it
steps in when
- the bot asked for a human (`handoff: true` in YAML, `self.handoff()` in Python): the
  operators are told who asked and what they wrote, and the chat is with a human;
- the chat is with a human: its messages are kept and forwarded to every operator, and the
  bot does not see them;
- the chat is an operator's: replies to the bot's messages about a person, /reply, /unread,
  /next and /done;
- a daemon-made row of the handoff arrives (a notice for an operator, an operator's answer
  or /done for a person, the person's timer);
- the person sends the forget command.

Everything it changes is staged with the update's transaction (see handoffs.py), and
whatever one chat owes another goes through the inbox as a row for that chat, sent by that
chat's own delegate through the sender: nothing of a handoff lives only in memory.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from . import handoffs
from .chathandler import ChatSender
from .errors import TelegramError
from .handoffs import Person
from .privacy import forget_chat, forget_member

log = logging.getLogger(__name__)

_NAMED_CHAT = re.compile(r"\bchat (-?\d{1,19})\)")   # "Ann (@ann, chat 111)"
TIMER = "chatdaemon.handoff"   # the schedule that checks a handoff's timeout
MIN_TICK = 1.0                 # the timer's tick: a quarter of the timeout, at least this
DEFAULT_TIMEOUT = 600.0
MAX_NOTICES_UNREAD = 5         # a person's unread messages that each reach the operators
BLOCKED = 403                  # Telegram's answer once the person blocked the bot
RELAYED = {"photo": "sendPhoto", "document": "sendDocument"}   # what an operator may send on

NOTICE_START = ("🙋 {who} asks for a human:\n{text}\n\n"
                "Reply to this message to answer; reply /done to hand them back to the bot.")
NOTICE_MESSAGE = "💬 {who}:\n{text}"
NOTICE_ANSWERED = "↪ {operator} answered {who}:\n{text}"
NOTICE_BACK = "{who} is back with the bot ({reason})."
NOTICE_MORE = "\n\n(Their next messages wait unannounced until someone answers: /next shows them.)"
NOTICE_UNREACHED = ("{who} has blocked the bot: the answer did not reach them, and the handoff "
                    "is closed.")
REASON_BLOCKED = "they blocked the bot, so they were not told"
TOLD_NOBODY = "Sorry, nobody is here to answer right now. I'll keep helping you myself."
TOLD_TIMEOUT = ("Sorry, nobody could answer in time. You're back with me; "
                "you can ask for a human again later.")
TOLD_DONE = "This conversation with our team has ended; you're back with the bot. Thank you!"
TOLD_FORGOTTEN = "Done: I deleted what I kept about this chat (conversation and messages)."
TOLD_MEMBER_FORGOTTEN = "Done: I deleted our conversation in this group."
OPERATOR_HELP = ("As an operator: reply to a message about someone to answer them, or send "
                 "/reply CHAT_ID text, /unread, /next, /done CHAT_ID.")


@dataclass(frozen=True)
class People:
    """What the daemon config says about people: operators, the handoff timeout, /forget."""

    operators: tuple[int, ...] = ()
    handoff_timeout: float = DEFAULT_TIMEOUT
    forget_command: str | None = "/forget"   # None: no built-in forget


class Desk:
    """Wraps a chat's handler (a ChatHandler) with the handoff and /forget."""

    def __init__(self, inner: Any, context: Any, conversation: Any, sender: Any, people: People):
        self.inner = inner
        self.context = context
        self.conversation = conversation
        self.chat_id: int = conversation.chat_id
        self.people = people
        self.sender = ChatSender(sender, self.chat_id, context)
        self._open_pending = False

    @property
    def store(self) -> Any:
        return self.context.store

    # -- the Handler interface ----------------------------------------------------------------

    @property
    def ends_on_error(self) -> bool:
        return bool(getattr(self.inner, "ends_on_error", True))

    def start(self, payload: dict) -> bool:
        """The transaction asks before a handler's first Telegram update: the bot's `open`
        waits for the first update the desk passes on (an operator's command, or a message
        while the person is with a human, never opens the bot's handler)."""
        self._open_pending = True
        return False

    def on_update(self, kind: str, payload: dict) -> None:
        if self._takes(kind, payload):
            return
        if self._open_pending:  # this is the update `start` was asked about
            self._open_pending = False
            if self.inner.start(payload):
                self._after_bot(payload)
                return  # open handled it (telepot: then on_message does not see it)
        self.inner.on_update(kind, payload)
        self._after_bot(payload)

    def _after_bot(self, payload: dict) -> None:
        if getattr(self.inner, "handoff_requested", False):
            self.inner.handoff_requested = False
            self._start(payload, getattr(self.inner, "handoff_note", None))

    def end(self, reason: BaseException) -> None:
        self.inner.end(reason)

    def takes(self, kind: str, payload: dict) -> bool:
        """An update that arrives while the bot's handler waits (listener.wait): True when the
        desk handled it (the chat is with a human, an operator's command, /forget), so that
        it never reaches the handler."""
        return self._takes(kind, payload)

    def waiting(self) -> None:
        """The bot's handler is about to wait (listener.wait): a handoff it asked for starts
        now, with the update it was handling, so the person's next messages go to the
        operators rather than to the waiting handler."""
        self._after_bot(self.context.payload() or {})

    def _takes(self, kind: str, payload: dict) -> bool:
        """Handle the update here, or say False to pass it to the bot."""
        if kind == "handoff_notice":
            self._deliver_notice(payload)
            return True
        if kind in ("handoff_reply", "handoff_end"):
            self._from_operator(kind, payload)
            return True
        if kind == "schedule" and payload.get("name") == TIMER:
            self._check_timeout()
            return True
        if kind not in ("message", "callback_query"):
            return False
        text = _typed(payload, "text", str, "")
        if kind == "message" and self.chat_id in self.people.operators and \
                self._operator_command(payload, text.strip()):
            return True
        if kind == "message" and self._is_forget(text):
            self._forget()
            return True
        person = self._with_human()
        if person is None:
            return False
        # with a human: the bot does not answer; the operators get it
        self._forward(person, content_of(kind, payload), NOTICE_MESSAGE)
        return True

    # -- a person --------------------------------------------------------------------------

    def _with_human(self) -> Person | None:
        """This chat's handoff, if it is with a human. Its timer is armed in the same commit
        that opens the handoff and stopped in the one that closes it (both by this chat
        alone), so a chat without the timer needs no look in the database."""
        if TIMER not in self.conversation.schedules:
            return None
        return handoffs.person_with_human(self.store, self.chat_id)

    def _start(self, payload: dict, note: str | None) -> None:
        """The bot handed this chat to a human (its own answer is out already)."""
        if not self._operators_for(self.chat_id):
            log.info("chat %s asked for a human, but no other operators are configured",
                     self.chat_id)
            self.sender.sendMessage(TOLD_NOBODY)
            return
        name, username = who_is(payload)
        person = Person(self.chat_id, name, username)
        self.context.stage(handoffs.open_handoff(person))
        self._forward(person, note or content_of("message", payload), NOTICE_START)
        log.info("chat %s is with a human now", self.chat_id)

    def _forward(self, person: Person, text: str, notice: str) -> None:
        """Keep a person's message (unread) and queue it for every operator."""
        # one person cannot flood the operators' chats (each notice waits its turn behind
        # the others, 1 a second, ahead of the operator's own commands): past
        # MAX_NOTICES_UNREAD unread messages they are kept, and shown by /next, unannounced
        unread = handoffs.unread_count(self.store, self.chat_id)
        self.context.stage(handoffs.keep_message(self.chat_id, text))
        if unread < MAX_NOTICES_UNREAD:
            more = NOTICE_MORE if unread == MAX_NOTICES_UNREAD - 1 else ""
            self._tell_operators(person, notice.format(who=person.describe(), text=text) + more)
        self._arm_timer()

    def _operators_for(self, chat_id: int, but: int | None = None) -> list[int]:
        """The operators to tell about a person: never the person's own chat (an operator
        with a human is told nothing about themselves), nor `but`."""
        return [chat for chat in self.people.operators if chat not in (chat_id, but)]

    def _tell_operators(self, person: Person, text: str, but: int | None = None) -> None:
        operators = self._operators_for(person.chat_id, but)
        rows = [(chat, "handoff_notice", {"about": person.chat_id, "text": text})
                for chat in operators]
        if rows:
            self.context.stage(handoffs.queue_rows(rows), wake=tuple(operators))

    def _arm_timer(self) -> None:
        # the schedule is saved with the conversation, so the timeout survives a restart
        every = max(MIN_TICK, self.people.handoff_timeout / 4)
        self.conversation.schedules[TIMER] = {"every": every}

    def _check_timeout(self) -> None:
        person = handoffs.person_with_human(self.store, self.chat_id)
        if person is None:
            self.conversation.schedules.pop(TIMER, None)
            return
        oldest = handoffs.oldest_unread(self.store, self.chat_id)
        if oldest is None or time.time() - oldest < self.people.handoff_timeout:
            return
        log.info("chat %s: no operator answered within %.0f s; back with the bot", self.chat_id,
                 self.people.handoff_timeout)
        self._back_to_bot(person, TOLD_TIMEOUT, "nobody answered in time")

    def _back_to_bot(self, person: Person, told: str, reason: str, by: int | None = None) -> None:
        self._close()
        if not self._reaches_person(lambda: self.sender.sendMessage(told)):
            reason, by = REASON_BLOCKED, None
        self._tell_operators(person, NOTICE_BACK.format(who=person.describe(), reason=reason), but=by)

    def _close(self) -> None:
        self.context.stage(handoffs.close_handoff(self.chat_id))
        self.conversation.schedules.pop(TIMER, None)

    def _reaches_person(self, send: Any) -> bool:
        """Send to the person; False when Telegram says they blocked the bot. That answer is
        final, so the desk handles it here: rolled back, the handoff would stay open with
        nobody to answer (and its timer would retry the farewell for ever)."""
        try:
            send()
        except TelegramError as exc:
            if exc.status != BLOCKED:
                raise
            log.info("chat %s: Telegram refused a send to the person (%s); handoff closed",
                     self.chat_id, exc.detail)
            return False
        return True

    def _from_operator(self, kind: str, payload: dict) -> None:
        """An operator's answer, or their /done, queued for this person."""
        person = handoffs.person_with_human(self.store, self.chat_id)
        if person is None:
            log.info("chat %s: an operator's %s arrived after the handoff ended; dropped",
                     self.chat_id, kind)
            return
        if kind == "handoff_end":
            self._back_to_bot(person, TOLD_DONE, "an operator sent /done", by=payload.get("operator"))
            return
        text = payload.get("text")
        media = next((name for name in RELAYED if isinstance(payload.get(name), str)), None)
        if media is not None:  # an operator's photo or document, by its file_id
            caption = text if isinstance(text, str) and text.strip() else None
            reached = self._reaches_person(lambda: self.sender.call(
                RELAYED[media], **{media: payload[media], "caption": caption}))
        elif isinstance(text, str) and text.strip():
            reached = self._reaches_person(lambda: self.sender.sendMessage(text))
        else:
            return
        if not reached:
            self._close()
            self._tell_operators(person, NOTICE_UNREACHED.format(who=person.describe()))

    # -- an operator -----------------------------------------------------------------------

    def _deliver_notice(self, payload: dict) -> None:
        """A message about a person for this operator: sent, and remembered as about them."""
        about, text = payload.get("about"), payload.get("text")
        if type(about) is not int or not isinstance(text, str):
            return
        sent = self.sender.sendMessage(text)
        self._remember(sent, about)

    def _remember(self, sent: Any, about: int) -> None:
        message_id = sent.get("message_id") if isinstance(sent, dict) else None
        if type(message_id) is int:
            self.context.stage(handoffs.map_message(self.chat_id, message_id, about))

    def _operator_command(self, msg: dict, text: str) -> bool:
        """An operator's reply or command; False when it is for the bot itself."""
        command, _, rest = text.partition(" ")
        command = command.split("@")[0].lower()
        about = self._replied_about(msg)
        if command == "/unread":
            self._list_waiting()
        elif command == "/next":
            self._show_next()
        elif command == "/done":
            target = about if about is not None else chat_id_in(rest)
            self._end(target) if target is not None else self.sender.sendMessage(OPERATOR_HELP)
        elif command == "/reply":
            target_text, _, body = rest.strip().partition(" ")
            target = chat_id_in(target_text)
            if target is None or not body.strip():
                self.sender.sendMessage("Usage: /reply CHAT_ID text")
            else:
                self._answer(target, body.strip(), msg)
        elif about is not None and not text:
            self._answer_media(about, msg)
        elif about is not None:
            self._answer(about, text, msg)
        else:
            return False
        return True

    def _replied_about(self, msg: dict) -> int | None:
        """The person a reply is about: the message's recorded mapping, or else the chat id
        the bot's message names (a copy sent again after a crash has no mapping of its own)."""
        replied = _typed(msg, "reply_to_message", dict, {})
        message_id = replied.get("message_id")
        if type(message_id) is not int:
            return None
        about = handoffs.chat_of_message(self.store, self.chat_id, message_id)
        if about is not None:
            return about
        sender = _typed(replied, "from", dict, {})
        # the person's own chat id ends the description on the message's first line; a
        # name (which a person chooses, "Eve (chat 222)") comes before it, never after
        first_line = _typed(replied, "text", str, "").split("\n", 1)[0]
        named = _NAMED_CHAT.findall(first_line)
        return int(named[-1]) if named and sender.get("is_bot") is True else None

    def _answer(self, target: int, text: str, msg: dict, media: dict | None = None) -> None:
        person = handoffs.person_with_human(self.store, target)
        if person is None:
            self.sender.sendMessage(f"Chat {target} is not with a human now; nothing was sent.")
            return
        self.context.stage(handoffs.queue_rows([(target, "handoff_reply", {
            "text": text, "operator": self.chat_id, **(media or {})})]), wake=(target,))
        self.context.stage(handoffs.mark_read(target))
        sent = self.sender.sendMessage(f"✓ Sent to {person.describe()}.")
        self._remember(sent, target)
        shown = " ".join(filter(None, [f"[a {kind}]" for kind in media or {}] + [text]))
        self._tell_operators(person, NOTICE_ANSWERED.format(
            operator=who_is(msg)[0], who=person.describe(), text=shown), but=self.chat_id)

    def _answer_media(self, target: int, msg: dict) -> None:
        """A reply without text: its photo or document (and caption) goes on by file_id."""
        media = media_of(msg)
        if media is None:
            self.sender.sendMessage("Only text, a photo or a document reaches a person from "
                                    "here; nothing was sent.")
            return
        kind, file_id = media
        self._answer(target, _typed(msg, "caption", str, ""), msg, {kind: file_id})

    def _end(self, target: int) -> None:
        person = handoffs.person_with_human(self.store, target)
        if person is None:
            self.sender.sendMessage(f"Chat {target} is not with a human now.")
            return
        self.context.stage(handoffs.queue_rows(
            [(target, "handoff_end", {"operator": self.chat_id})]), wake=(target,))
        self.context.stage(handoffs.mark_read(target))
        self.sender.sendMessage(f"✓ {person.describe()} goes back to the bot.")

    def _list_waiting(self) -> None:
        people = handoffs.waiting(self.store)
        if not people:
            self.sender.sendMessage("Nobody is with a human right now.")
            return
        lines = [f"• {entry.person.describe()}: {entry.unread} unread" for entry in people]
        self.sender.sendMessage("With a human now:\n" + "\n".join(lines) + "\n\n/next shows the "
                                "next person's messages.")

    def _show_next(self) -> None:
        """The messages of the person waiting longest, marked read; a reply answers them."""
        waiting = [entry for entry in handoffs.waiting(self.store) if entry.unread]
        if not waiting:
            self.sender.sendMessage("No unread messages.")
            return
        person = waiting[0].person
        messages = handoffs.unread_messages(self.store, person.chat_id)
        body = "\n".join(f"• {text}" for _, text in messages)
        sent = self.sender.sendMessage(f"{person.describe()}, {len(messages)} unread:\n{body}\n\n"
                                       "Reply to this message to answer; reply /done to hand "
                                       "them back to the bot.")
        self._remember(sent, person.chat_id)
        self.context.stage(handoffs.mark_read(person.chat_id, up_to=messages[-1][0]))

    # -- forgetting --------------------------------------------------------------------------

    def _is_forget(self, text: str) -> bool:
        command = self.people.forget_command
        if not command:
            return False
        return text.strip().split("@")[0].lower() == command.lower()

    def _forget(self) -> None:
        """Delete what is kept about this chat; the conversation starts afresh."""
        conversation = self.conversation
        conversation.state, conversation.vars = None, {}
        conversation.state_context, conversation.schedules = {}, {}
        member = getattr(conversation, "member", None)
        if member is not None:   # a group keeping a conversation per member: only theirs
            self.context.stage(forget_member(self.chat_id, member))
            log.info("chat %s: member %s forgotten at their request", self.chat_id, member)
            self.sender.sendMessage(TOLD_MEMBER_FORGOTTEN)
            return
        self.context.stage(forget_chat(self.chat_id, handling=True))
        log.info("chat %s: forgotten at its request", self.chat_id)
        self.sender.sendMessage(TOLD_FORGOTTEN)


def chat_id_in(text: str) -> int | None:
    text = text.strip()
    if text.lstrip("-").isdigit() and len(text) < 20:
        return int(text)
    return None


def content_of(kind: str, payload: dict) -> str:
    """A person's message as text for an operator (untrusted: any shape)."""
    if kind == "callback_query":
        return f"[pressed a button: {payload.get('data')!s:.200}]"
    for key in ("text", "caption"):
        if isinstance(payload.get(key), str) and payload[key].strip():
            return payload[key]
    for key in ("photo", "document", "voice", "audio", "video", "sticker", "location", "contact"):
        if key in payload:
            return f"[sent a {key}]"
    return "[sent a message]"


def media_of(msg: dict) -> tuple[str, str] | None:
    """("photo" or "document", its file_id) of an operator's message (untrusted: any shape);
    a photo's largest size is the last one Telegram lists."""
    sizes = _typed(msg, "photo", list, [])
    largest = sizes[-1] if sizes and isinstance(sizes[-1], dict) else {}
    document = _typed(msg, "document", dict, {})
    for kind, found in (("photo", largest), ("document", document)):
        file_id = found.get("file_id")
        if isinstance(file_id, str) and file_id:
            return kind, file_id
    return None


def who_is(payload: dict) -> tuple[str, str | None]:
    """A person's name and @username from a message or callback query (untrusted)."""
    user = _typed(payload, "from", dict, {})
    message = _typed(payload, "message", dict, payload)
    chat = _typed(message, "chat", dict, {})
    for source in (user, chat):
        name = " ".join(str(part) for part in (source.get("first_name"), source.get("last_name"))
                        if part) or source.get("title")
        if name:
            username = source.get("username") or user.get("username")
            return _one_line(name), _one_line(username) if username else None
    return "someone", None


def _one_line(value: Any) -> str:
    """A name as operators see it: one line (a line break could fake one of the daemon's own),
    at most 64 characters."""
    return " ".join(str(value).split())[:64]


_T = TypeVar("_T")


def _typed(mapping: dict, key: str, kind: type[_T], default: _T) -> _T:
    """mapping[key] when it is a `kind`, else `default`: an update's fields are untrusted."""
    value = mapping.get(key)
    return value if isinstance(value, kind) else default
