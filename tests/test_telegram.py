"""Unit tests of chatdaemon.telegram: the Bot API client against a tiny HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chatdaemon.errors import BadAnswer, NetworkError, RetryAfter, TelegramError
from chatdaemon.telegram import MAX_ANSWER_BYTES, TelegramClient, api_url_problem, looks_like_token

TOKEN = "123456:TELEGRAM-unit_abcdefghijklmnop"
SECRET = TOKEN.split(":")[1]


class Server(ThreadingHTTPServer):
    """Answers each POST with the next queued (status, body, headers, close) or ok=true."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.connections: list[tuple[str, int]] = []
        self.answers: list[tuple[int, bytes, dict, bool]] = []
        self.lock = threading.Lock()

    def get_request(self):
        request, address = super().get_request()
        with self.lock:
            self.connections.append(address)
        return request, address

    def next_answer(self) -> tuple[int, bytes, dict, bool]:
        with self.lock:
            if self.answers:
                return self.answers.pop(0)
        return 200, json.dumps({"ok": True, "result": True}).encode(), {}, False

    def answer(self, status: int, body: dict | bytes, headers: dict | None = None,
               close: bool = False) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.lock:
            self.answers.append((status, data, headers or {}, close))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "body": json.loads(body),
                                         "client": self.client_address,
                                         "type": self.headers.get("Content-Type")})
        status, data, headers, close = self.server.next_answer()
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        if close:  # hang up without saying so: the client finds out on its next request
            self.close_connection = True


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
                         connect_timeout=2, read_timeout=2)
    yield api
    api.close()


def assert_no_token(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))
    assert SECRET not in text, text


def test_a_call_posts_json_to_the_method_and_returns_the_result(server, client):
    server.answer(200, {"ok": True, "result": {"id": 7, "is_bot": True}})
    assert client.call("getMe", {"x": "é"}) == {"id": 7, "is_bot": True}
    (request,) = server.requests
    assert request["path"] == f"/bot{TOKEN}/getMe"
    assert request["body"] == {"x": "é"}
    assert request["type"] == "application/json"


def test_calls_reuse_one_keep_alive_connection(server, client):
    for n in range(5):
        client.call("sendMessage", {"chat_id": 1, "text": str(n)})
    assert len(server.requests) == 5
    assert len(server.connections) == 1
    assert len({r["client"] for r in server.requests}) == 1


def test_a_connection_the_server_closed_is_replaced_without_an_error(server, client):
    server.answer(200, {"ok": True, "result": 1}, close=True)
    assert client.call("getMe") == 1
    assert client.call("getMe") is True   # the pooled connection is dead: a fresh one, once
    assert len(server.connections) == 2
    assert [r["path"].rsplit("/", 1)[1] for r in server.requests] == ["getMe", "getMe"]


def test_connection_close_in_the_answer_is_honoured(server, client):
    server.answer(200, {"ok": True, "result": 1}, {"Connection": "close"})
    assert client.call("getMe") == 1
    assert client.call("getMe") is True
    assert len(server.connections) == 2


def test_ok_false_is_a_telegram_error_with_status_description_and_parameters(server, client):
    server.answer(400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found",
                        "parameters": {"migrate_to_chat_id": -100123}})
    with pytest.raises(TelegramError) as info:
        client.call("sendMessage", {"chat_id": 1, "text": "x"})
    error = info.value
    assert (error.method, error.status, error.migrate_to_chat_id) == ("sendMessage", 400, -100123)
    assert error.description == "Bad Request: chat not found"
    assert not isinstance(error, RetryAfter)
    assert_no_token(error)


def test_429_is_retry_after_with_its_wait(server, client):
    server.answer(429, {"ok": False, "error_code": 429, "description": "Too Many Requests",
                        "parameters": {"retry_after": 7}})
    with pytest.raises(RetryAfter) as info:
        client.call("sendMessage")
    assert info.value.retry_after == 7
    assert_no_token(info.value)


def test_the_error_code_in_the_body_wins_over_the_http_status(server, client):
    server.answer(200, {"ok": False, "error_code": 401, "description": "Unauthorized"})
    with pytest.raises(TelegramError) as info:
        client.call("getMe")
    assert info.value.status == 401


@pytest.mark.parametrize("body, problem", [
    (b"<html>502 Bad Gateway</html>", BadAnswer.NOT_JSON),
    (b"[1, 2, 3]", BadAnswer.NOT_JSON),
    (b'{"result": 1}', BadAnswer.NOT_JSON),
    (b"[" * 100_000 + b"]" * 100_000, BadAnswer.TOO_DEEP),
])
def test_an_answer_that_is_no_bot_api_answer_is_a_bad_answer(server, client, body, problem):
    server.answer(502, body)
    with pytest.raises(BadAnswer) as info:
        client.call("getUpdates")
    assert (info.value.problem, info.value.status) == (problem, 502)
    assert info.value.head == body[:len(info.value.head)]
    assert_no_token(info.value)


def test_an_answer_declared_too_big_is_refused_after_reading_its_head(server, client):
    head = b'{"ok": true, "result": [' + b" " * 8192
    server.answer(200, head, {"Content-Length": str(MAX_ANSWER_BYTES + 1)}, close=True)
    with pytest.raises(BadAnswer) as info:
        client.call("getUpdates")
    assert info.value.problem == BadAnswer.TOO_BIG
    assert info.value.head == head[:4096]


def test_a_server_that_is_not_there_is_a_network_error_not_delivered():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = TelegramClient(TOKEN, f"http://127.0.0.1:{port}", connect_timeout=1)
    with pytest.raises(NetworkError) as info:
        api.call("sendMessage", {"chat_id": 1, "text": "x"})
    error = info.value
    assert (error.method, error.maybe_delivered) == ("sendMessage", False)
    assert error.where == f"http://127.0.0.1:{port}"
    assert_no_token(error)


def test_no_answer_in_time_is_a_network_error_that_may_have_been_delivered():
    with socket.socket() as listener:  # accepts, reads, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        api = TelegramClient(TOKEN, f"http://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(NetworkError) as info:
            api.call("sendMessage", {"chat_id": 1}, timeout=0.2)
    assert info.value.maybe_delivered is True
    assert info.value.reason == "no answer in time"
    assert_no_token(info.value)


def test_a_connection_dropped_before_the_answer_is_a_network_error():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        api = TelegramClient(TOKEN, f"http://127.0.0.1:{listener.getsockname()[1]}")

        def drop() -> None:
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.close()

        dropper = threading.Thread(target=drop, daemon=True)
        dropper.start()
        with pytest.raises(NetworkError) as info:
            api.call("getMe", timeout=5)
        dropper.join(5)
    assert info.value.reason == "connection closed without an answer"
    assert_no_token(info.value)


def test_a_method_name_that_is_no_method_is_refused_before_sending(server, client):
    with pytest.raises(TelegramError) as info:
        client.call("../getMe")
    assert info.value.status == 400
    assert server.requests == []


def test_the_client_never_shows_its_token():
    api = TelegramClient(TOKEN, "http://127.0.0.1:9")
    assert SECRET not in repr(api) and SECRET not in api.where


def test_token_and_url_checks():
    assert looks_like_token(TOKEN)
    assert not looks_like_token("123:short") and not looks_like_token(f"{TOKEN}/x")
    assert api_url_problem("https://api.telegram.org") is None
    assert "must look like" in api_url_problem("ftp://x")
    assert "bad port" in api_url_problem("http://host:99999")
    with pytest.raises(ValueError):
        TelegramClient(TOKEN, "api.telegram.org")
