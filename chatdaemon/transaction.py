"""The update transaction: one update's effect on a conversation, all of it or none of it.

    begin (snapshot) → handler → commit: state + done mark (+ a migration's copy), one store
                                 transaction
                               → or roll back to the snapshot, then commit the done mark
                                 (and the user gets the bot's error text)

This is the one place conversation state is saved (through `Store.finish`). It also owns
what an update owes the user whatever its handler did: the answer to a button press and
the error text; and it sets aside (quarantines) an update that was cut short too often.

It owns the handler's life cycle too (telepot's create_open): the handler is made on the
first update, `start` (its `open`) runs before the first Telegram update, and the handler
ends — `on_close(reason)` in a transaction of its own, after the update's commit — when it
calls close(), when an update fails, or when the delegate closes it (idle, evicted,
reload); the chat's next update then meets a new handler.

It knows the thread running it only as a `Slot` and the bot only as `Bot` / `Handler`:
no handler code is imported here, and handlers see it only as their `ChatContext`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from . import callbacks, conversations
from .conversations import Snapshot, member_schedule
from .errors import (
    Abandoned,
    BadToken,
    Evicted,
    HandlerClosed,
    IdleTerminate,
    Reloaded,
    ShuttingDown,
    TelegramError,
    UpdateFailed,
    WaitTooLong,
)
from .inbox import copied, payload_of
from .sender import Sender
from .store import Conversation, InboxRow, Store

log = logging.getLogger(__name__)

QUARANTINE_AFTER = 3        # cut-short attempts (crash, kill, hang) before an update is set aside
# waiting for Telegram's flood limits' pace does not count toward the update's deadline up to
# this much per update (600 messages at one a second): a handler that sends for ever is still
# cut short; waits while Telegram fails (a retry, a 429) never count
PACE_EXCUSED = 600.0
MAX_COMMIT_BACKOFF = 30.0   # a commit that fails (disk full) is retried at least this often
REPLY_KINDS = ("message", "callback_query",   # updates whose user expects an answer
               "callback")                    # (a result posted back: the user waits for it)
LOCAL_KINDS = ("hook", "schedule",            # rows the daemon itself queued for a chat
               "handoff_notice", "handoff_reply", "handoff_end", "callback")
BLOCKED = 403               # the user blocked the bot, or it was removed from the chat
GROUP_TYPES = ("group", "supergroup")   # chats whose members may each have a conversation
MEMBER_KINDS = ("message", "edited_message", "callback_query")   # updates from one member

# Errors that leave the update pending: it is rolled back and replays later, or never
# (the daemon stops, or this thread was given up and another one serves the chat).
_LEAVE_PENDING = (ShuttingDown, Abandoned, BadToken)

# The delegate's words for closing a chat's handler, as the reasons its on_close receives.
CLOSE_REASONS: dict[str, Callable[[], BaseException]] = {
    "idle": IdleTerminate, "evicted": Evicted, "reload": Reloaded}


class Handler(Protocol):
    @property
    def ends_on_error(self) -> bool: ...   # read only: ChatHandler's is a class variable

    def start(self, payload: dict) -> bool: ...

    def on_update(self, kind: str, payload: dict) -> None: ...

    def end(self, reason: BaseException) -> None: ...


class Bot(Protocol):
    error_text: str

    def create_handler(self, context: Any, conversation: Conversation, sender: Sender) -> Handler: ...


class Slot(Protocol):
    """What a transaction needs of the thread running it."""

    abandoned: bool

    def handling(self, update_id: int | None) -> None:
        """Handler code starts running: the per-update deadline starts."""

    def handled(self) -> None:
        """Handler code returned: the deadline stops."""

    def pause(self) -> None:
        """A send waits for Telegram: the deadline stops, keeping the time spent so far."""

    def resume(self) -> None:
        """The wait is over: the deadline runs on from where it stopped."""

    def wait_for_work(self, timeout: float | None) -> str | None:
        """Block until an update is announced (None), or say why not ('stop', 'idle')."""

    def hold_chat(self, chat_id: int) -> None:
        """Start no delegate for `chat_id` until `release_chat`: its conversation is coming."""

    def release_chat(self, chat_id: int) -> None: ...

    def count(self, name: str) -> None: ...

    def wake(self, chat_ids: list[int]) -> None:
        """Rows for these chats were committed: serve them."""


class Careful:
    """After the daemon ended again while the same rows were pending (a crash loop): those
    rows are started one at a time, each with its attempt counted before it starts, so
    that only the update that ends the daemon is counted, not the others in flight."""

    def __init__(self, update_ids: Iterable[int], wait: float):
        self._ids = set(update_ids)
        self._alone = threading.Lock()
        self._wait = wait   # a hung one is given up by then; the next starts anyway

    def covers(self, update_id: int) -> bool:
        return update_id in self._ids

    @contextlib.contextmanager
    def alone(self, store: Store, update_id: int) -> Iterator[None]:
        locked = self._alone.acquire(timeout=self._wait)
        try:
            self._ids.discard(update_id)
            store.add_attempt(update_id)   # counted before it starts: a crash now is its own
            yield
        finally:
            if locked:
                self._alone.release()


class UpdateTransaction:
    """A chat's conversation and handler while one delegate serves it; one update at a time.

    Implements the handlers' `ChatContext`: `next_payload` (listener.wait),
    `callback_answered`, `migrated`, `check_current`.
    """

    def __init__(self, chat_id: int, store: Store, sender: Sender, bot: Bot, slot: Slot, *,
                 sleep: Callable[[float], bool], quarantine_after: int = QUARANTINE_AFTER,
                 careful: Careful | None = None):
        self.chat_id = chat_id
        self.store = store
        self.sender = sender
        self.bot = bot
        self._slot = slot
        self._sleep = sleep          # waits; True when the daemon is stopping
        self._quarantine_after = quarantine_after
        self._careful = careful
        self._conversation = store.load_conversation(chat_id)
        self._row: InboxRow | None = None
        # between updates `_before` is the snapshot of the conversation as saved, or None
        # (not made yet, or the conversation changed outside handler code: a member's taken,
        # a migration's copied); the next update begins from it without encoding again
        self._before: Snapshot | None = None
        self._checked: Snapshot | None = None  # the snapshot taken when handler code returned
        self._answered: set[str] = set()
        self._moved_to: int | None = None
        self._refused = False        # a send of this transaction met a rejected token
        self._paced = 0.0            # seconds of the update in hand spent on Telegram's pace
        self.moved_on = False        # the caller's list of pending rows is stale (listener.wait
                                     # took later rows, or a commit's other writes changed them)
        # the handler: made on the first update, dropped when it ends (see _end_handler)
        self._handler: Handler | None = None
        self._opened = False         # its start (open) ran
        self._ending: BaseException | None = None   # it ends after this update's commit
        self._staged: list[Callable[[Any], None]] = []   # the update's other writes (stage)
        self._wake: set[int] = set()                      # chats they queued rows for

    def _dispatch(self, row: InboxRow) -> None:
        """One update to the handler: made on the chat's first update (or the first after an
        ending), its open before the first Telegram update, then its on_… method."""
        payload = self._payload_of(row)
        if self._handler is None:
            self._handler = self.bot.create_handler(self, self._conversation, self.sender)
            self._opened = False
        if not self._opened and row.kind not in LOCAL_KINDS:
            self._opened = True
            if self._handler.start(payload):
                return  # open handled it (telepot: then on_message does not see it)
        self._handler.on_update(row.kind, payload)

    # -- one update ---------------------------------------------------------------------

    def handle(self, row: InboxRow) -> None:
        """Run the handler on one update and commit, or set the update aside.

        Raises ShuttingDown, Abandoned or BadToken with the update rolled back and pending.
        """
        self.moved_on = False
        self._paced = 0.0
        try:
            if row.attempts >= self._quarantine_after:
                self._quarantine(row)
                return
            if self._careful is not None and self._careful.covers(row.update_id):
                with self._careful.alone(self.store, row.update_id):
                    # counted as it starts: the count includes the end it may have caused last
                    row = dataclasses.replace(row, attempts=row.attempts + 1)
                    if row.attempts >= self._quarantine_after:
                        self._quarantine(row)
                        return
                    self._handle_one(row)
            else:
                self._handle_one(row)
        finally:
            self._release_migration()
        self._end_handler_if_ending()

    def _handle_one(self, row: InboxRow) -> None:
        self._follow_migration(row)
        self._begin(row)
        self._run(lambda: self._dispatch(row))
        self._finish_current()

    def _follow_migration(self, row: InboxRow) -> None:
        """Telegram's service messages of a group's move to a supergroup: the old group's
        ("migrate_to_chat_id") copies the conversation with its commit; the supergroup's
        ("migrate_from_chat_id"), if it comes first, starts from the group's conversation."""
        if row.kind != "message":
            return
        payload = payload_of(row)
        moved_to = payload.get("migrate_to_chat_id")
        if type(moved_to) is int:
            self.migrated(self.chat_id, moved_to)
        moved_from = payload.get("migrate_from_chat_id")
        if type(moved_from) is int and self._per_member():
            # the group's conversation and its members' (a chat's own are kept); the update
            # then meets its member's conversation as copied
            self.store.copy_chat(moved_from, self.chat_id)
            self._before = None
            self._conversation.take(self.store.load_conversation(
                self.chat_id, self._conversation.member))
        elif type(moved_from) is int and self._conversation.is_new:
            old = self.store.load_conversation(moved_from)
            if not old.is_new:
                conversation = self._conversation
                self._before = None
                conversation.state, conversation.vars = old.state, old.vars
                conversation.state_context = old.state_context

    def close(self, reason: str | BaseException) -> None:
        """The delegate closes the handler ('idle', 'evicted', 'reload', or an exception)."""
        if isinstance(reason, str):
            reason = CLOSE_REASONS[reason]()
        self._end_handler(reason)

    def _end_handler_if_ending(self) -> None:
        ending, self._ending = self._ending, None
        if ending is not None:
            self._end_handler(ending)

    def _end_handler(self, reason: BaseException) -> None:
        """The handler's end (its on_close), in a transaction of its own (what it changes is
        saved); then the handler is gone. No handler made yet: nothing to close."""
        handler, self._handler = self._handler, None
        if handler is None:
            return
        self._row = None
        if self._before is None:
            self._before = self._conversation.snapshot()
        try:
            self._run(lambda: handler.end(reason), what="on_close")
            if self._checked != self._before:
                self._commit(None)
        finally:
            self._release_migration()

    def _per_member(self) -> bool:
        return getattr(self.bot, "per_member", False) is True

    def _serve_member(self, row: InboxRow) -> None:
        """`conversation: per_user`: the update meets the conversation of the group member it
        is from (`member_of`). The handler holds one Conversation object for the chat; it
        takes the member's rows in place. Invariant: the conversation it held before is
        saved (every update commits or rolls back before the next one begins)."""
        if not self._per_member():
            return
        member = member_of(row)
        if member != self._conversation.member:
            self._before = None
            self._conversation.take(self.store.load_conversation(self.chat_id, member))

    def _stop_orphan_schedule(self, row: InboxRow) -> None:
        """A group member's schedule ticking for a bot that now keeps one conversation per
        chat (reloaded from `conversation: per_user`): no conversation runs it any more, so
        it stops with this tick's commit (the member's conversation itself is kept)."""
        name = payload_of(row).get("name")
        if row.kind != "schedule" or self._per_member() or not isinstance(name, str):
            return
        member = member_schedule(name)[1]
        if member is None:
            return
        chat_id = self.chat_id

        def stop(db: Any) -> None:
            if conversations.stop_member_schedule(db, chat_id, name, member):
                log.info("chat %s: stopped schedule %s of member %s: the bot keeps one "
                         "conversation per chat now", chat_id, name, member)
        self.stage(stop)

    def _payload_of(self, row: InboxRow) -> dict:
        """What the handler receives; a member's schedule tick under the name it started."""
        payload = payload_of(row)
        name = payload.get("name")
        if row.kind == "schedule" and self._conversation.member is not None \
                and isinstance(name, str):
            payload = {**payload, "name": member_schedule(name)[0]}
        return payload

    def _begin(self, row: InboxRow) -> None:
        self._serve_member(row)
        self._row = row
        self._staged, self._wake = [], set()
        self._stop_orphan_schedule(row)
        # invariant: between updates the conversation is as `_before` says (only handler code
        # changes it, and every update ends in a commit or a rollback to its snapshot)
        if self._before is None:
            self._before = self._conversation.snapshot()
        self._checked = None
        self._slot.handling(row.update_id)

    def _run(self, call: Callable[[], None], what: str = "handler") -> None:
        """Run handler code. A failure rolls back everything it changed; only the errors
        that leave the update pending get out of here."""
        if what == "on_close":
            self._slot.handling(None)
        try:
            self._call_until_closed(call, what)
            self._checked = self._check_saveable()
        except _LEAVE_PENDING:
            self._rollback()
            raise
        except WaitTooLong as exc:  # telepot style: a handler that stops waiting just ends
            log.info("chat %s: the handler stopped waiting (%s)", self.chat_id, exc)
            self._rollback()
            self._ends_with(exc, what)
        except UpdateFailed as exc:  # the bot's handler failed; the cause names where
            self._fail(exc, tell_user=not exc.answered, detail=False)
        except TelegramError as exc:
            if exc.status == BLOCKED:  # final for this chat: nobody to tell
                self._rollback()
                log.info("chat %s: Telegram refused a send (%s %s); update %s done without a "
                         "reply", self.chat_id, exc.status, exc.description, self._update_id())
            else:
                self._fail(exc, tell_user=True, detail=False)
                self._ends_with(exc, what)
        except Exception as exc:  # one bad update must not stop the chat
            self._fail(exc, tell_user=what == "handler", detail=True)
            self._ends_with(exc, what)
        finally:
            self._slot.handled()

    def _call_until_closed(self, call: Callable[[], None], what: str) -> None:
        """Run handler code; its close() (a HandlerClosed) is a normal end: what the update
        did so far commits, and the handler ends after the commit."""
        try:
            call()
        except HandlerClosed as exc:
            self._ends_with(exc, what)

    def _ends_with(self, reason: BaseException, what: str) -> None:
        """As in telepot, a handler that closed itself or failed ends; its on_close runs
        after the update's commit, and the chat's next update meets a new handler. A handler
        whose class says `ends_on_error = False` outlives its failures."""
        handler = self._handler
        if what != "handler" or handler is None or self._ending is not None:
            return
        if isinstance(reason, HandlerClosed) or handler.ends_on_error:
            self._ending = reason

    def _fail(self, exc: Exception, tell_user: bool, detail: bool) -> None:
        self._rollback()
        self._slot.count("failed")
        if self._row is None:
            log.error("chat %s: on_close failed: %s", self.chat_id, exc, exc_info=detail)
        else:
            log.error("chat %s: handler failed on update %s: %s", self.chat_id,
                      self._row.update_id, exc, exc_info=detail)
        if tell_user and self._row is not None:
            self._tell_user_it_failed(self._row)

    def _update_id(self) -> int | None:
        return self._row.update_id if self._row is not None else None

    def _check_saveable(self) -> Snapshot:
        """vars must be JSON: a set or an object there fails this update, not the delegate."""
        try:
            return self._conversation.snapshot()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"self.vars can hold only JSON values: {exc}") from None

    def _rollback(self) -> None:
        assert self._before is not None   # _begin and close take it before any handler code runs
        self._staged, self._wake = [], set()
        self._conversation.restore(self._before)
        self._checked = self._before

    def _finish_current(self) -> None:
        row = self._row
        # only after _begin: handle, _handle_local, and next_payload, which on_close may not call
        assert row is not None
        self._answer_callback_if_needed(row)
        self._commit(row.update_id)

    # -- the commit -----------------------------------------------------------------------

    def _commit(self, update_id: int | None) -> None:
        """The update's effect, its done mark and a migration's copy: one store transaction."""
        conversation = self._conversation
        after = self._checked if self._checked is not None else conversation.snapshot()
        self._checked = None
        greet = conversation.is_new and self._row is not None
        # a new conversation is saved even unchanged: it is created once, with its first update
        changed = after != self._before or conversation.is_new or self._moved_to is not None
        staged, wake = self._staged, self._wake
        if self._moved_to is not None:   # the group's callback URLs go along with it
            staged = [*staged, callbacks.move(self.chat_id, self._moved_to)]
        self._retry_commit(lambda: self.store.finish(
            update_id, conversation if changed else None, moved_to=self._moved_to,
            guard=self._guard, writes=staged, encoded=after))
        self._staged, self._wake = [], set()
        if staged:
            # the update's other writes may have changed this chat's pending rows (/forget
            # marks a member's queued results done): the caller's list of them is stale
            self.moved_on = True
        if wake:
            self._slot.wake(sorted(wake))  # after the commit: their rows exist now
        self._before = after
        self._release_migration()
        if greet and self._row is not None and log.isEnabledFor(logging.INFO):
            log_first_contact(self.chat_id, self._row)

    def _retry_commit(self, commit: Callable[[], None]) -> None:
        """A reply may already be out: retry only the commit, never the handler."""
        delay = 0.5
        while True:
            try:
                commit()
                return
            except (sqlite3.Error, OSError) as exc:  # disk full, I/O error
                log.error("chat %s: could not commit update %s (%s); retrying the commit in "
                          "%.1f s", self.chat_id, self._update_id(), exc, delay)
                if self._sleep(delay):
                    raise ShuttingDown() from None
                delay = min(delay * 2, MAX_COMMIT_BACKOFF)

    def _guard(self) -> None:
        """Runs inside the store transaction: a given-up thread commits nothing, nor an update
        whose send met a revoked token (a failed send is never a done update)."""
        self.check_current()
        if self._refused:
            raise BadToken("Telegram rejected the bot token; the update stays pending")

    # -- set aside ------------------------------------------------------------------------

    def _quarantine(self, row: InboxRow) -> None:
        reason = f"cut short {row.attempts} times (a crash, a kill or a hang while handling it)"
        log.warning("chat %s: update %s (%s) quarantined: %s", self.chat_id, row.update_id,
                    row.kind, reason)
        self._row = row
        self._slot.count("quarantined")
        self._tell_user_it_failed(row)
        self._answer_callback_if_needed(row)
        self._retry_commit(lambda: self.store.quarantine(row.update_id, reason))

    # -- ChatContext: what the handler may ask ----------------------------------------------

    def check_current(self) -> None:
        if self._slot.abandoned:
            raise Abandoned(self.chat_id)

    @contextlib.contextmanager
    def waiting(self, paced: bool) -> Iterator[None]:
        """A send waits for Telegram: that is no time of the handler's, so the update's
        deadline stops meanwhile (see PACE_EXCUSED). Without this, an outage of a few minutes
        during a send had the update given up three times and quarantined, and a handler
        sending a minute's worth of messages was given up and run again (sending twice)."""
        if paced and self._paced >= PACE_EXCUSED:
            yield
            return
        began = time.monotonic()
        self._slot.pause()
        try:
            yield
        finally:
            self._slot.resume()
            if paced:
                self._paced += time.monotonic() - began

    def refused(self) -> None:
        self._refused = True

    def payload(self) -> dict | None:
        return payload_of(self._row) if self._row is not None else None

    def stage(self, write: Callable[[Any], None], wake: tuple[int, ...] = ()) -> None:
        """Make `write(connection)` part of this update's commit (rolled back with it); wake
        the chats in `wake` once it is committed (it queued rows for them)."""
        self._staged.append(write)
        self._wake.update(wake)

    def callback_answered(self, query_id: str | None) -> None:
        if query_id:
            self._answered.add(query_id)

    def migrated(self, old_chat_id: int, new_chat_id: int) -> None:
        """The group became a supergroup: the conversation goes along with this update's commit.

        Until then no delegate starts for the new chat, so none reads it before the copy.
        """
        if old_chat_id != self.chat_id or new_chat_id == self._moved_to:
            return
        self._release_migration()
        self._moved_to = new_chat_id
        self._slot.hold_chat(new_chat_id)

    def _release_migration(self) -> None:
        if self._moved_to is not None:
            self._slot.release_chat(self._moved_to)
            self._moved_to = None

    def next_payload(self, timeout: float | None) -> dict:
        """Commit the current update, then return the chat's next one (telepot's listener.wait).

        Hook notifications and schedule ticks that arrive meanwhile are handled on the way
        (sent and committed); only Telegram's updates are handed to the waiting handler.
        """
        if self._row is None:  # on_close: no update to commit first, and none may follow
            raise RuntimeError("listener.wait() cannot be called in on_close")
        waiting = getattr(self._handler, "waiting", None)
        if waiting is not None:   # a handoff the handler asked for starts with this commit
            waiting()
        self._checked = self._check_saveable()
        self._slot.handled()
        self._finish_current()
        self._slot.count("handled")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check_current()
            rows = self.store.pending(self.chat_id, limit=1)
            if rows and rows[0].attempts >= self._quarantine_after:
                self._quarantine(rows[0])
                continue
            if rows and rows[0].kind in LOCAL_KINDS:
                self._handle_local(rows[0])
                continue
            if rows:
                self._begin(rows[0])
                self.moved_on = True
                if self._taken_while_waiting(rows[0]):
                    continue
                # the handler's own copy: the update as it came still answers a button press
                return copied(self._payload_of(rows[0]))
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            reason = self._slot.wait_for_work(remaining)
            if reason == "stop":
                raise ShuttingDown()
            if reason == "idle":
                raise WaitTooLong(timeout or 0.0)

    def _taken_while_waiting(self, row: InboxRow) -> bool:
        """An update the handler's desk takes (a message while the chat is with a human goes
        to the operators; an operator's command; /forget) is handled and committed here.
        Invariant: what the desk takes never reaches a handler waiting in listener.wait()."""
        takes = getattr(self._handler, "takes", None)
        if takes is None:
            return False
        payload = self._payload_of(row)
        took: list[bool] = []
        self._run(lambda: took.append(bool(takes(row.kind, payload))))
        if took == [False]:   # the handler's, as it was begun: its deadline runs again
            self._checked = None
            self._slot.handling(row.update_id)
            return False
        self._finish_current()   # taken, or failed (the user got the error text)
        self._slot.count("handled")
        return True

    def _handle_local(self, row: InboxRow) -> None:
        handler = self._handler
        assert handler is not None   # reached only from the running handler's listener.wait
        self._begin(row)
        self._run(lambda: handler.on_update(row.kind, self._payload_of(row)))
        self._finish_current()
        self._slot.count("handled")
        self.moved_on = True

    # -- what the update owes the user --------------------------------------------------------

    def _answer_callback_if_needed(self, row: InboxRow) -> None:
        """Stop the client's spinner even when the handler did not answer the button press."""
        answered, self._answered = self._answered, set()
        if row.kind != "callback_query":
            return
        query_id = payload_of(row).get("id")
        if not query_id or query_id in answered:
            return
        try:  # best effort: the update itself is done either way
            self.sender.call("answerCallbackQuery", {"callback_query_id": query_id},
                             check=self.check_current, waiting=self.waiting)
        except Abandoned:
            raise
        except BadToken:
            self._refused = True
            raise
        except (TelegramError, ShuttingDown) as exc:
            log.info("chat %s: could not answer callback query: %s", self.chat_id, exc)

    def _tell_user_it_failed(self, row: InboxRow) -> None:
        text = self.bot.error_text
        if not text or row.kind not in REPLY_KINDS:
            return
        try:
            self.sender.call("sendMessage", {"chat_id": self.chat_id, "text": text},
                             on_migrate=self.migrated, check=self.check_current,
                             waiting=self.waiting)
        except Abandoned:
            raise
        except BadToken:
            self._refused = True
            raise
        except ShuttingDown:
            log.info("chat %s: stopping before the error text went out", self.chat_id)
        except Exception as exc:
            log.error("chat %s: could not send the error text: %s", self.chat_id, exc)


