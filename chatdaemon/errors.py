"""The exception tree of chatdaemon, and the exit status each one ends the CLI with.

    ChatdaemonError                     anything chatdaemon raises on purpose
    ├── ConfigError        exit 78      bad daemon config, bot definition, template, token source
    │   └── BadToken       exit 78      Telegram answered 401/404 to the token
    ├── Conflict           exit 75      another getUpdates poller holds the token
    ├── WebhookActive      exit 76      a webhook is set, so getUpdates is refused
    ├── TelegramError                   the Bot API answered ok=false (carries status, description)
    │   ├── RetryAfter                  429: carries retry_after seconds (sanitised, capped)
    │   └── BadAnswer                   the answer is no Bot API answer: not JSON, too big, too deep
    ├── NetworkError                    no answer: connection refused/reset, timeout, DNS
    ├── ShuttingDown                    a wait was cut short because the daemon is stopping
    └── WaitTooLong                     listener.wait(timeout) saw no update in time

Exceptions carry their data as attributes; nothing is classified by matching message text,
except that Telegram's 409 description tells a webhook from another poller. A bad token is
told by status code alone, in one place: `is_bad_token`.
"""

from __future__ import annotations

import functools
import logging
import math

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFLICT = 75
EXIT_WEBHOOK = 76
EXIT_CONFIG = 78

BAD_TOKEN_STATUSES = (401, 404)   # Telegram's answers to a token it does not know
DEFAULT_RETRY_AFTER = 5.0         # a 429 whose retry_after is missing or no usable number
MAX_RETRY_AFTER = 3600.0          # Telegram's real waits are seconds to minutes; more is a lie


class ChatdaemonError(Exception):
    """Base of every error chatdaemon raises on purpose."""

    exit_status = EXIT_FAILURE


class ConfigError(ChatdaemonError):
    """Something the user wrote (config, bot definition, token source) is wrong.

    `where` is "file:line" when the error can be placed in a file.
    """

    exit_status = EXIT_CONFIG

    def __init__(self, message: str, where: str | None = None):
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class BadToken(ConfigError):
    """Telegram rejected the token (401 Unauthorized or 404 Not Found on getMe)."""

    @classmethod
    def from_error(cls, exc: TelegramError) -> BadToken:
        return cls(f"Telegram rejected the bot token ({exc.status} {exc.description})")


class Conflict(ChatdaemonError):
    """Another process is polling getUpdates with the same token."""

    exit_status = EXIT_CONFLICT


class WebhookActive(ChatdaemonError):
    """A webhook is set for the bot, so Telegram refuses getUpdates."""

    exit_status = EXIT_WEBHOOK


class TelegramError(ChatdaemonError):
    """The Bot API answered ok=false."""

    def __init__(self, method: str, status: int, description: str, parameters: dict | None = None):
        self.method = method
        self.status = status
        self.description = description
        self.parameters = parameters or {}
        super().__init__(f"{method}: {self.detail}")

    @property
    def detail(self) -> str:
        """The cause without the method name: status and description."""
        return f"{self.status} {self.description}"

    @property
    def migrate_to_chat_id(self) -> int | None:
        return self.parameters.get("migrate_to_chat_id")


class RetryAfter(TelegramError):
    """429 Too Many Requests: wait `retry_after` seconds before the next call in that scope."""

    @functools.cached_property
    def retry_after(self) -> float:
        """Seconds to wait: finite, positive and at most MAX_RETRY_AFTER, whatever was sent."""
        return sane_retry_after(self.parameters.get("retry_after"))


class BadAnswer(TelegramError):
    """The server's answer cannot be a Bot API answer: not JSON, over the size cap, too deep.

    `problem` is one of NOT_JSON, TOO_BIG, TOO_DEEP; `head` holds the answer's first bytes
    (enough to read the first update's id when one update is what makes a batch unreadable).
    """

    NOT_JSON = "not_json"
    TOO_BIG = "too_big"
    TOO_DEEP = "too_deep"

    def __init__(self, method: str, status: int, description: str, problem: str,
                 head: bytes = b""):
        self.problem = problem
        self.head = head
        super().__init__(method, status, description)


def sane_retry_after(value: object) -> float:
    """A wait Telegram asked for, as a number of seconds that cannot stall or spin a loop.

    An answer is untrusted input: a missing value, a non-number ("soon", a bool), NaN, an
    infinity or a value ≤ 0 becomes DEFAULT_RETRY_AFTER; a finite one above MAX_RETRY_AFTER
    (1e300, 10**400) is capped, and the cap logged.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return DEFAULT_RETRY_AFTER
    seconds = value if isinstance(value, float) else _int_seconds(value)
    if not math.isfinite(seconds) or seconds <= 0:
        return DEFAULT_RETRY_AFTER
    if seconds > MAX_RETRY_AFTER:
        log.warning("Telegram asked to wait %.3g s; waiting %.0f s instead", seconds, MAX_RETRY_AFTER)
        return MAX_RETRY_AFTER
    return seconds


def _int_seconds(value: int) -> float:
    """An int as float seconds; clamped so that a huge one cannot overflow a float."""
    return float(max(-1, min(value, int(MAX_RETRY_AFTER) + 1)))


def is_bad_token(exc: BaseException) -> bool:
    """Whether Telegram's answer says it does not know the token (401 or 404), by status code."""
    return isinstance(exc, TelegramError) and not isinstance(exc, BadAnswer) \
        and exc.status in BAD_TOKEN_STATUSES


class NetworkError(ChatdaemonError):
    """The Bot API could not be reached or did not answer in time.

    `maybe_delivered` is true when the request was sent and the answer was lost, so a
    send may have reached the chat.
    """

    def __init__(self, method: str, reason: str, maybe_delivered: bool = True, where: str = ""):
        self.method = method
        self.reason = reason
        self.maybe_delivered = maybe_delivered
        self.where = where   # scheme://host:port of the server, never the path (it holds the token)
        super().__init__(f"{method}: {self.detail}")

    @property
    def detail(self) -> str:
        """The cause without the method name: the reason, and where when known."""
        return f"{self.reason} ({self.where})" if self.where else self.reason


class ShuttingDown(ChatdaemonError):
    """Raised inside a delegate when the daemon stops while it waits (for a send slot or an update)."""


class WaitTooLong(ChatdaemonError):
    """listener.wait(timeout=...) returned no update within the timeout (telepot's name)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        super().__init__(f"no update within {seconds} s")
