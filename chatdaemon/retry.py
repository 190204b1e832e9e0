"""The one retry policy for Bot API calls: how long to wait after each kind of failure.

    RetryAfter (429)          wait what Telegram says (already sanitised and capped)
    NetworkError              retry after a back-off capped at MAX_NETWORK_BACKOFF
    bad token (401/404)       stop: raise BadToken
    any other TelegramError   retry after a back-off doubling from 1 s, capped at MAX_BACKOFF

The poller, start-up and the sender use it; a caller with its own exits (the poller's 409, a start-up
answer that is no Bot API) handles those before asking the policy. It has no clock and no
sleep of its own, so every loop adopts it and is tested without waiting.
"""

from __future__ import annotations

from .errors import BadToken, NetworkError, RetryAfter, TelegramError, is_bad_token

MAX_BACKOFF = 30.0          # Telegram answering errors: give it room
MAX_NETWORK_BACKOFF = 5.0   # no network: keep trying often enough to resume within seconds
FIRST_SEND_BACKOFF = 0.5    # a reply a user waits for starts retrying sooner than a poll


class RetryPolicy:
    """Doubling back-off with named exits; `succeeded()` starts it over."""

    def __init__(self, first: float = 1.0, cap: float = MAX_BACKOFF,
                 network_cap: float = MAX_NETWORK_BACKOFF):
        self.first = first
        self.cap = cap
        self.network_cap = network_cap
        self._backoff = first

    def delay(self, exc: BaseException) -> float:
        """Seconds to wait before trying again after `exc`; raise when trying again cannot help."""
        if isinstance(exc, RetryAfter):
            return exc.retry_after
        if is_bad_token(exc):
            raise BadToken.from_error(exc) from None
        if not isinstance(exc, NetworkError | TelegramError):
            raise exc
        wait = self.backoff()
        return min(wait, self.network_cap) if isinstance(exc, NetworkError) else wait

    def backoff(self) -> float:
        """The next back-off step (1, 2, 4, … up to the cap seconds)."""
        wait = self._backoff
        self._backoff = min(self._backoff * 2, self.cap)
        return wait

    def succeeded(self) -> None:
        self._backoff = self.first
