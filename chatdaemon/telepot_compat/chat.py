"""A telepot program inside chatdaemon's delegates: one native ChatHandler per chat.

`TelepotChat` is the bot's handler class. The delegate gives it the chat's updates one at
a time, from the durable inbox; it passes each to the program — the message_loop function,
or the handlers its DelegatorBot patterns make — and the update is done when that
returns. The telepot handlers of a chat live in its TelepotChat: made on their seed's
first message (`open`), closed by `close()`, by an error, or when the delegate goes idle
(`on__idle`, then `on_close(IdleTerminate)`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, ClassVar

from ..chathandler import ChatHandler
from ..errors import ShuttingDown
from ..errors import WaitTooLong as NativeWaitTooLong
from . import exception
from .delegate import OpenFactory
from .telepot import DelegatorBot, flavor

log = logging.getLogger(__name__)

# The update kinds a telepot program sees; hook notifications and schedule ticks keep
# chatdaemon's own handling.
TELEPOT_KINDS = frozenset({"message", "edited_message", "channel_post", "edited_channel_post",
                           "callback_query"})
NORMAL_ENDS = (exception.StopListening, exception.IdleTerminate)
# Updates that belong to no chat: the daemon stores them and marks them done unhandled, so
# a program that asks for them is refused at start-up rather than left waiting in silence.
CHATLESS = ("inline_query", "chosen_inline_result", "shipping_query", "pre_checkout_query")


def refuse_chatless(kinds: Any, where: str) -> None:
    """Unsupported naming `where` when `kinds` (flavors, update types) holds a chat-less one."""
    asked = [kind for kind in CHATLESS if kind in kinds]
    if asked:
        raise exception.Unsupported(
            f"{where}: {', '.join(asked)} belong to no chat, and `chatdaemon telepot` delivers "
            "only chat messages and button presses; remove them from the program")


class SeedTuple(tuple):
    """telepot's (bot, initial_msg, seed), carrying the chat the handler serves."""

    context: Any = None


def route_for(bot: Any, callback: Any) -> Any:
    """Where the program's updates go: its DelegatorBot's patterns, or a function/table."""
    if callback is None and isinstance(bot, DelegatorBot):
        return DelegationRoute(bot)
    if callback is None:
        callback = getattr(bot, "handle", None)
        if callback is None:
            raise exception.Unsupported("message_loop() needs a handler: message_loop(handle)")
    if not (callable(callback) or isinstance(callback, dict)):
        raise TypeError("the message loop's handler must be a function or a {flavor: function} dict")
    if isinstance(callback, dict):
        refuse_chatless(callback, "the message loop's handler table")
    return FunctionRoute(callback)


class FunctionRoute:
    """message_loop(handle): every update goes to one function, or one per flavor."""

    idle_timeout = None

    def __init__(self, callback: Any):
        self.callback = callback

    def open_chat(self, chat: TelepotChat) -> FunctionRoute:
        return self  # a function keeps nothing per chat

    def deliver(self, msg: dict) -> None:
        handle = self.callback
        if isinstance(handle, dict):
            handle = handle.get(flavor(msg))
            if handle is None:
                log.info("no handler for %s in the message loop's table; ignored", flavor(msg))
                return
        handle(msg)

    def close(self, seconds: float) -> None:
        pass


class DelegationRoute:
    """DelegatorBot(TOKEN, patterns): each chat gets its own set of live handlers."""

    def __init__(self, bot: DelegatorBot):
        self.bot = bot
        self.patterns = bot.delegation_patterns
        self.idle_timeout = bot.idle_timeout

    def open_chat(self, chat: TelepotChat) -> Delegation:
        return Delegation(self, chat)


