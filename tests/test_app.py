"""The daemon's builder and front in-process: start order, failures that leave nothing open.

A scripted Bot API stands in for Telegram and records every call; the database is a real
SQLite file. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from chatdaemon.app import App, Controls, Daemon, Events, StartUp, build_daemon
from chatdaemon.bots import load_bot
from chatdaemon.config import Config
from chatdaemon.delegator import Delegator
from chatdaemon.errors import BadToken, ConfigError, NetworkError, ShuttingDown, TelegramError
from chatdaemon.inbox import to_row
from chatdaemon.poller import Poller
from chatdaemon.sender import Sender
from chatdaemon.store import Store

HANDLERS = Path(__file__).resolve().parent.parent / "handlers" / "counter"
WAIT = 10.0
ME = {"id": 1, "is_bot": True, "username": "testbot"}


class RecordingAPI:
    """Answers getMe (or what `me` scripts), an empty getUpdates, any send; records the order."""

    def __init__(self, database: Path, *me_answers):
        self.database = database
        self.me_answers = list(me_answers)
        self.calls: list[str] = []
        self.database_at_first_call: bool | None = None
        self.polled = threading.Event()
        self.sent = threading.Event()
        self._lock = threading.Lock()

    def record(self, name: str) -> None:
        with self._lock:
            if self.database_at_first_call is None:
                self.database_at_first_call = self.database.exists()
            self.calls.append(name)

    def call(self, method, params=None, timeout=None):
        self.record(method)
        if method == "getMe":
            answer = self.me_answers.pop(0) if self.me_answers else ME
            if isinstance(answer, BaseException):
                raise answer
            return answer
        if method == "getUpdates":
            self.polled.set()
            # a long poll that finds nothing: wait a little, as Telegram would (bounded)
            threading.Event().wait(min(float((params or {}).get("timeout", 0)), 0.05))
            return []
        if method == "sendMessage":
            self.sent.set()
        return {"message_id": len(self.calls), "chat": {"id": (params or {}).get("chat_id")}}


@pytest.fixture
def config(tmp_path) -> Config:
    return Config(database=str(tmp_path / "bot.sqlite3"), handlers=str(HANDLERS), hook_port=0,
                  poll_timeout=1, stop_timeout=5.0)


@pytest.fixture
def bot():
    return load_bot(str(HANDLERS))


def database_is_free(path: str) -> bool:
    """Another Store can open it: the builder closed and unlocked it."""
    Store(path).close()
    return True


def test_the_builder_opens_the_database_then_checks_the_token_and_wires_every_part(config, bot):
    api = RecordingAPI(Path(config.database))
    daemon = build_daemon(config, bot, api, delete_webhook=True)
    try:
        assert api.database_at_first_call is True     # the database before any Telegram call
        assert api.calls == ["getMe", "deleteWebhook"]  # getMe first; no getUpdates while building
        assert isinstance(daemon, Daemon) and daemon.me == ME
        assert isinstance(daemon.store, Store) and isinstance(daemon.sender, Sender)
        assert isinstance(daemon.delegator, Delegator) and isinstance(daemon.poller, Poller)
        assert daemon.hook_server is None              # hooks.port 0: off, by config
        assert daemon.delegator.store is daemon.store and daemon.delegator.sender is daemon.sender
    finally:
        daemon.store.close()


def test_a_bad_token_stops_the_build_and_leaves_the_database_closed(config, bot):
    api = RecordingAPI(Path(config.database), TelegramError("getMe", 401, "Unauthorized"))
    with pytest.raises(BadToken):
        build_daemon(config, bot, api)
    assert api.calls == ["getMe"]
    assert database_is_free(config.database)


def test_a_stop_while_start_up_retries_ends_the_build_at_once(config, bot):
    """Signals are taken over before the build: a stop during getMe's retries is not lost."""
    controls = Controls()
    seen: list[StartUp] = []

    def starting(progress):
        seen.append(progress)
        controls.stop()   # what SIGTERM does

    api = RecordingAPI(Path(config.database), NetworkError("getMe", "connection refused"))
    with pytest.raises(ShuttingDown):
        build_daemon(config, bot, api, controls=controls, events=Events(starting=starting))
    assert [(p.start_error, p.start_wait) for p in seen] == [("getMe: retrying", 1.0)]
    assert api.calls == ["getMe"]
    assert database_is_free(config.database)


