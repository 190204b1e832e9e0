"""The Bot API client: one HTTP call to Telegram, its answer or a typed error.

It speaks HTTP/1.1 over a small pool of keep-alive connections with the standard library's
http.client: on a Pi every reply costs one such call, and `requests` spent more CPU per
call than the rest of the daemon together (proxy settings are read once at start instead
of per call). The pipeline's own HTTP requests still use `requests`. A file upload
(`call_multipart`) goes over the same pool with the same typed errors, so the sender
retries it exactly as a text; urllib3 encodes its multipart/form-data body.

The token is part of every request path, so no exception or log record from here may carry
the path: connection errors are re-raised with the method name only.
"""

from __future__ import annotations

import http.client
import json
import logging
import mimetypes
import os
import queue
import re
import secrets
import socket
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any, Protocol

from .errors import BadAnswer, NetworkError, RetryAfter, TelegramError
from .leanhttp import Connection, LeanConnection, LeanHTTPSConnection

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.telegram.org"
NOT_JSON = "the answer is not a Bot API answer (no JSON with `ok`)"
TOO_DEEP = "the answer is nested too deeply to be a Bot API answer"
# The largest answer read. getUpdates returns at most 100 updates and one update is at most
# tens of KB (4,096 characters of text, escaped, plus entities), so every real batch fits;
# a bigger body is refused after reading at most this much, which bounds the memory a bad
# answer can take on a Pi (the whole body was read before: 100 MB peaked at 234 MB RSS).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
TOO_BIG = f"the answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB"
TOKEN_IN_BODY = "refused before sending: the request carries the bot's own token"
HEAD_BYTES = 4096   # the part of a refused answer kept for the caller (the first update's id)
_METHOD_NAME = re.compile(r"[A-Za-z]{1,64}")
TOKEN_PATTERN = re.compile(r"\d{3,}:[A-Za-z0-9_-]{10,}")
USER_AGENT = "chatdaemon"
# Open connections to the Bot API at most, the long poll's included: against Telegram each is
# a TLS session. Sending is bound by the rate limits (about 30/s) and round trips, not by
# connections: 64 chat threads answered no faster with 64 of them than with 8.
MAX_CONNECTIONS = 8
# The read timeout of an upload: up to 50 MB go out from a Pi's uplink before Telegram answers.
UPLOAD_TIMEOUT = 120.0
# Uploads in flight at once: they share the connections with every chat's replies, and eight
# slow 50 MB uploads would hold all of them. A third upload waits for one of the two.
MAX_UPLOADS = 2
# A body larger than this is written in pieces of this size, each with the whole timeout: a
# slow uplink gets a big upload through as long as it keeps moving.
WRITE_PIECE = 64 * 1024


class BotAPI(Protocol):
    """What the rest of chatdaemon needs from Telegram: one call."""

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        ...


def looks_like_token(token: str) -> bool:
    return bool(TOKEN_PATTERN.fullmatch(token))


