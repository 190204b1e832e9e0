"""The Bot API test double: a real HTTP server on 127.0.0.1 that keeps Telegram's contract.

What it keeps, where chatdaemon depends on it:
- requests to `{url}/bot{token}/{method}` with parameters as a JSON body, a form body,
  multipart form fields or a query string (JSON-typed fields such as `reply_markup` or
  `allowed_updates` may arrive as JSON strings); answers are JSON with `ok`, `result` or
  `error_code`, `description`, `parameters`, and the HTTP status equals `error_code`;
- 401 for another token, 404 for a path that is no Bot API method;
- getUpdates: pending updates in arrival order (ids may jump backwards, as Telegram's do
  after a quiet week); every pending update whose update_id is below the offset is
  confirmed and forgotten; a negative offset keeps only the last -offset updates; up to
  `limit` updates are returned, and when there are none the call long-polls up to
  `timeout` seconds, waking as soon as an update is pushed;
- 409 for getUpdates while a webhook is set, or while another getUpdates is open. Here the
  NEW call gets the 409 and the open one carries on (Telegram ends the old one instead; to
  a client both mean "someone else is polling"). A killed client's long poll stays open
  until its timeout, as it does at Telegram;
- sendMessage's 400s: empty text, text over 4096 UTF-16 units, an unusable chat_id.

Faults can be injected per method: 500, 429 with retry_after, a connection dropped after
the call was carried out ("drop": a sent message is recorded, yet no answer arrives) or
before ("drop_before"), latency, a migration to a supergroup, any canned answer, and a
network that is down (every connection closed unanswered, open long polls included).

Every call is recorded in `calls`; accepted sends in `sent` (and per chat). All state is
guarded by one Condition, which also wakes the `wait_for*` helpers.

`FakeTelegram(tls=True)` serves the same double over TLS (`url` starts with https://) with a
self-signed certificate made by openssl for the run; `cert_file` is its PEM, for a client to
trust (a daemon: SSL_CERT_FILE=cert_file). Without openssl, start() raises TLSUnavailable.
"""

from __future__ import annotations

import email.parser
import email.policy
import ipaddress
import itertools
import json
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_TOKEN = "123456:TEST-token_abc"
MAX_TEXT_UNITS = 4096
SEND_METHODS = frozenset({"sendMessage", "editMessageText", "sendPhoto", "sendDocument"})
TEXT_METHODS = frozenset({"sendMessage", "editMessageText"})
FAULT_KINDS = frozenset({"500", "429", "drop", "drop_before", "latency", "migrate"})
JSON_PARAMS = frozenset({
    "reply_markup", "allowed_updates", "entities", "caption_entities", "link_preview_options",
    "reply_parameters", "media", "options", "commands", "scope", "results", "message_ids",
    "reaction", "explanation_entities", "question_entities", "menu_button",
})
CONFLICT_POLLING = ("Conflict: terminated by other getUpdates request; make sure that only one "
                    "bot instance is running")
CONFLICT_WEBHOOK = ("Conflict: can't use getUpdates method while webhook is active; use "
                    "deleteWebhook to delete the webhook first")
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
BAD_QUERY_ID = "Bad Request: query is too old and response timeout expired or query ID is invalid"

_PATH = re.compile(r"/bot([^/]*)/([A-Za-z][A-Za-z0-9_]*)")
_TRUE = (True, 1, "true", "True", "1")


class _Drop(Exception):
    """Close the connection without an answer."""


class _BadRequest(Exception):
    """Answer 400 with "Bad Request: <description>"."""


