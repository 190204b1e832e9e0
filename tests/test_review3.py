"""What faces the network, read as an attacker and a careless owner would: HTTP framing and
bodies at the hook server, and the handoff desk under spoofed names, floods and blocked bots."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from test_handoff import BOT, OPERATOR, PERSON, Chats
from test_hookserver import KEY, Daemon

from chatdaemon import callbacks
from chatdaemon.errors import TelegramError
from chatdaemon.handoff import MAX_NOTICES_UNREAD, People
from chatdaemon.hookserver import MAX_HEAD, HookDoor, HookServer
from chatdaemon.privacy import forget_chat
from chatdaemon.store import Store

AUTH = f"Authorization: Bearer {KEY}\r\n"
GOOD = b'{"msg": "hi"}'


class Results:
    """Callback results the server delivered, by token."""

    def __init__(self):
        self.delivered: list[tuple[str, object]] = []

    def deliver(self, token, data) -> bool:
        self.delivered.append((token, data))
        return True


@pytest.fixture
def daemon():
    return Daemon()


@pytest.fixture
def results():
    return Results()


@pytest.fixture
def server(daemon, results):
    door = daemon.door()
    door = HookDoor(**{**door.__dict__, "find_callback": lambda token: token == "tok" * 8,
                       "deliver_callback": results.deliver})
    with serving(HookServer(door, ("127.0.0.1", 0), request_timeout=2.0)) as srv:
        yield srv


@contextlib.contextmanager
def serving(srv: HookServer) -> Iterator[HookServer]:
    """The server serving on a thread of its own until the block ends."""
    thread = threading.Thread(target=srv.serve_forever, daemon=True, name="serving")
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def exchange(server, data: bytes, seconds: float = 4.0) -> bytes:
    """Send raw bytes, read until the server closes (or `seconds` pass): all it answered."""
    deadline = time.monotonic() + seconds
    with socket.create_connection(server.server_address, timeout=seconds) as sock:
        sock.sendall(data)
        answer = b""
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
    return answer


def hook_post(headers: str, body: bytes = b"", path: str = "/hooks/alert") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


def statuses(answer: bytes) -> list[int]:
    """The status of every answer in a stream of them (a body ends with no line break)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


# -- framing: one reading of where a request ends, or none ------------------------------------

def test_two_content_lengths_that_disagree_are_refused_not_split_into_two_requests(server, daemon):
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: y\r\n\r\n"
    answer = exchange(server, hook_post(
        f"{AUTH}Content-Length: {len(GOOD)}\r\nContent-Length: {len(GOOD) + len(smuggled)}\r\n",
        GOOD + smuggled))
    assert statuses(answer) == [400]
    assert b"Content-Length" in answer and daemon.queued == []


def test_content_lengths_that_agree_are_one_length(server, daemon):
    answer = exchange(server, hook_post(
        f"{AUTH}Connection: close\r\nContent-Length: {len(GOOD)}\r\n"
        f"Content-Length: {len(GOOD)}\r\n", GOOD))
    assert statuses(answer) == [202] and len(daemon.queued) == 1


@pytest.mark.parametrize("length", ["+13", "1_3", "\u0661\u0663", "13, 13", "0x0d"])
def test_a_content_length_that_is_not_plain_digits_is_refused(server, daemon, length):
    answer = exchange(server, hook_post(f"{AUTH}Content-Length: {length}\r\n", GOOD))
    assert statuses(answer) == [400]
    assert daemon.queued == []


def test_two_transfer_encodings_are_refused(server, daemon):
    chunked = b"d\r\n" + GOOD + b"\r\n0\r\n\r\n"
    answer = exchange(server, hook_post(
        f"{AUTH}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", chunked))
    assert statuses(answer) == [411]
    assert daemon.queued == []


def test_a_get_with_a_body_never_runs_the_body_as_a_second_request(server):
    inner = b"GET /metrics HTTP/1.1\r\nHost: y\r\n\r\n"
    answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      + str(len(inner)).encode() + b"\r\n\r\n" + inner)
    assert statuses(answer) == [200]
    assert b"chatdaemon_" not in answer   # the metrics were not served


