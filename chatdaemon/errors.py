"""The exception tree of chatdaemon, and the exit status each one ends the CLI with.

    ChatdaemonError                     anything chatdaemon raises on purpose
    ├── ConfigError        exit 78      bad daemon config, bot definition, template, token source
    │   ├── ConfigErrors   exit 78      several of those, every one found in one load
    │   ├── BadToken       exit 78      Telegram answered 401/404 to the token
    │   └── UnusableDatabase exit 78    newer schema, another application's or a damaged file,
    │       │                           or files that cannot be made private (carries path, reason)
    │       ├── OtherBotsDatabase exit 78  the database records another bot (carries both ids)
    │       └── DatabaseUnavailable exit 75  busy (another SQLite writer), disk full or an I/O
    │                                   error at start: it may pass, so a supervisor retries
    ├── Conflict           exit 75      another getUpdates poller holds the token
    ├── DatabaseInUse      exit 75      another process holds the database's lock (carries its pid)
    ├── WebhookActive      exit 76      a webhook is set, so getUpdates is refused
    ├── TelegramError                   the Bot API answered ok=false (carries status, description)
    │   ├── RetryAfter                  429: carries retry_after seconds (sanitised, capped)
    │   └── BadAnswer                   the answer is no Bot API answer: not JSON, too big, too deep
    ├── NetworkError                    no answer: connection refused/reset, timeout, DNS
    ├── ShuttingDown                    a wait was cut short because the daemon is stopping
    ├── WaitTooLong                     listener.wait(timeout) saw no update in time
    │   └── IdleTerminate               on_close's reason: the chat was idle (name "idle")
    ├── HandlerClosed                   why a chat's handler ends, given to its on_close
    │   ├── StopListening               the handler called close() (name "closed")
    │   ├── Evicted                     its slot went to a waiting chat (name "evicted")
    │   └── Reloaded                    a reloaded bot takes over (name "reload")
    ├── Abandoned                       an update ran past its deadline: its thread may no longer
    │                                   commit or send (carries chat_id)
    └── UpdateFailed                    a bot's handler failed on an update and rolls it back
                                        (carries answered: the user already got an error reply)

DatabaseInUse shares 75 (EX_TEMPFAIL) with Conflict rather than 78: both mean "another
process holds what this one needs", which ends when that process does (a `chatdaemon chat`
session, an old instance still stopping), so a supervisor's retry is the right answer; a
database of another bot or another schema, by contrast, never fixes itself (78, no restart).

Exceptions carry their data as attributes; nothing is classified by matching message text,
except where Telegram gives no other sign, each in one function here: its 409 description
tells a webhook from another poller, and its 400 description tells a button press too old
to answer (`is_stale_callback`). A bad token is told by status code alone, in one place:
`is_bad_token`.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import TypeGuard

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


class ConfigErrors(ConfigError):
    """Every ConfigError one load found (`errors`), so that all of them are reported at once."""

    errors: list[ConfigError]

    def __init__(self, errors: list[ConfigError]):
        flat: list[ConfigError] = []
        for error in errors:
            flat.extend(error.errors if isinstance(error, ConfigErrors) else [error])
        self.errors = flat
        super().__init__("\n".join(str(error) for error in flat), None)
        self.where = flat[0].where if flat else None


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


def is_bad_token(exc: BaseException) -> TypeGuard[TelegramError]:
    """Whether Telegram's answer says it does not know the token (401 or 404), by status code."""
    return isinstance(exc, TelegramError) and not isinstance(exc, BadAnswer) \
        and exc.status in BAD_TOKEN_STATUSES


def is_stale_callback(exc: BaseException) -> bool:
    """Whether answerCallbackQuery was refused because the press waited too long (downtime, a
    backlog): 400 "query is too old … or query ID is invalid". Telegram gives no code for it."""
    if not isinstance(exc, TelegramError) or exc.status != 400:
        return False
    description = exc.description.lower()
    return "query" in description and ("too old" in description or "invalid" in description)


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
        self.seconds: float | None = seconds   # None in an IdleTerminate whose timeout is not known
        super().__init__(f"no update within {seconds} s")


class HandlerClosed(ChatdaemonError):
    """Why a chat's handler ends: the reason its `on_close` receives.

    `name` is a short word ("closed", "idle", "evicted", "reload"); `str(reason)` is that
    name and `reason == "idle"` compares it, so on_close code written for the plain
    strings of earlier versions keeps working.
    """

    name = "closed"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self.name)


class StopListening(HandlerClosed):
    """Raised by `ChatHandler.close()`: the handler ends once this update commits."""

    name = "closed"


class Evicted(HandlerClosed):
    """The chat's slot went to a waiting chat; its next update starts a new handler."""

    name = "evicted"


class Reloaded(HandlerClosed):
    """The bot was reloaded: its new version handles the chat's next update."""

    name = "reload"


class IdleTerminate(HandlerClosed, WaitTooLong):
    """The chat had no update for the idle timeout (telepot's name); `seconds` when known."""

    name = "idle"

    def __init__(self, seconds: float | None = None):
        WaitTooLong.__init__(self, seconds or 0.0)
        self.seconds = seconds


class UnusableDatabase(ConfigError):
    """The database file cannot be used by this bot or this version; `reason` says why."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"database {path} {reason}")


class OtherBotsDatabase(UnusableDatabase):
    """The database records another owner (a bot id, or the terminal chat) than this one."""

    def __init__(self, path: str, recorded: str, wanted: str):
        self.recorded = recorded
        self.wanted = wanted
        super().__init__(path, f"belongs to {_owner(recorded)}, not to {_owner(wanted)} "
                               "(give each bot its own --db)")


class DatabaseUnavailable(UnusableDatabase):
    """SQLite could not open the database for now (busy, disk full, an I/O error); `code`
    is SQLite's error name. Not 78: a restart once the cause has passed is the fix."""

    exit_status = EXIT_CONFLICT

    def __init__(self, path: str, reason: str, code: str):
        self.code = code
        super().__init__(path, reason)


class DatabaseInUse(ChatdaemonError):
    """Another process (or another Store in this one) holds the database's lock."""

    exit_status = EXIT_CONFLICT

    def __init__(self, path: str, pid: int | None):
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"database {path} is in use by {holder} (one process per database)")


def _owner(owner: str) -> str:
    return "the terminal chat (`chatdaemon chat`)" if owner == "terminal" else f"bot {owner}"


class Abandoned(ChatdaemonError):
    """The update this thread was handling ran past its deadline and was given up."""

    def __init__(self, chat_id: int):
        self.chat_id = chat_id
        super().__init__(f"chat {chat_id}: the update was given up after its deadline")


class UpdateFailed(ChatdaemonError):
    """A handler failed on an update: everything it changed rolls back.

    `answered` is true when the user already got an error reply (the handler's on_error),
    so the bot's generic error text is not sent on top of it.
    """

    def __init__(self, cause: str, answered: bool):
        self.cause = cause
        self.answered = answered
        super().__init__(cause)
