"""The hot path's economies: each keeps the behaviour it replaces, and does less per update."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from conftest import wait_until
from test_delegator import WAIT
from test_delegator import FakeSender as DelegatorSender
from test_telegram import TOKEN, Server
from test_transaction import FakeSender, FakeSlot, PythonBot
from test_transaction import PythonBot as DelegatorBot

from chatdaemon import ChatHandler, inbox
from chatdaemon.delegator import Delegator
from chatdaemon.errors import BadAnswer
from chatdaemon.inbox import to_row
from chatdaemon.store import Store
from chatdaemon.telegram import TelegramClient
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


# -- the Bot API client -------------------------------------------------------------------

@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def client(server):
    api = TelegramClient(TOKEN, f"http://127.0.0.1:{server.server_address[1]}",
                         connect_timeout=2, read_timeout=3)
    yield api
    api.close()


def refuse_to_guess(data, *args, **kwargs):
    raise AssertionError("the encoding was guessed")


def test_an_answer_is_read_as_utf8_without_guessing_its_encoding(server, client, monkeypatch):
    guessed_by: list[threading.Thread] = []
    detect = json.detect_encoding

    def noting(data):   # the test server guesses the requests' encoding in its own threads
        guessed_by.append(threading.current_thread())
        return detect(data)

    monkeypatch.setattr(json, "detect_encoding", noting)
    server.answer(200, {"ok": True, "result": {"text": "é 👋"}})
    assert client.call("getMe") == {"text": "é 👋"}
    assert threading.current_thread() not in guessed_by


def test_an_answer_not_in_utf8_is_refused_as_not_json(server, client):
    server.answer(200, '{"ok": true, "result": "é"}'.encode("utf-16"))
    with pytest.raises(BadAnswer) as caught:
        client.call("getMe")
    assert caught.value.problem == BadAnswer.NOT_JSON


def test_a_stored_payload_is_read_without_guessing_its_encoding(monkeypatch):
    payload = {"update_id": 1, "message": {"text": "é 👋" * 40, "chat": {"id": CHAT}}}
    stored = inbox.encode_payload(payload)
    monkeypatch.setattr(json, "detect_encoding", refuse_to_guess)
    assert inbox.decode_payload(stored) == payload
    with pytest.raises(ValueError):
        inbox.decode_payload(b"\xff\xfe{}")


def test_the_read_timeout_is_set_only_when_it_changes(server, client, monkeypatch):
    settings: list[float] = []   # SO_RCVTIMEO set on the plain HTTP socket, in seconds
    setsockopt = socket.socket.setsockopt

    def counting(sock, level, option, value, *rest):
        if (level, option) == (socket.SOL_SOCKET, socket.SO_RCVTIMEO):
            layout = "ll" if len(value) == struct.calcsize("ll") else "qq"
            whole, micros = struct.unpack(layout, value)
            settings.append(whole + micros / 1_000_000)
        setsockopt(sock, level, option, value, *rest)

    monkeypatch.setattr(socket.socket, "setsockopt", counting)
    client.call("getMe")
    assert settings[-1] == 3             # the connection's first call sets its read timeout
    settings.clear()
    for _ in range(3):
        client.call("getMe")
    assert settings == []                # unchanged: no system call
    client.call("getUpdates", {"timeout": 5}, timeout=9)
    client.call("getMe")
    assert settings == [9, 3]            # a long poll's, then the usual one again
    assert len(server.connections) == 1  # all on one kept-alive connection


# -- the delegate's reads of the inbox ----------------------------------------------------

def group_message(update_id, text="hi"):
    return to_row({"update_id": update_id, "message": {
        "message_id": update_id, "text": text, "chat": {"id": CHAT, "type": "group"}}})


class Replier(ChatHandler):
    """Answers each message; "more" queues the chat's next update meanwhile, as the poller
    would (committed, then announced)."""

    delegator: Delegator | None = None

    def on_chat_message(self, msg):
        if msg["text"] == "more" and self.delegator is not None:
            self.delegator.store.add_updates([group_message(msg["message_id"] + 1000, "late")])
            self.delegator.notify([CHAT])
        self.sender.sendMessage(msg["text"])


@pytest.fixture
def delegator(store):
    sender = DelegatorSender()
    made = Delegator(store, DelegatorBot(Replier), sender)
    Replier.delegator = made
    yield made
    Replier.delegator = None
    made.stop(5)


def reads_of(store, monkeypatch) -> list[int]:
    reads: list[int] = []
    pending = store.pending

    def counting(chat_id, *args, **kwargs):
        rows = pending(chat_id, *args, **kwargs)
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(store, "pending", counting)
    return reads


def idle(delegator) -> bool:
    return wait_until(lambda: bool(delegator._idle), WAIT)


def test_a_batch_read_whole_is_not_read_again_before_the_delegate_waits(store, delegator,
                                                                         monkeypatch):
    reads = reads_of(store, monkeypatch)
    store.add_updates([group_message(n) for n in range(1, 4)])
    delegator.notify([CHAT])
    assert delegator.sender.wait_for(lambda sent: len(sent) == 3)
    assert idle(delegator)
    assert reads == [3]          # no second, empty read after the batch
    store.add_updates([group_message(4)])
    delegator.notify([CHAT])
    assert delegator.sender.wait_for(lambda sent: len(sent) == 4)
    assert idle(delegator)
    assert reads == [3, 1]
    assert store.backlog() == 0


def test_updates_committed_during_a_batch_or_beyond_one_read_are_all_answered(
        store, delegator, monkeypatch):
    reads = reads_of(store, monkeypatch)
    store.add_updates([group_message(n) for n in range(1, 25)] + [group_message(25, "more")])
    delegator.notify([CHAT])
    assert delegator.sender.wait_for(lambda sent: len(sent) == 26)
    assert [text for _, text in delegator.sender.sent][-2:] == ["more", "late"]
    assert idle(delegator)
    assert store.backlog() == 0
    assert reads[0] == 20 and len(reads) >= 2   # a full read is followed by another
