"""Unit tests of the intake edge: untrusted updates and answers, the retry policy, the poller."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatdaemon import poller as poller_module
from chatdaemon.errors import (
    MAX_RETRY_AFTER,
    BadAnswer,
    BadToken,
    Conflict,
    NetworkError,
    RetryAfter,
    TelegramError,
    sane_retry_after,
)
from chatdaemon.inbox import MAX_DEPTH, Rejection, chat_of, parse_update
from chatdaemon.poller import ConflictWatch, Poller
from chatdaemon.retry import MAX_BACKOFF, RetryPolicy
from chatdaemon.store import InboxRow, Store
from chatdaemon.telegram import MAX_ANSWER_BYTES, TelegramClient

TOKEN = "123456:UNIT-token_abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def fresh_db(tmp_path):
    store = Store(str(tmp_path / "intake.sqlite3"))
    yield store
    store.close()


def message(update_id, chat_id=7, text="hi"):
    return {"update_id": update_id,
            "message": {"message_id": 1, "chat": {"id": chat_id, "type": "private"}, "text": text}}


def nested(depth):
    """A dict nested `depth` levels deep, built without recursion."""
    top = inner = {}
    for _ in range(depth - 1):
        inner["x"] = {}
        inner = inner["x"]
    return top


# -- retry_after: finite, positive, capped -----------------------------------------------------

@pytest.mark.parametrize("value", ["soon", math.inf, -math.inf, math.nan, -5, 0, True, False,
                                   None, [30], {"s": 1}])
def test_unusable_retry_after_becomes_a_sane_default(value):
    wait = RetryAfter("sendMessage", 429, "Too Many Requests", {"retry_after": value}).retry_after
    assert math.isfinite(wait) and 0 < wait <= 60


@pytest.mark.parametrize("value", [1e300, 10 ** 400, 86400, MAX_RETRY_AFTER + 1])
def test_huge_retry_after_is_capped_and_the_cap_logged(value, caplog):
    with caplog.at_level(logging.WARNING, logger="chatdaemon.errors"):
        assert sane_retry_after(value) == MAX_RETRY_AFTER
    assert "waiting 3600 s instead" in caplog.text


def test_a_usable_retry_after_is_kept():
    assert sane_retry_after(7) == 7.0 and sane_retry_after(0.5) == 0.5


# -- updates: malformed ones are rejected with a reason, never raise -------------------------

@pytest.mark.parametrize("update, reason", [
    ("a string", "the update is a str, not an object"),
    ([1, 2], "the update is a list, not an object"),
    ({"update_id": True, "message": {}}, "update_id True is not an id"),
    ({"update_id": 5.0, "message": {}}, "update_id 5.0 is not an id"),
    ({"update_id": "5", "message": {}}, "update_id '5' is not an id"),
    ({"update_id": 2 ** 63, "message": {}}, "update_id 9223372036854775808 is not an id"),
    ({"update_id": -3, "message": {}}, "update_id -3 is not an id"),
    ({"message": {}}, "update_id None is not an id"),
    ({"update_id": 5, "message": "text"}, "message is a str, not an object"),
    ({"update_id": 5, "message": {"chat": "7"}}, "message.chat is a str, not an object"),
    ({"update_id": 5, "message": {"chat": {"id": 2 ** 70}}},
     "message.chat.id (a 71-bit int) is not a chat id"),
    ({"update_id": 5, "message": {"chat": {"id": True}}}, "message.chat.id True is not a chat id"),
    ({"update_id": 5, "callback_query": {"message": "gone"}},
     "callback_query.message is a str, not an object"),
    ({"update_id": 5, "callback_query": {"message": [1]}},
     "callback_query.message is a list, not an object"),
    ({"update_id": 5, "callback_query": {"from": 9}}, "callback_query.from is a int, not an object"),
    ({"update_id": 2 ** 41, "message": {}}, "update_id 2199023255552 is in the range kept for local rows"),
])
def test_a_malformed_update_is_a_rejection_with_its_reason(update, reason):
    parsed = parse_update(update)
    assert isinstance(parsed, Rejection)
    assert parsed.reason == reason
    assert chat_of(update) is None if isinstance(update, dict) else True


def test_a_rejection_keeps_the_id_the_offset_can_still_move_past():
    parsed = parse_update({"update_id": 12, "callback_query": {"message": "gone"}})
    assert isinstance(parsed, Rejection) and parsed.update_id == 12
    assert '"gone"' in parsed.payload_text()


def test_nesting_deeper_than_the_cap_is_rejected_without_recursion():
    assert isinstance(parse_update({"update_id": 1, "message": nested(MAX_DEPTH - 1)}), InboxRow)
    too_deep = parse_update({"update_id": 1, "message": nested(MAX_DEPTH)})
    assert isinstance(too_deep, Rejection) and "deeper than 64" in too_deep.reason
    # far deeper than the interpreter's recursion limit: still a plain rejection
    very_deep = parse_update({"update_id": 1, "message": nested(100_000)})
    assert isinstance(very_deep, Rejection) and "deeper than 64" in very_deep.reason
    assert very_deep.payload_text().startswith("<a dict")


def test_well_formed_updates_keep_their_chat():
    assert chat_of({"update_id": 1, "callback_query": {"from": {"id": 4},
                                                      "message": {"chat": {"id": -100}}}}) == -100
    assert chat_of({"update_id": 1, "callback_query": {"from": {"id": 4}}}) == 4
    row = parse_update({"update_id": 3, "poll": {"id": "p"}})
    assert isinstance(row, InboxRow) and row.chat_id is None and row.kind == "poll"


# -- the poller, in process, against a scripted Bot API ----------------------------------------

class ScriptedAPI:
    """Answers each call from a script of results or exceptions; after it, empty polls."""

    def __init__(self, script=(), stop=None):
        self.script = list(script)
        self.calls: list[tuple[str, dict]] = []
        self.stop = stop

    def call(self, method, params=None, timeout=None):
        self.calls.append((method, dict(params or {})))
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step(method) if callable(step) else step
        if self.stop is not None:
            self.stop.set()
        return []


@pytest.fixture
def quick(monkeypatch):
    """Poller waits shortened: probes, conflict retries and back-offs take milliseconds."""
    monkeypatch.setattr(poller_module, "PROBE_EVERY", 0.001)
    monkeypatch.setattr(poller_module, "CONFLICT_RETRY", 0.001)
    monkeypatch.setattr(poller_module, "RetryPolicy",
                        lambda: RetryPolicy(first=0.001, cap=0.004, network_cap=0.004))


def make_poller(store, script, **kw):
    stop = threading.Event()
    api = ScriptedAPI(script, stop)
    notified: list[list[int]] = []
    poller = Poller(api, store, notified.append, stop, poll_timeout=1, **kw)
    return poller, api, notified


def settle(n=poller_module.SETTLE_PROBES):
    return [[]] * n


def test_a_batch_with_malformed_updates_is_stored_and_the_offset_moves_past_all(fresh_db, quick):
    batch = [message(10), {"update_id": 11, "callback_query": {"message": "gone"}},
             {"update_id": 12, "message": {"chat": {"id": 2 ** 70}}}, message(13, chat_id=8),
             {"update_id": 2 ** 63, "message": {}}, "junk"]
    poller, api, notified = make_poller(fresh_db, settle() + [batch])
    poller.run()
    assert poller.offset == 14
    assert [params.get("offset") for method, params in api.calls][-1] == 14
    assert notified == [[7, 8]]
    reasons = [r for (r,) in fresh_db._db.execute("SELECT reason FROM rejected ORDER BY id")]
    assert reasons == ["callback_query.message is a str, not an object",
                       "message.chat.id (a 71-bit int) is not a chat id",
                       "update_id 9223372036854775808 is not an id",
                       "the update is a str, not an object"]
    assert fresh_db._db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (2,)


def test_a_new_poller_stores_nothing_until_it_knows_it_is_alone(fresh_db, quick):
    probes = [[message(10)]] * poller_module.SETTLE_PROBES
    poller, api, _ = make_poller(fresh_db, probes + [[message(10)]])
    poller.run()
    first_calls = api.calls[:poller_module.SETTLE_PROBES]
    assert [params["timeout"] for _, params in first_calls] == [0, 0, 0, 1, 0]  # one long poll
    assert all("offset" not in params for _, params in first_calls)
    assert api.calls[poller_module.SETTLE_PROBES][1]["timeout"] == 1
    assert poller.offset == 11


def test_updates_taken_by_someone_else_make_the_new_poller_exit(fresh_db, quick):
    poller, _, _ = make_poller(fresh_db, [[message(10), message(11)], [message(12)]])
    with pytest.raises(Conflict, match="not acknowledged were taken"):
        poller.run()
    assert fresh_db._db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (0,)


def conflict():
    return TelegramError("getUpdates", 409, "Conflict: terminated by other getUpdates request")


def test_409_past_the_grace_makes_a_new_poller_exit_even_between_answers(fresh_db, quick):
    # answers in between (traffic) do not reset the clock of a poller that never settled
    script = [conflict(), [], conflict(), [], [], conflict()] * 400
    poller, _, _ = make_poller(fresh_db, script, conflict_grace=0.05)
    with pytest.raises(Conflict, match="after start"):
        poller.run()


def test_a_settled_poller_outlasts_a_newcomer_409s(fresh_db, quick, monkeypatch):
    script = settle() + [conflict(), [message(20)], conflict(), conflict(), [message(21)]]
    poller, _, _ = make_poller(fresh_db, script, conflict_grace=60)
    poller.run()
    assert poller.offset == 22


def test_the_conflict_watch_lets_a_restart_outwait_its_old_poll(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(poller_module.time, "monotonic", lambda: now[0])
    watch = ConflictWatch(grace=35)
    for _ in range(20):            # our previous run's long poll, open for up to 25 s
        watch.on_conflict()
        now[0] += 1.0
    for _ in range(poller_module.SETTLE_PROBES):
        watch.on_answer([])
    assert watch.settled
    now[0] += 3600
    for _ in range(10):            # later, a newcomer's probes now and then
        watch.on_conflict()
        now[0] += 10
    now[0] += 4 * 35 * 2
    with pytest.raises(Conflict, match="for 1"):  # a conflict that never ends: give up too
        for _ in range(100):
            watch.on_conflict()
            now[0] += 2


def test_a_404_blip_is_confirmed_with_getme_and_polling_goes_on(fresh_db, quick):
    blip = TelegramError("getUpdates", 404, "Not Found")
    script = settle() + [blip, NetworkError("getMe", "no answer in time"), {"id": 1},
                         [message(30)]]
    poller, api, _ = make_poller(fresh_db, script)
    poller.run()
    assert [m for m, _ in api.calls].count("getMe") == 2
    assert poller.offset == 31


def test_a_401_that_getme_confirms_is_a_bad_token(fresh_db, quick):
    script = settle() + [TelegramError("getUpdates", 401, "Unauthorized"),
                         RetryAfter("getMe", 429, "Too Many Requests", {"retry_after": 0.001}),
                         TelegramError("getMe", 401, "Unauthorized")]
    poller, api, _ = make_poller(fresh_db, script)
    with pytest.raises(BadToken, match="401 Unauthorized"):
        poller.run()
    assert [m for m, _ in api.calls][-2:] == ["getMe", "getMe"]


def test_the_log_names_the_method_once(fresh_db, quick, caplog):
    script = settle() + [TelegramError("getUpdates", 502, "Bad Gateway"),
                         NetworkError("getUpdates", "connection refused", where="http://10.0.0.1:81")]
    poller, _, _ = make_poller(fresh_db, script)
    with caplog.at_level(logging.WARNING, logger="chatdaemon.poller"):
        poller.run()
    assert "getUpdates: 502 Bad Gateway" in caplog.text
    assert "getUpdates: getUpdates" not in caplog.text
    assert "getUpdates: connection refused (http://10.0.0.1:81)" in caplog.text


def test_an_answer_too_big_asks_for_fewer_then_skips_the_one_update(fresh_db, quick):
    head = b'{"ok":true,"result":[{"update_id":40,"message":{"text":"xxxx'
    too_big = BadAnswer("getUpdates", 200, "too big", BadAnswer.TOO_BIG, head)
    script = settle() + [too_big, too_big, too_big, [message(41)]]
    poller, api, _ = make_poller(fresh_db, script)
    poller.run()
    limits = [params["limit"] for method, params in api.calls if method == "getUpdates"]
    assert limits[-5:] == [100, 10, 1, 1, 10]  # then back up, tenfold per stored batch
    assert api.calls[-2][1]["offset"] == 41  # past the unreadable update 40
    assert fresh_db._db.execute("SELECT reason FROM rejected").fetchone() == ("update 40: too big",)
    assert poller.offset == 42 and poller.batch_limit == 10


def test_start_up_and_the_poller_share_one_policy():
    policy = RetryPolicy()
    assert policy.delay(RetryAfter("getMe", 429, "", {"retry_after": 9})) == 9
    assert [policy.delay(TelegramError("getMe", 500, "")) for _ in range(7)] == \
        [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF]
    assert policy.delay(NetworkError("getMe", "refused")) == 5.0
    policy.succeeded()
    assert policy.delay(TelegramError("getMe", 400, "Bad Request")) == 1
    with pytest.raises(BadToken):
        policy.delay(TelegramError("getMe", 404, "Not Found"))
    with pytest.raises(ValueError):
        policy.delay(ValueError("not a Bot API failure"))
    # an answer that is no Bot API answer is not a bad token, whatever its status
    assert policy.delay(BadAnswer("getMe", 404, "not JSON", BadAnswer.NOT_JSON)) == 2


# -- the client: answers over the size cap, nested too deep, an unreachable host ------------

class RawServer:
    """A loopback HTTP server answering every request with the next raw body queued."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body, chunked = bodies.pop(0)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if chunked:
                        for start in range(0, len(body), 1 << 20):
                            piece = body[start:start + (1 << 20)]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.wfile.write(body)
                except OSError:
                    pass  # the client stopped reading: that is the point

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def raw_server():
    server = RawServer()
    yield server
    server.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_over_the_cap_is_refused_in_bounded_memory(raw_server, chunked):
    size = 40 * 1024 * 1024
    body = b'{"ok":true,"result":[{"update_id":7,"message":{"text":"' + b"x" * size + b'"}}]}'
    raw_server.bodies.append((body, chunked))
    client = TelegramClient(TOKEN, raw_server.url)
    tracemalloc.start()
    try:
        with pytest.raises(BadAnswer) as caught:
            client.call("getUpdates", {"limit": 1})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        client.close()
    assert caught.value.problem == BadAnswer.TOO_BIG
    assert caught.value.head.startswith(b'{"ok":true,"result":[{"update_id":7')
    assert peak < 3 * MAX_ANSWER_BYTES < size