def api_url_problem(api_url: str) -> str | None:
    """Why `api_url` cannot be a Bot API base URL, or None when it can."""
    parts = urllib.parse.urlsplit(api_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the Bot API URL must look like https://host[:port], not {api_url!r}"
    try:
        _ = parts.port
    except ValueError:
        return f"the Bot API URL has a bad port: {api_url!r}"
    return None


class _NotSent(Exception):
    """The connection failed before the request could have reached the server."""


class TelegramClient:
    """Calls the Bot API at `api_url` over pooled keep-alive connections."""

    def __init__(self, token: str, api_url: str = DEFAULT_API_URL, *,
                 connect_timeout: float = 10.0, read_timeout: float = 30.0,
                 pool_size: int = MAX_CONNECTIONS):
        parts = urllib.parse.urlsplit(api_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the Bot API URL must be http:// or https:// with a host")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = f"{parts.path}/bot{token}/"
        self._token = token.encode()   # never sent in a body: see _post
        self.where = f"{self._scheme}://{self._host}:{self._port}"   # for logs: never the path
        self._proxy = _proxy_for(api_url)
        self._context = ssl.create_default_context() if parts.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # A call holds one of pool_size permits while it uses a connection, and takes an idle
        # one before it opens another. Both are C-level (SimpleQueue, list): a semaphore and a
        # LifoQueue are Python code on a Condition, several lock hand-offs per call.
        self._permits: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(pool_size):
            self._permits.put(None)
        self._idle: list[Connection] = []   # a stack: the warmest connection is used first
        self._upload_slots = threading.BoundedSemaphore(MAX_UPLOADS)

    def __repr__(self) -> str:
        return f"TelegramClient({self._scheme}://{self._host}:{self._port}, <token redacted>)"

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        """POST `params` as JSON to `method`; return `result` or raise a typed error.

        `timeout` is the read timeout; a long poll passes its poll timeout plus a margin.
        """
        body = json.dumps(params or {}, ensure_ascii=False).encode()
        return self._post(method, (body,), "application/json",
                          self.read_timeout if timeout is None else timeout)

    def call_multipart(self, method: str, fields: dict[str, str],
                       files: dict[str, tuple[str, bytes]], timeout: float | None = None) -> Any:
        """POST text `fields` and `files` (name → (filename, content)) as multipart/form-data;
        return `result` or raise the same typed errors as `call`.

        urllib3 encodes the body with a random placeholder for each file's content, and the
        content itself goes out in its place: an upload holds its file once, never a copy
        inside an encoded body as well. `timeout` is the read timeout, UPLOAD_TIMEOUT by
        default: each piece written and the wait for the answer get that long.
        """
        from urllib3.filepost import encode_multipart_formdata  # only bots that upload pay

        marks = {name: b"\0file-" + secrets.token_hex(16).encode() + b"\0" for name in files}
        parts: list[tuple[str, Any]] = list(fields.items())
        parts += [(name, (filename, marks[name], _mime_type(filename)))
                  for name, (filename, _) in files.items()]
        skeleton, content_type = encode_multipart_formdata(parts)
        body: list[bytes] = []
        for name, (_, content) in files.items():   # the files follow the fields, in order
            before, found, skeleton = skeleton.partition(marks[name])
            assert found, "urllib3 wrote each file's content where its part is"
            body += [before, content]
        body.append(skeleton)
        read = UPLOAD_TIMEOUT if timeout is None else timeout
        # the invariant: at most MAX_UPLOADS connections carry uploads, so replies always
        # find one; an upload that cannot start in time fails as not sent (and is retried)
        if not self._upload_slots.acquire(timeout=read):
            raise NetworkError(method, "no free upload slot in time", maybe_delivered=False)
        try:
            return self._post(method, tuple(body), content_type, read)
        finally:
            self._upload_slots.release()

    def _post(self, method: str, body: tuple[bytes, ...], content_type: str, read: float) -> Any:
        if not _METHOD_NAME.fullmatch(method):
            raise TelegramError(repr(method)[:70], 400, "not a Bot API method name")
        # the invariant: the token leaves only in the request path, to Telegram. A message
        # or a file carrying it (a template that found it, a token file a templated
        # `document:` path reached) is refused before anything is sent
        if self._token and any(self._token in part for part in body):
            raise TelegramError(method, 400, TOKEN_IN_BODY)
        # the invariant: at most pool_size connections are open; a call beyond waits for a
        # permit (no longer than a call may take) and otherwise fails as not sent. A call
        # opens a connection only when none is idle, so open ones never outnumber permits.
        try:
            self._permits.get(timeout=self.connect_timeout + self.read_timeout)
        except queue.Empty:
            raise NetworkError(method, "no free connection in time", maybe_delivered=False) from None
        try:
            status, data = self._exchange(method, body, content_type, read, reuse=True)
        except _NotSent as exc:
            raise NetworkError(method, str(exc), maybe_delivered=False, where=self.where) from None
        finally:
            self._permits.put(None)
        return _result_of(method, status, data)

    def _exchange(self, method: str, body: tuple[bytes, ...], content_type: str, read: float,
                  reuse: bool) -> tuple[int, bytes]:
        conn, reused = self._connection(reuse)
        try:
            conn.set_io_timeout(read)
            conn.request("POST", self._target(method), _pieces(body), {
                "Content-Type": content_type, "Content-Length": str(sum(map(len, body))),
                "User-Agent": USER_AGENT})
            response = conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            conn.close()
            if reused:  # a keep-alive connection the server had closed: try a fresh one once
                return self._exchange(method, body, content_type, read, reuse=False)
            raise NetworkError(method, _reason(exc), where=self.where) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise NetworkError(method, _reason(exc), where=self.where) from None
        try:
            data, too_big = _read_bounded(response)
        except (OSError, http.client.HTTPException) as exc:
            # the invariant: a call the server began to answer is never sent again (it had
            # the request: a send went out); a reset in the body fails as maybe delivered
            conn.close()
            raise NetworkError(method, _reason(exc), where=self.where) from None
        if too_big:
            conn.close()  # the rest of the body is never read
            raise BadAnswer(method, response.status, TOO_BIG, BadAnswer.TOO_BIG, data[:HEAD_BYTES])
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return response.status, data

    def _target(self, method: str) -> str:
        if self._proxy and self._scheme == "http":
            return f"http://{self._host}:{self._port}{self._prefix}{method}"
        return self._prefix + method

    def _connection(self, reuse: bool) -> tuple[Connection, bool]:
        if reuse:
            try:
                return self._idle.pop(), True
            except IndexError:
                pass
        host, port = self._proxy or (self._host, self._port)
        # Plain HTTP (a local Bot API server, a proxy without a tunnel): a blocking socket with
        # the kernel's timeouts, one GIL release per recv or send instead of two (poll, then
        # the call). TLS (Telegram itself, or through a proxy's CONNECT tunnel) keeps the
        # socket's own timeout: CPython's ssl module retries SSL_read on WANT_READ forever on
        # a blocking socket, so SO_RCVTIMEO would never end a hung long poll.
        conn: Connection
        if self._scheme == "https":
            conn = LeanHTTPSConnection(host, port, timeout=self.connect_timeout,
                                       context=self._context)
            if self._proxy:
                conn.set_tunnel(self._host, self._port)
        else:
            conn = LeanConnection(host, port, timeout=self.connect_timeout)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _NotSent(_reason(exc)) from None
        return conn, False

    def _give_back(self, conn: Connection) -> None:
        self._idle.append(conn)   # before the permit goes back: never more than pool_size

    def close(self) -> None:
        while True:
            try:
                self._idle.pop().close()
            except IndexError:
                return


def _proxy_for(api_url: str) -> tuple[str, int] | None:
    """The proxy from the environment (HTTPS_PROXY, …) for the API URL, read once."""
    if sys.platform not in ("darwin", "win32") \
            and not any(name.lower().endswith("_proxy") for name in os.environ):
        return None   # all getproxies() reads here; urllib.request alone is 1.1 MB resident
    import urllib.request
    host = urllib.parse.urlsplit(api_url).hostname or ""
    if urllib.request.proxy_bypass(host):
        return None
    scheme = urllib.parse.urlsplit(api_url).scheme
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy:
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return (parts.hostname, parts.port or 8080) if parts.hostname else None


def _read_bounded(response: http.client.HTTPResponse) -> tuple[bytes, bool]:
    """(the body, False), or (its first bytes, True) when it is over MAX_ANSWER_BYTES.

    At most MAX_ANSWER_BYTES + 1 bytes are read whatever the server sends, and none past
    HEAD_BYTES when its Content-Length already says the body is too big.
    """
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        return response.read(HEAD_BYTES), True
    data = response.read(MAX_ANSWER_BYTES + 1)
    return data, len(data) > MAX_ANSWER_BYTES


def _result_of(method: str, status: int, data: bytes) -> Any:
    try:
        # decoded first: json.loads on bytes guesses their encoding, a cost on every answer;
        # the Bot API answers in UTF-8 (anything else fails here as not JSON)
        answer = json.loads(data.decode())
    except ValueError:   # UnicodeDecodeError included
        raise BadAnswer(method, status, NOT_JSON, BadAnswer.NOT_JSON, data[:HEAD_BYTES]) from None
    except RecursionError:  # the C decoder stops at the recursion limit; the stack is safe
        raise BadAnswer(method, status, TOO_DEEP, BadAnswer.TOO_DEEP, data[:HEAD_BYTES]) from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise BadAnswer(method, status, NOT_JSON, BadAnswer.NOT_JSON, data[:HEAD_BYTES])
    if answer.get("ok") is True:
        return answer.get("result")
    code = answer.get("error_code")
    status = code if isinstance(code, int) else status
    description = str(answer.get("description", ""))
    parameters = answer.get("parameters") if isinstance(answer.get("parameters"), dict) else {}
    if status == 429:
        raise RetryAfter(method, status, description, parameters)
    raise TelegramError(method, status, description, parameters)


def _pieces(body: tuple[bytes, ...]) -> bytes | Iterator[memoryview]:
    """A small body of one part as it is; else its parts in slices of at most WRITE_PIECE
    (views: nothing is copied)."""
    if len(body) == 1 and len(body[0]) <= WRITE_PIECE:
        return body[0]
    return (memoryview(part)[start:start + WRITE_PIECE]
            for part in body for start in range(0, len(part), WRITE_PIECE))


def _mime_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _reason(exc: BaseException) -> str:
    """A short cause without anything that could contain the request path."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer in time"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or type(exc).__name__})"
    if isinstance(exc, socket.gaierror):
        return "name resolution failed"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
