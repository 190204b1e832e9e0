"""The hot path's economies: each keeps the behaviour it replaces, and does less per update."""

from __future__ import annotations

import json

import pytest
from test_transaction import FakeSender, FakeSlot, PythonBot

from chatdaemon import ChatHandler
from chatdaemon.inbox import to_row
from chatdaemon.store import Store
from chatdaemon.transaction import UpdateTransaction

CHAT = 42


class Counter(ChatHandler):
    def on_chat_message(self, msg):
        if msg.get("text") == "fail":
            self.vars["count"] = -1
            raise ValueError("on purpose")
        if msg.get("text") != "quiet":
            self.vars["count"] = self.vars.get("count", 0) + 1


@pytest.fixture
def store(tmp_path):
    db = Store(str(tmp_path / "t.sqlite3"))
    yield db
    db.close()


def message(update_id, text="hi"):
    return to_row({"update_id": update_id, "message": {
        "message_id": update_id, "text": text,
        "chat": {"id": CHAT, "type": "private"}, "from": {"id": CHAT}}})


def run_counting_encodes(store, monkeypatch, texts):
    """Handle one message per text in one transaction; return how often the conversation's
    vars were JSON-encoded while each was handled."""
    store.add_updates([message(n, text) for n, text in enumerate(texts, 1)])
    rows = store.pending(CHAT)
    txn = UpdateTransaction(CHAT, store, FakeSender(), PythonBot(Counter), FakeSlot(store),
                            sleep=lambda seconds: False)
    encode = json.dumps
    encoded: list[object] = []

    def counting(obj, *args, **kwargs):
        encoded.append(obj)
        return encode(obj, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting)
    counts = []
    for row in rows:
        encoded.clear()
        txn.handle(row)
        counts.append(sum(1 for obj in encoded if obj is txn._conversation.vars))
    monkeypatch.setattr(json, "dumps", encode)
    return counts


def test_each_update_encodes_the_conversation_once_changed_or_not(store, monkeypatch):
    counts = run_counting_encodes(store, monkeypatch, ["hi", "hi", "quiet", "hi"])
    # the first update also snapshots the new conversation as it begins
    assert counts == [2, 1, 1, 1]
    assert store.load_conversation(CHAT).vars == {"count": 3}
    assert store.backlog() == 0


def test_a_rollback_between_cached_snapshots_still_restores_and_saves_right(store, monkeypatch):
    counts = run_counting_encodes(store, monkeypatch, ["hi", "fail", "hi", "quiet"])
    assert counts[1:] == [1, 1, 1]
    assert store.load_conversation(CHAT).vars == {"count": 2}
    assert store.backlog() == 0
