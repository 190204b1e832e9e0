"""Unit tests of chatdaemon.hookserver: the server in-process, with a recorded HookDoor."""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field

import pytest

from chatdaemon.hookserver import (
    MAX_BODY,
    ConnectionSlots,
    HookDoor,
    HookLimiter,
    HookServer,
    health,
    metrics,
)
from chatdaemon.templates import TemplateError

KEY = "s3cret-key-0123456789"


@dataclass
class Hook:
    key: str = KEY
    recipients: tuple[int, ...] = (7, 8)
    rate_limit: int = 1000
    response: str = "Alert: {msg}"


@dataclass
class Daemon:
    """What the daemon gives the hook server, with everything it is asked recorded."""

    hooks: dict = field(default_factory=lambda: {"alert": Hook(), "slow": Hook(rate_limit=2)})
    queued: list = field(default_factory=list)
    status: dict = field(default_factory=lambda: {
        "last_poll_age": 1.0, "backlog": 3, "delegates": 2, "waiting_chats": 1, "last_error": None})

    def render(self, response, context):
        if "msg" not in context["data"]:
            raise TemplateError("bot.yaml:1", "no msg")
        return {"text": response.format(msg=context["data"]["msg"])}

    def door(self) -> HookDoor:
        return HookDoor(find_hook=self.hooks.get, render=self.render, env=lambda: {"site": "x"},
                        queue=lambda chats, payload: self.queued.append((chats, payload)),
                        status=lambda: dict(self.status),
                        counters=lambda: {"replies_sent_total": 3, "telegram_429_total": 1},
                        health_limit=lambda: 60.0)


@pytest.fixture
def daemon():
    return Daemon()


@pytest.fixture
def server(daemon):
    srv = HookServer(daemon.door(), ("127.0.0.1", 0), request_timeout=2.0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict | str, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(*server.server_address, timeout=5)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data), response
    return response.status, data.decode(), response


def post(server, path: str, data: dict | bytes, headers: dict | None = None):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return request(server, "POST", path, body, headers)


BEARER = {"Authorization": f"Bearer {KEY}"}


# -- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize("path, headers", [
    ("/hooks/alert", BEARER),
    ("/hooks/alert", {"X-Chatdaemon-Key": KEY}),
    (f"/hooks/alert?key={KEY}", {}),
])
def test_a_hook_with_its_key_queues_one_notification_per_recipient(server, daemon, path, headers):
    status, body, _ = post(server, path, {"msg": "disk full"}, headers)
    assert (status, body) == (202, {"ok": True, "queued": 2})
    assert daemon.queued == [([7, 8], {"hook": "alert", "message": {"text": "Alert: disk full"}})]
    assert server.accepted == 1


@pytest.mark.parametrize("path, headers", [
    ("/hooks/alert", {}),
    ("/hooks/alert", {"Authorization": "Bearer wrong"}),
    ("/hooks/alert", {"Authorization": f"Basic {KEY}"}),
    ("/hooks/alert", {"X-Chatdaemon-Key": KEY + "x"}),
    ("/hooks/alert?key=wrong", {}),
    ("/hooks/alert", {"Authorization": "Bearer ключ".encode()}),  # not ASCII: wrong, no error
    ("/hooks/nosuchhook", BEARER),
    ("/hooks/", BEARER),
])
def test_a_wrong_key_and_an_unknown_hook_get_the_same_401(server, daemon, path, headers):
    status, body, response = post(server, path, {"msg": "x"}, headers)
    assert (status, body) == (401, {"ok": False, "error": "unauthorized"})
    assert response.getheader("Connection") == "close"
    assert daemon.queued == []


def test_a_post_outside_hooks_is_404_and_so_is_an_unknown_get(server, daemon):
    assert post(server, "/elsewhere", {}, BEARER)[0] == 404
    assert request(server, "GET", "/hooks/alert")[0] == 404
    assert daemon.queued == []


# -- bodies -----------------------------------------------------------------------------------

def test_a_body_over_the_cap_is_413_and_nothing_is_queued(server, daemon):
    status, body, _ = post(server, "/hooks/alert", b"x" * (MAX_BODY + 1), BEARER)
    assert status == 413 and str(MAX_BODY) in body["error"]
    assert daemon.queued == []


def test_a_body_at_the_cap_is_read(server, daemon):
    data = json.dumps({"msg": "y" * (MAX_BODY - 20)}).encode()
    data += b" " * (MAX_BODY - len(data))
    assert len(data) == MAX_BODY
    assert post(server, "/hooks/alert", data, BEARER)[0] == 202
    assert len(daemon.queued) == 1


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_a_chunked_body_is_decoded(server, daemon):
    headers = {**BEARER, "Transfer-Encoding": "chunked"}
    status, _, _ = post(server, "/hooks/alert", chunked(b'{"msg": ', b'"chunks"}'), headers)
    assert status == 202
    assert daemon.queued[0][1]["message"] == {"text": "Alert: chunks"}