def test_an_answer_nested_100000_deep_is_a_bad_answer_not_a_recursion_error(raw_server):
    depth = 100_000
    raw_server.bodies.append((b'{"ok":true,"result":[' + b"[" * depth + b"]" * depth + b"]}", False))
    client = TelegramClient(TOKEN, raw_server.url)
    try:
        with pytest.raises(BadAnswer) as caught:
            client.call("getUpdates")
    finally:
        client.close()
    assert caught.value.problem == BadAnswer.TOO_DEEP


def test_an_unreachable_api_is_named_by_host_and_port_never_by_token():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]   # bound, not listening: connections are refused
        with pytest.raises(NetworkError) as caught:
            TelegramClient(TOKEN, f"http://127.0.0.1:{port}").call("getMe")
    assert str(caught.value) == f"getMe: connection refused (http://127.0.0.1:{port})"
    assert TOKEN.split(":")[1] not in str(caught.value)


# -- two pollers where the newer getUpdates ends the older one, as Telegram does ---------------

class NewestWins:
    """getUpdates with Telegram's rule for two pollers: a new call ends the open one with 409.

    (tests/fake_telegram.py answers 409 to the new call instead; test_e2e_intake.py covers that.)
    """

    def __init__(self):
        self.cond = threading.Condition()
        self.pending: list[dict] = []
        self.next_id = 1000
        self.generation = 0

    def push(self, chat_id):
        with self.cond:
            self.pending.append(message(self.next_id, chat_id))
            self.next_id += 1
            self.cond.notify_all()

    def call(self, method, params=None, timeout=None):
        if method != "getUpdates":
            return {"id": 1, "username": "bot"}
        with self.cond:
            self.generation += 1
            mine = self.generation
            self.cond.notify_all()  # the open call, if any, is ended
            offset = params.get("offset")
            if offset is not None:
                self.pending = [u for u in self.pending if u["update_id"] >= offset]
            deadline = time.monotonic() + params["timeout"]
            while not self.pending and self.generation == mine:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            if self.generation != mine:
                raise TelegramError("getUpdates", 409,
                                    "Conflict: terminated by other getUpdates request")
            return self.pending[:params["limit"]]