class TLSUnavailable(RuntimeError):
    """The double cannot serve TLS here: `reason` says why (no openssl, or it failed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the test double cannot serve TLS: {reason}")
        self.reason = reason


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    fake: FakeTelegram

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.fake._note_server_error()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def do_POST(self) -> None:
        self.server.fake._serve(self)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeTelegram:
    """The Bot API on a loopback port; see the module docstring for the contract."""

    def __init__(self, token: str = DEFAULT_TOKEN, *, host: str = "127.0.0.1",
                 first_update_id: int = 1000, tls: bool = False) -> None:
        bot_id, colon, _ = token.partition(":")
        if not (bot_id.isdigit() and colon):
            raise ValueError("a bot token starts with the bot's numeric id and a colon")
        self.token = token
        self.host = host
        self.bot_id = int(bot_id)
        self.bot = {"id": self.bot_id, "is_bot": True, "first_name": "Test Bot",
                    "username": "test_bot"}
        self.cond = threading.Condition()  # re-entrant: predicates may call sent_to()
        self._update_ids = itertools.count(first_update_id)
        self._message_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self._pending: deque[dict] = deque()
        self._ordered = True  # pending ids strictly increase, so confirmed ones are a prefix
        self._polling = 0
        self.confirmed: set[int] = set()
        self.offsets: list[int] = []
        self.allowed_updates_seen: list[Any] = []
        self.calls: list[dict] = []
        # every request that reached the double, answered or hung up on: (time, method, down)
        self.attempts: list[tuple[float, str, bool]] = []
        self.sent: list[dict] = []
        self._sent_by_chat: dict[Any, list[dict]] = {}
        self.faults_injected: Counter[str] = Counter()
        self.errors: list[str] = []
        self.webhook: str | None = None
        self.latency = 0.0
        self.down = False
        self._stopped = False
        self._fail_queue: dict[str, deque[tuple[str, dict]]] = {}
        self._odds: dict[str, dict[str, float]] = {}
        self._random = random.Random()
        self._responses: dict[str, deque[tuple[int, dict]]] = {}
        self._connections: set[socket.socket] = set()
        self._timers: list[threading.Timer] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.downloads: list[str] = []                  # file paths fetched, in order
        self.uploads: list[dict] = []   # every multipart file received: method, field, bytes
        self.tls = tls                  # serve https:// with a certificate made for the run
        self.cert_file: str | None = None   # that certificate (PEM), for clients to trust

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<FakeTelegram bot {self.bot_id} at {where}>"

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> FakeTelegram:
        """Bind a free port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the test double is already running")
        self._stopped = False
        context = self._tls_context() if self.tls else None   # before binding: it may fail
        self._server = _Server((self.host, 0), _Handler)
        if context is not None:
            self._server.socket = self._wrap_listener(self._server.socket, context)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="fake-telegram", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: open long polls end, kept-alive connections are closed."""
        server, thread = self._server, self._thread
        if server is None:
            return
        with self.cond:
            self._stopped = True
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
            self.cond.notify_all()
        server.shutdown()
        server.server_close()
        with self.cond:
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeTelegram:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the test double is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The API base URL: requests go to `{url}/bot{token}/{method}`."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # -- updates the test pushes -------------------------------------------------------------

    def push_update(self, body: dict) -> int:
        """Queue a raw update (any kind, e.g. {"poll": {...}}); its update_id is assigned."""
        with self.cond:
            update_id = self._queue(body)
            self.cond.notify_all()
        return update_id

    def push_message(self, chat_id: int, text: str, *, user_id: int | None = None,
                     chat_type: str = "private", first_name: str = "Ann", **extra: Any) -> int:
        """Queue a text message from a user; `extra` fields go into the message."""
        message = self._message(chat_id, text, user_id, chat_type, first_name, extra)
        return self.push_update({"message": message})

    def push_callback(self, chat_id: int, data: str, *, message_id: int | None = None,
                      user_id: int | None = None, first_name: str = "Ann") -> int:
        """Queue a button press on one of the bot's messages in a private chat."""
        message = {"message_id": message_id or next(self._message_ids), "from": self.bot,
                   "chat": _chat(chat_id, "private", first_name), "date": int(time.time()),
                   "text": "buttons"}
        query = {"id": str(next(self._query_ids)),
                 "from": _user(user_id or abs(chat_id), first_name),
                 "message": message, "chat_instance": str(abs(chat_id)), "data": data}
        return self.push_update({"callback_query": query})

    def push_many(self, items: Iterable[tuple[int, str]]) -> list[int]:
        """Queue many text messages (chat_id, text) at once, under one lock."""
        messages = [self._message(chat_id, text, None, "private", "Ann", {})
                    for chat_id, text in items]
        with self.cond:
            ids = [self._queue({"message": message}) for message in messages]
            self.cond.notify_all()
        return ids

    def set_next_update_id(self, n: int) -> None:
        """Give the next update id `n` (lower than before: ids jump backwards)."""
        with self.cond:
            self._update_ids = itertools.count(n)

    @property
    def pending(self) -> list[dict]:
        """A snapshot of the unconfirmed updates, in arrival order."""
        with self.cond:
            return list(self._pending)

    @property
    def polling(self) -> bool:
        """Whether a getUpdates call is open (long-polling) right now."""
        with self.cond:
            return self._polling > 0

    def _queue(self, body: dict) -> int:
        """Append an update; the lock is held."""
        update_id = next(self._update_ids)
        update = {"update_id": update_id, **body}
        update["update_id"] = update_id
        if self._pending and update_id <= self._pending[-1]["update_id"]:
            self._ordered = False
        self._pending.append(update)
        return update_id

    def _message(self, chat_id: int, text: str, user_id: int | None, chat_type: str,
                 first_name: str, extra: dict) -> dict:
        return {"message_id": next(self._message_ids),
                "from": _user(user_id or abs(chat_id), first_name),
                "chat": _chat(chat_id, chat_type, first_name), "date": int(time.time()),
                "text": text, **extra}

    # -- knobs -------------------------------------------------------------------------------

    def set_webhook(self, url: str | None) -> None:
        """Set (or with None/"" delete) the webhook; getUpdates answers 409 while one is set."""
        with self.cond:
            self.webhook = url or None

    def fail_next(self, method: str, kind: str, count: int = 1, **kw: Any) -> None:
        """Make the next `count` calls of `method` fail with `kind`.

        Kinds and their keywords: "500"; "429" (retry_after=1); "drop" (carry the call out,
        then close the connection unanswered); "drop_before" (close without carrying it out);
        "latency" (seconds=1.0, then answer normally); "migrate" (migrate_to_chat_id=..., by
        default -100 followed by the chat's digits).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {sorted(FAULT_KINDS)}")
        with self.cond:
            self._fail_queue.setdefault(method, deque()).extend([(kind, kw)] * count)

    def set_faults(self, method: str, *, p500: float = 0.0, p429: float = 0.0, pdrop: float = 0.0,
                   retry_after: int = 1, seed: int | None = None) -> None:
        """Fail each call of `method` at random: 500, 429 (retry_after) or drop (after)."""
        if p500 + p429 + pdrop > 1:
            raise ValueError("the fault probabilities add up to more than 1")
        with self.cond:
            self._odds[method] = {"500": p500, "429": p429, "drop": pdrop,
                                  "retry_after": retry_after}
            self._random = random.Random(seed)

    def set_next_response(self, method: str, status: int, body: dict) -> None:
        """Answer the next call of `method` with this status and JSON body, as given."""
        with self.cond:
            self._responses.setdefault(method, deque()).append((status, body))

    def set_latency(self, seconds: float) -> None:
        """Delay every answer by `seconds`."""
        self.latency = seconds

    def set_down(self, down: bool) -> None:
        """While down, every request's connection is closed unanswered, open polls too."""
        with self.cond:
            self.down = down
            self.cond.notify_all()

    def go_silent(self, seconds: float) -> None:
        """Be down for `seconds`, then come back."""
        self.set_down(True)
        timer = threading.Timer(seconds, self.set_down, args=(False,))
        timer.daemon = True
        with self.cond:
            self._timers.append(timer)
        timer.start()

    def clear_faults(self) -> None:
        """Forget queued faults, fault odds, canned answers and latency."""
        with self.cond:
            self._fail_queue.clear()
            self._odds.clear()
            self._responses.clear()
            self.latency = 0.0

    def reset(self) -> None:
        """Clear the records (calls, sent, offsets, confirmed, ...); pending updates stay."""
        with self.cond:
            self.calls.clear()
            self.sent.clear()
            self._sent_by_chat.clear()
            self.offsets.clear()
            self.confirmed.clear()
            self.allowed_updates_seen.clear()
            self.faults_injected.clear()
            self.errors.clear()

    # -- what the test reads -----------------------------------------------------------------

    def sent_to(self, chat_id: int | str) -> list[str]:
        """Texts (captions for media) of the accepted sends to one chat, in order."""
        with self.cond:
            return [record["text"] for record in self._sent_by_chat.get(_chat_key(chat_id), ())]

    def sent_times(self, chat_id: int | str) -> list[float]:
        """time.monotonic() of each accepted send to one chat, in order."""
        with self.cond:
            return [record["time"] for record in self._sent_by_chat.get(_chat_key(chat_id), ())]

    def calls_to(self, method: str) -> list[dict]:
        """The recorded calls of one method."""
        with self.cond:
            return [call for call in self.calls if call["method"] == method]

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Wait until `predicate()` (run under the lock) is true; False after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.1))
            return True

    def wait_for_sent(self, n: int, timeout: float) -> bool:
        """Wait until at least `n` sends were accepted; False after `timeout` s."""
        return self.wait_for(lambda: len(self.sent) >= n, timeout)

    # -- serving -----------------------------------------------------------------------------

    def _track(self, connection: socket.socket) -> None:
        with self.cond:
            self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self.cond:
            self._connections.discard(connection)

    def _note_server_error(self) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up are expected
            with self.cond:
                self.errors.append(traceback.format_exc())

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        match = _PATH.match(urllib.parse.urlsplit(request.path).path)
        with self.cond:
            self.attempts.append((time.monotonic(), match.group(2) if match else "", self.down))
        if self.down or self._stopped:
            _hang_up(request)
            return
        if urllib.parse.urlsplit(request.path).path.startswith("/file/"):
            self._serve_file(request)
            return
        try:
            status, body = self._handle(request)
        except _Drop:
            _hang_up(request)
            return
        except Exception:  # a bug in the double: answer, and keep it for the test to see
            self._note_server_error()
            status, body = _error(500, "Internal Server Error")
        _reply(request, status, body)

    def _handle(self, request: BaseHTTPRequestHandler) -> tuple[int, dict]:
        parsed = urllib.parse.urlsplit(request.path)
        raw = _read_body(request)
        match = _PATH.fullmatch(parsed.path)
        if match is None:
            return _error(404, "Not Found")
        if match.group(1) != self.token:
            return _error(401, "Unauthorized")
        method = match.group(2)
        try:
            params = _params(parsed.query, raw, request.headers.get("Content-Type", ""))
            self._keep_uploads(method, raw, request.headers.get("Content-Type", ""))
            return self._call(method, params)
        except _BadRequest as exc:
            return _error(400, f"Bad Request: {exc}")

    def _call(self, method: str, params: dict) -> tuple[int, dict]:
        with self.cond:
            self.calls.append({"method": method, "params": params, "time": time.monotonic()})
            self.cond.notify_all()
            canned = self._responses.get(method)
            if canned:
                return canned.popleft()
            fault = self._pick_fault(method)
        if self.latency:
            time.sleep(self.latency)
        return self._with_fault(method, params, fault)

    def _pick_fault(self, method: str) -> tuple[str, dict] | None:
        """The fault for this call, if any; the lock is held."""
        queue = self._fail_queue.get(method)
        fault = queue.popleft() if queue else self._roll(method)
        if fault is not None:
            self.faults_injected[fault[0]] += 1
        return fault

    def _roll(self, method: str) -> tuple[str, dict] | None:
        odds = self._odds.get(method)
        if not odds:
            return None
        roll = self._random.random()
        for kind in ("500", "429", "drop"):
            if roll < odds[kind]:
                return kind, {"retry_after": odds["retry_after"]}
            roll -= odds[kind]
        return None

    def _with_fault(self, method: str, params: dict, fault: tuple[str, dict] | None
                    ) -> tuple[int, dict]:
        kind, kw = fault or ("", {})
        if kind == "500":
            return _error(500, "Internal Server Error")
        if kind == "429":
            after = int(kw.get("retry_after", 1))
            return _error(429, f"Too Many Requests: retry after {after}", retry_after=after)
        if kind == "migrate":
            to = kw.get("migrate_to_chat_id", kw.get("to")) or _supergroup_of(params.get("chat_id"))
            return _error(400, MIGRATED, migrate_to_chat_id=to)
        if kind == "drop_before":
            raise _Drop()
        if kind == "latency":
            time.sleep(float(kw.get("seconds", 1.0)))
        answer = self._method(method, params)
        if kind == "drop":
            raise _Drop()  # carried out (a send is recorded), but the answer never arrives
        return answer

    # -- the methods -------------------------------------------------------------------------

    def _method(self, method: str, params: dict) -> tuple[int, dict]:
        if method == "getUpdates":
            return self._get_updates(params)
        if method in SEND_METHODS:
            return self._send(method, params)
        if method == "getMe":
            return _ok(dict(self.bot))
        if method == "getFile" and params.get("file_id") in self.files:
            return self._get_file(params["file_id"])
        if method in ("setWebhook", "deleteWebhook"):
            return self._change_webhook(method, params)
        if method == "getWebhookInfo":
            with self.cond:
                return _ok({"url": self.webhook or "", "has_custom_certificate": False,
                            "pending_update_count": len(self._pending)})
        if method == "answerCallbackQuery" and not params.get("callback_query_id"):
            return _error(400, BAD_QUERY_ID)
        return _ok(True)

    def _change_webhook(self, method: str, params: dict) -> tuple[int, dict]:
        with self.cond:
            self.webhook = (params.get("url") or None) if method == "setWebhook" else None
            if params.get("drop_pending_updates") in _TRUE:
                self._pending.clear()
                self._ordered = True
        return _ok(True)

    def _send(self, method: str, params: dict) -> tuple[int, dict]:
        if method == "editMessageText" and params.get("inline_message_id"):
            _check_text(params.get("text"))
            return _ok(True)
        chat_id = _chat_ref(params.get("chat_id"))
        text = params.get("text") if method in TEXT_METHODS else params.get("caption")
        if method in TEXT_METHODS:
            _check_text(text)
        if method == "editMessageText":
            message_id = _int(params.get("message_id"), "message_id")
        else:
            message_id = next(self._message_ids)
        record = {"method": method, "chat_id": chat_id, "text": text, "params": params,
                  "message_id": message_id, "time": time.monotonic()}
        with self.cond:
            self.sent.append(record)
            self._sent_by_chat.setdefault(chat_id, []).append(record)
            self.cond.notify_all()
        return _ok(self._sent_message(method, chat_id, message_id, text))

    def _sent_message(self, method: str, chat_id: int | str, message_id: int,
                      text: str | None) -> dict:
        message: dict[str, Any] = {"message_id": message_id, "from": self.bot,
                                   "chat": {"id": chat_id, "type": "private"},
                                   "date": int(time.time())}
        if method in TEXT_METHODS:
            message["text"] = text
        elif text is not None:
            message["caption"] = text
        if method == "editMessageText":
            message["edit_date"] = message["date"]
        return message

    def _get_updates(self, params: dict) -> tuple[int, dict]:
        offset = params.get("offset")
        offset = None if offset in (None, "") else _int(offset, "offset")
        limit = max(1, min(100, _int(params.get("limit") or 100, "limit")))
        timeout = max(0.0, _float(params.get("timeout") or 0, "timeout"))
        with self.cond:
            self.allowed_updates_seen.append(params.get("allowed_updates"))
            if self.webhook:
                return _error(409, CONFLICT_WEBHOOK)
            if self._polling:
                return _error(409, CONFLICT_POLLING)
            self._polling += 1
            try:
                if offset is not None:
                    self.offsets.append(offset)
                    self._confirm(offset)
                return _ok(self._poll(limit, timeout))
            finally:
                self._polling -= 1

    def _poll(self, limit: int, timeout: float) -> list[dict]:
        """Up to `limit` pending updates, waiting up to `timeout` s for one; lock held."""
        deadline = time.monotonic() + timeout
        while not self._pending and not (self.down or self._stopped):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.cond.wait(remaining)
        if self.down or self._stopped:
            raise _Drop()
        return list(itertools.islice(self._pending, limit))

    def _confirm(self, offset: int) -> None:
        """Forget (and count as confirmed) the pending updates an offset confirms; lock held."""
        pending = self._pending
        if offset < 0:
            while len(pending) > -offset:
                self.confirmed.add(pending.popleft()["update_id"])
        elif self._ordered:
            while pending and pending[0]["update_id"] < offset:
                self.confirmed.add(pending.popleft()["update_id"])
        else:  # ids jumped backwards somewhere: confirmed ones may be anywhere
            kept: deque[dict] = deque()
            for update in pending:
                if update["update_id"] < offset:
                    self.confirmed.add(update["update_id"])
                else:
                    kept.append(update)
            self._pending = pending = kept
            self._ordered = all(a["update_id"] < b["update_id"]
                                for a, b in itertools.pairwise(kept))
        if not pending:
            self._ordered = True

    # -- files: getFile and downloads ---------------------------------------------------------

    def add_file(self, file_id: str, content: bytes, file_path: str | None = None) -> str:
        """Make `file_id` known: getFile answers a File, and its path serves `content`."""
        path = file_path or f"documents/file_{len(self.files)}.bin"
        with self.cond:
            self.files[file_id] = (path, bytes(content))
        return path

    def _get_file(self, file_id: str) -> tuple[int, dict]:
        with self.cond:
            path, content = self.files[file_id]
        return _ok({"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(content),
                    "file_path": path})

    def _serve_file(self, request: BaseHTTPRequestHandler) -> None:
        """GET {url}/file/bot{token}/{file_path}: the content, or 401/404 as JSON."""
        path = urllib.parse.urlsplit(request.path).path
        prefix = f"/file/bot{self.token}/"
        _read_body(request)
        if not path.startswith(prefix):
            _reply(request, *_error(401, "Unauthorized"))
            return
        wanted = path[len(prefix):]
        with self.cond:
            content = next((data for file_path, data in self.files.values() if file_path == wanted),
                           None)
            self.downloads.append(wanted)
            self.cond.notify_all()
        if content is None:
            _reply(request, *_error(404, "Not Found"))
            return
        head = (f"HTTP/1.1 200 OK\r\nServer: fake-telegram\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(content)}\r\n\r\n")
        request.wfile.write(head.encode("latin-1") + content)

    def open_connections(self) -> int:
        """Client connections open to the double right now (kept-alive ones included)."""
        with self.cond:
            return len(self._connections)

    # -- uploads: the bytes of multipart files ------------------------------------------------

    def _keep_uploads(self, method: str, raw: bytes, content_type: str) -> None:
        """Record each file of a multipart call (every attempt, answered or not)."""
        if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
            return
        files = [{"method": method, **file} for file in _multipart_files(raw, content_type)]
        with self.cond:
            self.uploads.extend(files)
            self.cond.notify_all()

    def uploads_to(self, method: str) -> list[dict]:
        """The files uploaded with `method`: {"method", "field", "filename", "content_type",
        "data"}, in arrival order."""
        with self.cond:
            return [dict(upload) for upload in self.uploads if upload["method"] == method]

    # -- TLS: https:// with a certificate made for the run ---------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        """A server context with this double's certificate (made on the first start, kept for
        restarts so clients that trust it go on trusting it)."""
        if self.cert_file is None:
            self.cert_file = self._make_certificate()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, str(Path(self.cert_file).with_name("key.pem")))
        return context

    def _make_certificate(self) -> str:
        """A self-signed EC certificate for the double's host (CN and an IP or DNS
        subjectAltName), written to a temporary directory; the path of its PEM file."""
        directory = tempfile.mkdtemp(prefix="fake-telegram-tls-")
        cert, key = Path(directory, "cert.pem"), Path(directory, "key.pem")
        kind = "IP" if _is_ip(self.host) else "DNS"
        command = ["openssl", "req", "-x509", "-newkey", "ec",
                   "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                   "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={self.host}",
                   "-addext", f"subjectAltName={kind}:{self.host}"]
        try:
            subprocess.run(command, capture_output=True, check=True, timeout=60)
        except FileNotFoundError:
            shutil.rmtree(directory, ignore_errors=True)
            raise TLSUnavailable("openssl is not installed (it makes the certificate)") from None
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(directory, ignore_errors=True)
            detail = getattr(exc, "stderr", b"") or b""
            raise TLSUnavailable(f"openssl could not make a certificate: "
                                 f"{detail.decode(errors='replace').strip()[-300:]}") from None
        # removed once the double is garbage-collected, or at exit
        weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        return str(cert)

    @staticmethod
    def _wrap_listener(sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """The listening socket as TLS. Each accepted connection's handshake runs in its own
        handler thread on the first read (not in accept), so a client that never finishes
        one cannot stall the server; a failed handshake is an OSError, a client's fault."""
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