def test_a_chunked_body_over_the_cap_is_413(server, daemon):
    headers = {**BEARER, "Transfer-Encoding": "chunked"}
    body = chunked(*[b"z" * 4096] * (MAX_BODY // 4096 + 1))
    assert post(server, "/hooks/alert", body, headers)[0] == 413
    assert daemon.queued == []


@pytest.mark.parametrize("body, headers, expected", [
    (b"{}", {"Content-Length": "-5"}, 400),
    (b"{}", {"Content-Length": "two"}, 400),
    (b"{}", {"Transfer-Encoding": "gzip"}, 411),
    (b"zz\r\n{}\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}, 400),
    (b"not json", {}, 400),
    (b'{"other": 1}', {}, 422),   # the template needs data.msg
])
def test_a_body_that_cannot_be_used_gets_a_clear_error(server, daemon, body, headers, expected):
    conn = http.client.HTTPConnection(*server.server_address, timeout=5)
    try:
        conn.putrequest("POST", "/hooks/alert", skip_accept_encoding=True)
        for key, value in {**BEARER, **headers}.items():
            conn.putheader(key, value)
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == expected, answer
    assert answer["ok"] is False and answer["error"]
    assert daemon.queued == []


def test_an_empty_body_is_empty_data(server, daemon):
    daemon.hooks["plain"] = Hook(response="static")
    daemon.render = lambda response, context: {"text": f"{response} {dict(context['data'])}"}
    srv = HookServer(daemon.door(), ("127.0.0.1", 0))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert post(srv, "/hooks/plain", b"", BEARER)[0] == 202
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    assert daemon.queued[0][1]["message"] == {"text": "static {}"}


def test_a_hook_over_its_rate_is_429_with_retry_after(server, daemon):
    answers = [post(server, "/hooks/slow", {"msg": str(n)}, BEARER) for n in range(3)]
    assert [status for status, _, _ in answers] == [202, 202, 429]
    assert answers[2][2].getheader("Retry-After") == "60"
    assert len(daemon.queued) == 2


def test_a_keep_alive_connection_serves_several_accepted_posts(server, daemon):
    conn = http.client.HTTPConnection(*server.server_address, timeout=5)
    try:
        for n in range(3):
            conn.request("POST", "/hooks/alert", json.dumps({"msg": str(n)}), BEARER)
            response = conn.getresponse()
            response.read()
            assert response.status == 202
    finally:
        conn.close()
    assert [payload["message"]["text"] for _, payload in daemon.queued] == \
        ["Alert: 0", "Alert: 1", "Alert: 2"]


# -- healthz and metrics ----------------------------------------------------------------------

def test_healthz_is_200_while_polls_are_recent_and_503_when_not(server, daemon):
    status, body, _ = request(server, "GET", "/healthz")
    assert status == 200
    assert body == {"ok": True, "last_poll_seconds_ago": 1.0, "backlog": 3, "delegates": 2,
                    "last_error": None}
    daemon.status.update(last_poll_age=61.0, last_error="getUpdates: 502")
    status, body, _ = request(server, "GET", "/healthz")
    assert (status, body["ok"], body["last_error"]) == (503, False, "getUpdates: 502")
    daemon.status["last_poll_age"] = None
    assert request(server, "GET", "/healthz?x=1")[0] == 503


def test_metrics_are_prometheus_text_with_every_counter(server, daemon):
    post(server, "/hooks/alert", {"msg": "m"}, BEARER)
    status, text, response = request(server, "GET", "/metrics")
    assert status == 200
    assert response.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    values = dict(line.split(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert values["chatdaemon_replies_sent_total"] == "3"
    assert values["chatdaemon_telegram_429_total"] == "1"
    assert values["chatdaemon_updates_received_total"] == "0"
    assert values["chatdaemon_hooks_accepted_total"] == "1"
    assert values["chatdaemon_queue_depth"] == "3"
    assert values["chatdaemon_chats_waiting"] == "1"
    assert values["chatdaemon_last_poll_age_seconds"] == "1.0"
    for name in values:
        assert f"# TYPE {name} " in text and f"# HELP {name} " in text


def test_health_and_metrics_without_a_server(daemon):
    daemon.status["last_poll_age"] = None
    assert health(daemon.door())[0] is False
    assert "chatdaemon_last_poll_age_seconds -1\n" in metrics(daemon.door())


# -- the limiters -----------------------------------------------------------------------------

def test_the_hook_limiter_is_per_hook():
    limiter = HookLimiter()
    assert [limiter.allow("a", 2) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 2)


def test_connection_slots_cap_in_total_and_per_client():
    slots = ConnectionSlots(total=3, per_client=2)
    assert slots.take("a") and slots.take("a")
    assert not slots.take("a")
    assert slots.take("b")
    assert not slots.take("c")  # three are open in total
    slots.give_back("a")
    assert slots.take("c")
    assert not slots.take("a")
