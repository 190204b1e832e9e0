"""The running daemon: `build_daemon` wires store, sender, delegator and poller; `Daemon.run` runs them.

Start-up order matters for the guarantees, and `build_daemon` keeps it: signals are taken
over first (by `App.run`), so a SIGTERM while the network is still down at boot stops
start-up; the database opens before the first getUpdates, so nothing Telegram re-sends is
mistaken for new; and the token is checked with getMe before anything else talks to
Telegram. What it returns is complete (no part is filled in later); `Daemon.run` replays
what is pending, starts the hook server and the poller, and supervises until stopped.

`App` is the thin front callers use: config, bot and API in, `run()` builds and runs.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import callbacks
from .bots import Bot
from .config import Config
from .delegator import STACK_SIZE, Delegator, shield_from_signals
from .errors import (
    BadAnswer,
    ChatdaemonError,
    ConfigError,
    NetworkError,
    ShuttingDown,
    TelegramError,
)
from .memory import release_freed_memory
from .poller import Poller
from .ratelimit import RateLimiter
from .retry import RetryPolicy
from .sender import Sender
from .signals import EarlySignals, SignalRelay
from .store import Store
from .telegram import BotAPI

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0

BUSY_TICK = 1.0     # seconds between supervising rounds while updates are in flight or before READY
IDLE_TICK = 60.0    # at most this long between rounds when idle and nobody asks for more (STATUS=)


@dataclass
class Events:
    """Callbacks for whoever supervises the daemon (systemd notify, the terminal chat)."""

    ready: Callable[[Daemon], None] = lambda daemon: None
    # start-up is retrying, still alive: called with the StartUp while building, later
    # with the Daemon (both carry start_error and start_wait)
    starting: Callable[[Any], None] = lambda progress: None
    tick: Callable[[Daemon], None] = lambda daemon: None
    stopping: Callable[[Daemon], None] = lambda daemon: None
    tick_every: float | None = None   # how often `tick` must run once ready (a watchdog's cadence)


class Controls:
    """What signals, the poller thread and the delegator act on: stop, wake, reload, failure.

    Made before anything else, so a signal or a fatal error during start-up is never lost.
    """

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self.wake = threading.Event()      # wakes the supervising loop: stop, reload, new work
        self.sleeping_long = False         # the supervising loop waits longer than BUSY_TICK
        self.reload_requested = False
        self.before_reload: list[Callable[[], None]] = []   # run on SIGHUP first (reopen the log)
        self.failure: BaseException | None = None

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def arrived(self) -> None:
        """New rows in the inbox: a loop asleep for long must watch their deadlines now."""
        if self.sleeping_long:
            self.wake.set()

    def fail(self, exc: BaseException) -> None:
        """An error that ends the daemon (a revoked token): the main thread exits with its status."""
        self.failure = exc
        self.stop()


@dataclass
class StartUp:
    """How start-up is going while it retries (no network yet at boot), for Events.starting."""

    start_error: str | None = None
    start_wait: float = 0.0            # how long start-up waits before its next try


@dataclass
class Daemon:
    """A fully wired daemon: every part exists; `run` runs it until stopped."""

    config: Config
    bot: Bot
    api: BotAPI
    store: Store
    sender: Sender
    delegator: Delegator
    poller: Poller
    me: dict
    events: Events
    controls: Controls
    # the sender stops later than the poller: on SIGTERM a reply waiting for its send slot
    # still goes out, and its update commits instead of replaying (and re-sending what that
    # update had already sent) on the next start
    send_stop: threading.Event
    loader: Callable[[], tuple[Config, Bot]] | None = None   # re-reads config and bot on SIGHUP
    start_error: str | None = None     # the last start-up retry's cause, if any
    start_wait: float = 0.0
    hook_server: Any = field(init=False)   # the HookServer, or None when hooks are off

    def __post_init__(self) -> None:
        self.stop_event = self.controls.stop_event
        self._wake = self.controls.wake
        self.hook_server = self._open_hook_server()  # binds now: a taken port fails the build
        self._wire_callbacks(self.bot, self.config)

    # -- life cycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped (SIGTERM/SIGINT or `stop()`); raise the error that ended polling."""
        try:
            self._start()
            self._supervise()   # Events.ready comes from here, once the poller polls
        finally:
            self._shut_down()
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self.controls.stop()

    @property
    def failure(self) -> BaseException | None:
        return self.controls.failure

    @property
    def _reload_requested(self) -> bool:
        return self.controls.reload_requested

    @_reload_requested.setter
    def _reload_requested(self, value: bool) -> None:
        self.controls.reload_requested = value

    def _start(self) -> None:
        """Replay what is pending, then open the side doors and start polling."""
        self.delegator.replay()   # before the first getUpdates
        if self.hook_server is not None:
            self.hook_server.start()
        threading.Thread(target=self._poll, name="poller", daemon=True).start()
        log.info("@%s is running (handlers: %s, database: %s, /healthz: %s)",
                 self.me.get("username", "?"), self.bot.directory, self.config.database,
                 self._healthz_url())

    def _poll(self) -> None:
        shield_from_signals()
        try:
            self.poller.run()
        except ShuttingDown:
            pass
        except BaseException as exc:  # handed to the main thread, which exits with its status
            if not isinstance(exc, ChatdaemonError):
                log.exception("the poller failed")
            self.controls.fail(exc)

    def _open_hook_server(self) -> Any:
        # Several bots may share one machine: with no hooks.port in the config the server
        # listens only for a bot that defines hooks (Config.hook_address).
        address = self.config.hook_address(self.bot.needs_hook_server)
        if address is None:
            if self.bot.needs_hook_server:
                log.warning("the bot defines hooks but the hook server is off (hooks.port: 0)")
            return None
        from .hookserver import HookServer
        try:
            return HookServer(self._hook_door(), address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {address[0]}:{address[1]} for hooks and /healthz: "
                              f"{exc.strerror} ({listen_hint(exc.errno, address[1])})") from None

    def _hook_door(self):
        """All the hook server may do with the daemon (it never sees the Daemon itself)."""
        from .hookserver import HookDoor
        from .pipeline import render_reply
        return HookDoor(find_hook=lambda name: self.bot.hooks.get(name), render=render_reply,
                        env=self.env_values, queue=self.queue_notifications, status=self.status,
                        counters=self._counters,
                        health_limit=lambda: 2 * self.config.poll_timeout + 30,
                        recipients=lambda hook, context: hook.chats(context),
                        find_callback=lambda token: callbacks.find(self.store, token) is not None,
                        deliver_callback=self.deliver_callback)

    def _wire_callbacks(self, bot: Bot, config: Config) -> None:
        """Tell a YAML bot where its conversation.callback_url points (nowhere: server off)."""
        if bot.pipeline is None:
            return
        bot.pipeline.callback_base = None if self.hook_server is None else \
            config.callback_base(bot.needs_hook_server)
        bot.pipeline.callback_expiry = config.callback_expiry
        bot.pipeline.username = self.me.get("username")   # `/start@name` is for this bot

    def _counters(self) -> dict[str, int]:
        handled, sent = self.delegator.stats, self.sender.stats
        return {
            "updates_received_total": self.poller.received,
            "updates_handled_total": handled["handled"],
            "updates_failed_total": handled["failed"],
            "replies_sent_total": sent["sent"],
            "telegram_429_total": sent["throttled_429"],
            "telegram_retries_total": sent["retries"],
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
        self.delegator.notify(chats)
        self.controls.arrived()

    def deliver_callback(self, token: str, data: object) -> bool:
        """Queue a result posted to a callback URL in its chat, durably, and wake the chat;
        False (nothing queued) for an unknown or expired token."""
        found = callbacks.deliver(self.store, token, data)
        if found is None:
            return False
        log.info("chat %s: a result arrived for handler %s's callback", found.chat_id,
                 found.handler)
        self.delegator.notify([found.chat_id])
        self.controls.arrived()
        return True

    def _queue_schedule_ticks(self) -> None:
        chats = self.store.queue_due_ticks(time.time())
        if chats:
            self.delegator.notify(list(dict.fromkeys(chats)))
            self.controls.arrived()

    # -- the supervising loop ----------------------------------------------------------------

    def _supervise(self) -> None:
        """Queue schedule ticks, give up overdue updates, reload, report and prune, waking
        only when one of them has work: every BUSY_TICK while updates are in flight (or
        before the first poll), else at the next due schedule tick, events tick or prune.
        Stop, SIGHUP, the first poll and new updates wake it at once."""
        last_prune = time.monotonic() - PRUNE_EVERY - 1   # the first round prunes: a Pi that
        next_tick = 0.0                                    # restarts daily still prunes
        ready = False
        while not self.stop_event.is_set():
            self._wake.clear()  # before the round: what arrives during it wakes the next one
            now = time.monotonic()
            if not ready and self.poller.polls:
                # READY: getMe answered, the database open, and getUpdates answered (its
                # first call has timeout 0, so on an idle bot this is well within a second).
                ready = True
                self.events.ready(self)
                release_freed_memory()   # start-up's garbage: the bot's files, replayed rows
            self._queue_schedule_ticks()
            self.delegator.abandon_overdue()
            if self._reload_requested:
                self._reload_requested = False
                self._reload()
            busy = self._busy()
            if busy or now >= next_tick:
                self.events.tick(self)
                next_tick = now if busy else now + (self.events.tick_every or IDLE_TICK)
            if now - last_prune > PRUNE_EVERY:
                last_prune = now
                self._prune()
            self._pause(BUSY_TICK if busy else min(next_tick - now, last_prune + PRUNE_EVERY - now,
                                                   self._seconds_to_next_schedule()))

    def _prune(self) -> None:
        """Apply the retention settings; the database stays within its age and size."""
        pruned = self.store.apply_retention(self.config.retention)
        expired = callbacks.prune(self.store)
        if expired:
            log.info("pruned %d expired callback URL(s)", expired)
        if pruned:
            log.info("pruned %d handled update(s) and %d idle conversation(s); %d KiB given "
                     "back", pruned.updates, pruned.conversations, pruned.freed_bytes // 1024)
        if pruned.over_cap_bytes:
            log.warning("the database is %d KiB over retention.max_database_mb and holds nothing "
                        "more it may drop (unhandled updates, conversations, updates of the "
                        "last hour)", pruned.over_cap_bytes // 1024)
        release_freed_memory()

    def _busy(self) -> bool:
        """Updates in flight or waiting (their deadlines need watching), or no poll yet."""
        return self.poller.polls == 0 or self.store.backlog() > 0

    def _seconds_to_next_schedule(self) -> float:
        next_at = self.store.next_tick_at()
        return IDLE_TICK if next_at is None else next_at - time.time()

    def _pause(self, seconds: float) -> None:
        controls = self.controls
        seconds = max(seconds, 0.01)
        controls.sleeping_long = seconds > BUSY_TICK
        try:
            self._wake.wait(seconds)
        finally:
            controls.sleeping_long = False

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
        if not self._hook_server_serves(bot):
            return
        # what the poller, the hook server and the store were built with: a change waits
        # for a restart, and says so (a silently ignored change reads as a broken setting)
        for name in ("database", "api_url", "hook_bind", "hook_port", "poll_timeout",
                     "allowed_updates", "conflict_grace"):
            if getattr(config, name) != getattr(self.config, name):
                log.warning("reload: %s changed; that takes effect only after a restart", name)
                config = config.replace(**{name: getattr(self.config, name)})
        if config.log_level != self.config.log_level:
            logging.getLogger().setLevel(config.log_level.upper())
            log.warning("reload: log level now %s", config.log_level.upper())
        self._wire_callbacks(bot, config)
        self.config, self.bot = config, bot
        self.delegator.swap(bot, **delegate_limits(config))
        self.sender.limiter = self.sender.limiter.with_limits(config.limits)
        log.info("reloaded: %s (open chats switch at their next update)", bot.directory)

    def _hook_server_serves(self, bot: Bot) -> bool:
        """Whether a reloaded bot can run with the hook server as it is (it starts only with
        the daemon); False, after saying why, for one whose callback requests would each
        fail: the running bot stays."""
        if self.hook_server is not None:
            return True
        if bot.definitions.callback_handlers:
            name, where = bot.definitions.callback_handlers[0]
            log.error("reload failed; the running bot stays as it was: %s: handler %s hands "
                      "out conversation.callback_url, but the hook server that takes the "
                      "results is not running (it starts with a bot that needs it): restart "
                      "the daemon instead", where, name)
            return False
        if bot.hooks:
            log.warning("reload: the bot defines hooks but the hook server is not running; "
                        "they take effect after a restart")
        return True

    def _shut_down(self) -> None:
        self.delegator.begin_stop()  # before the stop event, so no delegate picks up more
        self.stop_event.set()
        self.events.stopping(self)
        if self.hook_server is not None:
            self.hook_server.shutdown()
            self.hook_server.server_close()
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
        counts = self.delegator.counts()
        poller = self.poller
        return {
            "delegates": counts.get("delegates", 0),
            "waiting_chats": counts.get("waiting_chats", 0),
            "backlog": self.store.backlog(),
            "last_poll_age": (time.monotonic() - poller.last_poll) if poller.last_poll else None,
            "last_error": poller.last_error,
        }


def listen_hint(number: int | None, port: int) -> str:
    """What to do about a hook server that cannot bind, by the error's errno."""
    if number == errno.EACCES and 0 < port < 1024:
        return "ports below 1024 need root: give hooks.port 1024 or more"
    if number == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address: check hooks.bind"
    if number == errno.EADDRINUSE:
        return "another bot on this machine? give each bot its own hooks.port in its config"
    return "check hooks.bind and hooks.port in the config"


def delegate_limits(config: Config) -> dict:
    """The delegator's settings from the daemon config."""
    return {"max_delegates": config.max_delegates, "idle_timeout": config.idle_timeout,
            "update_timeout": config.update_timeout, "yield_after": config.yield_after,
            "yield_seconds": config.yield_seconds}


# -- building ---------------------------------------------------------------------------------

def build_daemon(config: Config, bot: Bot, api: BotAPI, *, events: Events | None = None,
                 controls: Controls | None = None, delete_webhook: bool = False,
                 loader: Callable[[], tuple[Config, Bot]] | None = None,
                 owner: str | None = None) -> Daemon:
    """Open the database, check the token, wire every part; return a daemon ready to run.

    The order is the guarantees' (see the module docstring). Raises what stops start-up
    (BadToken, ConfigError, ShuttingDown when stopped while retrying, UnusableDatabase, …)
    with the database closed again.
    """
    events = events or Events()
    controls = controls or Controls()
    store = Store(config.database, owner=owner)   # before the first getUpdates
    try:
        progress = StartUp()
        start_call = StartCall(api, config, events, controls, progress)
        me = start_call.get_me()   # before anything else talks to Telegram
        if delete_webhook:
            start_call("deleteWebhook", {"drop_pending_updates": False})
            log.info("webhook removed; pending updates kept")
        send_stop = threading.Event()
        sender = Sender(api, RateLimiter(config.limits), send_stop)
        delegator = Delegator(store, bot, sender, on_fatal=controls.fail, **delegate_limits(config))
        def notify(chat_ids: list[int]) -> None:
            delegator.notify(chat_ids)
            controls.arrived()

        poller = Poller(api, store, notify, controls.stop_event,
                        poll_timeout=config.poll_timeout,
                        allowed_updates=config.allowed_updates,
                        conflict_grace=config.conflict_grace,
                        on_polling=controls.wake.set)
        return Daemon(config, bot, api, store, sender, delegator, poller, me, events, controls,
                      send_stop, loader, progress.start_error, progress.start_wait)
    except BaseException:
        store.close()
        raise


class StartCall:
    """A start-up call, retried while the network or Telegram is down (a Pi at boot).

    The retry policy is the poller's (retry.py): a 401/404 raises BadToken, an answer
    that is no Bot API answer is raised to the caller, anything else is retried.
    """

    def __init__(self, api: BotAPI, config: Config, events: Events, controls: Controls,
                 progress: StartUp):
        self.api = api
        self.config = config
        self.events = events
        self.controls = controls
        self.progress = progress

    def get_me(self) -> dict:
        try:
            me = self("getMe", {})
        except BadAnswer as exc:
            raise ConfigError(f"{self.config.api_url} is not a Bot API: it answered {exc.status}"
                              " without a Bot API answer (check --api-url / api_url)") from None
        return me if isinstance(me, dict) else {}

    def __call__(self, method: str, params: dict) -> Any:
        policy = RetryPolicy()
        while True:
            try:
                return self.api.call(method, params)
            except BadAnswer:
                raise
            except (TelegramError, NetworkError) as exc:
                wait = policy.delay(exc)
                log.warning("%s: %s; retrying in %.0f s", method, exc.detail, wait)
            self.progress.start_error = f"{method}: retrying"
            self.progress.start_wait = wait
            self.events.starting(self.progress)
            if self.controls.stop_event.wait(wait):
                raise ShuttingDown()


# -- the callers' front -----------------------------------------------------------------------

class App:
    """Config, bot and API in; `run` takes the signals, builds the daemon and runs it."""

    def __init__(self, config: Config, bot: Bot, api: BotAPI, events: Events | None = None,
                 delete_webhook: bool = False,
                 loader: Callable[[], tuple[Config, Bot]] | None = None,
                 owner: str | None = None, early: EarlySignals | None = None):
        """`loader` re-reads config and bot on SIGHUP; `owner` is the bot id the database
        must belong to (dbfile.owner_of_token); `early` holds the signals caught while
        config and bot were loading."""
        self.config = config
        self.bot = bot
        self.api = api
        self.events = events or Events()
        self.delete_webhook = delete_webhook
        self.loader = loader
        self.owner = owner
        self.early = early
        self.controls = Controls()
        self.stop_event = self.controls.stop_event
        self.daemon: Daemon | None = None   # the daemon `run` built, once built
        self._failure: BaseException | None = None

    def run(self, install_signals: bool = True) -> None:
        """Run until stopped (SIGTERM/SIGINT or `stop()`); raise the error that ended polling."""
        threading.stack_size(STACK_SIZE)   # before any thread of the daemon starts, signals' too
        if install_signals:
            self._install_signals()
        if self.stop_event.is_set():
            log.info("stopped before it started")
            return
        self.daemon = build_daemon(self.config, self.bot, self.api, events=self.events,
                                   controls=self.controls, delete_webhook=self.delete_webhook,
                                   loader=self.loader, owner=self.owner)
        self.daemon.run()

    def stop(self) -> None:
        self.controls.stop()

    @property
    def failure(self) -> BaseException | None:
        return self._failure or self.controls.failure

    @failure.setter
    def failure(self, exc: BaseException | None) -> None:
        self._failure = exc

    @property
    def store(self) -> Store:
        """The running daemon's store (only once `run` has built it)."""
        if self.daemon is None:
            raise RuntimeError("the daemon is not built yet")
        return self.daemon.store

    def _install_signals(self) -> None:
        controls = self.controls
        def on_stop(signum: int) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            controls.stop()
        def on_hangup() -> None:
            for action in controls.before_reload:
                action()
            controls.reload_requested = True
            controls.wake.set()
        SignalRelay(on_stop, on_hangup).install()
        # what arrived while loading was remembered, not lost and not fatal: act on it now
        if self.early is not None and self.early.stop:
            log.info("a stop signal arrived while starting; stopping")
            controls.stop()
        if self.early is not None and self.early.reload:
            controls.reload_requested = True