def member_of(row: InboxRow) -> int | None:
    """Whose conversation an update of a group meets with `conversation: per_user`: the
    sender of a message, the presser of a button (keyed by who pressed, whoever the message
    was for), the member a schedule runs for, the member whose request handed out the
    callback URL a result was posted to. None for private chats and for what comes from
    nobody in particular (a hook, an operator's answer): the chat's own conversation."""
    payload = payload_of(row)
    if row.kind == "schedule":
        name = payload.get("name")
        return member_schedule(name)[1] if isinstance(name, str) else None
    if row.kind == "callback":
        member = payload.get("member")
        return member if type(member) is int else None
    if row.kind not in MEMBER_KINDS:
        return None
    message = payload.get("message") if row.kind == "callback_query" else payload
    chat = _dict_or(message, {}).get("chat")
    if _dict_or(chat, {}).get("type") not in GROUP_TYPES:
        return None
    user_id = _dict_or(payload.get("from"), {}).get("id")
    return user_id if type(user_id) is int else None


def log_first_contact(chat_id: int, row: InboxRow) -> None:
    """One INFO line when a chat first talks to the bot, so an owner can find its chat id."""
    name, username = who_is(payload_of(row))
    log.info("chat %s first talked to the bot: %r%s", chat_id, name,
             f" (@{username})" if username else "")


def who_is(payload: dict) -> tuple[str, str | None]:
    """A chat's name and @username from an update's message or callback query (untrusted)."""
    message = _dict_or(payload.get("message"), payload)
    chat = _dict_or(message.get("chat"), {})
    user = _dict_or(payload.get("from"), {})
    for source in (chat, user):
        name = source.get("title") or " ".join(
            str(part) for part in (source.get("first_name"), source.get("last_name")) if part)
        if name:
            username = source.get("username") or user.get("username")
            return str(name), str(username) if username else None
    return "?", None


def _dict_or(value: object, default: dict) -> dict:
    """`value` when it is a JSON object, else `default` (an update's fields are untrusted)."""
    return value if isinstance(value, dict) else default
