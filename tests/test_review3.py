"""What faces the network, read as an attacker and a careless owner would: HTTP framing and
bodies at the hook server, and the handoff desk under spoofed names, floods and blocked bots."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
from test_hookserver import KEY, Daemon

from chatdaemon.hookserver import MAX_HEAD, HookDoor, HookServer

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
    srv = HookServer(door, ("127.0.0.1", 0), request_timeout=2.0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
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


def test_another_auth_scheme_is_no_key(server, daemon):
    answer = exchange(server, hook_post(
        f"Authorization: Basic {KEY}\r\nContent-Length: {len(GOOD)}\r\n", GOOD))
    assert statuses(answer) == [401] and daemon.queued == []
