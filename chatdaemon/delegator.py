"""The delegator: one delegate thread per chat with pending updates, and no more than the cap.

Routing is by seed (the chat id) through a dict, never by broadcasting an update to every
thread. A delegate handles its chat's inbox rows one at a time in update_id order, exits
after an idle timeout (state stays in SQLite), and gives its slot to a waiting chat as soon
as it has nothing to do. Chats beyond the cap wait in the durable inbox; only their ids are
held here.

The hand-off rule that keeps a message from being stranded: a delegate leaves its chat only
under the delegator's lock, after checking that no update was announced for that chat
since it last looked. An update announced after that finds no delegate and starts one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .errors import ShuttingDown, TelegramError, WaitTooLong
from .inbox import payload_of
from .store import Conversation, InboxRow, Store

if TYPE_CHECKING:
    from .bots import Bot
    from .chathandler import ChatHandler
    from .sender import Sender

log = logging.getLogger(__name__)

STACK_SIZE = 512 * 1024  # 256 KiB let a deep template recursion crash the process
LOCAL_KINDS = ("hook", "schedule")  # rows the daemon itself queued for a chat
MAX_FAILURE_PAUSE = 30.0  # a delegate whose store calls fail retries its chat at most this often


class Delegator:
    """Starts, feeds and retires delegate threads."""

    def __init__(self, store: Store, bot: Bot, sender: Sender, *,
                 max_delegates: int = 64, idle_timeout: float = 300.0):
        self.store = store
        self.bot = bot
        self.sender = sender
        self.max_delegates = max_delegates
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._live: dict[int, Delegate] = {}
        self._waiting: OrderedDict[int, None] = OrderedDict()
        self._idle: set[Delegate] = set()
        self._threads = 0
        self._all_gone = threading.Condition(self._lock)
        self.stopping = False
        self.stats = {"handled": 0, "failed": 0, "peak_delegates": 0}

    # -- called by the poller, after the inbox commit --------------------------------

    def notify(self, chat_ids: Iterable[int]) -> None:
        """New updates for these chats are in the inbox: wake or start their delegates."""
        with self._lock:
            if self.stopping:
                return
            for chat_id in chat_ids:
                delegate = self._live.get(chat_id)
                if delegate is not None:
                    delegate.poke()
                elif self._threads < self.max_delegates:
                    self._waiting.pop(chat_id, None)
                    self._start(chat_id)
                elif chat_id in self._waiting:
                    continue
                else:
                    self._waiting[chat_id] = None
                    self._wake_one_idle()

    def _start(self, chat_id: int) -> None:
        delegate = Delegate(self, chat_id)
        self._live[chat_id] = delegate
        self._threads += 1
        self.stats["peak_delegates"] = max(self.stats["peak_delegates"], self._threads)
        delegate.start()

    def _wake_one_idle(self) -> None:
        """A chat is waiting for a slot: ask one idle delegate to hand its slot over."""
        if self._idle:
            self._idle.pop().cond.notify()

    # -- called by delegates, under the lock --------------------------------------------

    def _next_chat(self, delegate: Delegate) -> int | None:
        """The chat a delegate serves next: its own again if an update arrived, else a waiting one."""
        with self._lock:
            if delegate.poked and not self.stopping:
                delegate.poked = False
                return delegate.chat_id
            del self._live[delegate.chat_id]
            while self._waiting and not self.stopping:
                chat_id, _ = self._waiting.popitem(last=False)
                if chat_id not in self._live:
                    self._live[chat_id] = delegate
                    return chat_id
            return None

    def _thread_gone(self) -> None:
        with self._lock:
            self._threads -= 1
            while self._waiting and not self.stopping and self._threads < self.max_delegates:
                chat_id, _ = self._waiting.popitem(last=False)
                if chat_id not in self._live:
                    self._start(chat_id)
            self._all_gone.notify_all()

    def chat_migrated(self, old_chat_id: int, new_chat_id: int) -> None:
        """Telegram says a group became a supergroup (the sender follows it on its own).

        The new chat starts from the group's conversation as it stands once the update in
        flight commits, so that update's change travels along.
        """
        current = threading.current_thread()
        if isinstance(current, Delegate) and current.chat_id == old_chat_id:
            current.migrated_to = new_chat_id
        else:
            self.store.copy_chat(old_chat_id, new_chat_id)

    # -- status and stopping --------------------------------------------------------------

    def counts(self) -> dict:
        with self._lock:
            return {"delegates": self._threads, "waiting_chats": len(self._waiting)}

    def begin_stop(self) -> None:
        """Take no more updates: delegates finish what they are doing and exit."""
        with self._lock:
            self.stopping = True
            self._waiting.clear()
            for delegate in self._live.values():
                delegate.cond.notify()

    def stop(self, timeout: float) -> bool:
        """Stop and let in-flight updates finish; True when every delegate ended in time."""
        self.begin_stop()
        with self._lock:
            return self._all_gone.wait_for(lambda: self._threads == 0, timeout)


class _Broken:
    """Stands in for a handler whose creation failed: every update fails with that error."""

    def __init__(self, error: Exception):
        self.error = error

    def on_update(self, kind: str, payload: dict) -> None:
        raise RuntimeError(f"the bot's handler could not be created: {self.error}")

    def on_close(self, reason: str) -> None:
        pass


class Delegate(threading.Thread):
    """A thread serving one chat at a time: open a handler, feed it updates, close it."""

    def __init__(self, delegator: Delegator, chat_id: int):
        super().__init__(name=f"chat-{chat_id}", daemon=True)
        self.delegator = delegator
        self.store = delegator.store
        self.chat_id = chat_id
        self.poked = False
        self.cond = threading.Condition(delegator._lock)
        self._current: InboxRow | None = None
        self._conversation: Conversation | None = None
        self._before = ""
        self._moved_on = False
        self._answered: set[str] = set()
        self._handler: ChatHandler | None = None
        self._bot: Bot | None = None
        self.migrated_to: int | None = None

    def poke(self) -> None:
        """Called under the delegator's lock: updates for this chat were committed."""
        self.poked = True
        self.cond.notify()

    def run(self) -> None:
        chat_id: int | None = self.chat_id
        failures = 0
        try:
            while chat_id is not None:
                self.chat_id = chat_id
                self.name = f"chat-{chat_id}"
                try:
                    self._serve()
                    failures = 0
                except ShuttingDown:
                    raise
                except Exception:  # the store failed (disk full, I/O error), not a handler
                    failures += 1
                    pause = min(2.0 ** failures, MAX_FAILURE_PAUSE)
                    log.exception("delegate for chat %s failed; its updates stay in the inbox "
                                  "and are tried again in %.0f s", self.chat_id, pause)
                    # keep the chat: a delegate that just left would strand its pending rows
                    if self._wait_for_work(pause, may_yield=False) == "stop":
                        raise ShuttingDown() from None
                    continue
                chat_id = self.delegator._next_chat(self)
        except ShuttingDown:
            self._leave_unfinished()
        finally:
            self.delegator._thread_gone()

    def _leave_unfinished(self) -> None:
        with self.delegator._lock:
            if self.delegator._live.get(self.chat_id) is self:
                del self.delegator._live[self.chat_id]

    # -- serving one chat -----------------------------------------------------------------

    def _serve(self) -> None:
        self._conversation = self.store.load_conversation(self.chat_id)
        handler = self._open_handler()
        while True:
            rows = self.store.pending(self.chat_id)
            if not rows:
                reason = self._wait_for_work(self.delegator.idle_timeout, may_yield=True)
                if reason is None:
                    continue
                if reason != "stop":
                    self._close(handler, reason)
                return
            for row in rows:
                if self._bot is not self.delegator.bot:  # reloaded (SIGHUP): the new bot answers
                    self._close(handler, "reload")
                    handler = self._open_handler()
                if self.delegator.stopping or not self._handle(handler, row):
                    return
                if self._moved_on:
                    break

    def _open_handler(self) -> ChatHandler:
        """The bot's handler for this chat; if it cannot be made, one that fails each update."""
        self._bot = bot = self.delegator.bot
        try:
            handler = bot.create_handler(self, self._conversation, self.delegator.sender)
        except Exception as exc:
            log.exception("chat %s: the bot's handler could not be created", self.chat_id)
            handler = _Broken(exc)
        self._handler = handler
        return handler

    def _handle(self, handler: ChatHandler, row: InboxRow) -> bool:
        """Run the handler on one update and commit; False when the daemon is stopping."""
        self._begin(row)
        try:
            handler.on_update(row.kind, payload_of(row))
            self._check_saveable()
        except ShuttingDown:
            self._rollback()
            return False
        except WaitTooLong as exc:  # telepot style: a handler that stops waiting just ends
            log.info("chat %s: the handler stopped waiting (%s)", self.chat_id, exc)
            self._rollback()
        except Exception as exc:  # one bad update must not stop the chat
            self._rollback()
            self.delegator.stats["failed"] += 1
            log.error("chat %s: handler failed on update %s: %s", self.chat_id,
                      self._current.update_id, exc, exc_info=not isinstance(exc, TelegramError))
            self._tell_user_it_failed(self._current)
        self._answer_callback_if_needed(self._current)
        self._commit()
        self.delegator.stats["handled"] += 1
        log.debug("chat %s: update %s (%s) done", self.chat_id, row.update_id, row.kind)
        return True

    def _begin(self, row: InboxRow) -> None:
        self._current = row
        self._moved_on = False
        self._before = self._conversation.snapshot()

    def _check_saveable(self) -> None:
        """vars must be JSON: a set or an object there fails this update, not the delegate."""
        try:
            self._conversation.snapshot()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"self.vars can hold only JSON values: {exc}") from None

    def _commit(self) -> None:
        """The update's effect and its done mark, in one transaction."""
        conversation = self._conversation
        after = conversation.snapshot()
        self.store.finish(self._current.update_id, conversation if after != self._before else None)
        self._before = after
        if self.migrated_to is not None:
            self.store.copy_chat(self.chat_id, self.migrated_to)
            self.migrated_to = None

    def _rollback(self) -> None:
        self._conversation.restore(self._before)

    def _close(self, handler: ChatHandler, reason: str) -> None:
        try:
            handler.on_close(reason)
        except Exception:
            log.exception("chat %s: on_close failed", self.chat_id)

    def _wait_for_work(self, timeout: float | None, may_yield: bool) -> str | None:
        """Block until an update is announced (None), or return why not: idle/evicted/stop."""
        delegator = self.delegator
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while True:
                if self.poked:
                    self.poked = False
                    return None
                if delegator.stopping:
                    return "stop"
                if may_yield and delegator._waiting:
                    return "evicted"
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return "idle"
                if may_yield:  # only a delegate that can hand its slot over counts as idle
                    delegator._idle.add(self)
                try:
                    self.cond.wait(remaining)
                finally:
                    delegator._idle.discard(self)

    # -- listener.wait() ------------------------------------------------------------------

    def next_payload(self, timeout: float | None) -> dict:
        """Commit the current update, then return the chat's next one (telepot's listener.wait).

        Hook notifications and schedule ticks that arrive meanwhile are handled on the way
        (sent and committed); only Telegram's updates are handed to the waiting handler.
        """
        self._check_saveable()
        self._commit()
        self.delegator.stats["handled"] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = self.store.pending(self.chat_id, limit=1)
            if rows and rows[0].kind in LOCAL_KINDS:
                self._handle_local(rows[0])
                continue
            if rows:
                self._begin(rows[0])
                self._moved_on = True
                return payload_of(rows[0])
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            reason = self._wait_for_work(remaining, may_yield=False)
            if reason == "stop":
                raise ShuttingDown()
            if reason == "idle":
                raise WaitTooLong(timeout or 0.0)

    def _handle_local(self, row: InboxRow) -> None:
        self._begin(row)
        try:
            self._handler.on_update(row.kind, payload_of(row))
        except ShuttingDown:
            self._rollback()
            raise
        except Exception as exc:
            self._rollback()
            log.error("chat %s: %s %s failed: %s", self.chat_id, row.kind, row.update_id, exc)
        self._commit()
        self._moved_on = True

    # -- replies the delegate owes the user ---------------------------------------------

    def callback_answered(self, query_id: str | None) -> None:
        if query_id:
            self._answered.add(query_id)

    def _answer_callback_if_needed(self, row: InboxRow) -> None:
        """Stop the client's spinner even when the handler did not answer the button press."""
        if row.kind != "callback_query":
            return
        query_id = payload_of(row).get("id")
        if query_id and query_id not in self._answered:
            try:  # best effort: the update itself is done either way
                self.delegator.sender.call("answerCallbackQuery", {"callback_query_id": query_id})
            except (TelegramError, ShuttingDown) as exc:
                log.info("chat %s: could not answer callback query: %s", self.chat_id, exc)
        self._answered.clear()

    def _tell_user_it_failed(self, row: InboxRow) -> None:
        text = self.delegator.bot.error_text
        if not text or row.kind not in ("message", "callback_query"):
            return
        try:
            self.delegator.sender.call("sendMessage", {"chat_id": self.chat_id, "text": text})
        except ShuttingDown:
            log.info("chat %s: stopping before the error text went out", self.chat_id)
        except Exception as exc:
            log.error("chat %s: could not send the error text: %s", self.chat_id, exc)
