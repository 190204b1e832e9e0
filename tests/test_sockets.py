"""The Bot API client's sockets: kernel timeouts over plain HTTP, the socket's own timeout over
TLS, a timeout that is never mistaken for a closed connection, and the connection permits.

Each test runs the client against a bare socket server on 127.0.0.1 that does with each request
what the test scripts: answer, hang up after answering, stall, or send half a status line.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CLIENT_READ_TIMEOUT

from chatdaemon.errors import NetworkError
from chatdaemon.telegram import TelegramClient

ANSWER = json.dumps({"ok": True, "result": True}).encode()
READ_TIMEOUT = CLIENT_READ_TIMEOUT   # the `clients` fixture's
SLACK = 2.5   # what a loaded machine may add to a timeout before the call returns


Step = Callable[[socket.socket], bool]   # answers one request; False: the connection is done


class ScriptedServer:
    """A bare HTTP/1.1 server: each request read in full gets the next step of `steps`
    ("answer" once they run out), optionally over TLS. A step is a word, or a Step that
    answers the request itself."""

    def __init__(self, steps: list[str | Step] | None = None,
                 context: ssl.SSLContext | None = None,
                 delay: float = 0.0):
        self.steps = list(steps or [])
        self.context = context
        self.delay = delay              # before each answer: calls overlap
        self.accepted = 0               # connections accepted
        self.requests: list[bytes] = []  # the request lines, in order
        self.changed = threading.Condition()
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.changed:
                self.accepted += 1
                self.changed.notify_all()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)   # a forgotten connection ends its thread
        try:
            if self.context:
                conn = self.context.wrap_socket(conn, server_side=True)
            with conn, conn.makefile("rb") as reader:
                while self._answer_next(conn, reader):
                    pass
        except OSError:
            pass   # a client that hung up or failed the handshake

    def _answer_next(self, conn: socket.socket, reader) -> bool:
        """Read one request and do the next step; False when the connection is done."""
        request_line = reader.readline(65536)
        if not request_line:
            return False
        length = 0
        while (line := reader.readline(65536)) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        reader.read(length)
        with self.changed:
            self.requests.append(request_line)
            step = self.steps.pop(0) if self.steps else "answer"
            self.changed.notify_all()
        if callable(step):
            return step(conn)
        if step in ("stall", "half"):
            if step == "half":
                conn.sendall(b"HTTP/1.1 200")
            self.stopped.wait(30)
            return False
        self.stopped.wait(self.delay)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
        return step != "hang up"   # hang up after answering, without saying so

    def wait_for_requests(self, count: int, timeout: float = 10) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.requests) >= count, timeout)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.listener.close()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"


@pytest.fixture
def servers():
    """Makes ScriptedServers, stopped after the test."""
    made: list[ScriptedServer] = []

    def make(*args, **kwargs) -> ScriptedServer:
        made.append(ScriptedServer(*args, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def timed_failure(call, *args, **kwargs) -> tuple[NetworkError, float]:
    """The NetworkError `call` raises, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        call(*args, **kwargs)
    return info.value, time.monotonic() - started


def idle_socket(client: TelegramClient) -> socket.socket:
    """The socket of the connection the client's next call will use."""
    return client._idle[-1].sock


def kernel_timeouts(sock: socket.socket) -> tuple[float, float]:
    """SO_RCVTIMEO and SO_SNDTIMEO of `sock` in seconds (the kernel keeps them in clock ticks)."""
    def seconds(option: int) -> float:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, 16)
        whole, micros = struct.unpack("ll" if len(raw) == struct.calcsize("ll") else "qq", raw)
        return whole + micros / 1_000_000
    return seconds(socket.SO_RCVTIMEO), seconds(socket.SO_SNDTIMEO)


# -- a timeout stays a timeout -------------------------------------------------------------------

@pytest.mark.parametrize("step", ["stall", "half"])
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "keep-alive"])
def test_no_answer_in_time_over_plain_http_fails_once_without_a_retry(servers, clients, step,
                                                                       warm):
    """A server that stalls (before answering, or after half a status line) costs one read
    timeout and one request: never a resend on a fresh connection, on a fresh connection or
    on a keep-alive one whose server had answered before."""
    server = servers(["answer", step] if warm else [step])
    client = clients(server.url())
    if warm:
        assert client.call("getMe") is True
    error, took = timed_failure(client.call, "sendMessage", {"chat_id": 1, "text": "x"})
    assert error.reason == "no answer in time"
    assert error.maybe_delivered is True
    assert READ_TIMEOUT * 0.8 <= took <= READ_TIMEOUT + SLACK, took
    assert server.wait_for_requests(2 if warm else 1)
    assert server.accepted == 1
    assert [line.split()[1].rsplit(b"/", 1)[1] for line in server.requests] \
        == ([b"getMe"] if warm else []) + [b"sendMessage"]


def test_a_keep_alive_connection_the_server_closed_is_still_retried_once(servers, clients):
    server = servers(["hang up"])
    client = clients(server.url())
    assert client.call("getMe") is True
    assert client.call("sendMessage", {"chat_id": 1, "text": "x"}) is True
    assert server.accepted == 2
    assert len(server.requests) == 2   # the retry went out once, on the fresh connection