# -- helpers ---------------------------------------------------------------------------------

def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _user(user_id: int, first_name: str) -> dict:
    return {"id": user_id, "is_bot": False, "first_name": first_name}


def _chat(chat_id: int, chat_type: str, first_name: str) -> dict:
    if chat_type == "private":
        return {"id": chat_id, "type": chat_type, "first_name": first_name}
    return {"id": chat_id, "type": chat_type, "title": f"Group {chat_id}"}


def _chat_key(chat_id: int | str) -> int | str:
    try:
        return int(chat_id)
    except (TypeError, ValueError):
        return chat_id


def _chat_ref(value: Any) -> int | str:
    """A send's chat_id: int-like, or a "@channel" name."""
    if value is None or value == "":
        raise _BadRequest("chat_id is empty")
    if isinstance(value, str) and value.startswith("@") and len(value) > 1:
        return value
    if isinstance(value, bool):
        raise _BadRequest("chat not found")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _BadRequest("chat not found") from None


def _check_text(text: Any) -> None:
    if not isinstance(text, str) or not text.strip():
        raise _BadRequest("message text is empty")
    if len(text.encode("utf-16-le")) // 2 > MAX_TEXT_UNITS:
        raise _BadRequest("message is too long")


def _supergroup_of(chat_id: Any) -> int:
    try:
        return int(f"-100{abs(int(chat_id))}")
    except (TypeError, ValueError):
        return -1001234567890


