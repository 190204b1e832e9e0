"""A test double of the Telegram Bot API: a real HTTP server on 127.0.0.1.

It keeps Telegram's contract where chatdaemon depends on it: getUpdates with offset,
limit and long polling (updates below the offset are confirmed and forgotten, ids may
jump backwards), 409 for a second concurrent getUpdates or while a webhook is set,
sendMessage's 400s for empty or too-long text, 401 for another token, and JSON answers
with `ok`, `error_code`, `description` and `parameters`. Faults can be injected: 500, 429
with retry_after, a connection dropped after the message was accepted (or before),
latency, and a silent network. Every call is recorded.

When a getUpdates arrives while another is open, the NEW one gets 409 (Telegram ends the
old one instead; for a client both mean "someone else is polling").
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import threading
import time
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SEND_METHODS = {"sendMessage", "sendPhoto", "sendDocument", "editMessageText"}


class _Drop(Exception):
    """Close the connection without an answer."""


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up (a killed daemon) are expected here


class FakeTelegram:
    def __init__(self, token: str = "123456:TEST-token_abc", *, host: str = "127.0.0.1",
                 first_update_id: int = 1000):
        self.token = token
        self.host = host
        self.bot_id = int(token.split(":")[0])
        self.cond = threading.Condition()
        self._update_ids = itertools.count(first_update_id)
        self._message_ids = itertools.count(1)
        self.pending: list[dict] = []
        self.confirmed: set[int] = set()
        self.offsets: list[int] = []
        self.allowed_updates_seen: list[Any] = []
        self.calls: list[dict] = []
        self.sent: list[dict] = []
        self.webhook: str | None = None
        self.polling = 0
        self.latency = 0.0
        self.down = False
        self._next_faults: dict[str, list[tuple[str, dict]]] = {}
        self._faults: dict[str, dict] = {}
        self._random = random.Random()
        self._responses: dict[str, tuple[int, dict]] = {}
        self.faults_injected: Counter = Counter()
        self._server: ThreadingHTTPServer | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's name
                fake._serve(self)

            do_GET = do_POST  # noqa: N815

            def log_message(self, *args):
                pass

        self._server = _QuietServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 128
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            with self.cond:
                self.down = True
                self.cond.notify_all()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}"

    # -- updates the test pushes -------------------------------------------------------------

    def _user(self, user_id: int, first_name: str) -> dict:
        return {"id": user_id, "is_bot": False, "first_name": first_name}

    def _message(self, chat_id: int, text: str, user_id: int | None, chat_type: str,
                 first_name: str, **extra: Any) -> dict:
        chat = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = first_name
        else:
            chat["title"] = f"Group {chat_id}"
        return {"message_id": next(self._message_ids),
                "from": self._user(user_id or abs(chat_id), first_name),
                "chat": chat, "date": int(time.time()), "text": text, **extra}

    def push_update(self, body: dict) -> int:
        with self.cond:
            update_id = next(self._update_ids)
            self.pending.append({"update_id": update_id, **body})
            self.cond.notify_all()
        return update_id

    def push_message(self, chat_id: int, text: str, *, user_id: int | None = None,
                     chat_type: str = "private", first_name: str = "Ann", **extra: Any) -> int:
        return self.push_update(
            {"message": self._message(chat_id, text, user_id, chat_type, first_name, **extra)})

    def push_callback(self, chat_id: int, data: str, *, message_id: int | None = None,
                      user_id: int | None = None) -> int:
        message = self._message(chat_id, "buttons", None, "private", "Ann")
        if message_id is not None:
            message["message_id"] = message_id
        query = {"id": f"cq{time.monotonic_ns()}", "from": self._user(user_id or chat_id, "Ann"),
                 "chat_instance": str(chat_id), "message": message, "data": data}
        return self.push_update({"callback_query": query})

    def push_many(self, items: list[tuple[int, str]]) -> list[int]:
        with self.cond:
            ids = []
            for chat_id, text in items:
                update_id = next(self._update_ids)
                self.pending.append({"update_id": update_id,
                                     "message": self._message(chat_id, text, None, "private", "Ann")})
                ids.append(update_id)
            self.cond.notify_all()
        return ids

    def set_next_update_id(self, n: int) -> None:
        with self.cond:
            self._update_ids = itertools.count(n)

    # -- knobs -------------------------------------------------------------------------------

    def set_webhook(self, url: str | None) -> None:
        with self.cond:
            self.webhook = url or None

    def fail_next(self, method: str, kind: str, count: int = 1, **kw: Any) -> None:
        with self.cond:
            self._next_faults.setdefault(method, []).extend([(kind, kw)] * count)

    def set_faults(self, method: str, *, p500: float = 0.0, p429: float = 0.0, pdrop: float = 0.0,
                   retry_after: int = 1, seed: int | None = None) -> None:
        with self.cond:
            self._faults[method] = {"500": p500, "429": p429, "drop": pdrop,
                                    "retry_after": retry_after}
            self._random = random.Random(seed)

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds

    def set_down(self, down: bool) -> None:
        with self.cond:
            self.down = down
            self.cond.notify_all()

    def go_silent(self, seconds: float) -> None:
        self.set_down(True)
        threading.Timer(seconds, self.set_down, args=(False,)).start()

    def set_next_response(self, method: str, status: int, body: dict) -> None:
        with self.cond:
            self._responses[method] = (status, body)

    def reset(self) -> None:
        with self.cond:
            self.calls.clear()
            self.sent.clear()
            self.offsets.clear()
            self.faults_injected.clear()

    # -- what the test reads -----------------------------------------------------------------

    def sent_to(self, chat_id: int) -> list[str]:
        with self.cond:
            return [s["text"] for s in self.sent if s["chat_id"] == chat_id]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.1))
            return True

    def wait_for_sent(self, n: int, timeout: float) -> bool:
        return self.wait_for(lambda: len(self.sent) >= n, timeout)

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        try:
            if self.down:
                raise _Drop()
            method, params = self._parse(request)
            if self.latency:
                time.sleep(self.latency)
            status, body = self._answer(method, params)
        except _Drop:
            request.close_connection = True
            try:
                request.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _parse(self, request: BaseHTTPRequestHandler) -> tuple[str | None, dict]:
        parsed = urllib.parse.urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        params: dict[str, Any] = {}
        for key, value in urllib.parse.parse_qsl(parsed.query):
            params[key] = _maybe_json(value)
        content_type = request.headers.get("Content-Type", "")
        if raw and "json" in content_type:
            params.update(json.loads(raw))
        elif raw:
            for key, value in urllib.parse.parse_qsl(raw.decode()):
                params[key] = _maybe_json(value)
        prefix = f"/bot{self.token}/"
        if not parsed.path.startswith(prefix):
            return (None if parsed.path.startswith("/bot") else "?"), params
        return parsed.path[len(prefix):], params

    def _answer(self, method: str | None, params: dict) -> tuple[int, dict]:
        if method is None:
            return _error(401, "Unauthorized")
        if method == "?" or not method:
            return _error(404, "Not Found")
        with self.cond:
            self.calls.append({"method": method, "params": params, "time": time.monotonic()})
            self.cond.notify_all()
            if method in self._responses:
                return self._responses.pop(method)
        if method == "getUpdates":
            return self._get_updates(params)
        fault = self._pick_fault(method)
        if fault is not None:
            kind, kw = fault
            self.faults_injected[kind] += 1
            if kind == "latency":
                time.sleep(kw.get("seconds", 1.0))
            elif kind == "500":
                return _error(500, "Internal Server Error")
            elif kind == "429":
                after = kw.get("retry_after", 1)
                return _error(429, f"Too Many Requests: retry after {after}", retry_after=after)
            elif kind == "migrate":
                return _error(400, "Bad Request: group chat was upgraded to a supergroup chat",
                              migrate_to_chat_id=kw["to"])
            elif kind == "drop_before":
                raise _Drop()
        status, body = self._method(method, params)
        if fault is not None and fault[0] == "drop":
            raise _Drop()  # accepted (recorded above), but the answer never arrives
        return status, body

    def _pick_fault(self, method: str) -> tuple[str, dict] | None:
        with self.cond:
            queue = self._next_faults.get(method)
            if queue:
                return queue.pop(0)
            odds = self._faults.get(method)
            if not odds:
                return None
            roll = self._random.random()
            for kind in ("500", "429", "drop"):
                if roll < odds[kind]:
                    return kind, {"retry_after": odds["retry_after"]}
                roll -= odds[kind]
        return None

    def _method(self, method: str, params: dict) -> tuple[int, dict]:
        if method == "getMe":
            return _ok({"id": self.bot_id, "is_bot": True, "first_name": "Test Bot",
                        "username": "test_bot"})
        if method in ("setWebhook", "deleteWebhook"):
            self.set_webhook(params.get("url") if method == "setWebhook" else None)
            return _ok(True)
        if method == "getWebhookInfo":
            return _ok({"url": self.webhook or "", "pending_update_count": len(self.pending)})
        if method == "answerCallbackQuery" and not params.get("callback_query_id"):
            return _error(400, "Bad Request: query is too old or query ID is invalid")
        if method in SEND_METHODS:
            return self._send(method, params)
        return _ok(True)

    def _send(self, method: str, params: dict) -> tuple[int, dict]:
        chat = params.get("chat_id")
        try:
            chat_id = int(chat)
        except (TypeError, ValueError):
            if not (isinstance(chat, str) and chat.startswith("@")):
                return _error(400, "Bad Request: chat not found")
            chat_id = chat
        text = params.get("text")
        if method in ("sendMessage", "editMessageText"):
            if not isinstance(text, str) or not text.strip():
                return _error(400, "Bad Request: message text is empty")
            if len(text.encode("utf-16-le")) // 2 > 4096:
                return _error(400, "Bad Request: message is too long")
        with self.cond:
            message_id = next(self._message_ids)
            self.sent.append({"method": method, "chat_id": chat_id, "text": text,
                              "params": params, "time": time.monotonic()})
            self.cond.notify_all()
        return _ok({"message_id": message_id, "date": int(time.time()),
                    "chat": {"id": chat_id, "type": "private"}, "text": text,
                    "from": {"id": self.bot_id, "is_bot": True, "first_name": "Test Bot"}})

    def _get_updates(self, params: dict) -> tuple[int, dict]:
        with self.cond:
            self.allowed_updates_seen.append(params.get("allowed_updates"))
            if self.webhook:
                return _error(409, "Conflict: can't use getUpdates method while webhook is active;"
                                   " use deleteWebhook to delete the webhook first")
            if self.polling:
                return _error(409, "Conflict: terminated by other getUpdates request; make sure "
                                   "that only one bot instance is running")
            self.polling += 1
            try:
                return self._poll(params)
            finally:
                self.polling -= 1

    def _poll(self, params: dict) -> tuple[int, dict]:
        """Called with the lock held."""
        offset = params.get("offset")
        if offset is not None:
            offset = int(offset)
            self.offsets.append(offset)
            self._confirm_below(offset)
        limit = max(1, min(100, int(params.get("limit") or 100)))
        deadline = time.monotonic() + float(params.get("timeout") or 0)
        while not self.pending and not self.down:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.cond.wait(remaining)
        if self.down:
            raise _Drop()
        return _ok(self.pending[:limit])

    def _confirm_below(self, offset: int) -> None:
        pending = self.pending
        i = 0
        while i < len(pending) and pending[i]["update_id"] < offset:
            self.confirmed.add(pending[i]["update_id"])
            i += 1
        if i:
            del pending[:i]
        if any(u["update_id"] < offset for u in pending):  # ids jumped backwards somewhere
            self.confirmed.update(u["update_id"] for u in pending if u["update_id"] < offset)
            self.pending = [u for u in pending if u["update_id"] >= offset]


def _ok(result: Any) -> tuple[int, dict]:
    return 200, {"ok": True, "result": result}


def _error(status: int, description: str, **parameters: Any) -> tuple[int, dict]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return status, body


def _maybe_json(value: str) -> Any:
    if value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