class PollerThread:
    def __init__(self, api, store):
        self.stop = threading.Event()
        self.poller = Poller(api, store, lambda chats: None, self.stop, poll_timeout=1,
                             conflict_grace=2)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.poller.run()
        except BaseException as exc:
            self.failure = exc


@pytest.mark.parametrize("traffic", [False, True], ids=["idle", "traffic"])
def test_with_telegram_rules_too_the_newer_poller_exits_and_the_first_keeps_all(tmp_path, traffic):
    api = NewestWins()
    first_db, second_db = Store(str(tmp_path / "a.sqlite3")), Store(str(tmp_path / "b.sqlite3"))
    first = PollerThread(api, first_db)
    second = None
    try:
        api.push(1)
        deadline = time.monotonic() + 10
        while first.poller.received < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poller.received == 1
        began = time.monotonic()
        second = PollerThread(api, second_db)
        pushed = 1
        while second.thread.is_alive() and time.monotonic() < began + 15:
            if traffic:
                api.push(2 + pushed % 3)
                pushed += 1
            time.sleep(0.03)
        assert isinstance(second.failure, Conflict), second.failure
        assert time.monotonic() - began < 2 * 2 + 1
        api.push(9)
        pushed += 1
        deadline = time.monotonic() + 10
        while first.poller.received < pushed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poller.received == pushed and first.failure is None
        assert second.poller.received == 0
    finally:
        for poller in (first, second):
            if poller is not None:
                poller.stop.set()
                poller.thread.join(10)
        first_db.close()
        second_db.close()