class Delegation:
    """One chat's telepot handlers, by (pattern, seed)."""

    def __init__(self, route: DelegationRoute, chat: TelepotChat):
        self.route = route
        self.chat = chat
        self.jobs: dict[tuple, Any] = {}
        self.busy: set[tuple] = set()  # handlers in the middle of a message (listener.wait)

    def deliver(self, msg: dict) -> None:
        """Every pattern whose seeder seeds `msg` gets it; the first failure is raised after."""
        failures: list[Exception] = []
        for index, (seeder, factory) in enumerate(self.route.patterns):
            seed = self._seed(seeder, msg)
            if seed is None:
                continue
            try:
                self._deliver_seeded(index, factory, msg, seed)
            except ShuttingDown:
                raise
            except Exception as exc:  # telepot's delegates were independent threads
                failures.append(exc)
        if failures:
            raise failures[0]

    def _seed(self, seeder: Any, msg: dict) -> Any:
        try:
            return seeder(msg)
        except Exception:
            log.warning("chat %s: a seeder failed; that pattern skips this update",
                        self.chat.chat_id, exc_info=True)
            return None

    def _deliver_seeded(self, index: int, factory: Any, msg: dict, seed: Any) -> None:
        if not _hashable(seed):  # telepot: an unhashable seed makes a handler of its own
            self._run_once(factory, msg, seed)
            return
        key = (index, seed)
        if key in self.busy:
            log.info("chat %s: a handler waiting in listener.wait() did not capture a "
                     "message; dropped as telepot does", self.chat.chat_id)
            return
        self.busy.add(key)
        try:
            self._deliver_to(key, factory, msg, seed)
        finally:
            self.busy.discard(key)

    def _deliver_to(self, key: tuple, factory: Any, msg: dict, seed: Any) -> None:
        job = self.jobs.get(key)
        try:
            if job is not None:
                alive = job.deliver(msg)
            else:
                job = self.jobs[key] = self._make_job(factory, msg, seed)
                alive = job.start(msg, seed)
        except BaseException:
            # a handler that failed was closed (on_close ran): the seed's next message
            # opens a new one, as telepot's delegate thread ended with the error
            self.jobs.pop(key, None)
            raise
        if not alive:
            self.jobs.pop(key, None)

    def _run_once(self, factory: Any, msg: dict, seed: Any) -> None:
        job = self._make_job(factory, msg, seed)
        if job.start(msg, seed):
            job.idle(self.route.idle_timeout or 0.0)

    def _make_job(self, factory: Any, msg: dict, seed: Any) -> Any:
        seed_tuple = SeedTuple((self.route.bot, msg, seed))
        seed_tuple.context = self.chat
        if isinstance(factory, OpenFactory):
            return OpenJob(factory(seed_tuple))
        made = factory(seed_tuple)
        if isinstance(made, threading.Thread):  # a custom thread: its work runs in the delegate
            return RunJob(made.run)
        return RunJob(made)

    def close(self, seconds: float) -> None:
        jobs, self.jobs = list(self.jobs.values()), {}
        for job in jobs:
            job.idle(seconds)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class OpenJob:
    """A create_open handler: open(), on_message() per message, on_close() at the end."""

    def __init__(self, handler: Any):
        self.handler = handler

    def start(self, msg: dict, seed: Any) -> bool:
        def first() -> None:
            if not self.handler.open(msg, seed):
                self.handler.on_message(msg)
        return self._guard(first)

    def deliver(self, msg: dict) -> bool:
        return self._guard(lambda: self.handler.on_message(msg))

    def idle(self, seconds: float) -> None:
        """The delegate is going idle: telepot's idle event, then on_close."""
        try:
            self.handler.on_message({"_idle": {"source": "chatdaemon", "seconds": seconds}})
            ending: BaseException = exception.IdleTerminate(seconds)
        except NORMAL_ENDS as exc:
            ending = exc
        except ShuttingDown:
            raise
        except Exception as exc:
            log.exception("the idle handler of %s failed", type(self.handler).__name__)
            ending = exc
        self._close(ending)

    def _guard(self, step: Any) -> bool:
        """Run one step; False when the handler ended (it is closed, and gone)."""
        try:
            step()
            return True
        except NORMAL_ENDS as exc:
            self._close(exc)
            return False
        except ShuttingDown:
            raise
        except Exception as exc:  # telepot closes a handler that failed; the delegate answers
            self._close(exc)
            raise

    def _close(self, ending: BaseException) -> None:
        try:
            self.handler.on_close(ending)
        except ShuttingDown:
            raise
        except Exception:
            log.exception("on_close of %s failed", type(self.handler).__name__)


class RunJob:
    """Any other factory's callable (create_run, call): run once, reading with listener.wait()."""

    def __init__(self, run: Any):
        self.run = run

    def start(self, msg: dict, seed: Any) -> bool:
        try:
            self.run()
        except (exception.StopListening, NativeWaitTooLong):
            pass
        return False

    def deliver(self, msg: dict) -> bool:
        return self.start(msg, None)

    def idle(self, seconds: float) -> None:
        pass


class TelepotChat(ChatHandler):
    """The native handler of one chat, running the telepot program's code for it."""

    route: ClassVar[Any] = None
    runtime: ClassVar[Any] = None
    ends_on_error = False  # each telepot handler of the chat ends on its own failure (OpenJob)

    def __init__(self, delegate: Any, conversation: Any, sender: Any):
        super().__init__(delegate, conversation, sender)
        self.runtime.use_sender(sender)
        self._program = self.route.open_chat(self)

    def on_update(self, kind: str, payload: dict) -> None:
        if kind not in TELEPOT_KINDS:
            super().on_update(kind, payload)
            return
        with self.runtime.handling(self):
            self._program.deliver(payload)

    def on_close(self, reason: BaseException) -> None:
        """Whatever the reason (idle, evicted, …), this chat's telepot handlers end as after a timeout."""
        seconds = self.route.idle_timeout or 0.0
        with self.runtime.handling(self):
            self._program.close(seconds)

    # -- what the telepot handlers of this chat use ---------------------------------------------

    def next_message(self, listener: Any, timeout: float | None) -> dict:
        """The chat's next message that `listener` captures; others go to their own handlers."""
        while True:
            try:
                msg = self.listener.wait(timeout)
            except NativeWaitTooLong:
                raise exception.WaitTooLong(timeout or 0.0) from None
            if listener.captures(msg):
                return msg
            self._program.deliver(msg)

    def answer_callback(self, params: dict) -> Any:
        return self.sender.call("answerCallbackQuery", **params)


def handler_class(route: Any, runtime: Any) -> type[TelepotChat]:
    """The ChatHandler class the daemon makes for each chat of this program."""
    return type("TelepotChat", (TelepotChat,), {"route": route, "runtime": runtime})
