"""A delegate at its edges: the update deadline stops while a send waits for Telegram and
runs on from where it stopped (the pace excused only up to PACE_EXCUSED per update); the
update listener.wait() hands out is the handler's own copy; a thread the system refuses
leaves its chat waiting, not lost."""

from __future__ import annotations

import contextlib
import threading
from types import SimpleNamespace

from test_delegator import WAIT, FakeSender, message, start, store

from chatdaemon import ChatHandler
from chatdaemon import transaction as transaction_module
from chatdaemon.inbox import to_row
from chatdaemon.transaction import UpdateTransaction

__all__ = ["store"]   # a fixture, used by name


class WaitingSender(FakeSender):
    """Each send first waits for Telegram (`during_wait` runs inside that wait)."""

    def __init__(self, during_wait):
        super().__init__()
        self.during_wait = during_wait

    def call(self, method, params=None, *, on_migrate=None, check=None, waiting=None):
        with waiting(False) if waiting is not None else contextlib.nullcontext():
            self.during_wait()
        return super().call(method, params, on_migrate=on_migrate, check=check)


def run_one(store, handler_class, during_wait):
    now = [0.0]
    seen: dict[str, int] = {}
    sender = WaitingSender(lambda: during_wait(now, seen, delegator))
    made: list = []
    delegator = start(made, store, sender, handler_class, update_timeout=60,
                      clock=lambda: now[0])
    handler_class.now, handler_class.seen, handler_class.delegator = now, seen, delegator
    store.add_updates([message(1, 7, "go")])
    delegator.notify([7])
    try:
        assert sender.wait_for(lambda sent: len(sent) == 1)
        assert sender.wait_for(lambda sent: store.backlog() == 0)
    finally:
        for made_one in made:
            made_one.stop(5)
    return seen


def spending(before: float, after: float) -> type[ChatHandler]:
    """A handler that spends `before` (fake) seconds of its own, sends, spends `after` more,
    then notes whether the delegator gives it up."""
    class Spends(ChatHandler):
        def on_chat_message(self, msg):
            self.now[0] += before
            self.sender.sendMessage("x")
            self.now[0] += after
            self.seen.setdefault("after", self.delegator.abandon_overdue())
    return Spends


def test_a_wait_for_telegram_is_no_time_of_the_handlers(store):
    def wait_a_long_time(now, seen, delegator):
        now[0] += 1000
        seen.setdefault("during", delegator.abandon_overdue())

    seen = run_one(store, spending(40, 10), wait_a_long_time)   # the send waits 1,000 s
    assert seen == {"during": 0, "after": 0}   # 1,050 s in all, 50 s of its own


def test_the_time_before_the_wait_still_counts_after_it(store):
    # 40 s, a send, then 30 s: 70 s of its own, past the 60 s deadline
    seen = run_one(store, spending(40, 30), lambda now, seen, delegator: None)
    assert seen == {"after": 1}   # its first run: given up at 70 s of its own


class Slot:
    def __init__(self):
        self.calls: list[str] = []

    def pause(self):
        self.calls.append("pause")

    def resume(self):
        self.calls.append("resume")


def test_the_pace_is_excused_up_to_its_allowance_and_failures_always(monkeypatch):
    monkeypatch.setattr(transaction_module, "PACE_EXCUSED", 0.05)
    slot = Slot()
    fake = SimpleNamespace(_paced=0.0, _slot=slot)
    ready = threading.Event()
    with UpdateTransaction.waiting(fake, True):
        ready.wait(0.06)   # 60 ms of pace: the allowance is spent
    with UpdateTransaction.waiting(fake, True):
        pass               # not excused: the deadline runs
    with UpdateTransaction.waiting(fake, False):
        pass               # a retry after an error: always excused
    assert slot.calls == ["pause", "resume", "pause", "resume"]
    assert fake._paced >= 0.05


# -- listener.wait() hands out a copy too -------------------------------------------------------

class QuerySender(FakeSender):
    def __init__(self):
        super().__init__()
        self.answered: list[str] = []

    def call(self, method, params=None, *, on_migrate=None, check=None, waiting=None):
        if method == "answerCallbackQuery":
            with self.lock:
                self.answered.append(params["callback_query_id"])
                self.changed.notify_all()
            return True
        return super().call(method, params, on_migrate=on_migrate, check=check)


class WaitsThenSpoils(ChatHandler):
    def on_chat_message(self, msg):
        query = self.listener.wait(WAIT)
        query["id"] = "not-the-query"
        raise ValueError("failed after changing the press it waited for")


def test_a_press_taken_by_listener_wait_and_changed_is_still_answered(store):
    sender = QuerySender()
    made: list = []
    delegator = start(made, store, sender, WaitsThenSpoils)
    press = {"update_id": 2, "callback_query": {
        "id": "query-2", "data": "yes", "from": {"id": 7, "first_name": "Ann"},
        "message": {"message_id": 1, "chat": {"id": 7, "type": "private"}}}}
    store.add_updates([message(1, 7, "go"), to_row(press)])
    delegator.notify([7])
    try:
        assert sender.wait_for(lambda sent: sender.answered)
    finally:
        for made_one in made:
            made_one.stop(5)
    assert sender.answered == ["query-2"]


# -- a thread the system refuses -------------------------------------------------------------

def test_a_thread_the_system_refuses_leaves_the_chat_waiting_not_lost(store, monkeypatch):
    from test_delegator import Counter

    from chatdaemon import delegator as delegator_module

    real_start = delegator_module.Delegate.start
    refusals = [3]   # the first three thread starts fail, as at the unit's TasksMax

    def start_or_refuse(self):
        if refusals[0]:
            refusals[0] -= 1
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(delegator_module.Delegate, "start", start_or_refuse)
    sender = FakeSender()
    made: list = []
    delegator = start(made, store, sender, Counter, max_delegates=2)
    store.add_updates([message(1, 7, "a"), message(2, 8, "b"), message(3, 9, "c")])
    try:
        delegator.notify([7, 8, 9])    # refused: no delegate runs, nothing is lost
        assert sender.sent == []
        for _ in range(3):              # what the supervising loop does every round
            delegator.abandon_overdue()
        assert sender.wait_for(lambda sent: len(sent) == 3), sender.sent
    finally:
        for made_one in made:
            made_one.stop(5)
    assert sorted(sender.sent) == [(7, "a:1"), (8, "b:1"), (9, "c:1")]
    assert delegator.stats["refused_threads"] == 3
    assert store.backlog() == 0
