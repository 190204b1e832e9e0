"""The daemon's small HTTP server: notification hooks, /healthz and /metrics, on 127.0.0.1 by default.

A hook POST is authenticated (key in a header, compared in constant time as bytes), its
JSON body rendered into the hook's template, and one notification per recipient stored
durably in the inbox before the answer goes back; the chats' delegates send them through
the same rate-limited sender as replies. Bodies are capped, connections are capped (in
total and per client address), each request has a total deadline (not one per read, so a
client sending a byte a second is cut off), and an unknown hook and a wrong key get the
same answer.

A hook's recipients may come from the POSTed data (`recipients: "{{ data.chat_ids }}"`):
all or nothing, one that is not a chat id answers 400 naming it, and nothing is queued.

A POST to /callbacks/TOKEN (a conversation's callback URL, handed to an upstream by a
request step) is a late result for the chat that made the token: it is stored in that
chat's inbox before the 202, an unknown or expired token gets 404 with its body unread, and
the token is never logged (no path is). Bodies are bounded as for hooks, and all callback
POSTs together share one rate limit.

The server knows the daemon only through a `HookDoor`: find a hook, render a reply, queue
notifications, deliver callback results, report status and counters. It imports neither
the app nor the pipeline.
"""

from __future__ import annotations

import hmac
import http.client
import io
import json
import logging
import selectors
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
MAX_PER_CLIENT = 16
REQUEST_TIMEOUT = 10.0          # seconds for a whole request: request line, headers and body
LINGER_SECONDS = 1.0            # after the answer, how long unread input is drained before close
LINGER_BYTES = MAX_BODY
MAX_LINE = 8 * 1024
MAX_HEAD = 16 * 1024            # a request's header lines together (http.server alone allows 6 MiB)
MAX_TRAILERS = 32
MAX_DEPTH = 32                  # nesting of a POSTed JSON body's arrays and objects
CALLBACK_PATH = "/callbacks/"
CALLBACK_RATE = 600             # accepted callback POSTs per minute, all tokens together
CALLBACK_BUCKET = "/callbacks"  # the limiter's name for them (no hook name has a slash)
REFUSED_BODY = object()         # _json_of's answer for a body it refused (None is JSON null)
_TOO_DEEP = object()
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
           b"Connection: close\r\n\r\n")


@dataclass(frozen=True)
class HookDoor:
    """What the hook server may do with the daemon, and nothing more."""

    find_hook: Callable[[str], Any]                    # the running bot's hook by name, or None
    render: Callable[[Any, dict], dict]                # (response, context) -> sendMessage params
    env: Callable[[], dict]                            # the bot's env values for templates
    queue: Callable[[list[int], dict], None]           # store notifications durably, wake chats
    status: Callable[[], dict]                         # delegates, backlog, last poll, last error
    counters: Callable[[], dict[str, int]]             # the daemon's counters for /metrics
    health_limit: Callable[[], float]                  # seconds without a poll before 503
    # (hook, context) -> the chats of this POST; raises RecipientError or TemplateError
    recipients: Callable[[Any, dict], list[int]] = lambda hook, context: list(hook.recipients)
    find_callback: Callable[[str], bool] = lambda token: False    # a live callback token?
    deliver_callback: Callable[[str, Any], bool] = lambda token, data: False  # queue a result


