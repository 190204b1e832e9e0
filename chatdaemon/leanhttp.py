"""Cheaper http.client connections for the Bot API client: one write per request, and
answers' headers read without the email package.

http.client hands every response's headers to email.parser, which built a feed parser, a
policy and a message per call: a fifth of the daemon's CPU per reply at full load.
`LeanResponse` reads the header lines itself into the same HTTPMessage, with http.client's
own limits (line length, header count), and keeps the rest of its response handling.

http.client also writes a request's head and its body with two sends: with TCP_NODELAY
two segments, two system calls here and two reads at the server. `LeanConnection` sends
a request whose body is bytes in one.

A socket with a timeout (`settimeout`) does each recv and send as poll() and then the call:
two releases of the GIL, and with many threads each release is a wait to get it back.
`LeanConnection` (plain TCP) connects within its timeout, then puts its socket in blocking
mode and has the kernel enforce the read/write timeout (SO_RCVTIMEO, SO_SNDTIMEO): one system
call, one release. A recv or send the kernel times out fails with EAGAIN, which
`TimeoutReader` and `LeanConnection.send` turn back into TimeoutError.
"""

from __future__ import annotations

import errno
import http.client
import io
import socket
import struct
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAX_LINE = 65536      # http.client's _MAXLINE: a longer header line is refused
MAX_HEADERS = 100     # http.client's _MAXHEADERS


def read_headers(fp: BinaryIO) -> http.client.HTTPMessage:
    """The header lines up to the blank line, as an HTTPMessage (names keep their case)."""
    return as_message(read_header_pairs(fp))


def read_header_pairs(fp: BinaryIO) -> list[list[str]]:
    """The header lines up to the blank line, as [name, value] pairs in their order."""
    pairs: list[list[str]] = []
    folds = False     # a line starting with blank space continues the header before it
    ended = False     # a line that is no header ends them, as in the email parser (read on)
    for count in range(MAX_HEADERS + 1):
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            break
        if count == MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        text = line.decode("iso-8859-1")
        if ended:
            continue
        if text[0] in " \t":
            if folds:
                pairs[-1][1] = f"{pairs[-1][1]} {text.strip()}"
            continue
        name, colon, value = text.partition(":")
        folds, ended = bool(colon), not colon
        if colon:
            pairs.append([name.rstrip(), value.strip()])
    return pairs


def as_message(pairs: list[list[str]]) -> http.client.HTTPMessage:
    message = http.client.HTTPMessage()
    for name, value in pairs:
        message[name] = value
    return message


def send_with_head(conn: http.client.HTTPConnection, body: object, chunked: bool) -> bool:
    """Send the buffered head and a bytes `body` in one write; False (nothing sent) for any
    other body, which HTTPConnection._send_output then sends as it always does."""
    if not isinstance(body, bytes) or chunked:
        return False
    buffer: list[bytes] = conn._buffer  # type: ignore[attr-defined]  # the head, not in the stubs
    buffer.extend((b"", body))   # the head's blank line, then the body
    data = b"\r\n".join(buffer)
    del buffer[:]
    conn.send(data)
    return True


