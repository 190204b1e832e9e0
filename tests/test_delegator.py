"""The delegator in-process: slots, yielding, given-up handlers, migration hand-off, fatal sends."""

from __future__ import annotations

import threading

import pytest
from test_transaction import PythonBot as Bot

from chatdaemon import ChatHandler
from chatdaemon.delegator import Delegator
from chatdaemon.errors import BadToken
from chatdaemon.inbox import to_row
from chatdaemon.store import Store

WAIT = 10.0  # every wait below is bounded by this


class FakeSender:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent: list[tuple[int, str]] = []
        self.token_rejected = False
        self.migrate: dict[int, int] = {}
        self.revoke_after: int | None = None
        self.changed = threading.Condition(self.lock)

    def call(self, method, params=None, *, on_migrate=None, check=None, waiting=None):
        if check is not None:
            check()
        params = dict(params or {})
        with self.lock:
            if self.token_rejected or self.revoke_after == 0:
                self.token_rejected = True
                raise BadToken("Telegram rejected the bot token")
            moved = self.migrate.pop(params.get("chat_id"), None)
        if moved is not None:
            on_migrate(params["chat_id"], moved)
            params["chat_id"] = moved
        with self.lock:
            if self.revoke_after is not None:
                self.revoke_after -= 1
            self.sent.append((params.get("chat_id"), params.get("text")))
            self.changed.notify_all()
        return {"message_id": 1}

    def wait_for(self, predicate, timeout=WAIT) -> bool:
        with self.lock:
            return self.changed.wait_for(lambda: predicate(self.sent), timeout)


