"""The daemon's small HTTP server: notification hooks, /healthz and /metrics, on 127.0.0.1 by default.

A hook POST is authenticated (key in a header, compared in constant time as bytes), its
JSON body rendered into the hook's template, and one notification per recipient stored
durably in the inbox before the answer goes back; the chats' delegates send them through
the same rate-limited sender as replies. Bodies are capped, connections are capped, and
an unknown hook and a wrong key get the same answer.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .pipeline import render_reply
from .templates import EMOJI, TemplateError

if TYPE_CHECKING:
    from .app import App

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 10.0


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


class HookServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, app: App, address: tuple[str, int]):
        self.app = app
        self.limiter = HookLimiter()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.accepted = 0
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        log.debug("hook server: connection from %s failed", client_address[0], exc_info=True)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                         name="hook-server", daemon=True).start()
        host, port = self.server_address[:2]
        log.info("hooks, /healthz and /metrics on http://%s:%s", host, port)


class _Handler(BaseHTTPRequestHandler):
    server: HookServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass  # paths can carry a ?key=: never log them

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            healthy, body = health(self.server.app)
            self._json(200 if healthy else 503, body)
        elif path == "/metrics":
            self._reply(200, metrics(self.server.app, self.server).encode(),
                        "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._json(404, {"ok": False, "error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        parts = urllib.parse.urlsplit(self.path)
        if not parts.path.startswith("/hooks/"):
            self.close_connection = True
            return self._json(404, {"ok": False, "error": "not found"})
        name = parts.path[len("/hooks/"):]
        hook = self.server.app.bot.hooks.get(name)
        if hook is None or not _key_matches(self._given_key(parts.query), hook.key):
            self.close_connection = True  # its body is never read: the connection can't go on
            return self._json(401, {"ok": False, "error": "unauthorized"})
        body = self._body()
        if body is None:
            return None
        if not self.server.limiter.allow(name, hook.rate_limit):
            return self._json(429, {"ok": False, "error": "too many requests for this hook"},
                              {"Retry-After": "60"})
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return self._json(400, {"ok": False, "error": f"the body is not JSON: {exc}"})
        try:
            message = render_reply(hook.response, {"data": data, "env": self.server.app.env_values(),
                                                   "emoji": EMOJI})
        except TemplateError as exc:
            log.error("hook %s: %s", name, exc)
            return self._json(422, {"ok": False, "error": "the hook's template failed on this data"})
        self.server.app.queue_notifications(hook.recipients, {"hook": name, "message": message})
        self.server.accepted += 1
        return self._json(202, {"ok": True, "queued": len(hook.recipients)})

    def _given_key(self, query: str) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):].strip()
        if self.headers.get("X-Chatdaemon-Key"):
            return self.headers["X-Chatdaemon-Key"].strip()
        values = urllib.parse.parse_qs(query).get("key")
        return values[0] if values else None

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._json(411, {"ok": False, "error": "send the body with a Content-Length"})
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._json(400, {"ok": False, "error": "bad Content-Length"})
            return None
        if length > MAX_BODY:
            self.close_connection = True
            self._json(413, {"ok": False, "error": f"the body is larger than {MAX_BODY} bytes"})
            return None
        return self.rfile.read(length)

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


def _key_matches(given: str | None, key: str) -> bool:
    """Constant-time comparison as bytes: a non-ASCII key is simply wrong, never an error."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8"))


def health(app: App) -> tuple[bool, dict]:
    status = app.status()
    age = status["last_poll_age"]
    limit = 2 * app.config.poll_timeout + 30
    healthy = age is not None and age <= limit
    return healthy, {"ok": healthy, "last_poll_seconds_ago": None if age is None else round(age, 1),
                     "backlog": status["backlog"], "delegates": status["delegates"],
                     "last_error": status["last_error"]}


def metrics(app: App, server: HookServer | None = None) -> str:
    """The daemon's counters in Prometheus' text format."""
    status = app.status()
    poller, delegator, sender = app.poller, app.delegator, app.sender
    values = [
        ("updates_received_total", "counter", "Updates stored from getUpdates",
         poller.received if poller else 0),
        ("updates_handled_total", "counter", "Updates handled by a chat's handler",
         delegator.stats["handled"] if delegator else 0),
        ("updates_failed_total", "counter", "Updates whose handler raised",
         delegator.stats["failed"] if delegator else 0),
        ("replies_sent_total", "counter", "Messages sent to Telegram", sender.stats["sent"] if sender else 0),
        ("telegram_429_total", "counter", "429 Too Many Requests answers",
         sender.stats["throttled_429"] if sender else 0),
        ("telegram_retries_total", "counter", "Sends retried after 5xx or network errors",
         sender.stats["retries"] if sender else 0),
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