def timeval_format(sock: socket.socket) -> str:
    """The struct format of the kernel's timeval for SO_RCVTIMEO on `sock`: two C longs, or
    two 64-bit integers where a 32-bit system moved to a 64-bit time_t (its SO_RCVTIMEO is then
    the kernel's _NEW option). The kernel answers with as many bytes as its struct has."""
    size = len(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
    return "ll" if size == struct.calcsize("ll") else "qq"


def timeval(seconds: float, layout: str) -> bytes:
    """`seconds` as a kernel timeval; never all zero, which the kernel reads as no timeout."""
    micros = max(1, round(seconds * 1_000_000))
    return struct.pack(layout, micros // 1_000_000, micros % 1_000_000)


class TimeoutReader(io.RawIOBase):
    """A socket's raw reader (socket.makefile's), but a recv that fails with EAGAIN raises
    TimeoutError.

    On a blocking socket EAGAIN means its SO_RCVTIMEO ran out. The standard reader answers
    None for it, which a buffered reader and http.client take for the end of the stream: a
    timeout would read as a connection the server closed (RemoteDisconnected), and the
    client would send the request again on a fresh connection.
    """

    def __init__(self, sock: socket.socket):
        super().__init__()
        self._raw = sock.makefile("rb", buffering=0)  # the socket stays open while it is

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = self._raw.readinto(buffer)
        if count is None:
            raise TimeoutError(errno.EAGAIN, "timed out")
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


class _ReaderMaker:
    """What HTTPResponse.__init__ calls `makefile("rb")` on: a socket's answer is read
    through a TimeoutReader; anything else with a makefile (bytes kept for a replay) as is."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def makefile(self, mode: str) -> BinaryIO:
        if isinstance(self._sock, socket.socket):
            return io.BufferedReader(TimeoutReader(self._sock))
        return self._sock.makefile(mode)


class LeanResponse(http.client.HTTPResponse):
    """http.client.HTTPResponse with `begin` reading headers through `read_headers`, and the
    body and headers through a TimeoutReader: a timed-out read stays a timeout."""

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: str | None = None,
                 url: str | None = None):
        # http.client only calls makefile("rb") on what it is given as its socket
        super().__init__(_ReaderMaker(sock), debuglevel, method, url)  # type: ignore[arg-type]

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:   # skip any 100 Continue, with its headers
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            read_headers(self.fp)
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        pairs = read_header_pairs(self.fp)
        self.headers = self.msg = as_message(pairs)
        # the first of each name, as HTTPMessage.get answers, without its slower lookups
        self._read_framing(status, {name.lower(): value for name, value in reversed(pairs)})

    def _read_framing(self, status: int, first: dict[str, str]) -> None:
        """Chunked or not, the body's length and whether the connection closes after it:
        http.client's own rules (HTTPResponse.begin after its headers, and _check_close)."""
        encoding = first.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")
        self.chunk_left = None
        self.will_close = _closes(self.version, first)
        self.length = None
        length = first.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            if self.length is not None and self.length < 0:
                self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) \
                or 100 <= status < 200 or self._method == "HEAD":  # type: ignore[attr-defined]  # unstubbed
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


def _closes(version: int, first: dict[str, str]) -> bool:
    """Whether the server closes the connection after this answer (HTTPResponse._check_close)."""
    connection = first.get("connection", "").lower()
    if version == 11:
        return "close" in connection
    return not (first.get("keep-alive") or "keep-alive" in connection
                or "keep-alive" in first.get("proxy-connection", "").lower())


class LeanConnection(http.client.HTTPConnection):
    """An HTTP connection that writes each request once and reads answers with LeanResponse.

    Plain TCP only: it connects within `timeout`, then its socket is blocking and the read
    and write timeout (`set_io_timeout`) is the kernel's SO_RCVTIMEO and SO_SNDTIMEO.
    """

    response_class = LeanResponse
    io_timeout: float | None = None   # the read/write timeout wanted, in force once connected
    _layout = "ll"                    # the kernel's timeval, learnt on connect

    def connect(self) -> None:
        super().connect()   # within self.timeout, the connect timeout
        self.sock.settimeout(None)
        self._layout = timeval_format(self.sock)
        wanted = self.io_timeout if self.io_timeout is not None else self.timeout
        # the invariant: the socket is blocking only with a kernel timeout, the one set or
        # else the connect timeout (none only where http.client's default would have none)
        self._apply_io_timeout(wanted if isinstance(wanted, int | float) else None)

    def set_io_timeout(self, seconds: float) -> None:
        """Each recv and each send waits at most `seconds`; set only when it changes (each
        setting is two system calls)."""
        if seconds != self.io_timeout:
            if self.sock is None:
                self.io_timeout = seconds   # connect sets it
            else:
                self._apply_io_timeout(seconds)

    def _apply_io_timeout(self, seconds: float | None) -> None:
        value = timeval(seconds, self._layout) if seconds is not None \
            else struct.pack(self._layout, 0, 0)   # all zero: no timeout, as http.client's default
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        self.io_timeout = seconds

    def send(self, data: Any) -> None:
        try:
            super().send(data)
        except BlockingIOError:   # EAGAIN: SO_SNDTIMEO ran out before the kernel took more
            raise TimeoutError(errno.EAGAIN, "timed out") from None

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if not send_with_head(self, message_body, encode_chunked):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]  # unstubbed


class LeanHTTPSConnection(http.client.HTTPSConnection):
    """LeanConnection over TLS, with the socket's own timeout (`settimeout`) kept.

    Never a blocking socket with SO_RCVTIMEO here: CPython's ssl module retries SSL_read on
    WANT_READ forever on a blocking socket, so a read would never time out.
    """

    response_class = LeanResponse

    def set_io_timeout(self, seconds: float) -> None:
        """Each recv and each send waits at most `seconds`; set only when it changes."""
        if self.sock.gettimeout() != seconds:   # each setting is a system call (ioctl)
            self.sock.settimeout(seconds)

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if not send_with_head(self, message_body, encode_chunked):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]  # unstubbed


Connection = LeanConnection | LeanHTTPSConnection
