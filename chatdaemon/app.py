"""The running daemon: wires store, sender, delegator and poller together and runs them.

Start-up order matters for the guarantees: the database opens (and replays what is
pending) before the first getUpdates, so nothing Telegram re-sends is mistaken for new, and
the token is checked with getMe before anything else talks to Telegram.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from .bots import Bot
from .config import Config
from .delegator import STACK_SIZE, Delegator
from .errors import (
    BadToken,
    ChatdaemonError,
    ConfigError,
    NetworkError,
    RetryAfter,
    ShuttingDown,
    TelegramError,
)
from .poller import Poller
from .ratelimit import RateLimiter
from .sender import Sender
from .signals import EarlySignals
from .store import Store
from .telegram import NOT_JSON, BotAPI

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0
BUSY_TICK = 1.0     # seconds between supervising rounds while updates are in flight or before READY
IDLE_TICK = 60.0    # at most this long between rounds when idle and nobody asks for more (STATUS=)


@dataclass
class Events:
    """Callbacks for whoever supervises the daemon (systemd notify, the terminal chat)."""

    ready: Callable[[App], None] = lambda app: None
    starting: Callable[[App], None] = lambda app: None   # start-up is retrying; still alive
    tick: Callable[[App], None] = lambda app: None
    stopping: Callable[[App], None] = lambda app: None
    tick_every: float | None = None   # how often `tick` must run once ready (a watchdog's cadence)


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
        self.hook_server = None
        self.me: dict = {}
        self.start_error: str | None = None
        self.start_wait = 0.0              # how long start-up waits before its next try
        self._reload_requested = False
        self._attention = threading.Event()  # wakes the supervising loop: stop, reload, new work
        self._sleeping_long = False          # the supervising loop waits for more than BUSY_TICK

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
            self.events.ready(self)
            self._supervise()
        finally:
            self._shut_down()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self.stop_event.set()
        self._attention.set()

    def _install_signals(self) -> None:
        def on_signal(signum, frame):
            log.info("received %s; stopping", signal.Signals(signum).name)
            self.stop()
        def on_hangup(signum, frame):
            self._reload_requested = True
            self._attention.set()
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
        self.sender = sender = Sender(self.api, RateLimiter(config.limits), self.send_stop)
        self.delegator = Delegator(self.store, self.bot, sender, on_fatal=self._fail,
                                   **delegate_limits(config))
        self.delegator.replay()
        self.poller = Poller(self.api, self.store, self._arrived, self.stop_event,
                             poll_timeout=config.poll_timeout,
                             allowed_updates=config.allowed_updates,
                             conflict_grace=config.conflict_grace)
        self._start_hook_server()
        threading.Thread(target=self._poll, name="poller", daemon=True).start()
        log.info("@%s is running (handlers: %s, database: %s, /healthz: %s)",
                 self.me.get("username", "?"), self.bot.directory, self.config.database,
                 self._healthz_url())

    def _get_me(self) -> dict:
        try:
            return self._call_until_done("getMe", {})
        except TelegramError as exc:
            if exc.description == NOT_JSON:
                raise ConfigError(f"{self.config.api_url} is not a Bot API: it answered {exc.status}"
                                  " without a Bot API answer (check --api-url / api_url)") from None
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
            self.start_error = f"{method}: retrying"
            self.start_wait = wait
            self.events.starting(self)
            if self.stop_event.wait(wait):
                raise ShuttingDown()
            backoff = min(backoff * 2, 30.0)

    def _fail(self, exc: BaseException) -> None:
        """An error that ends the daemon (a revoked token): the main thread exits with its status."""
        self.failure = exc
        self.stop()

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
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"

    # -- side doors into the inbox ---------------------------------------------------------

    def env_values(self) -> dict:
        from .httpcall import Trusted
        return {name: Trusted(value) for name, value in self.bot.definitions.env.items()}

    def queue_notifications(self, chat_ids, payload: dict) -> None:
        """Store one notification per chat durably, then wake the chats' delegates."""
        chats = list(chat_ids)
        self.store.add_local([(chat_id, "hook", payload) for chat_id in chats])
        self._arrived(chats)

    def _arrived(self, chat_ids) -> None:
        """New rows in the inbox: wake their chats, and the supervising loop if it sleeps long."""
        self.delegator.notify(chat_ids)
        if self._sleeping_long:
            self._attention.set()  # it watches in-flight updates (and new schedules) closely

    def _queue_schedule_ticks(self) -> None:
        chats = self.store.queue_due_ticks(time.time())
        if chats:
            self.delegator.notify(list(dict.fromkeys(chats)))

    # -- the supervising loop ----------------------------------------------------------------

    def _supervise(self) -> None:
        """Queue schedule ticks, give up overdue updates, reload, report and prune, waking
        only when one of them has work: every BUSY_TICK while updates are in flight (or
        before the first poll), else at the next due schedule tick, events tick or prune.
        Stop, SIGHUP and new updates wake it at once."""
        last_prune = time.monotonic()
        next_tick = 0.0
        ticks = ScheduleClock(self.config.database)
        try:
            while not self.stop_event.is_set():
                self._attention.clear()  # before the round: what arrives during it wakes the next
                now = time.monotonic()
                self._queue_schedule_ticks()
                self.delegator.abandon_overdue()
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                busy = self._busy()
                if busy or now >= next_tick:
                    self.events.tick(self)
                    # the first idle round ticks too: READY=1 goes out the round after the first poll
                    next_tick = now if busy else now + (self.events.tick_every or IDLE_TICK)
                if now - last_prune > PRUNE_EVERY:
                    last_prune = now
                    pruned = self.store.prune()
                    if pruned:
                        log.info("pruned %d handled update(s) older than 48 h", pruned)
                pause = BUSY_TICK if busy else min(next_tick - now, last_prune + PRUNE_EVERY - now,
                                                   ticks.seconds_to_next())
                self._pause(pause)
        finally:
            ticks.close()

    def _busy(self) -> bool:
        """Updates in flight or waiting (their deadlines need watching), or no poll yet."""
        poller = self.poller
        return poller is None or poller.polls == 0 or self.store.backlog() > 0

    def _pause(self, seconds: float) -> None:
        seconds = max(seconds, 0.01)
        self._sleeping_long = seconds > BUSY_TICK
        try:
            self._attention.wait(seconds)
        finally:
            self._sleeping_long = False

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


class ScheduleClock:
    """When the next schedule tick falls due, read on a read-only connection of its own.

    Only the supervising thread uses it. Any failure to read means "soon": the loop then
    checks the schedules every BUSY_TICK, as it would with a tick due.
    """

    def __init__(self, database: str):
        self.database = database
        self._db: sqlite3.Connection | None = None

    def seconds_to_next(self) -> float:
        try:
            if self._db is None:
                uri = f"file:{urllib.parse.quote(os.path.abspath(self.database))}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True)
            # fetchall: the statement ends here, holding no read snapshot (WAL checkpoints)
            [(next_at,)] = self._db.execute("SELECT MIN(next_at) FROM schedules").fetchall()
        except sqlite3.Error:
            return BUSY_TICK
        return IDLE_TICK if next_at is None else next_at - time.time()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def delegate_limits(config: Config) -> dict:
    """The delegator's settings from the daemon config."""
    return {"max_delegates": config.max_delegates, "idle_timeout": config.idle_timeout,
            "update_timeout": config.update_timeout, "yield_after": config.yield_after,
            "yield_seconds": config.yield_seconds}