def test_a_header_section_over_the_cap_gets_431_and_a_normal_one_passes(server):
    filler = "".join(f"X-Filler-{n}: {'a' * 1000}\r\n" for n in range(MAX_HEAD // 1000 + 2))
    assert statuses(exchange(server, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{filler}\r\n"
                             .encode())) == [431]
    normal = "".join(f"X-Filler-{n}: {'a' * 1000}\r\n" for n in range(MAX_HEAD // 1000 - 2))
    assert statuses(exchange(server, f"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             f"{normal}\r\n".encode())) == [200]


def test_the_header_cap_holds_for_each_request_of_a_kept_alive_connection(server):
    headers = "".join(f"X-Filler-{n}: {'a' * 1000}\r\n" for n in range(MAX_HEAD // 1000 - 2))
    one = f"GET /healthz HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()
    last = f"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()
    assert statuses(exchange(server, one * 3 + last)) == [200] * 4


# -- bodies: what is accepted can be stored and sent -----------------------------------------

@pytest.mark.parametrize("body", [b'{"msg": NaN}', b'{"msg": Infinity}', b'{"msg": [-Infinity]}'])
def test_nan_and_infinity_are_not_json_and_get_400(server, daemon, results, body):
    for path in ("/hooks/alert", "/callbacks/" + "tok" * 8):
        answer = exchange(server, hook_post(
            f"{AUTH}Connection: close\r\nContent-Length: {len(body)}\r\n", body, path))
        assert statuses(answer) == [400], path
        assert b"not JSON" in answer
    assert daemon.queued == [] and results.delivered == []


@pytest.mark.parametrize("body", [b'{"msg": "\\ud800"}', b'{"\\udfff": 1, "msg": "x"}',
                                  b'{"msg": ["ok", {"deep": "a\\udc00b"}]}'])
def test_a_lone_surrogate_is_refused_before_the_202(server, daemon, results, body):
    for path in ("/hooks/alert", "/callbacks/" + "tok" * 8):
        answer = exchange(server, hook_post(
            f"{AUTH}Connection: close\r\nContent-Length: {len(body)}\r\n", body, path))
        assert statuses(answer) == [400], path
        assert b"surrogate" in answer
    assert daemon.queued == [] and results.delivered == []


def test_a_surrogate_pair_is_one_character_and_accepted(server, daemon):
    body = b'{"msg": "\\ud83d\\udd14"}'   # U+1F514, the bell, written as JSON escapes
    answer = exchange(server, hook_post(
        f"{AUTH}Connection: close\r\nContent-Length: {len(body)}\r\n", body))
    assert statuses(answer) == [202]
    assert daemon.queued[0][1]["message"]["text"] == "Alert: \U0001f514"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer "])
def test_the_bearer_scheme_is_case_insensitive(server, daemon, scheme):
    answer = exchange(server, hook_post(
        f"Authorization: {scheme} {KEY}\r\nConnection: close\r\nContent-Length: {len(GOOD)}\r\n",
        GOOD))
    assert statuses(answer) == [202] and len(daemon.queued) == 1


@pytest.mark.parametrize("headers", [f"Authorization: Bearer {KEY}\r\n", f"X-Chatdaemon-Key: {KEY}\r\n"])
def test_a_key_written_with_a_trailing_line_break_still_opens_its_hook(server, daemon, headers):
    daemon.hooks["alert"].key = KEY + "\n"
    answer = exchange(server, hook_post(
        f"{headers}Connection: close\r\nContent-Length: {len(GOOD)}\r\n", GOOD))
    assert statuses(answer) == [202] and len(daemon.queued) == 1


def test_a_key_of_whitespace_alone_is_no_key(server, daemon):
    daemon.hooks["alert"].key = KEY
    answer = exchange(server, hook_post("Authorization: Bearer  \r\nContent-Length: 2\r\n", b"{}"))
    assert statuses(answer) == [401] and daemon.queued == []


def test_another_auth_scheme_is_no_key(server, daemon):
    answer = exchange(server, hook_post(
        f"Authorization: Basic {KEY}\r\nContent-Length: {len(GOOD)}\r\n", GOOD))
    assert statuses(answer) == [401] and daemon.queued == []


# -- the handoff desk -----------------------------------------------------------------------

OTHER = 222   # another person with a human


@pytest.fixture
def desk(tmp_path):
    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR,), handoff_timeout=600))
    yield chats
    chats.close()


def reply_to(notice: dict) -> dict:
    """The reply_to_message of an operator replying to the bot's `notice`, as Telegram sends it."""
    return {"message_id": notice["message_id"], "text": notice["text"],
            "from": {"id": 1, "is_bot": True, "first_name": "Bot"}}


def test_a_name_that_spells_another_chat_id_never_steers_an_operators_reply(desk):
    spoofed = {"from": {"id": PERSON, "is_bot": False, "first_name": f"Eve (chat {OTHER})"}}
    desk.say(PERSON, "human", **spoofed)
    notice = desk.message_about(OPERATOR, "asks for a human")
    desk.say(OPERATOR, f"/done {PERSON}")          # her handoff ends, and its mappings go
    desk.say(OTHER, "human")                       # meanwhile someone else is with a human
    # the operator answers Eve's old notice: the only chat id it can trust is Eve's own
    told = desk.say(OPERATOR, "your refund number is 4711", reply_to_message=reply_to(notice))
    assert "your refund number is 4711" not in desk.sender.to(OTHER)
    assert told == [f"Chat {PERSON} is not with a human now; nothing was sent."]


def test_a_name_with_a_line_break_cannot_start_a_line_of_the_notice(desk):
    spoofed = {"from": {"id": PERSON, "is_bot": False, "first_name": "Eve\nP222 (chat 222)"}}
    desk.say(PERSON, "human", **spoofed)
    notice = desk.message_about(OPERATOR, "asks for a human")
    assert notice["text"].splitlines()[0].startswith("🙋 Eve P222 (chat 222) (chat 111)")


def test_one_person_cannot_flood_the_operators_with_notices(desk):
    desk.say(PERSON, "human")
    for n in range(3 * MAX_NOTICES_UNREAD):
        assert desk.say(PERSON, f"spam {n}") == []
    notices = [text for text in desk.sender.to(OPERATOR) if "P111" in text]
    assert len(notices) == MAX_NOTICES_UNREAD
    assert "/next" in notices[-1]
    # nothing is lost: the operator reads every message with /next
    shown = desk.say(OPERATOR, "/next")[0]
    assert all(f"spam {n}" in shown for n in range(3 * MAX_NOTICES_UNREAD))
    # once answered, the next message is forwarded again
    desk.say(OPERATOR, f"/reply {PERSON} hello")
    desk.say(PERSON, "thanks")
    assert "💬 P111 (@p111, chat 111):\nthanks" in desk.sender.to(OPERATOR)


@contextlib.contextmanager
def person_blocked_the_bot(desk) -> Iterator[None]:
    """Every send to PERSON is refused with Telegram's 403 until the block ends."""
    original = desk.sender.call

    def blocked(method, params=None, **kw):
        if (params or {}).get("chat_id") == PERSON:
            raise TelegramError(method, 403, "Forbidden: bot was blocked by the user")
        return original(method, params, **kw)
    desk.sender.call = blocked
    try:
        yield
    finally:
        desk.sender.call = original


def test_a_person_who_blocked_the_bot_ends_the_handoff_and_the_operators_know(desk):
    desk.say(PERSON, "human")
    with person_blocked_the_bot(desk):
        desk.say(OPERATOR, f"/reply {PERSON} are you still there?")
        assert any("did not reach" in text and "chat 111" in text
                   for text in desk.sender.to(OPERATOR))
        assert desk.say(OPERATOR, "/unread") == ["Nobody is with a human right now."]


def test_done_for_a_person_who_blocked_the_bot_closes_the_handoff_all_the_same(desk):
    desk.say(PERSON, "human")
    with person_blocked_the_bot(desk):
        desk.say(OPERATOR, f"/done {PERSON}")
        assert any("back with the bot (they blocked the bot" in text
                   for text in desk.sender.to(OPERATOR))
        with desk.store.reading() as db:
            assert db.execute("SELECT COUNT(*) FROM handoffs").fetchone() == (0,)


def test_an_operator_who_asks_for_a_human_is_answered_by_another(tmp_path):
    second = 901
    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR, second), handoff_timeout=600))
    try:
        chats.say(OPERATOR, "human")
        assert not any("asks for a human" in text for text in chats.sender.to(OPERATOR))
        notice = next(r for r in chats.sender.sent if r.get("chat_id") == second
                      and "asks for a human" in r.get("text", ""))
        chats.say(second, "here", reply_to_message=reply_to(notice))
        assert chats.sender.to(OPERATOR)[-1] == "here"   # no copy of it as a notice
        chats.say(second, f"/done {OPERATOR}")
        assert chats.sender.to(OPERATOR)[-1].startswith("This conversation with our team has ended")
    finally:
        chats.close()


def test_two_operators_ending_one_handoff_at_once_tell_the_person_once(tmp_path):
    second = 901
    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR, second), handoff_timeout=600))
    try:
        chats.say(PERSON, "human")
        chats.push(OPERATOR, f"/done {PERSON}")
        chats.push(second, f"/done {PERSON}")
        chats.run()
        assert sum("has ended" in text for text in chats.sender.to(PERSON)) == 1
        assert chats.say(PERSON, "/start") == ["menu"]
    finally:
        chats.close()


