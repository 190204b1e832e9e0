"""telepot.exception: the errors a telepot program catches, built on chatdaemon's own.

`WaitTooLong` (and `IdleTerminate`) are also chatdaemon's WaitTooLong, and `TelegramError`
is also chatdaemon's TelegramError, so the delegate treats them as it treats its own.
Classes are picked from structured fields (status, `parameters`), never from the text of
Telegram's description.
"""

from __future__ import annotations

from typing import Any

from .. import errors


class TelepotException(Exception):
    """Base of telepot's own errors."""


class BadFlavor(TelepotException):
    def __init__(self, offender: Any):
        super().__init__(offender)

    @property
    def offender(self) -> Any:
        return self.args[0]


class BadHTTPResponse(TelepotException):
    """A download answered with something other than 200."""

    def __init__(self, status: int, text: str, response: Any = None):
        super().__init__(status, text, response)

    @property
    def status(self) -> int:
        return self.args[0]

    @property
    def text(self) -> str:
        return self.args[1]

    @property
    def response(self) -> Any:
        return self.args[2]


class EventNotFound(TelepotException):
    def __init__(self, event: Any):
        super().__init__(event)

    @property
    def event(self) -> Any:
        return self.args[0]


class Unsupported(TelepotException):
    """A telepot feature that `chatdaemon telepot` does not provide; the message says why."""


class WaitTooLong(TelepotException, errors.WaitTooLong):
    """No message arrived within the timeout."""

    def __init__(self, seconds: float):
        errors.WaitTooLong.__init__(self, seconds)


class IdleTerminate(WaitTooLong):
    """The handler was idle for its timeout and is being closed."""


class StopListening(TelepotException):
    """Raised by `ChatHandler.close()`: the handler ends normally."""


class TelegramError(TelepotException, errors.TelegramError):
    """The Bot API answered ok=false: telepot's (description, error_code, json)."""

    def __init__(self, description: str, error_code: int, json: dict | None = None,
                 method: str = ""):
        json = json or {}
        parameters = json.get("parameters") if isinstance(json.get("parameters"), dict) else {}
        errors.TelegramError.__init__(self, method, error_code, description, parameters)
        self.args = (description, error_code, json)
        self.json = json

    @property
    def error_code(self) -> int:
        return self.status

    def __str__(self) -> str:
        return f"{self.method or 'Bot API'}: {self.status} {self.description}"


class UnauthorizedError(TelegramError):
    """401: the token was rejected."""


class TooManyRequestsError(TelegramError):
    """429 that outlasted the sender's own waiting."""


class MigratedToSupergroupChatError(TelegramError):
    """The group became a supergroup; `json['parameters']['migrate_to_chat_id']` is its id."""


class BotWasKickedError(TelegramError):
    """Defined for `except` clauses; Telegram tells it only in text, so it is not raised."""


class BotWasBlockedError(TelegramError):
    """Defined for `except` clauses; Telegram tells it only in text, so it is not raised."""


class NotEnoughRightsError(TelegramError):
    """Defined for `except` clauses; Telegram tells it only in text, so it is not raised."""


def from_native(exc: errors.TelegramError) -> TelegramError:
    """The telepot error for one of chatdaemon's, chosen by status and parameters."""
    if isinstance(exc, TelegramError):
        return exc
    if exc.migrate_to_chat_id is not None:
        cls: type[TelegramError] = MigratedToSupergroupChatError
    elif exc.status == 401:
        cls = UnauthorizedError
    elif exc.status == 429:
        cls = TooManyRequestsError
    else:
        cls = TelegramError
    json = {"ok": False, "error_code": exc.status, "description": exc.description}
    if exc.parameters:
        json["parameters"] = dict(exc.parameters)
    return cls(exc.description, exc.status, json, method=exc.method)