class HookLimiter:
    """Accepted POSTs per hook per minute: a token bucket refilled continuously."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, name: str, per_minute: int) -> bool:
        with self._lock:
            now = time.monotonic()
            tokens, last = self._buckets.get(name, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
            if tokens < 1:
                self._buckets[name] = (tokens, now)
                return False
            self._buckets[name] = (tokens - 1, now)
            return True


class ConnectionSlots:
    """Open connections, capped in total and per client address."""

    def __init__(self, total: int, per_client: int):
        self.total = total
        self.per_client = per_client
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def take(self, address: str) -> bool:
        with self._lock:
            if sum(self._open.values()) >= self.total or self._open.get(address, 0) >= self.per_client:
                return False
            self._open[address] = self._open.get(address, 0) + 1
            return True

    def give_back(self, address: str) -> None:
        with self._lock:
            left = self._open.get(address, 0) - 1
            if left > 0:
                self._open[address] = left
            else:
                self._open.pop(address, None)


class HookServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, door: HookDoor, address: tuple[str, int], *,
                 request_timeout: float = REQUEST_TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 max_per_client: int = MAX_PER_CLIENT):
        self.door = door
        self.request_timeout = request_timeout
        self.limiter = HookLimiter()
        self.slots = ConnectionSlots(max_connections, max_per_client)
        self.accepted = 0
        # shutdown() wakes the serving thread through this pair: no periodic poll when idle
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = False
        self._served = threading.Event()
        self._served.set()  # nothing to wait for until serve_forever runs
        if ":" in address[0]:   # an IPv6 address (config and check print it as [::1]:PORT)
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        # the cap holds here, in the accepting thread: a refused connection never gets a thread
        if not self.slots.take(client_address[0]):
            _refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:   # no thread (TasksMax, memory): its slot is not lost with it
            self.slots.give_back(client_address[0])
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.give_back(client_address[0])

    def shutdown_request(self, request):
        """Close after the answer is out: FIN first, then drain what the client still sends.

        Closing with unread input makes the kernel answer with a reset, which can destroy
        the answer in flight (a refused chunked body still arriving, say).
        """
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        _drain(request, LINGER_SECONDS, LINGER_BYTES)
        self.close_request(request)

    def handle_error(self, request, client_address):
        log.debug("hook server: connection from %s failed", client_address[0], exc_info=True)

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept connections until shutdown(); sleeps in select() with no timeout meanwhile.

        socketserver's own loop wakes every poll_interval to look for a shutdown request;
        here shutdown() writes to a wake-up socket instead, so an idle server never wakes.
        """
        if self._stopping:
            return
        self._served.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_reader, selectors.EVENT_READ)
                while not self._stopping:
                    ready = selector.select(poll_interval)
                    if self._stopping:
                        break
                    if any(key.fileobj is self for key, _ in ready):
                        # socketserver's own serve_forever calls it; its stubs leave it out
                        self._handle_request_noblock()  # type: ignore[attr-defined]
                    self.service_actions()
        finally:
            self._served.set()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait until it has returned (at once: no poll to wait for)."""
        self._stopping = True
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # already closed: nothing is serving
            pass
        self._served.wait()

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="hook-server", daemon=True).start()
        host, port = self.server_address[:2]
        log.info("hooks, /healthz and /metrics on http://%s:%s", host, port)


def _refuse(request: socket.socket) -> None:
    """503 and close, without blocking the accepting thread."""
    try:
        request.setblocking(False)
        _drain_available(request)
        request.sendall(REFUSED)
        request.shutdown(socket.SHUT_WR)
        _drain_available(request)
    except OSError:
        pass
    request.close()


def _drain_available(request: socket.socket) -> None:
    for _ in range(16):
        try:
            if not request.recv(4096):
                return
        except OSError:  # BlockingIOError: nothing more has arrived
            return


def _drain(request: socket.socket, seconds: float, limit: int) -> None:
    """Read and drop input until the client closes, `limit` bytes, or `seconds` pass."""
    deadline = time.monotonic() + seconds
    read = 0
    while read < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            request.settimeout(remaining)
            data = request.recv(4096)
        except OSError:
            return
        if not data:
            return
        read += len(data)


class _DeadlineReader(io.RawIOBase):
    """A socket's input where every read ends by the request's deadline, not a per-read timeout."""

    def __init__(self, sock: socket.socket, deadline: Callable[[], float]):
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self._deadline() - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _RequestReader(io.BufferedReader):
    """Buffered request input that can cap the bytes its lines take (while headers are read)."""

    head_left: int | None = None   # header bytes still allowed; None: no cap (a body is read)

    def readline(self, size: int | None = -1) -> bytes:
        if self.head_left is None:
            return super().readline(size)
        wanted = self.head_left + 1 if size is None or size < 0 else min(size, self.head_left + 1)
        line = super().readline(wanted)
        self.head_left -= len(line)
        if self.head_left < 0:
            # http.server answers 431 to this, and closes the connection
            raise http.client.LineTooLong(f"header section over {MAX_HEAD} bytes")
        return line


class _Handler(BaseHTTPRequestHandler):
    server: HookServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.deadline = time.monotonic() + self.server.request_timeout
        self.rfile.close()
        self.rfile = _RequestReader(_DeadlineReader(self.connection, lambda: self.deadline))

    def parse_request(self) -> bool:
        # the cap on the head holds here: at most MAX_HEAD bytes of header lines are kept in
        # memory per request, whatever http.server's own per-line and line-count limits allow
        assert isinstance(self.rfile, _RequestReader)
        self.rfile.head_left = MAX_HEAD
        try:
            return super().parse_request()
        finally:
            self.rfile.head_left = None

    def handle_one_request(self) -> None:
        # each request, and the idle wait before it, must end within request_timeout: reads
        # past the deadline raise TimeoutError, which http.server answers by closing
        self.deadline = time.monotonic() + self.server.request_timeout
        self.expects_continue = False
        super().handle_one_request()

    def log_message(self, *args: Any) -> None:
        pass  # paths can carry a ?key=: never log them

    def handle_expect_100(self) -> bool:
        # http.server would say "100 Continue" as soon as the head is read; here it is said
        # in _body, after the key or the callback token was checked: a caller who may not
        # post is answered 401/404 without ever being asked for its body
        self.expects_continue = True
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self._declares_body():
            # never read: on a kept-alive connection it would be taken for the next request
            self.close_connection = True
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            healthy, body = health(self.server.door)
            self._json(200 if healthy else 503, body)
        elif path == "/metrics":
            self._reply(200, metrics(self.server.door, self.server).encode(),
                        "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._json(404, {"ok": False, "error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        door = self.server.door
        parts = urllib.parse.urlsplit(self.path)
        if parts.path.startswith(CALLBACK_PATH):
            return self._post_callback(parts.path[len(CALLBACK_PATH):])
        if not parts.path.startswith("/hooks/"):
            self.close_connection = True
            return self._json(404, {"ok": False, "error": "not found"})
        name = parts.path[len("/hooks/"):]
        hook = door.find_hook(name)
        if hook is None or not _key_matches(self._given_key(parts.query), hook.key):
            self.close_connection = True  # its body is never read: the connection can't go on
            return self._json(401, {"ok": False, "error": "unauthorized"})
        body = self._body()
        if body is None:
            return None
        if not self.server.limiter.allow(name, hook.rate_limit):
            return self._json(429, {"ok": False, "error": "too many requests for this hook"},
                              {"Retry-After": "60"})
        data = self._json_of(body)
        if data is REFUSED_BODY:
            return None
        from .definitions import RecipientError  # jinja2: only once a hook is posted
        from .templates import EMOJI, TemplateError
        context = {"data": data, "env": door.env(), "emoji": EMOJI}
        try:
            chats = door.recipients(hook, context)
        except RecipientError as exc:
            return self._json(400, {"ok": False, "error": str(exc)})
        except TemplateError as exc:
            reason = str(exc)[len(exc.where) + 2:]   # the bot's file:line is no business of the poster
            return self._json(400, {"ok": False,
                                    "error": f"the hook's recipients failed on this data: {reason}"})
        try:
            message = door.render(hook.response, context)
        except TemplateError as exc:
            log.error("hook %s: %s", name, exc)
            return self._json(422, {"ok": False, "error": "the hook's template failed on this data"})
        # all or nothing: every recipient was checked above, and one commit queues them all
        door.queue(chats, {"hook": name, "message": message})
        self.server.accepted += 1
        return self._json(202, {"ok": True, "queued": len(chats)})

    def _post_callback(self, token: str) -> None:
        """A late result for a conversation: 202 once it is in that chat's inbox, 404 for a
        token that is unknown or expired (its body unread)."""
        door = self.server.door
        if not door.find_callback(token):
            self.close_connection = True  # its body is never read: the connection can't go on
            return self._json(404, {"ok": False, "error": "unknown or expired callback"})
        body = self._body()
        if body is None:
            return None
        if not self.server.limiter.allow(CALLBACK_BUCKET, CALLBACK_RATE):
            return self._json(429, {"ok": False, "error": "too many callback results"},
                              {"Retry-After": "60"})
        data = self._json_of(body)
        if data is REFUSED_BODY:
            return None
        if not door.deliver_callback(token, data):  # expired meanwhile
            return self._json(404, {"ok": False, "error": "unknown or expired callback"})
        return self._json(202, {"ok": True})

    def _json_of(self, body: bytes) -> Any:
        """The body as JSON ({} when empty), or REFUSED after answering 400 why it is not."""
        try:
            data = json.loads(body, parse_constant=_refuse_constant) if body.strip() else {}
        except ValueError as exc:
            self._json(400, {"ok": False, "error": f"the body is not JSON: {exc}"})
            return REFUSED_BODY
        except RecursionError:
            data = _TOO_DEEP   # json itself gave up on the nesting
        if data is _TOO_DEEP or _depth(data) > MAX_DEPTH:
            self._json(400, {"ok": False, "error": f"the body nests deeper than {MAX_DEPTH} levels"})
            return REFUSED_BODY
        # what is accepted can be stored as JSON text and sent to Telegram as UTF-8: a lone
        # surrogate (\ud800) could be neither, and would fail only after the 202
        if _has_lone_surrogate(data):
            self._json(400, {"ok": False, "error": "the body is not JSON: a string holds a lone "
                             "surrogate (\\ud800-\\udfff), which is no Unicode text"})
            return REFUSED_BODY
        return data

    def _given_key(self, query: str) -> str | None:
        scheme, _, credentials = self.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":   # an auth scheme's name is case-insensitive (RFC 9110)
            return credentials.strip()
        if self.headers.get("X-Chatdaemon-Key"):
            return self.headers["X-Chatdaemon-Key"].strip()
        values = urllib.parse.parse_qs(query).get("key")
        return values[0] if values else None

    def _declares_body(self) -> bool:
        lengths = self.headers.get_all("Content-Length") or []
        return bool(self.headers.get_all("Transfer-Encoding")) or \
            any(value.strip() not in ("", "0") for value in lengths)

    def _body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read.

        Framing must be unambiguous: one Transfer-Encoding that is `chunked` and no
        Content-Length, or Content-Lengths that agree and are plain digits. Anything a proxy
        in front could read with other bounds is refused, never guessed at.
        """
        codings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if codings:
            if len(codings) > 1 or codings[0].strip().lower() != "chunked" or lengths:
                self._refuse_body(411, "send the body with a Content-Length or chunked")
                return None
            self._ask_for_body()
            return self._chunked_body()
        length = _content_length(lengths)
        if length is None:
            self._refuse_body(400, "bad Content-Length")
            return None
        if length > MAX_BODY:
            self._refuse_body(413, f"the body is larger than {MAX_BODY} bytes")
            return None
        self._ask_for_body()
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client closed mid-body: nobody to answer
            return None
        return body

    def _ask_for_body(self) -> None:
        """Say "100 Continue" to a client waiting for it: only now is its body wanted."""
        if self.expects_continue:
            self.expects_continue = False
            self.send_response_only(100)
            self.end_headers()

    def _chunked_body(self) -> bytes | None:
        """Decode Transfer-Encoding: chunked, at most MAX_BODY bytes, trailers skipped."""
        body = bytearray()
        while True:
            size = _chunk_size(self.rfile.readline(MAX_LINE))
            if size is None:
                self._refuse_body(400, "bad chunked encoding")
                return None
            if size == 0:
                break
            if len(body) + size > MAX_BODY:
                self._refuse_body(413, f"the body is larger than {MAX_BODY} bytes")
                return None
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                self.close_connection = True  # the client closed mid-chunk: nobody to answer
                return None
            body += chunk
            if self.rfile.readline(MAX_LINE) not in (b"\r\n", b"\n"):
                self._refuse_body(400, "bad chunked encoding")
                return None
        for _ in range(MAX_TRAILERS):
            if self.rfile.readline(MAX_LINE) in (b"\r\n", b"\n", b""):
                return bytes(body)
        self._refuse_body(400, "too many trailer lines")
        return None

    def _refuse_body(self, status: int, error: str) -> None:
        self.close_connection = True  # the body is left unread: the connection can't go on
        self._json(status, {"ok": False, "error": error})

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        self._reply(status, json.dumps(body, ensure_ascii=False).encode(), "application/json",
                    headers)

    def _reply(self, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _depth(value: Any) -> int:
    """How deep arrays and objects nest in parsed JSON (a scalar is 0), without recursion."""
    deepest = 0
    todo = [(value, 1)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) \
            else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:   # past the bound it is refused anyway: stop looking
            todo.extend((child, level + 1) for child in children)
    return deepest


def _content_length(values: list[str]) -> int | None:
    """The length the Content-Length headers give (0 without one), or None when one is not
    plain ASCII digits (int() would take "+5", "1_0" and other scripts' digits) or two
    disagree."""
    if not values:
        return 0
    texts = {value.strip() for value in values}
    if len(texts) > 1:
        return None
    (text,) = texts
    if not text or len(text) > 18 or not all(c in "0123456789" for c in text):
        return None
    return int(text)


def _refuse_constant(name: str) -> Any:
    """json.loads' hook for NaN, Infinity and -Infinity, which JSON does not have."""
    raise ValueError(f"{name} is not a JSON value")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in parsed JSON (keys too) cannot be encoded as UTF-8: the
    encoding it is stored and sent in, tried once on the whole (its depth is capped)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _chunk_size(line: bytes) -> int | None:
    """A chunk-size line's value, or None when it is not one."""
    if not line.endswith(b"\n"):
        return None
    text = line.split(b";", 1)[0].strip()
    if not text or len(text) > 8 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        return None
    return int(text, 16)


def _key_matches(given: str | None, key: str) -> bool:
    """Constant-time comparison as bytes: a non-ASCII key is simply wrong, never an error.

    Whitespace around either is no part of the key: a header's value arrives stripped, so a
    key written with a trailing space or line break (a quoted YAML value, a file read into
    a variable) could otherwise never be presented.
    """
    if given is None:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                               key.strip().encode("utf-8"))


