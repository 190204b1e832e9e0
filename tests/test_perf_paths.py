"""The cheap paths of an update: how it is stored, and what its commits write and run."""

from __future__ import annotations

import http.client
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chatdaemon.conversations import Conversation
from chatdaemon.errors import RetryAfter
from chatdaemon.inbox import (
    DEFLATED,
    LOCAL_FIELD,
    decode_payload,
    encode_payload,
    to_row,
)
from chatdaemon.leanhttp import (
    MAX_HEADERS,
    MAX_LINE,
    LeanConnection,
    LeanResponse,
    read_headers,
)
from chatdaemon.privacy import export_chat
from chatdaemon.status import chat_name
from chatdaemon.store import Store
from chatdaemon.telegram import TelegramClient

CHAT = 42


def message(update_id: int, chat_id: int = CHAT, text: str = "hello there") -> dict:
    person = {"id": chat_id, "is_bot": False, "first_name": "Ada", "username": "ada_l",
              "language_code": "en"}
    return {"update_id": update_id, "message": {
        "message_id": update_id, "from": person, "chat": {**person, "type": "private"},
        "date": 1_700_000_000, "text": text}}


def stored_payload(store: Store, update_id: int):
    with store.reading() as db:
        (payload,) = db.execute("SELECT payload FROM inbox WHERE update_id = ?",
                                (update_id,)).fetchone()
    return payload


# -- the stored update --------------------------------------------------------------------

def test_an_update_is_stored_deflated_in_a_fraction_of_its_json():
    update = message(7)
    stored = encode_payload(update)
    assert stored[:1] == DEFLATED
    assert len(stored) < len(json.dumps(update)) / 3
    assert decode_payload(stored) == update


@pytest.mark.parametrize("text", ["", "привет 👋 \u2028 \"quoted\" \\ back", "x" * 5000])
def test_any_text_comes_back_exactly(text):
    update = message(8, text=text)
    assert decode_payload(encode_payload(update)) == update


def test_a_payload_an_earlier_version_stored_as_json_text_still_reads():
    assert decode_payload(json.dumps(message(9))) == message(9)


def test_a_damaged_stored_update_is_a_value_error():
    with pytest.raises(ValueError):
        decode_payload(DEFLATED + b"\xff\x00 not deflate")


CRASHING = """
import os, sys
from chatdaemon.conversations import Conversation
from chatdaemon.inbox import to_row
from chatdaemon.store import Store
from chatdaemon.telegram import TelegramClient
sys.path.insert(0, {tests!r})
from test_perf_paths import CHAT, message
store = Store({path!r})
store.add_updates([to_row(message(1)), to_row(message(2, text="second"))])
store.finish(1, Conversation(CHAT, "asked", {{"n": 1}}))
os._exit(0)   # no close, no checkpoint: the WAL holds both commits
"""


def test_a_deflated_update_replays_after_a_crash(tmp_path):
    path = str(tmp_path / "crash.sqlite3")
    script = CRASHING.format(tests=str(Path(__file__).parent), path=path)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert Path(path + "-wal").stat().st_size > 0

    store = Store(path)
    try:
        [row] = store.pending(CHAT)
        assert row.update_id == 2 and row.payload == message(2, text="second")
        assert isinstance(stored_payload(store, 2), bytes)
        assert store.load_conversation(CHAT).vars == {"n": 1}
    finally:
        store.close()