class Counter(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["count"] = self.vars.get("count", 0) + 1
        self.sender.sendMessage(f"{msg['text']}:{self.vars['count']}")


def message(update_id, chat_id, text="hi"):
    return to_row({"update_id": update_id, "message": {
        "message_id": update_id, "text": text, "chat": {"id": chat_id, "type": "group"}}})


@pytest.fixture
def store(tmp_path):
    db = Store(str(tmp_path / "d.sqlite3"))
    yield db
    db.close()


@pytest.fixture
def sender():
    return FakeSender()


@pytest.fixture
def delegators():
    made: list[Delegator] = []
    yield made
    for delegator in made:
        delegator.stop(5)


def start(delegators, store, sender, handler_class, **limits) -> Delegator:
    delegator = Delegator(store, Bot(handler_class), sender, **limits)
    delegators.append(delegator)
    return delegator


def test_a_chat_with_a_backlog_yields_its_slot_to_a_waiting_chat(store, sender, delegators):
    store.add_updates([message(i, -1, f"a{i}") for i in range(1, 11)] + [message(100, 5, "b")])
    delegator = start(delegators, store, sender, Counter, max_delegates=1, yield_after=3,
                      yield_seconds=3600)
    delegator.notify([-1, 5])
    assert sender.wait_for(lambda sent: len(sent) == 11)
    texts = [text for _, text in sender.sent]
    assert texts.index("b:1") == 3  # after three of the busy chat's updates, not after ten
    assert [t for t in texts if t.startswith("a")] == [f"a{i}:{i}" for i in range(1, 11)]
    assert store.backlog() == 0


def test_a_busy_chat_yields_after_its_time_when_others_wait(store, sender, delegators):
    now = [0.0]

    class Slow(Counter):
        def on_chat_message(self, msg):
            now[0] += 10.0  # each update takes ten (fake) seconds
            super().on_chat_message(msg)

    store.add_updates([message(i, -1, f"a{i}") for i in range(1, 6)] + [message(100, 5, "b")])
    delegator = start(delegators, store, sender, Slow, max_delegates=1, yield_after=1000,
                      yield_seconds=15, clock=lambda: now[0])
    delegator.notify([-1, 5])
    assert sender.wait_for(lambda sent: len(sent) == 6)
    assert [text for _, text in sender.sent].index("b:1") == 2


class Hangs(ChatHandler):
    """`hang` blocks until released; everything else counts."""

    entered = threading.Semaphore(0)
    release = threading.Event()

    def on_chat_message(self, msg):
        if msg["text"] == "hang":
            Hangs.entered.release()
            Hangs.release.wait(WAIT)
            self.sender.sendMessage("late")  # a given-up thread must never get this out
            return
        self.sender.sendMessage(msg["text"])


def test_a_hung_handler_is_given_up_its_slot_freed_and_after_three_tries_quarantined(
        store, sender, delegators):
    Hangs.entered = threading.Semaphore(0)
    Hangs.release = threading.Event()
    now = [0.0]
    store.add_updates([message(1, 7, "hang"), message(2, 7, "after"), message(3, 8, "other")])
    delegator = start(delegators, store, sender, Hangs, max_delegates=1, update_timeout=60,
                      clock=lambda: now[0])
    delegator.notify([7, 8])
    try:
        for attempt in range(1, 4):
            assert Hangs.entered.acquire(timeout=WAIT)
            assert delegator.abandon_overdue() == 0  # not overdue yet
            now[0] += 61
            assert delegator.abandon_overdue() == 1
            # read by id: after the third try a fresh delegate may already have set it aside
            # and answered "after", so the chat may have nothing pending any more
            with store.reading() as db:
                assert db.execute("SELECT attempts FROM inbox WHERE update_id = 1"
                                  ).fetchone() == (attempt,)
            if attempt == 1:  # the freed slot went to the chat that was waiting
                assert sender.wait_for(lambda sent: (8, "other") in sent)
        # the third given-up try set the update aside: answered, and the chat moved on
        assert sender.wait_for(lambda sent: (7, "after") in sent)
        assert [t for c, t in sender.sent if c == 7] == ["Sorry, that failed.", "after"]
        assert store.quarantined_count() == 1
        assert delegator.counts()["delegates"] <= 1
        assert delegator.stats["abandoned"] == 3
    finally:
        Hangs.release.set()
    assert delegator.stop(WAIT)
    assert all(text != "late" for _, text in sender.sent)


def test_a_migrated_chat_starts_only_after_the_commit_that_copies_its_conversation(
        store, sender, delegators):
    new_chat_answered = threading.Event()

    class MigratingCounter(Counter):
        def on_chat_message(self, msg):
            super().on_chat_message(msg)
            if msg["text"] == "b":
                # the supergroup's first update is in the inbox before this update commits
                store.add_updates([message(3, -1055, "c")])
                delegator.notify([-1055])
                new_chat_answered.wait(1.0)  # bounded: without the hold it is answered now

    store.add_updates([message(1, -55, "a")])
    delegator = start(delegators, store, sender, MigratingCounter, max_delegates=4)
    delegator.notify([-55])
    assert sender.wait_for(lambda sent: len(sent) == 1)
    sender.migrate[-55] = -1055
    original = sender.call

    def call(method, params=None, **options):
        result = original(method, params, **options)
        if params and params.get("chat_id") == -1055 and params.get("text", "").startswith("c"):
            new_chat_answered.set()
        return result

    sender.call = call
    store.add_updates([message(2, -55, "b")])
    delegator.notify([-55])
    assert sender.wait_for(lambda sent: len(sent) == 3)
    assert sender.sent == [(-55, "a:1"), (-1055, "b:2"), (-1055, "c:3")]


def test_a_revoked_token_stops_the_delegator_with_nothing_marked_done(store, sender, delegators):
    fatal: list[BaseException] = []
    got_fatal = threading.Event()
    sender.revoke_after = 0

    def on_fatal(exc):
        fatal.append(exc)
        got_fatal.set()

    store.add_updates([message(i, 10 + i) for i in range(1, 6)])
    delegator = start(delegators, store, sender, Counter, max_delegates=2, on_fatal=on_fatal)
    delegator.notify([10 + i for i in range(1, 6)])
    assert got_fatal.wait(WAIT)
    assert delegator.stop(WAIT)
    assert isinstance(fatal[0], BadToken)
    assert store.backlog() == 5 and sender.sent == []


def test_stats_and_counts_are_consistent_under_many_threads(store, sender, delegators):
    store.add_updates([message(i, i % 40) for i in range(1, 401)])
    delegator = start(delegators, store, sender, Counter, max_delegates=8)
    delegator.notify(range(40))
    assert sender.wait_for(lambda sent: len(sent) == 400)
    assert delegator.stop(WAIT)  # every delegate has counted what it handled
    assert delegator.stats["handled"] == 400
    assert delegator.stats["peak_delegates"] <= 8


def test_a_reload_swaps_bot_and_limits_under_the_lock(store, sender, delegators):
    class Other(Counter):
        def on_chat_message(self, msg):
            self.sender.sendMessage("new bot")

    store.add_updates([message(1, 3)])
    delegator = start(delegators, store, sender, Counter, max_delegates=1)
    delegator.notify([3])
    assert sender.wait_for(lambda sent: len(sent) == 1)
    delegator.swap(Bot(Other), max_delegates=2, idle_timeout=1.0)
    assert delegator.limits.max_delegates == 2 and delegator.limits.update_timeout == 60.0
    store.add_updates([message(2, 3)])
    delegator.notify([3])
    assert sender.wait_for(lambda sent: len(sent) == 2)
    assert sender.sent[-1] == (3, "new bot")
