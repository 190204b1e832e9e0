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
from typing import TYPE_CHECKING

from .bots import Bot
from .config import Config
from .delegator import STACK_SIZE, Delegator
from .errors import (
    BadAnswer,
    ChatdaemonError,
    ConfigError,
    NetworkError,
    ShuttingDown,
    TelegramError,
)
from .poller import Poller
from .ratelimit import RateLimiter
from .retry import RetryPolicy
from .sender import Sender
from .signals import EarlySignals
from .store import Store
from .telegram import BotAPI

if TYPE_CHECKING:
    from .hookserver import HookServer

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0


@dataclass
class Events:
    """Callbacks for whoever supervises the daemon (systemd notify, the terminal chat)."""

    ready: Callable[[App], None] = lambda app: None
    starting: Callable[[App], None] = lambda app: None   # start-up is retrying; still alive
    tick: Callable[[App], None] = lambda app: None
    stopping: Callable[[App], None] = lambda app: None


@dataclass
class App:
    config: Config
    bot: Bot
    api: BotAPI
    events: Events = field(default_factory=Events)
    delete_webhook: bool = False
    loader: Callable[[], tuple[Config, Bot]] | None = None   # re-reads config and bot on SIGHUP
    owner: str | None = None   # the bot id the database must belong to (dbfile.owner_of_token)
    early: EarlySignals | None = None    # signals caught while config and bot were loading

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.send_stop = threading.Event()
        self.failure: BaseException | None = None
        self.store: Store | None = None
        self.delegator: Delegator | None = None
        self.poller: Poller | None = None
        self.sender: Sender | None = None
        self.hook_server: HookServer | None = None
        self.me: dict = {}
        self.start_error: str | None = None
        self.start_wait = 0.0              # how long start-up waits before its next try
        self._reload_requested = False
        self._wake = threading.Event()     # cuts the supervising loop's 1 s wait short

    # -- life cycle -------------------------------------------------------------------------

    def run(self, install_signals: bool = True) -> None:
        """Run until stopped (SIGTERM/SIGINT or `stop()`); raise the error that ended polling."""
        if install_signals:
            self._install_signals()
        if self.stop_event.is_set():
            log.info("stopped before it started")
            return
        threading.stack_size(STACK_SIZE)
        self.store = Store(self.config.database, owner=self.owner)
        try:
            self._start()
            self._supervise()   # Events.ready comes from here, once the poller polls
        finally:
            self._shut_down()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def _install_signals(self) -> None:
        def on_signal(signum, frame):
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.stop()
        def on_hangup(signum, frame):
            self._reload_requested = True
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
        # what arrived while loading was remembered, not lost and not fatal: act on it now
        if self.early is not None and self.early.stop:
            log.info("a stop signal arrived while starting; stopping")
            self.stop()
        if self.early is not None and self.early.reload:
            self._reload_requested = True

    def _start(self) -> None:
        config = self.config
        self.me = self._get_me()
        if self.delete_webhook:
            self._call_until_done("deleteWebhook", {"drop_pending_updates": False})
            log.info("webhook removed; pending updates kept")
        # The sender stops later than the poller: on SIGTERM a reply waiting for its send
        # slot still goes out, and its update commits instead of replaying (and re-sending
        # what that update had already sent) on the next start.
        store = self.store
        assert store is not None   # run() opens the store before it starts anything
        self.sender = sender = Sender(self.api, RateLimiter(config.limits), self.send_stop)
        self.delegator = Delegator(store, self.bot, sender, on_fatal=self._fail,
                                   **delegate_limits(config))
        self.delegator.replay()
        self.poller = Poller(self.api, store, self.delegator.notify, self.stop_event,
                             poll_timeout=config.poll_timeout,
                             allowed_updates=config.allowed_updates,
                             conflict_grace=config.conflict_grace,
                             on_polling=self._wake.set)
        self._start_hook_server()
        threading.Thread(target=self._poll, name="poller", daemon=True).start()
        log.info("@%s is running (handlers: %s, database: %s, /healthz: %s)",
                 self.me.get("username", "?"), self.bot.directory, self.config.database,
                 self._healthz_url())

    def _get_me(self) -> dict:
        try:
            me = self._call_until_done("getMe", {})
        except BadAnswer as exc:
            raise ConfigError(f"{self.config.api_url} is not a Bot API: it answered {exc.status}"
                              " without a Bot API answer (check --api-url / api_url)") from None
        return me if isinstance(me, dict) else {}

    def _call_until_done(self, method: str, params: dict):
        """A start-up call, retried while the network or Telegram is down (a Pi at boot).

        The retry policy is the poller's (retry.py): a 401/404 raises BadToken, an answer
        that is no Bot API answer is raised to the caller, anything else is retried.
        """
        policy = RetryPolicy()
        while True:
            try:
                return self.api.call(method, params)
            except BadAnswer:
                raise
            except (TelegramError, NetworkError) as exc:
                wait = policy.delay(exc)
                log.warning("%s: %s; retrying in %.0f s", method, exc.detail, wait)
            self.start_error = f"{method}: retrying"
            self.start_wait = wait
            self.events.starting(self)
            if self.stop_event.wait(wait):
                raise ShuttingDown()

    def _fail(self, exc: BaseException) -> None:
        """An error that ends the daemon (a revoked token): the main thread exits with its status."""
        self.failure = exc
        self.stop()

    def _poll(self) -> None:
        poller = self.poller
        assert poller is not None   # _start makes it before it starts this thread
        try:
            poller.run()
        except ShuttingDown:
            pass
        except BaseException as exc:  # handed to the main thread, which exits with its status
            if not isinstance(exc, ChatdaemonError):
                log.exception("the poller failed")
            self.failure = exc
            self.stop()

    def _start_hook_server(self) -> None:
        # Several bots may share one machine: with no hooks.port in the config the server
        # listens only for a bot that defines hooks (Config.hook_address).
        address = self.config.hook_address(bool(self.bot.hooks))
        if address is None:
            if self.bot.hooks:
                log.warning("the bot defines hooks but the hook server is off (hooks.port: 0)")
            return
        from .hookserver import HookServer
        try:
            self.hook_server = HookServer(self._hook_door(), address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]} for hooks and /healthz: "
                              f"{exc.strerror} (another bot on this machine? give each bot its own "
                              "hooks.port in its config)") from None
        self.hook_server.start()

    def _hook_door(self):
        """All the hook server may do with the daemon (it never sees the App itself)."""
        from .hookserver import HookDoor
        from .pipeline import render_reply
        return HookDoor(find_hook=lambda name: self.bot.hooks.get(name), render=render_reply,
                        env=self.env_values, queue=self.queue_notifications, status=self.status,
                        counters=self._counters,
                        health_limit=lambda: 2 * self.config.poll_timeout + 30)

    def _counters(self) -> dict[str, int]:
        poller, delegator, sender = self.poller, self.delegator, self.sender
        return {
            "updates_received_total": poller.received if poller else 0,
            "updates_handled_total": delegator.stats["handled"] if delegator else 0,
            "updates_failed_total": delegator.stats["failed"] if delegator else 0,
            "replies_sent_total": sender.stats["sent"] if sender else 0,
            "telegram_429_total": sender.stats["throttled_429"] if sender else 0,
            "telegram_retries_total": sender.stats["retries"] if sender else 0,
        }

    def _healthz_url(self) -> str:
        if self.hook_server is None:
            return "off (set hooks.port to serve it)"
        host, port = self.hook_server.server_address[:2]
        assert isinstance(host, str)   # an IPv4 or IPv6 socket's address: never bytes
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"

    # -- side doors into the inbox ---------------------------------------------------------

    def env_values(self) -> dict:
        from .httpcall import Trusted
        return {name: Trusted(value) for name, value in self.bot.definitions.env.items()}

    def queue_notifications(self, chat_ids, payload: dict) -> None:
        """Store one notification per chat durably, then wake the chats' delegates."""
        store, delegator = self.store, self.delegator
        # the hook server starts after both exist and stops before the store closes
        assert store is not None and delegator is not None
        chats = list(chat_ids)
        store.add_local([(chat_id, "hook", payload) for chat_id in chats])
        delegator.notify(chats)

    def _queue_schedule_ticks(self, store: Store, delegator: Delegator) -> None:
        chats = store.queue_due_ticks(time.time())
        if chats:
            delegator.notify(list(dict.fromkeys(chats)))

    # -- the supervising loop ----------------------------------------------------------------

    def _supervise(self) -> None:
        store, delegator, poller = self.store, self.delegator, self.poller
        assert store is not None and delegator is not None and poller is not None   # _start's
        last_prune = time.monotonic()
        ready = False
        while not self._sleep_a_tick():
            if not ready and poller.polls:
                # READY: getMe answered, the database open, and getUpdates answered (its
                # first call has timeout 0, so on an idle bot this is well within a second).
                ready = True
                self.events.ready(self)
            self._queue_schedule_ticks(store, delegator)
            delegator.abandon_overdue()
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
            self.events.tick(self)
            if time.monotonic() - last_prune > PRUNE_EVERY:
                last_prune = time.monotonic()
                pruned = store.prune()
                if pruned:
                    log.info("pruned %d handled update(s) older than 48 h", pruned)

    def _sleep_a_tick(self) -> bool:
        """Wait up to 1 s (less when the poller first answers); True when the daemon stops."""
        self._wake.wait(1.0)
        self._wake.clear()
        return self.stop_event.is_set()

    def _reload(self) -> None:
        """SIGHUP: load config and bot again; on any error keep the running bot and say why."""
        if self.loader is None:
            return
        try:
            config, bot = self.loader()
        except ChatdaemonError as exc:
            for error in getattr(exc, "errors", [exc]):
                log.error("reload failed; the running bot stays as it was: %s", error)
            return
        except BaseException as exc:  # whatever a loader raises, a reload never ends the daemon
            log.error("reload failed; the running bot stays as it was: %s: %s",
                      type(exc).__name__, exc, exc_info=True)
            return
        for name in ("database", "api_url", "hook_bind", "hook_port", "poll_timeout"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("reload: %s changed; that takes effect only after a restart", name)
                config = config.replace(**{name: getattr(self.config, name)})
        assert self.delegator is not None and self.sender is not None   # reloads come once running
        self.config, self.bot = config, bot
        self.delegator.swap(bot, **delegate_limits(config))
        self.sender.limiter = self.sender.limiter.with_limits(config.limits)
        log.info("reloaded: %s (open chats switch at their next update)", bot.directory)

    def _shut_down(self) -> None:
        if self.delegator is not None:
            self.delegator.begin_stop()  # before the stop event, so no delegate picks up more
        self.stop_event.set()
        self.events.stopping(self)
        if self.hook_server is not None:
            self.hook_server.shutdown()
            self.hook_server.server_close()
        if self.delegator is not None:
            if not self.delegator.stop(self.config.stop_timeout):
                log.warning("some chats were still busy after %.0f s; their updates will be "
                            "replayed on the next start", self.config.stop_timeout)
                self.send_stop.set()  # sends still waiting give up; their updates roll back
                self.delegator.stop(5.0)
        self.send_stop.set()
        assert self.store is not None   # run() shuts down only a daemon whose store opened
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


def delegate_limits(config: Config) -> dict:
    """The delegator's settings from the daemon config."""
    return {"max_delegates": config.max_delegates, "idle_timeout": config.idle_timeout,
            "update_timeout": config.update_timeout, "yield_after": config.yield_after,
            "yield_seconds": config.yield_seconds}
