"""The Bot API client: one HTTP call to Telegram, its answer or a typed error.

The token is part of every request URL, so no exception or log record from here may carry
the URL: `requests` errors are caught and re-raised with the method name only.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter

from .errors import NetworkError, RetryAfter, TelegramError

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.telegram.org"
TOKEN_PATTERN = re.compile(r"\d{3,}:[A-Za-z0-9_-]{10,}")

for _name in ("urllib3", "requests"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class BotAPI(Protocol):
    """What the rest of chatdaemon needs from Telegram: one call."""

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        ...


def looks_like_token(token: str) -> bool:
    return bool(TOKEN_PATTERN.fullmatch(token))


class TelegramClient:
    """Calls the Bot API at `api_url` over a pooled keep-alive session."""

    def __init__(self, token: str, api_url: str = DEFAULT_API_URL, *,
                 connect_timeout: float = 10.0, read_timeout: float = 30.0, pool_size: int = 64):
        self._base = f"{api_url.rstrip('/')}/bot{token}/"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def __repr__(self) -> str:
        return "TelegramClient(<redacted>)"

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        """POST `params` as JSON to `method`; return `result` or raise a typed error.

        `timeout` is the read timeout; a long poll passes its poll timeout plus a margin.
        """
        read = self.read_timeout if timeout is None else timeout
        try:
            response = self._session.post(
                self._base + method, json=params or {}, timeout=(self.connect_timeout, read)
            )
        except requests.exceptions.ConnectTimeout:
            raise NetworkError(method, "connection timed out", maybe_delivered=False) from None
        except requests.exceptions.ReadTimeout:
            raise NetworkError(method, "no answer in time") from None
        except requests.exceptions.ConnectionError as exc:
            raise NetworkError(method, _connection_reason(exc), _maybe_delivered(exc)) from None
        except requests.exceptions.RequestException as exc:
            raise NetworkError(method, type(exc).__name__) from None
        return _result_of(method, response)

    def close(self) -> None:
        self._session.close()


def _result_of(method: str, response: requests.Response) -> Any:
    try:
        answer = response.json()
    except (ValueError, json.JSONDecodeError):
        raise TelegramError(method, response.status_code, "answer is not JSON") from None
    if not isinstance(answer, dict):
        raise TelegramError(method, response.status_code, "answer is not a JSON object")
    if answer.get("ok") is True:
        return answer.get("result")
    status = int(answer.get("error_code") or response.status_code)
    description = str(answer.get("description", ""))
    parameters = answer.get("parameters") if isinstance(answer.get("parameters"), dict) else {}
    if status == 429:
        raise RetryAfter(method, status, description, parameters)
    raise TelegramError(method, status, description, parameters)


def _connection_reason(exc: requests.exceptions.ConnectionError) -> str:
    text = str(exc)
    for reason in ("Connection refused", "Connection reset", "Name or service not known",
                   "Temporary failure in name resolution", "Network is unreachable",
                   "Connection aborted", "RemoteDisconnected"):
        if reason in text:
            return reason.lower()
    return "connection failed"


def _maybe_delivered(exc: requests.exceptions.ConnectionError) -> bool:
    """False only when the connection was never made, so the request cannot have arrived."""
    text = str(exc)
    return not any(s in text for s in ("NewConnectionError", "Connection refused",
                                       "Name or service not known", "Network is unreachable",
                                       "Temporary failure in name resolution"))