def _int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"invalid {name} specified") from None


def _float(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _BadRequest(f"invalid {name} specified") from None


def _ok(result: Any) -> tuple[int, dict]:
    return 200, {"ok": True, "result": result}


def _error(status: int, description: str, **parameters: Any) -> tuple[int, dict]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return status, body


# -- HTTP ------------------------------------------------------------------------------------

def _read_body(request: BaseHTTPRequestHandler) -> bytes:
    length = request.headers.get("Content-Length")
    if length:
        return request.rfile.read(int(length))
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _read_chunked(request.rfile)
    return b""


def _read_chunked(rfile: Any) -> bytes:
    chunks = []
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        chunks.append(rfile.read(size))
        rfile.readline()


def _params(query: str, raw: bytes, content_type: str) -> dict:
    """The call's parameters from the query string and the body, JSON-typed fields decoded."""
    params = {key: _field(key, value)
              for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True)}
    kind = content_type.split(";", 1)[0].strip().lower()
    if not raw:
        return params
    if kind == "application/json" or (not kind and raw.lstrip()[:1] == b"{"):
        params.update(_json_params(raw))
    elif kind == "multipart/form-data":
        params.update(_multipart(raw, content_type))
    else:
        for key, value in urllib.parse.parse_qsl(raw.decode("utf-8", "replace"),
                                                 keep_blank_values=True):
            params[key] = _field(key, value)
    return params


