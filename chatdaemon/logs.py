"""Logging set-up for the CLI: stderr, journald-friendly, and never the token or an upstream key.

Only the CLI configures handlers; library modules just use `logging.getLogger(__name__)`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

_TOKEN_IN_URL = re.compile(r"bot\d+:[A-Za-z0-9_-]+")
_BARE_TOKEN = re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}")
_CALLBACK_TOKEN = re.compile(r"/callbacks/[A-Za-z0-9_-]+")   # a conversation's callback URL
# A URL's query (after a path, with or without scheme and host): "GET /p?key=v HTTP/1.1"
# as urllib3 logs it, "https://host/p?key=v" as an exception names it. Upstream APIs take
# their keys there, so every value is replaced; the names stay for debugging.
_URL_QUERY = re.compile(r"(?P<url>(?:\b[a-z][a-z0-9+.-]*://[^\s/?#\"'<>]*)?/[^\s?#\"'<>]*)\?"
                        r"(?P<query>[^\s#\"'<>]+)", re.I)
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4,
                    logging.ERROR: 3, logging.CRITICAL: 2}


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Replace bot tokens (as in API URLs, bare, or the known ones) and callback URLs'
    tokens with a marker."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _TOKEN_IN_URL.sub("bot<redacted>", text)
    text = _CALLBACK_TOKEN.sub("/callbacks/<redacted>", text)
    return _BARE_TOKEN.sub("<redacted>", text)


def redact_queries(text: str) -> str:
    """Replace every value in URL query strings with a marker: `/p?key=<redacted>&q=<redacted>`."""
    return _URL_QUERY.sub(_redacted_query, text)


def _redacted_query(match: re.Match) -> str:
    parts = []
    for part in match["query"].split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}=<redacted>" if equals else "<redacted>" if part else part)
    return f"{match['url']}?{'&'.join(parts)}"


class RedactingFormatter(logging.Formatter):
    """Formats a record, then removes any token and URL query values from the finished line.

    Applied to the finished line (tracebacks too), not to the message alone: a URL can
    arrive in an argument, in an exception's text, or in a third-party library's record.
    """

    def __init__(self, fmt: str, secrets: tuple[str, ...], journald: bool):
        super().__init__(fmt)
        self.secrets = secrets
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = redact_queries(redact(super().format(record), self.secrets))
        if self.journald:
            prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


def under_journald() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        device, inode = (int(x) for x in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


def configure(level: str = "INFO", secrets: tuple[str, ...] = (), stream=None) -> None:
    """Log to stderr: with <N> priority prefixes and no time under journald, else with time."""
    journald = under_journald()
    fmt = "%(name)s: %(message)s" if journald else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt, tuple(secrets), journald))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _route_uncaught_exceptions()


def _route_uncaught_exceptions() -> None:
    """Uncaught exceptions go through logging too, so the redaction covers their tracebacks."""
    crash_log = logging.getLogger("chatdaemon.crash")

    def on_main(kind, value, tb):
        crash_log.critical("uncaught exception", exc_info=(kind, value, tb))

    def on_thread(args):
        if args.exc_type is SystemExit:
            return
        crash_log.critical("uncaught exception in thread %s",
                           args.thread.name if args.thread else "?",
                           exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = on_main
    threading.excepthook = on_thread