def test_the_only_operator_asking_for_a_human_is_told_nobody_is_there(tmp_path):
    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR,), handoff_timeout=600))
    try:
        assert chats.say(OPERATOR, "human") == [
            "getting a person", "Sorry, nobody is here to answer right now. I'll keep helping "
            "you myself."]
        assert chats.say(OPERATOR, "/start") == ["menu"]   # still with the bot
    finally:
        chats.close()


def test_an_operator_answering_a_person_who_used_forget_reaches_nobody(desk):
    desk.say(PERSON, "human")
    notice = desk.message_about(OPERATOR, "asks for a human")
    assert desk.say(PERSON, "/forget")[0].startswith("Done: I deleted")
    told = desk.say(OPERATOR, "hello?", reply_to_message=reply_to(notice))
    assert told == [f"Chat {PERSON} is not with a human now; nothing was sent."]
    assert "hello?" not in desk.sender.to(PERSON)
    assert desk.say(OPERATOR, "/unread") == ["Nobody is with a human right now."]



# -- callback results and /forget --------------------------------------------------------------

class ForgottenBeforeNextWrite:
    """A store whose chat is forgotten (committed by another thread, as the chat's delegate
    does for /forget) just before the next write transaction of the code under test begins:
    the moment another writer can take the database between a read and a write."""

    def __init__(self, store: Store, chat_id: int):
        self.store = store
        self.chat_id = chat_id

    def _forget(self) -> None:
        with self.store.writing() as db:
            forget_chat(self.chat_id)(db)

    def reading(self):
        return self.store.reading()

    def writing(self, durable: bool = False):
        self._forget()
        return self.store.writing(durable)

    def add_local(self, items):
        self._forget()
        return self.store.add_local(items)


def test_a_result_racing_a_forget_is_never_queued_after_it(tmp_path):
    store = Store(str(tmp_path / "chats.sqlite3"))
    try:
        token = callbacks.create(store, PERSON, "report")
        racing = ForgottenBeforeNextWrite(store, PERSON)
        assert callbacks.deliver(racing, token, {"summary": "secret"}) is None
        with store.reading() as db:
            assert db.execute("SELECT COUNT(*) FROM inbox WHERE done = 0").fetchone() == (0,)
        assert callbacks.find(store, token) is None
    finally:
        store.close()


def test_a_result_is_queued_once_for_a_live_token(tmp_path):
    store = Store(str(tmp_path / "chats.sqlite3"))
    try:
        token = callbacks.create(store, PERSON, "report")
        found = callbacks.deliver(store, token, {"summary": "3 sales"})
        assert found is not None and found.chat_id == PERSON
        [row] = store.pending(PERSON)
        assert row.kind == "callback"
        assert row.payload == {"callback": {"handler": "report", "data": {"summary": "3 sales"}}}
    finally:
        store.close()
