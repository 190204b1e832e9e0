"""The running daemon: wires store, sender, delegator and poller together and runs them.

Start-up order matters for the guarantees: the database opens (and replays what is
pending) before the first getUpdates, so nothing Telegram re-sends is mistaken for new, and
the token is checked with getMe before anything else talks to Telegram.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .bots import Bot
from .config import Config
from .delegator import STACK_SIZE, Delegator
from .errors import BadToken, ChatdaemonError, NetworkError, RetryAfter, ShuttingDown, TelegramError
from .poller import Poller
from .ratelimit import RateLimiter
from .sender import Sender
from .store import Store
from .telegram import BotAPI

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0


@dataclass
class Events:
    """Callbacks for whoever supervises the daemon (systemd notify, the terminal chat)."""

    ready: Callable[[App], None] = lambda app: None
    tick: Callable[[App], None] = lambda app: None
    stopping: Callable[[App], None] = lambda app: None


@dataclass
class App:
    config: Config
    bot: Bot
    api: BotAPI
    events: Events = field(default_factory=Events)
    delete_webhook: bool = False

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.failure: BaseException | None = None
        self.store: Store | None = None
        self.delegator: Delegator | None = None
        self.poller: Poller | None = None
        self.me: dict = {}

    # -- life cycle -------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> None:
        """Run until stopped (SIGTERM/SIGINT or `stop()`); raise the error that ended polling."""
        if install_signals:
            self._install_signals()
        threading.stack_size(STACK_SIZE)
        self.store = Store(self.config.database)
        try:
            self._start()
            self.events.ready(self)
            self._supervise()
        finally:
            self._shut_down()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self.stop_event.set()

    def _install_signals(self) -> None:
        def on_signal(signum, frame):
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.stop()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def _start(self) -> None:
        config = self.config
        self.me = self._get_me()
        if self.delete_webhook:
            self._call_until_done("deleteWebhook", {"drop_pending_updates": False})
            log.info("webhook removed; pending updates kept")
        sender = Sender(self.api, RateLimiter(config.limits), self.stop_event,
                        on_migrate=self.store.move_chat)
        self.delegator = Delegator(self.store, self.bot, sender,
                                   max_delegates=config.max_delegates,
                                   idle_timeout=config.idle_timeout)
        pending = self.store.pending_chats()
        if pending:
            log.info("replaying pending updates of %d chat(s)", len(pending))
        self.delegator.notify(pending)
        self.poller = Poller(self.api, self.store, self.delegator.notify, self.stop_event,
                             poll_timeout=config.poll_timeout,
                             allowed_updates=config.allowed_updates,
                             conflict_grace=config.conflict_grace)
        threading.Thread(target=self._poll, name="poller", daemon=True).start()
        log.info("@%s is running (handlers: %s, database: %s)",
                 self.me.get("username", "?"), self.bot.directory, self.config.database)

    def _get_me(self) -> dict:
        try:
            return self._call_until_done("getMe", {})
        except TelegramError as exc:
            if exc.status in (401, 404):
                raise BadToken(f"Telegram rejected the bot token ({exc.status} {exc.description})") \
                    from None
            raise

    def _call_until_done(self, method: str, params: dict):
        """A start-up call, retried while the network or Telegram is down (a Pi at boot)."""
        backoff = 1.0
        while True:
            try:
                return self.api.call(method, params)
            except RetryAfter as exc:
                wait = exc.retry_after
            except TelegramError as exc:
                if exc.status < 500:
                    raise
                wait = backoff
            except NetworkError as exc:
                log.warning("%s: %s; retrying in %.0f s", method, exc.reason, backoff)
                wait = backoff
            if self.stop_event.wait(wait):
                raise ShuttingDown()
            backoff = min(backoff * 2, 30.0)

    def _poll(self) -> None:
        try:
            self.poller.run()
        except ShuttingDown:
            pass
        except BaseException as exc:  # handed to the main thread, which exits with its status
            if not isinstance(exc, ChatdaemonError):
                log.exception("the poller failed")
            self.failure = exc
            self.stop()

    def _supervise(self) -> None:
        last_prune = time.monotonic()
        while not self.stop_event.wait(1.0):
            self.events.tick(self)
            if time.monotonic() - last_prune > PRUNE_EVERY:
                last_prune = time.monotonic()
                pruned = self.store.prune()
                if pruned:
                    log.info("pruned %d handled update(s) older than 48 h", pruned)

    def _shut_down(self) -> None:
        self.stop_event.set()
        self.events.stopping(self)
        if self.delegator is not None:
            if not self.delegator.stop(self.config.stop_timeout):
                log.warning("some chats were still busy after %.0f s; their updates will be "
                            "replayed on the next start", self.config.stop_timeout)
        self.store.close()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict:
        """A short live summary for STATUS=, /healthz and the logs."""
        counts = self.delegator.counts() if self.delegator else {}
        poller = self.poller
        return {
            "delegates": counts.get("delegates", 0),
            "waiting_chats": counts.get("waiting_chats", 0),
            "backlog": self.store.backlog() if self.store else 0,
            "last_poll_age": (time.monotonic() - poller.last_poll) if poller and poller.last_poll else None,
            "last_error": poller.last_error if poller else None,
        }
