"""The hook server's edges: `Expect: 100-continue` is answered only once the request may go
on (its key opens the hook, its callback token is live), an IPv6 bind address works, and a
connection whose thread the system refuses gives its slot back."""

from __future__ import annotations

import socket
import threading
import urllib.request

import pytest
from test_review3 import (
    AUTH,
    GOOD,
    daemon,
    exchange,
    hook_post,
    results,
    server,
    serving,
    statuses,
)

from chatdaemon.hookserver import CALLBACK_PATH, HookServer

__all__ = ["daemon", "results", "server"]   # fixtures, used by name

EXPECT = "Expect: 100-continue\r\n"


def head_only(headers: str, path: str = "/hooks/alert") -> bytes:
    """A request head that promises a body and waits to be told to send it."""
    return hook_post(f"{headers}{EXPECT}Content-Length: {len(GOOD)}\r\n", path=path)


def test_a_post_with_a_wrong_key_gets_401_without_being_asked_for_its_body(server):
    answer = exchange(server, head_only("Authorization: Bearer wrong\r\n"), seconds=2.0)
    assert statuses(answer) == [401]


def test_a_post_to_an_unknown_callback_gets_404_without_being_asked_for_its_body(server):
    answer = exchange(server, head_only("", path=CALLBACK_PATH + "x" * 24), seconds=2.0)
    assert statuses(answer) == [404]


def test_a_post_to_an_unknown_path_is_not_asked_for_its_body(server):
    answer = exchange(server, head_only(AUTH, path="/nowhere"), seconds=2.0)
    assert statuses(answer) == [404]


def continued(server, head: bytes) -> tuple[bytes, bytes]:
    """Send a head that waits for "100 Continue", then the body once asked: (what came
    before the body was sent, what came after)."""
    with socket.create_connection(server.server_address, timeout=4) as sock:
        sock.sendall(head)
        interim = sock.recv(65536)
        sock.sendall(GOOD)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return interim, answer


def test_a_post_with_the_right_key_is_asked_for_its_body_then_accepted(server, daemon):
    interim, answer = continued(server, head_only(AUTH))
    assert statuses(interim) == [100]
    assert statuses(answer) == [202]
    assert len(daemon.queued) == 1


def test_a_live_callback_is_asked_for_its_body_then_accepted(server, results):
    interim, answer = continued(server, head_only("", path=CALLBACK_PATH + "tok" * 8))
    assert statuses(interim) == [100]
    assert statuses(answer) == [202]
    assert results.delivered == [("tok" * 8, {"msg": "hi"})]


def test_a_body_too_large_gets_413_without_being_asked_for(server, daemon):
    head = hook_post(f"{AUTH}{EXPECT}Content-Length: {10**7}\r\n")
    assert statuses(exchange(server, head, seconds=2.0)) == [413]
    assert daemon.queued == []


def test_the_hook_server_binds_an_ipv6_address(daemon):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with serving(HookServer(daemon.door(), ("::1", 0), request_timeout=2.0)) as srv:
        port = srv.server_address[1]
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=4) as answer:
            assert answer.status == 200


def test_a_connection_whose_thread_the_system_refuses_gives_its_slot_back(daemon, monkeypatch):
    srv = HookServer(daemon.door(), ("127.0.0.1", 0), request_timeout=2.0, max_per_client=2)
    refusals = [5]
    real_start = threading.Thread.start

    def start_or_refuse(thread):
        if thread.name.startswith("Thread") and refusals[0]:   # the server's request threads
            refusals[0] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    with serving(srv):
        monkeypatch.setattr(threading.Thread, "start", start_or_refuse)
        try:
            port = srv.server_address[1]
            for _ in range(5):   # each refused: the connection is closed unanswered
                with socket.create_connection(("127.0.0.1", port), timeout=4) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    sock.recv(100)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=4) as answer:
                assert answer.status == 200   # two slots per client, and none was lost
        finally:
            monkeypatch.undo()
