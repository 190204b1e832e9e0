"""The delegator: one delegate thread per chat with pending updates, and no more than the cap.

Routing is by seed (the chat id) through a dict, never by broadcasting an update to every
thread. A delegate handles its chat's inbox rows one at a time in update_id order (each in
an `UpdateTransaction`), exits after an idle timeout (state stays in SQLite), and gives its
slot to a waiting chat as soon as it has nothing to do — or, when other chats wait, after
`yield_after` updates or `yield_seconds` of a standing backlog (its chat queues again
behind them). Chats beyond the cap wait in the durable inbox; only their ids are held here.

The hand-off rule that keeps a message from being stranded: a delegate leaves its chat only
under the delegator's lock, after checking that no update was announced for that chat
since it last looked (or after putting the chat back in the waiting line). An update
announced after that finds no delegate and starts one.

A delegate whose update runs past `update_timeout` is given up: its slot is freed at once,
the update gets one more attempt counted (three and it is quarantined), the chat is served
by a fresh delegate, and the old thread can never commit or send again.

All of the delegator's state changes under its one lock, through its own methods (the
per-update deadline marks, written by each delegate's own thread, excepted: see set_busy).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from .errors import Abandoned, BadToken, ShuttingDown
from .sender import Sender
from .store import Store
from .transaction import Bot, Careful, UpdateTransaction

log = logging.getLogger(__name__)

STACK_SIZE = 512 * 1024  # 256 KiB let a deep template recursion crash the process
MAX_FAILURE_PAUSE = 30.0  # a delegate whose store calls fail retries its chat at most this often
READ_BATCH = 20          # a chat's pending rows read at once
# The signals the daemon acts on (signals.py: stop, reload). Worker threads block them, so the
# kernel hands them to the main thread and never interrupts a worker's blocking call: a recv
# with a kernel timeout (leanhttp.py) restarts that timeout when a signal interrupts it.
WORKER_BLOCKED_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


def shield_from_signals() -> None:
    """Block WORKER_BLOCKED_SIGNALS in the calling thread (a worker's first step)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_BLOCKED_SIGNALS)


@dataclass(frozen=True)
class DelegateLimits:
    max_delegates: int = 64
    idle_timeout: float = 300.0
    update_timeout: float = 60.0   # an update's handler running longer is given up
    yield_after: int = 20          # updates a chat may handle in a row while others wait…
    yield_seconds: float = 5.0     # …or seconds


class Delegator:
    """Starts, feeds and retires delegate threads."""

    def __init__(self, store: Store, bot: Bot, sender: Sender, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_fatal: Callable[[BaseException], None] | None = None, **limits: Any):
        self.store = store
        self.bot = bot
        self.sender = sender
        self.limits = DelegateLimits(**limits)
        self._clock = clock
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self._live: dict[int, Delegate] = {}
        self._waiting: OrderedDict[int, None] = OrderedDict()
        self._held: dict[int, bool] = {}   # chat -> an update was announced while held
        self._idle: set[Delegate] = set()
        self._threads = 0                   # given-up threads no longer count
        self._all_gone = threading.Condition(self._lock)
        self._stopped = threading.Event()
        self.stopping = False
        self.careful: Careful | None = None   # after a crash loop: rows started one at a time
        self._stats = {"handled": 0, "failed": 0, "quarantined": 0, "abandoned": 0,
                       "peak_delegates": 0, "refused_threads": 0}

    # -- called by the poller (after the inbox commit) and the app ---------------------------

    def notify(self, chat_ids: Iterable[int]) -> None:
        """New updates for these chats are in the inbox: wake or start their delegates."""
        with self._lock:
            if self.stopping:
                return
            for chat_id in chat_ids:
                self._route(chat_id)

    def replay(self) -> list[int]:
        """At start-up: count the interrupted attempts, then start the chats with pending rows."""
        suspects = self.store.repeat_suspects()
        interrupted = self.store.count_interrupted()
        if interrupted:
            log.info("%d update(s) were in flight when the daemon last ended; trying them again",
                     interrupted)
        elif suspects:
            # a crash loop: start the suspects one at a time, so only the guilty one is counted
            log.warning("the daemon ended again with %d update(s) pending that were cut short "
                        "before; trying them one at a time", len(suspects))
            self.careful = Careful(suspects, wait=self.limits.update_timeout + 5)
        pending = self.store.pending_chats()
        if pending:
            log.info("replaying pending updates of %d chat(s)", len(pending))
        self.notify(pending)
        return pending

    def swap(self, bot: Bot, **limits: Any) -> None:
        """A reload: open chats switch to `bot` at their next update; new limits apply now."""
        with self._lock:
            self.bot = bot
            self.limits = replace(self.limits, **limits)
            self._fill_free_slots()

    def abandon_overdue(self) -> int:
        """Give up delegates whose update ran past its deadline; return how many."""
        now = self._clock()
        with self._lock:
            timeout = self.limits.update_timeout
            overdue = [d for d in self._live.values()
                       if d.busy_since is not None and now - d.busy_since > timeout]
            for delegate in overdue:
                # from here the thread's commits and sends raise Abandoned (Store.finish's guard)
                delegate.abandoned = True
                del self._live[delegate.chat_id]
                self._idle.discard(delegate)
                self._threads -= 1
                self._held[delegate.chat_id] = True  # served again once its attempt is counted
                self._stats["abandoned"] += 1
        for delegate in overdue:
            log.warning("chat %s: update %s still not done after %.0f s; giving it up and serving "
                        "the chat afresh", delegate.chat_id, delegate.busy_update, timeout)
            self._count_attempt(delegate.busy_update)
        with self._lock:
            self._fill_free_slots()  # chats already waiting go first
            for delegate in overdue:
                self._release(delegate.chat_id)
            self._all_gone.notify_all()
        return len(overdue)

    def _count_attempt(self, update_id: int | None) -> None:
        if update_id is None:
            return
        try:
            self.store.add_attempt(update_id)
        except (sqlite3.Error, ShuttingDown) as exc:
            log.error("could not count the attempt of update %s: %s", update_id, exc)

    # -- routing, under the lock ------------------------------------------------------------

    def _route(self, chat_id: int) -> None:
        if chat_id in self._held:
            self._held[chat_id] = True
            return
        delegate = self._live.get(chat_id)
        if delegate is not None:
            delegate.poke()
        elif self._threads < self.limits.max_delegates:
            self._waiting.pop(chat_id, None)
            self._start(chat_id)
        elif chat_id not in self._waiting:
            self._waiting[chat_id] = None
            self._wake_one_idle()

    def _start(self, chat_id: int) -> bool:
        """Start a delegate for `chat_id`; False when the system refuses a thread (the unit's
        TasksMax, memory): the chat then waits first in line for a slot a running delegate
        frees, or for the next supervising round (abandon_overdue) to try again."""
        delegate = Delegate(self, chat_id, threading.Condition(self._lock))
        self._assign(delegate, chat_id)
        self._threads += 1
        try:
            delegate.start()
        except RuntimeError as exc:   # "can't start new thread"
            # the invariant: a chat in _live has a running thread; this one never ran
            del self._live[chat_id]
            self._threads -= 1
            self._waiting[chat_id] = None
            self._waiting.move_to_end(chat_id, last=False)
            if not self._stats["refused_threads"]:
                log.warning("the system refused a thread for chat %s (%s) with %d delegates "
                            "running; its updates wait in the inbox for a free slot (a lower "
                            "delegates.max, or the unit's TasksMax, settles it)",
                            chat_id, exc, self._threads)
            self._stats["refused_threads"] += 1
            return False
        self._stats["peak_delegates"] = max(self._stats["peak_delegates"], self._threads)
        return True

    def _assign(self, delegate: Delegate, chat_id: int) -> None:
        self._live[chat_id] = delegate
        delegate.chat_id = chat_id
        delegate.served = 0
        delegate.since = self._clock()

    def _wake_one_idle(self) -> None:
        """A chat is waiting for a slot: ask one idle delegate to hand its slot over."""
        if self._idle:
            self._idle.pop().cond.notify()

    def _take_waiting(self) -> int | None:
        """The first waiting chat that may be served now (held chats are routed on release)."""
        while self._waiting and not self.stopping:
            chat_id, _ = self._waiting.popitem(last=False)
            if chat_id in self._held:
                self._held[chat_id] = True
            elif chat_id not in self._live:
                return chat_id
        return None

    def _fill_free_slots(self) -> None:
        while self._threads < self.limits.max_delegates:
            chat_id = self._take_waiting()
            if chat_id is None or not self._start(chat_id):
                return

    def _release(self, chat_id: int) -> None:
        if self._held.pop(chat_id, False) and not self.stopping:
            self._route(chat_id)

    # -- called by delegates ---------------------------------------------------------------

    def hold_chat(self, chat_id: int) -> None:
        """Start no delegate for this chat until `release_chat`: its conversation is on the way."""
        with self._lock:
            if chat_id not in self._live:
                self._held.setdefault(chat_id, False)

    def release_chat(self, chat_id: int) -> None:
        with self._lock:
            self._release(chat_id)

    def set_busy(self, delegate: Delegate, update_id: int | None, busy: bool) -> None:
        """Twice per update, so without the lock: each field is one reference, written only by
        its own thread; `abandon_overdue` reads them under the lock and at worst sees the value
        of a moment ago, and a thread it gives up that had just finished is refused its commit."""
        delegate.busy_update = update_id
        delegate.busy_since = self._clock() if busy else None
        delegate.busy_for = None

    def pause_deadline(self, delegate: Delegate) -> None:
        """Stop the update's deadline, keeping its time so far (as set_busy: own thread only)."""
        if delegate.busy_since is not None:
            delegate.busy_for = self._clock() - delegate.busy_since
            delegate.busy_since = None

    def resume_deadline(self, delegate: Delegate) -> None:
        if delegate.busy_for is not None:
            delegate.busy_since = self._clock() - delegate.busy_for
            delegate.busy_for = None

    def update_done(self, delegate: Delegate) -> bool:
        """Count a handled update; True when the delegate should yield its slot to a waiting chat."""
        with self._lock:
            self._stats["handled"] += 1
            delegate.served += 1
            if not self._waiting or self.stopping:
                return False
            limits = self.limits
            return (delegate.served >= limits.yield_after
                    or self._clock() - delegate.since >= limits.yield_seconds)

    def count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def next_chat(self, delegate: Delegate, requeue: bool) -> int | None:
        """The chat a delegate serves next: its own again if an update arrived, else a waiting one.

        `requeue`: the delegate yields its slot with updates left; its chat joins the back of
        the waiting line before the delegate looks for the next one (nothing is stranded).
        """
        with self._lock:
            delegate.busy_since = None
            if delegate.abandoned:
                return None
            if delegate.poked and not requeue and not self.stopping:
                delegate.poked = False
                return delegate.chat_id
            delegate.poked = False
            if self._live.get(delegate.chat_id) is delegate:
                del self._live[delegate.chat_id]
            if requeue and not self.stopping:
                self._waiting[delegate.chat_id] = None
            chat_id = self._take_waiting()
            if chat_id is not None:
                self._assign(delegate, chat_id)
            return chat_id

    def wait_for_work(self, delegate: Delegate, timeout: float | None, may_yield: bool) -> str | None:
        """Block until an update is announced (None), or return why not: idle/evicted/stop."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            delegate.busy_since = None  # waiting is not handling: no deadline runs
            while True:
                if delegate.poked:
                    delegate.poked = False
                    return None
                if self.stopping:
                    return "stop"
                if may_yield and self._waiting:
                    return "evicted"
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return "idle"
                if may_yield:  # only a delegate that can hand its slot over counts as idle
                    self._idle.add(delegate)
                try:
                    delegate.cond.wait(remaining)
                finally:
                    self._idle.discard(delegate)

    def thread_gone(self, delegate: Delegate) -> None:
        with self._lock:
            if delegate.abandoned:
                return  # its slot was freed when it was given up
            if self._live.get(delegate.chat_id) is delegate:
                del self._live[delegate.chat_id]
            self._threads -= 1
            self._fill_free_slots()
            self._all_gone.notify_all()

    def fail(self, exc: BaseException) -> None:
        """A delegate met an error that must stop the daemon (the token was revoked)."""
        log.error("%s", exc)
        self.begin_stop()
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def pause(self, seconds: float) -> bool:
        """Wait `seconds`; True when the daemon is stopping."""
        return self._stopped.wait(seconds)

    # -- status and stopping --------------------------------------------------------------

    @property
    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    def counts(self) -> dict:
        with self._lock:
            return {"delegates": self._threads, "waiting_chats": len(self._waiting)}

    def begin_stop(self) -> None:
        """Take no more updates: delegates finish what they are doing and exit."""
        with self._lock:
            self.stopping = True
            self._stopped.set()
            self._waiting.clear()
            for delegate in self._live.values():
                delegate.cond.notify()

    def stop(self, timeout: float) -> bool:
        """Stop and let in-flight updates finish; True when every delegate ended in time.

        When they did, nothing was in flight: the store notes a clean stop, so the next
        start counts no interrupted attempts.
        """
        self.begin_stop()
        with self._lock:
            ended = self._all_gone.wait_for(lambda: self._threads == 0, timeout)
        if ended:
            try:
                self.store.note_clean_stop()
            except (sqlite3.Error, ShuttingDown) as exc:
                log.warning("could not note the clean stop: %s", exc)
        return ended


class Delegate(threading.Thread):
    """A thread serving one chat at a time: open a transaction, feed it updates, close it.

    It is the transaction's `Slot`; the delegator's state changes only through its methods.
    """

    def __init__(self, delegator: Delegator, chat_id: int, cond: threading.Condition):
        super().__init__(name=f"chat-{chat_id}", daemon=True)
        self.delegator = delegator
        self.store = delegator.store
        self.chat_id = chat_id
        self.cond = cond
        # the fields below change under the delegator's lock (busy_*: see Delegator.set_busy)
        self.poked = False
        self.abandoned = False
        self.busy_since: float | None = None
        self.busy_update: int | None = None
        self.busy_for: float | None = None   # the update's time so far while its deadline waits
        self.served = 0
        self.since = 0.0

    def poke(self) -> None:
        """Called under the delegator's lock: updates for this chat were committed."""
        self.poked = True
        self.cond.notify()

    def run(self) -> None:
        shield_from_signals()
        chat_id: int | None = self.chat_id
        failures = 0
        try:
            while chat_id is not None:
                self.name = f"chat-{chat_id}"
                try:
                    requeue = self._serve()
                    failures = 0
                except (ShuttingDown, Abandoned, BadToken):
                    raise
                except Exception:  # the store failed (disk full, I/O error), not a handler
                    failures += 1
                    pause = min(2.0 ** failures, MAX_FAILURE_PAUSE)
                    log.exception("delegate for chat %s failed; its updates stay in the inbox "
                                  "and are tried again in %.0f s", self.chat_id, pause)
                    # keep the chat: a delegate that just left would strand its pending rows
                    if self.wait_for_work(pause) == "stop":
                        raise ShuttingDown() from None
                    continue
                chat_id = self.delegator.next_chat(self, requeue)
        except ShuttingDown:
            pass
        except Abandoned:
            log.warning("chat %s: a given-up handler returned at last; what it did was dropped",
                        self.chat_id)
        except BadToken as exc:
            self.delegator.fail(exc)
        finally:
            self.delegator.thread_gone(self)

    # -- serving one chat -----------------------------------------------------------------

    def _serve(self) -> bool:
        """Serve the chat until it is idle, evicted or stopping (False), or yields with updates
        left while other chats wait (True)."""
        delegator = self.delegator
        transaction = self._open()
        look = True   # the inbox may hold rows of the chat this delegate has not read
        while True:
            rows = self.store.pending(self.chat_id, READ_BATCH) if look else []
            if not rows:
                reason = delegator.wait_for_work(self, delegator.limits.idle_timeout, True)
                look = True
                if reason is None:
                    continue
                if reason != "stop":
                    transaction.close(reason)
                return False
            for row in rows:
                if delegator.stopping:
                    return False
                if transaction.bot is not delegator.bot:  # reloaded (SIGHUP): the new bot answers
                    transaction.close("reload")
                    transaction = self._open()
                transaction.handle(row)
                log.debug("chat %s: update %s (%s) done", self.chat_id, row.update_id, row.kind)
                if delegator.update_done(self) and self.store.pending(self.chat_id, limit=1):
                    transaction.close("evicted")  # a standing backlog: others get a turn
                    return True
                if transaction.moved_on:
                    break
            # invariant: a row committed after the read above is announced after it (poke),
            # so wait_for_work returns at once; only a full read (more may wait) or rows the
            # transaction took on its own (moved_on) call for reading again before waiting
            look = len(rows) >= READ_BATCH or transaction.moved_on

    def _open(self) -> UpdateTransaction:
        delegator = self.delegator
        return UpdateTransaction(self.chat_id, self.store, delegator.sender, delegator.bot, self,
                                 sleep=delegator.pause, careful=delegator.careful)

    # -- the transaction's Slot ------------------------------------------------------------

    def handling(self, update_id: int | None) -> None:
        self.delegator.set_busy(self, update_id, True)

    def handled(self) -> None:
        self.delegator.set_busy(self, None, False)

    def pause(self) -> None:
        if threading.current_thread() is self:   # a sender kept and used by another thread
            self.delegator.pause_deadline(self)   # leaves this delegate's deadline alone

    def resume(self) -> None:
        if threading.current_thread() is self:
            self.delegator.resume_deadline(self)

    def wait_for_work(self, timeout: float | None) -> str | None:
        return self.delegator.wait_for_work(self, timeout, may_yield=False)

    def hold_chat(self, chat_id: int) -> None:
        self.delegator.hold_chat(chat_id)

    def release_chat(self, chat_id: int) -> None:
        self.delegator.release_chat(chat_id)

    def count(self, name: str) -> None:
        self.delegator.count(name)

    def wake(self, chat_ids: list[int]) -> None:
        self.delegator.notify(chat_ids)