def test_a_taken_hook_port_fails_the_build_before_anything_runs(config, bot):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = RecordingAPI(Path(config.database))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            build_daemon(config.replace(hook_port=port), bot, api)
    assert "getUpdates" not in api.calls
    assert database_is_free(config.database)


def test_run_replays_what_is_pending_before_the_first_get_updates(config, bot):
    store = Store(config.database)
    store.add_updates([to_row({"update_id": 7, "message": {
        "message_id": 1, "date": 0, "chat": {"id": 5, "type": "private"}, "text": "hi"}})])
    store.close()
    api = RecordingAPI(Path(config.database))
    daemon = build_daemon(config, bot, api)
    replay = daemon.delegator.replay

    def recorded_replay():
        api.record("replay")
        return replay()

    daemon.delegator.replay = recorded_replay
    runner = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    runner.start()
    try:
        assert api.polled.wait(WAIT) and api.sent.wait(WAIT)
    finally:
        daemon.stop()
        runner.join(WAIT)
    assert not runner.is_alive()
    assert api.calls.index("replay") < api.calls.index("getUpdates")
    assert api.calls[0] == "getMe"
    assert "sendMessage" in api.calls          # the pending update was answered
    assert database_is_free(config.database)   # run closed the store on its way out


def test_the_front_is_ready_with_a_built_daemon_and_stops_cleanly(config, bot):
    ready: list[Daemon] = []
    settled = threading.Event()

    def on_ready(daemon):
        ready.append(daemon)
        settled.set()

    api = RecordingAPI(Path(config.database))
    app = App(config, bot, api, Events(ready=on_ready))
    runner = threading.Thread(target=app.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()
    try:
        assert settled.wait(WAIT)
        assert ready == [app.daemon] and app.store is app.daemon.store
        assert app.daemon.sender is not None and app.failure is None
    finally:
        app.stop()
        runner.join(WAIT)
    assert not runner.is_alive()
    with pytest.raises(ShuttingDown):
        app.store.backlog()   # closed on the way out


def test_the_front_stopped_before_it_runs_builds_nothing(config, bot):
    api = RecordingAPI(Path(config.database))
    app = App(config, bot, api)
    app.stop()
    app.run(install_signals=False)
    assert api.calls == [] and app.daemon is None
    assert not os.path.exists(config.database)
    with pytest.raises(RuntimeError, match="not built"):
        app.store.backlog()


def test_retention_runs_at_start_and_again_every_prune_period(config, bot, monkeypatch):
    """A Pi that restarts daily must still prune: the first round of the loop prunes, and
    then every PRUNE_EVERY (an hour; shortened here) while the daemon runs."""
    from chatdaemon import app as app_module
    monkeypatch.setattr(app_module, "PRUNE_EVERY", 0.2)
    api = RecordingAPI(Path(config.database))
    daemon = build_daemon(config, bot, api)
    rounds: list[float] = []
    three = threading.Event()
    prune = daemon._prune

    def counted_prune():
        rounds.append(time.monotonic())
        prune()
        if len(rounds) >= 3:
            three.set()

    daemon._prune = counted_prune
    runner = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    began = time.monotonic()
    runner.start()
    try:
        assert three.wait(WAIT), rounds
    finally:
        daemon.stop()
        runner.join(WAIT)
    assert rounds[0] - began < 1.0                                    # at start, not after an hour
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(rounds))   # then once a period
