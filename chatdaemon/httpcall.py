"""The request step of the pipeline: one outgoing HTTP call built from templates, bounded.

What keeps it safe:
- values put into the URL are percent-encoded with nothing left unescaped, except the
  bot's own `env` values (the author's), which may carry a whole base URL;
- after rendering, the URL's scheme, host and port must equal those of the same template
  rendered with every user-derived value replaced by a placeholder: user text can never
  choose or change the host;
- no redirects are followed, the timeout covers connect and read, a total deadline bounds
  a slow trickle, and the body is read only up to a size cap.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from typing import Any

import requests

from .definitions import Request
from .templates import Template

MAX_BODY = 1024 * 1024
USER_AGENT = "chatdaemon"


class RequestFailed(Exception):
    """The request did not produce a 2xx answer; `response` is what the template sees."""

    def __init__(self, reason: str, response: dict):
        self.reason = reason
        self.response = response
        super().__init__(reason)


class Trusted(str):
    """A value of the bot author's (an env value): inserted into URLs without encoding."""


class _Placeholder:
    """Stands in for any user-derived value when the URL's authored origin is worked out."""

    def __init__(self, word: str = "placeholder"):
        self._word = word

    def __getattr__(self, name: str) -> _Placeholder:
        return self

    def __getitem__(self, key: Any) -> _Placeholder:
        return self

    def __iter__(self):
        return iter(())

    def __str__(self) -> str:
        return self._word

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return self


def url_value(value: Any) -> str:
    """How a template value goes into a URL: trusted as is, everything else fully encoded."""
    if isinstance(value, Trusted):
        return str(value)
    return urllib.parse.quote(str(value), safe="")


def render_url(template: Template, context: dict) -> str:
    """Render a request URL and refuse it if user values changed its scheme, host or port."""
    url = template.render(context)
    authored, other = (_authored(template, context, word) for word in ("placeholder", "stand-in"))
    if _origin(authored) != _origin(other) or _origin(url) != _origin(authored):
        raise RequestFailed(f"user input changed the request's host ({_origin(authored)[1]!r})",
                            {"status": None, "data": None, "headers": {}, "error": "refused"})
    if _origin(url)[0] not in ("http", "https"):
        raise RequestFailed("the request URL is not http or https",
                            {"status": None, "data": None, "headers": {}, "error": "refused"})
    if _climbs(url):
        raise RequestFailed("user input made a '.' or '..' path segment in the request URL",
                            {"status": None, "data": None, "headers": {}, "error": "refused"})
    return url


def _authored(template: Template, context: dict, word: str) -> str:
    """The URL with every user-derived value replaced by `word`: what the author fixed.
    Two different words giving two different hosts means user text picks the host."""
    return template.render({name: (value if name in ("env", "now", "emoji") else _Placeholder(word))
                            for name, value in context.items()})


def _climbs(url: str) -> bool:
    """A "." or ".." segment (however encoded): HTTP clients and servers resolve it, so a
    user value of ".." would reach a path the author did not write. Slashes in user values
    are encoded, so only a whole-segment value can do this, and it is refused."""
    path = urllib.parse.urlsplit(url).path
    return any(urllib.parse.unquote(segment) in (".", "..") for segment in path.split("/"))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def render_tree(value: Any, context: dict) -> Any:
    if isinstance(value, Template):
        return value.render(context)
    if isinstance(value, dict):
        return {k: render_tree(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_tree(v, context) for v in value]
    return value


def perform(request: Request, context: dict, session: requests.Session) -> dict:
    """Make the request; return {status, data, headers} for a 2xx answer, else RequestFailed."""
    url = render_url(request.url, context)
    kwargs: dict[str, Any] = {
        "params": {k: t.render(context) for k, t in request.params.items()} or None,
        "headers": {"User-Agent": USER_AGENT,
                    **{k: t.render(context) for k, t in request.headers.items()}},
        "timeout": (min(request.timeout, 10.0), request.timeout),
        "allow_redirects": False,
        "stream": True,
    }
    if request.json is not None:
        kwargs["json"] = render_tree(request.json, context)
    elif request.data is not None:
        kwargs["data"] = render_tree(request.data, context)
    deadline = time.monotonic() + request.timeout
    try:
        with session.request(request.method, url, **kwargs) as answer:
            timer = _cut_off_at(answer, deadline)
            try:
                body = _read_capped(answer, deadline)
            except (requests.exceptions.RequestException, OSError):
                if time.monotonic() >= deadline:
                    raise requests.exceptions.Timeout() from None
                raise
            finally:
                timer.cancel()
            response = {"status": answer.status_code, "headers": dict(answer.headers),
                        "data": _decode(body, answer.headers.get("Content-Type", ""))}
    except requests.exceptions.Timeout:
        raise RequestFailed(f"no answer within {request.timeout:g} s", _no_answer("timeout")) from None
    except requests.exceptions.RequestException as exc:
        raise RequestFailed(f"request failed: {type(exc).__name__}", _no_answer("connection")) from None
    if not 200 <= response["status"] < 300:
        raise RequestFailed(f"answered {response['status']}", response)
    return response


def _no_answer(error: str) -> dict:
    return {"status": None, "data": None, "headers": {}, "error": error}


def _cut_off_at(answer: requests.Response, deadline: float) -> threading.Timer:
    """Shut the connection down at the deadline: a server trickling a byte at a time must
    not hold the chat's delegate past the request's timeout (the read timeout is per read)."""
    sock = _socket_of(answer)

    def cut() -> None:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    return timer


def _socket_of(answer: requests.Response) -> socket.socket | None:
    """The socket under a streamed answer (urllib3 keeps it inside http.client's reader)."""
    sock = getattr(getattr(answer.raw, "connection", None), "sock", None)
    if sock is None:
        reader = getattr(getattr(answer.raw, "_fp", None), "fp", None)
        sock = getattr(getattr(reader, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _read_capped(answer: requests.Response, deadline: float) -> bytes:
    chunks, size = [], 0
    for chunk in answer.iter_content(16384):
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestFailed(f"answer larger than {MAX_BODY} bytes", _no_answer("too large"))
        if time.monotonic() > deadline:
            raise requests.exceptions.Timeout()
        chunks.append(chunk)
    if time.monotonic() > deadline:
        raise requests.exceptions.Timeout()
    return b"".join(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