def _json_params(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _BadRequest("can't parse JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest("parameters must be a JSON object")
    return {key: _field(key, value) for key, value in body.items()}


def _multipart(raw: bytes, content_type: str) -> dict:
    """Text fields as values; files as {"filename", "size"}."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    params: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            params[name] = {"filename": part.get_filename(), "size": len(payload)}
        elif name:
            params[name] = _field(name, payload.decode("utf-8", "replace"))
    return params


def _field(key: str, value: Any) -> Any:
    """A JSON-typed parameter sent as a JSON string is decoded; everything else is kept."""
    if key in JSON_PARAMS and isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _reply(request: BaseHTTPRequestHandler, status: int, body: dict) -> None:
    """Headers and body in one write (no Nagle delay on kept-alive connections)."""
    try:
        data = json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:   # a lone surrogate: escaped (\ud800), as Telegram's JSON has it
        data = json.dumps(body).encode()
    close = "Connection: close\r\n" if request.close_connection else ""
    head = (f"HTTP/1.1 {status} {_phrase(status)}\r\nServer: fake-telegram\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{close}\r\n")
    request.wfile.write(head.encode("latin-1") + data)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _hang_up(request: BaseHTTPRequestHandler) -> None:
    request.close_connection = True
    _shut(request.connection)


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _multipart_files(raw: bytes, content_type: str) -> list[dict]:
    """The file parts of a multipart body, with their bytes."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    return [{"field": part.get_param("name", header="content-disposition"),
             "filename": part.get_filename(), "content_type": part.get_content_type(),
             "data": part.get_payload(decode=True) or b""}
            for part in message.iter_parts() if part.get_filename()]
