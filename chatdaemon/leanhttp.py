"""Cheaper http.client connections for the Bot API client: one write per request, and
answers' headers read without the email package.

http.client hands every response's headers to email.parser, which built a feed parser, a
policy and a message per call: a fifth of the daemon's CPU per reply at full load.
`LeanResponse` reads the header lines itself into the same HTTPMessage, with http.client's
own limits (line length, header count), and keeps the rest of its response handling.

http.client also writes a request's head and its body with two sends: with TCP_NODELAY
two segments, two system calls here and two reads at the server. `LeanConnection` sends
a request whose body is bytes in one.
"""

from __future__ import annotations

import http.client
from typing import BinaryIO

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


class LeanResponse(http.client.HTTPResponse):
    """http.client.HTTPResponse with `begin` reading headers through `read_headers`."""

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
    """An HTTP connection that writes each request once and reads answers with LeanResponse."""

    response_class = LeanResponse

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if not send_with_head(self, message_body, encode_chunked):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]  # unstubbed


class LeanHTTPSConnection(http.client.HTTPSConnection):
    """LeanConnection over TLS."""

    response_class = LeanResponse

    def _send_output(self, message_body: object = None, encode_chunked: bool = False) -> None:
        if not send_with_head(self, message_body, encode_chunked):
            super()._send_output(message_body, encode_chunked)  # type: ignore[misc]  # unstubbed