def test_a_send_the_server_never_reads_times_out(clients):
    """A request body the server never takes: the write times out as a read would."""
    with socket.socket() as listener:   # never accepts: the kernel buffers a little, no more
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = clients(f"http://127.0.0.1:{listener.getsockname()[1]}")
        text = "x" * (32 * 1024 * 1024)   # far more than both sides' socket buffers
        error, took = timed_failure(client.call, "sendMessage", {"chat_id": 1, "text": text})
    assert error.reason == "no answer in time"
    assert took <= 20 * READ_TIMEOUT + SLACK, took   # bounded (each piece gets the timeout)


# -- which timeout a socket has ------------------------------------------------------------------

def test_a_plain_http_socket_blocks_with_the_read_timeout_in_the_kernel(servers, clients):
    server = servers()
    client = clients(server.url(), read_timeout=2)
    assert client.call("getMe") is True
    sock = idle_socket(client)
    assert sock.gettimeout() is None   # blocking mode: one system call per recv
    assert kernel_timeouts(sock) == pytest.approx((2.0, 2.0), abs=0.02)
    assert client.call("getUpdates", {"timeout": 3}, timeout=3.25) is True   # a long poll
    assert idle_socket(client) is sock
    assert kernel_timeouts(sock) == pytest.approx((3.25, 3.25), abs=0.02)
    assert client.call("sendMessage", {"chat_id": 1, "text": "x"}) is True
    assert kernel_timeouts(sock) == pytest.approx((2.0, 2.0), abs=0.02)
    assert sock.gettimeout() is None
    assert server.accepted == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A throwaway self-signed certificate for 127.0.0.1 (key and certificate in one file)."""
    folder = tmp_path_factory.mktemp("tls")
    pem = folder / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(folder / "key.pem"), "-out", str(pem)],
        check=True, capture_output=True, timeout=60)
    pem.write_text(pem.read_text() + (folder / "key.pem").read_text())
    return pem


@pytest.fixture
def tls_server(servers, certificate, monkeypatch):
    """A ScriptedServer over TLS whose certificate the clients made after it trust."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))   # read by create_default_context
    for name in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def make(steps: list[str] | None = None) -> ScriptedServer:
        return servers(steps, context=context)
    return make


def test_a_tls_socket_keeps_its_own_timeout(tls_server, clients):
    """Over TLS the socket keeps settimeout and no kernel timeout: a blocking SSL socket would
    never time out."""
    server = tls_server()
    client = clients(server.url("https"), read_timeout=2)
    assert client.call("getMe") is True
    sock = idle_socket(client)
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.gettimeout() == 2.0
    assert kernel_timeouts(sock) == (0.0, 0.0)
    assert client.call("getUpdates", {"timeout": 3}, timeout=3.25) is True
    assert (sock.gettimeout(), kernel_timeouts(sock)) == (3.25, (0.0, 0.0))
    assert server.accepted == 1


def test_no_answer_in_time_over_tls_fails_once_without_a_retry(tls_server, clients):
    server = tls_server(["answer", "stall"])
    client = clients(server.url("https"))
    assert client.call("getMe") is True
    error, took = timed_failure(client.call, "sendMessage", {"chat_id": 1, "text": "x"})
    assert error.reason == "no answer in time"
    assert READ_TIMEOUT * 0.8 <= took <= READ_TIMEOUT + SLACK, took
    assert server.wait_for_requests(2)
    assert (server.accepted, len(server.requests)) == (1, 2)


# -- connection permits --------------------------------------------------------------------------

def test_three_times_as_many_callers_as_connections_share_the_pool(servers, clients):
    server = servers(delay=0.05)   # answers overlap
    client = clients(server.url(), pool_size=2, read_timeout=5)
    start = threading.Barrier(6, timeout=10)
    results: list[object] = []

    def call(chat: int) -> None:
        start.wait()
        for _ in range(3):
            results.append(client.call("sendMessage", {"chat_id": chat, "text": "x"}))

    callers = [threading.Thread(target=call, args=(chat,)) for chat in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert results == [True] * 18
    assert 1 <= server.accepted <= 2, server.accepted
    assert len(client._idle) == server.accepted   # every one kept, none lost


def test_a_call_that_gets_no_permit_in_time_fails_as_not_sent(servers, clients):
    server = servers(["stall"])
    # a call waits for a permit as long as a call may take: 0.1 + 0.4 s here
    client = clients(server.url(), pool_size=1, connect_timeout=0.1, read_timeout=0.4)
    outcomes: list[BaseException] = []

    def hold_the_only_connection() -> None:
        try:
            client.call("getMe", timeout=5)
        except NetworkError as exc:
            outcomes.append(exc)

    busy = threading.Thread(target=hold_the_only_connection)
    busy.start()
    assert server.wait_for_requests(1)
    error, took = timed_failure(client.call, "sendMessage", {"chat_id": 1, "text": "x"})
    assert (error.maybe_delivered, error.reason) == (False, "no free connection in time")
    assert took <= 0.5 + SLACK
    server.close()   # the stalled call ends (its connection closes)
    busy.join(10)
    assert [type(exc) for exc in outcomes] == [NetworkError]
    assert len(server.requests) == 1