def test_rows_the_daemon_makes_stay_json_text_that_sql_can_read(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    [local] = fresh_db.add_local([(CHAT, "hook", {"text": "hi"})])
    with fresh_db.reading() as db:
        found = db.execute(f"SELECT update_id, {LOCAL_FIELD} FROM inbox ORDER BY update_id",
                           ("$.hook.text",)).fetchall()
    # the deflated update reads as NULL instead of failing the query
    assert found == [(1, None), (local, "hi")]


def test_a_schedule_queries_its_ticks_beside_deflated_updates_of_its_chat(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    running = Conversation(CHAT, None, {}, schedules={"report": {"every": 60.0}},
                           saved_schedules={})
    fresh_db.finish(1, running)
    fresh_db.add_updates([to_row(message(2))])   # pending beside the waiting tick
    stopped = Conversation(CHAT, None, {}, schedules={}, saved_schedules={"report": {"every": 60.0}})
    fresh_db.finish(2, stopped)
    with fresh_db.reading() as db:
        left = db.execute("SELECT COUNT(*) FROM inbox WHERE kind = 'schedule' AND done = 0"
                          ).fetchone()[0]
    assert left == 0


def test_status_and_export_read_a_deflated_update(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    payload = stored_payload(fresh_db, 1)
    assert isinstance(payload, bytes)
    assert chat_name(payload) == "Ada"
    with fresh_db.reading() as db:
        exported = export_chat(db, CHAT)
    assert exported["inbox"][0]["payload"] == message(1)


def test_an_update_costs_fewer_wal_bytes_than_with_1_kib_pages_and_json(tmp_path):
    path = tmp_path / "wal.sqlite3"
    store = Store(str(path))
    wal = tmp_path / "wal.sqlite3-wal"
    try:
        for n in range(1, 61):
            store.add_updates([to_row(message(n, chat_id=n % 10))])
            store.finish(n, Conversation(n % 10, None, {"count": n}))
        with store.reading() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for n in range(61, 121):
            store.add_updates([to_row(message(n, chat_id=n % 10))])
            store.finish(n, Conversation(n % 10, None, {"count": n}))
        per_update = wal.stat().st_size / 60
    finally:
        store.close()
    # 1 KiB pages with JSON text appended 6.8 KB per update (6.5 frames of 1,048 bytes)
    assert per_update < 4 * 1024


def test_sqlite_refuses_json_extract_on_deflated_bytes():
    """Why LOCAL_FIELD exists: a query meeting a stored update would fail otherwise."""
    db = sqlite3.connect(":memory:")
    with pytest.raises(sqlite3.OperationalError):
        db.execute("SELECT json_extract(?, '$.a')", (encode_payload(message(1)),)).fetchone()


# -- the Bot API client's connections -----------------------------------------------------------

HEADER_BLOCKS = [
    b"Server: nginx\r\nContent-Type: application/json\r\nContent-Length: 312\r\n"
    b"Connection: keep-alive\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Folded: first\r\n  second\r\n\r\n",
    b"content-length:  7 \r\nnot a header line\r\nX-After: yes\n\n",
    b"Latin: caf\xe9\r\n\r\n",
    b"",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_headers_read_as_http_client_reads_them(block):
    stdlib = http.client.parse_headers(io.BytesIO(block))
    lean = read_headers(io.BytesIO(block))
    assert [(k, " ".join(v.split())) for k, v in lean.items()] == \
        [(k, " ".join(v.split())) for k, v in stdlib.items()]
    length = stdlib.get("content-length")
    assert lean.get("content-length") == (length.strip() if length else None)


def test_a_header_line_over_the_limit_is_refused():
    with pytest.raises(http.client.LineTooLong):
        read_headers(io.BytesIO(b"X: " + b"a" * MAX_LINE + b"\r\n\r\n"))


def test_more_headers_than_the_limit_are_refused():
    with pytest.raises(http.client.HTTPException):
        read_headers(io.BytesIO(b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n"))


def test_the_client_reads_answers_through_the_lean_response(telegram):
    client = TelegramClient(telegram.token, telegram.url)
    try:
        assert client.call("getMe")["is_bot"] is True
        telegram.set_next_response("getMe", status=429, body={
            "ok": False, "error_code": 429, "description": "Too Many Requests",
            "parameters": {"retry_after": 3}})
        with pytest.raises(RetryAfter) as caught:
            client.call("getMe")
        assert caught.value.retry_after == 3
        conn = client._idle.pop()
        conn.close()
        assert conn.response_class is LeanResponse   # kept alive, and lean
    finally:
        client.close()


class _Socket:
    """A socket for http.client's responses: its makefile reads these bytes."""

    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
]


@pytest.mark.parametrize("raw", RESPONSES)
def test_a_lean_response_frames_its_body_as_http_client_does(raw):
    stdlib = http.client.HTTPResponse(_Socket(raw), method="POST")
    lean = LeanResponse(_Socket(raw), method="POST")
    stdlib.begin()
    lean.begin()
    framing = ("status", "reason", "version", "chunked", "length", "will_close")
    assert [getattr(lean, name) for name in framing] == [getattr(stdlib, name) for name in framing]
    assert lean.getheaders() == stdlib.getheaders()
    assert lean.read() == stdlib.read()


class _Recording:
    """A connected socket that keeps what is sent on it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def sent_by(connection_class: type, body: object) -> list[bytes]:
    conn = connection_class("127.0.0.1", 9)
    conn.sock = _Recording()
    conn.request("POST", "/bot123:abc/sendMessage", body,
                 {"Content-Type": "application/json", "User-Agent": "chatdaemon"})
    return conn.sock.sent


def test_a_request_with_a_body_goes_out_in_one_write_with_the_same_bytes():
    body = json.dumps({"chat_id": 5, "text": "hi"}).encode()
    stdlib = sent_by(http.client.HTTPConnection, body)
    lean = sent_by(LeanConnection, body)
    assert len(stdlib) == 2 and len(lean) == 1
    assert lean == [b"".join(stdlib)]


def test_a_request_with_an_iterable_body_is_sent_as_http_client_sends_it():
    chunks = [b"ab", b"cd"]
    assert sent_by(LeanConnection, iter(chunks)) == sent_by(http.client.HTTPConnection, iter(chunks))


# -- statements per update ----------------------------------------------------------------

def statements(store: Store) -> list[str]:
    """Every statement the store's connection runs from now on, first words only."""
    seen: list[str] = []
    store._connection.set_trace_callback(lambda sql: seen.append(" ".join(sql.split()[:3])))
    return seen


def test_a_batch_of_updates_is_one_insert_each_between_the_durable_begin_and_commit(fresh_db):
    seen = statements(fresh_db)
    fresh_db.add_updates([to_row(message(1)), to_row(message(2))])
    assert seen == ["PRAGMA synchronous=FULL", "BEGIN IMMEDIATE",
                    "INSERT OR IGNORE", "INSERT OR IGNORE", "COMMIT", "PRAGMA synchronous=NORMAL"]


def test_an_update_that_changed_its_conversation_commits_in_four_statements(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    conversation = fresh_db.load_conversation(CHAT)
    conversation.vars["count"] = 1
    seen = statements(fresh_db)
    fresh_db.finish(1, conversation)
    # no schedule statement for a chat whose schedules did not change, none to re-arm a tick
    assert seen == ["BEGIN IMMEDIATE", "INSERT INTO conversations(state,", "UPDATE inbox SET",
                    "COMMIT"]


def test_an_update_that_left_its_conversation_alone_does_not_rewrite_it(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    seen = statements(fresh_db)
    fresh_db.finish(1, None)   # the update transaction passes None for an unchanged conversation
    assert seen == ["BEGIN IMMEDIATE", "UPDATE inbox SET", "COMMIT"]
    assert fresh_db.is_done(1) and fresh_db.load_conversation(CHAT).is_new


# -- the supervising loop's tick ----------------------------------------------------------

def test_without_systemd_a_tick_builds_no_status(monkeypatch):
    """The status line counts the backlog (a scan of the pending index): only for systemd."""
    from types import SimpleNamespace

    from chatdaemon.daemon import Notifier
    asked: list[str] = []
    app = SimpleNamespace(poller=SimpleNamespace(polls=1, alive=lambda: True, last_error=None),
                          status=lambda: asked.append("status") or {})
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.tick(app)
    notifier.tick(app)
    assert asked == []


def test_no_sql_reads_a_payload_field_except_through_local_field():
    """A stored update is deflated bytes: json_extract on it raises whenever SQLite happens to
    test that condition before the row's kind, so every read of a field goes through
    LOCAL_FIELD, which yields NULL for such rows."""
    from pathlib import Path
    package = Path(__file__).resolve().parent.parent / "chatdaemon"
    direct = [f"{path.name}:{number}" for path in sorted(package.rglob("*.py"))
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if "json_extract(payload" in line and "LOCAL_FIELD =" not in line]
    assert direct == []
