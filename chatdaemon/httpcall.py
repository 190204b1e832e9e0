"""The request step of the pipeline: one outgoing HTTP call built from templates, bounded.

What keeps it safe:
- values put into the URL are percent-encoded with nothing left unescaped, except the
  bot's own `env` values (the author's), which may carry a whole base URL;
- after rendering, the URL's scheme, host and port must equal those of the same template
  rendered with every user-derived value replaced by a placeholder: user text can never
  choose or change the host;
- no redirects are followed; `timeout` bounds the connect and each read, and it is also a
  total deadline from the connect to the body's last byte (a server trickling its status
  line, headers or body a byte at a time is cut off), and the body is read only up to a
  size cap.

`Trusted` and `url_value` live in templates.py (its URL mode encodes with them); they are
imported here for the callers that know them as httpcall's.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import re
import socket
import threading
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .definitions import Request
from .templates import Template, Trusted, url_value

# requests and urllib3 (about 6 MB resident) are imported with the first request a bot
# makes: a bot without `request:` never loads them
if TYPE_CHECKING:
    import requests

__all__ = ["RequestFailed", "Session", "Trusted", "deadline_adapter", "new_session", "perform",
           "render_url", "url_value"]

MAX_BODY = 1024 * 1024
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:-]+)", re.IGNORECASE)
MAX_DEPTH = 100   # nesting levels of a JSON answer (a template reads a few; the copies recurse)
USER_AGENT = "chatdaemon"


class RequestFailed(Exception):
    """The request did not produce a 2xx answer; `response` is what the template sees."""

    def __init__(self, reason: str, response: dict):
        self.reason = reason
        self.response = response
        super().__init__(reason)


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

    # a URL may compute with user-derived values ({{ chat.id % 10 }}, {{ x | length }}): the
    # stand-in takes part as a value whose result is the stand-in again, never a TypeError
    def _same(self, *args: Any) -> _Placeholder:
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _same
    __mod__ = __rmod__ = __pow__ = __rpow__ = __neg__ = __pos__ = __abs__ = _same

    def _never(self, other: Any) -> bool:
        return False

    __lt__ = __le__ = __gt__ = __ge__ = _never

    def __len__(self) -> int:
        return len(self._word)

    def __index__(self) -> int:
        return 0

    __int__ = __index__

    def __float__(self) -> float:
        return 0.0


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


@runtime_checkable
class _Deadlines(Protocol):
    """What perform() needs of a session's adapter (deadline_adapter's class has it)."""

    def deadline(self, seconds: float) -> contextlib.AbstractContextManager[Watch]: ...


class Session:
    """A requests session whose requests a total deadline can cut off, made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: requests.Session | None = None

    def get(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                self._session = _deadline_session()
            return self._session


def new_session() -> Session:
    """A session for perform(); requests itself is imported by its first request."""
    return Session()


def _deadline_session() -> requests.Session:
    import requests
    session = requests.Session()
    adapter = deadline_adapter()()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def perform(request: Request, context: dict, session: Session) -> dict:
    """Make the request; return {status, data, headers} for a 2xx answer, else RequestFailed.

    `session` comes from new_session(): its adapter lets the deadline cut the exchange off.
    """
    if not isinstance(session, Session):
        raise TypeError("perform() needs a session from httpcall.new_session()")
    import requests
    http = session.get()
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
    adapter = http.get_adapter(url)
    assert isinstance(adapter, _Deadlines)   # new_session mounts one for http and https
    # the invariant: the whole exchange, from connect to the body's last byte, ends by
    # `timeout` after it began; the (connect, read) timeout still bounds each single read
    with adapter.deadline(request.timeout) as watch:
        try:
            response = _exchange(http, request.method, url, kwargs, watch)
        except requests.exceptions.Timeout:
            raise RequestFailed(f"no answer within {request.timeout:g} s",
                                _no_answer("timeout")) from None
        except UnicodeEncodeError as exc:
            # a header is Latin-1 and a URL-encoded value UTF-8: a user's text holding an
            # emoji (for a header) or a lone surrogate cannot go out; this request fails,
            # the handler's on_error answers
            raise RequestFailed(f"a request value cannot be encoded ({exc.encoding})",
                                _no_answer("invalid")) from None
        except (requests.exceptions.RequestException, OSError) as exc:
            if watch.expired:
                raise RequestFailed(f"no complete answer within {request.timeout:g} s",
                                    _no_answer("timeout")) from None
            raise RequestFailed(f"request failed: {type(exc).__name__}",
                                _no_answer("connection")) from None
    if not 200 <= response["status"] < 300:
        # on_error sees `response.error` whatever failed ("status": it answered, with
        # response.status and response.data), as for a timeout or a refused connection
        raise RequestFailed(f"answered {response['status']}", {**response, "error": "status"})
    return response


def _exchange(session: requests.Session, method: str, url: str, kwargs: dict,
              watch: Watch) -> dict:
    with session.request(method, url, **kwargs) as answer:
        try:
            body = _read_capped(answer, watch)
        finally:
            watch.finish()  # before the connection goes back to the pool: never cut it there
        return {"status": answer.status_code, "headers": dict(answer.headers),
                "data": _decode(body, answer.headers.get("Content-Type", ""))}


def _no_answer(error: str) -> dict:
    return {"status": None, "data": None, "headers": {}, "error": error}


class Watch:
    """The sockets one request uses, shut down by a timer at its deadline.

    Shutting a socket down wakes the thread blocked reading it, whatever the server is
    trickling; its read then fails and the request ends as a timeout.
    """

    def __init__(self, seconds: float):
        self.expired = False
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def add(self, sock: Any) -> None:
        """A socket this request reads from; shut at once if the deadline already passed."""
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self._done:
                return
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        """The exchange is over (or failed): the timer must not touch its sockets any more."""
        with self._lock:
            self._done = True
            self._sockets.clear()
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        # the plain socket's shutdown, also under TLS: SSLSocket.shutdown would unwrap the
        # TLS state that the reading thread is still using
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


@functools.cache
def deadline_adapter() -> type:
    """requests' HTTPAdapter, with connections that report their sockets to the current Watch.

    A class made on first use, so that importing this module does not import requests.
    """
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class _Watched(HTTPConnection):
        """Mixed into urllib3's connections: each socket a request uses is shown to its Watch."""

        adapter: DeadlineAdapter  # set on the adapter's own subclasses

        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            self.adapter.note(sock)
            return sock

        def request(self, *args: Any, **kwargs: Any) -> Any:
            self.adapter.note(getattr(self, "sock", None))  # a kept-alive connection, reused
            return super().request(*args, **kwargs)

    class DeadlineAdapter(HTTPAdapter):
        def __init__(self, *args: Any, **kwargs: Any):
            self._current = threading.local()  # the Watch of the request this thread is making
            super().__init__(*args, **kwargs)

        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self._watch_pools(self.poolmanager)

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            self._watch_pools(manager)
            return manager

        def _watch_pools(self, manager: Any) -> None:
            manager.pool_classes_by_scheme = {
                "http": _subclass(HTTPConnectionPool, HTTPConnection, self),
                "https": _subclass(HTTPSConnectionPool, HTTPSConnection, self),
            }

        @contextlib.contextmanager
        def deadline(self, seconds: float):
            """Watch what this thread's next request reads, and cut it off after `seconds`."""
            watch = Watch(seconds)
            self._current.watch = watch
            watch.start()
            try:
                yield watch
            finally:
                watch.finish()
                self._current.watch = None

        def note(self, sock: Any) -> None:
            watch = getattr(self._current, "watch", None)
            if watch is not None:
                watch.add(sock)

    def _subclass(pool: type, connection: type, adapter: DeadlineAdapter) -> type:
        """`pool` whose connections are `connection` reporting to `adapter`."""
        watched = type(f"Watched{connection.__name__}", (_Watched, connection), {"adapter": adapter})
        return type(f"Watched{pool.__name__}", (pool,), {"ConnectionCls": watched})

    return DeadlineAdapter


def _read_capped(answer: requests.Response, watch: Watch) -> bytes:
    import requests
    chunks, size = [], 0
    for chunk in answer.iter_content(16384):
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestFailed(f"answer larger than {MAX_BODY} bytes", _no_answer("too large"))
        if watch.expired:
            raise requests.exceptions.Timeout()
        chunks.append(chunk)
    if watch.expired:
        raise requests.exceptions.Timeout()
    return b"".join(chunks)


def _decode(body: bytes, content_type: str) -> Any:
    """The answer as JSON data when it reads as JSON, else as text in its declared charset
    (UTF-8 when it declares none, or one Python does not know)."""
    text = body.decode(_codec(content_type), errors="replace")
    if "json" in content_type or text[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except RecursionError:
            data = None   # deeper than the parser goes: refused below like any too deep
            depth = MAX_DEPTH + 1
        except ValueError:
            return text
        else:
            depth = _depth(data)
        # the invariant: templates and the conversation only ever get JSON this shallow
        # (copying it read-only, keeping it in state_context recurse once per level)
        if depth > MAX_DEPTH:
            raise RequestFailed(f"the JSON answer is nested more than {MAX_DEPTH} levels deep",
                                _no_answer("too deep"))
        return data
    return text


def _codec(content_type: str) -> str:
    found = _CHARSET.search(content_type)
    if found:
        try:
            return codecs.lookup(found.group(1)).name
        except LookupError:
            pass
    return "utf-8"


def _depth(data: Any) -> int:
    """How many levels of lists and objects `data` nests, counted without recursing."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend((item, level + 1)
                         for item in (value.values() if isinstance(value, dict) else value))
    return deepest