def health(door: HookDoor) -> tuple[bool, dict]:
    status = door.status()
    age = status["last_poll_age"]
    healthy = age is not None and age <= door.health_limit()
    return healthy, {"ok": healthy, "last_poll_seconds_ago": None if age is None else round(age, 1),
                     "backlog": status["backlog"], "delegates": status["delegates"],
                     "last_error": status["last_error"]}


COUNTERS = [
    ("updates_received_total", "counter", "Updates stored from getUpdates"),
    ("updates_handled_total", "counter", "Updates handled by a chat's handler"),
    ("updates_failed_total", "counter", "Updates whose handler raised"),
    ("replies_sent_total", "counter", "Messages sent to Telegram"),
    ("telegram_429_total", "counter", "429 Too Many Requests answers"),
    ("telegram_retries_total", "counter", "Sends retried after 5xx or network errors"),
]


def metrics(door: HookDoor, server: HookServer | None = None) -> str:
    """The daemon's counters in Prometheus' text format."""
    status = door.status()
    counters = door.counters()
    values: list[tuple[str, str, str, Any]] = [
        (name, kind, text, counters.get(name, 0)) for name, kind, text in COUNTERS]
    values += [
        ("hooks_accepted_total", "counter", "Hook POSTs accepted", server.accepted if server else 0),
        ("queue_depth", "gauge", "Updates stored and not yet handled", status["backlog"]),
        ("delegates_alive", "gauge", "Chat threads running", status["delegates"]),
        ("chats_waiting", "gauge", "Chats waiting for a free thread", status["waiting_chats"]),
        ("last_poll_age_seconds", "gauge", "Seconds since getUpdates last answered",
         -1 if status["last_poll_age"] is None else round(status["last_poll_age"], 3)),
    ]
    lines = []
    for name, kind, text, value in values:
        lines += [f"# HELP chatdaemon_{name} {text}", f"# TYPE chatdaemon_{name} {kind}",
                  f"chatdaemon_{name} {value}"]
    return "\n".join(lines) + "\n"
