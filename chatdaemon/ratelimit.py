"""Telegram's flood limits as reservations: overall, per chat, per group.

Each scope is a GCRA bucket (a "theoretical arrival time"): a send reserves the earliest
slot that every scope it touches allows, then sleeps until that slot. Reserving before
sleeping means waiting senders queue in order instead of waking together and retrying.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    enabled: bool = True
    per_second: float = 30.0           # all chats together
    per_chat_per_second: float = 1.0   # one private chat
    per_chat_burst: int = 3            # short bursts a private chat may take
    per_group_per_minute: float = 20.0  # one group, supergroup or channel


class _Bucket:
    __slots__ = ("interval", "tolerance", "tat")

    def __init__(self, rate_per_second: float, burst: int):
        self.interval = 1.0 / rate_per_second
        self.tolerance = self.interval * (burst - 1)
        self.tat = 0.0

    def earliest(self, now: float) -> float:
        return max(now, self.tat - self.tolerance)

    def take(self, at: float) -> None:
        self.tat = max(self.tat, at) + self.interval


class RateLimiter:
    """Decides when the next send to a chat may go out, and remembers 429 pauses."""

    def __init__(self, limits: Limits, clock=time.monotonic):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._global = _Bucket(limits.per_second, max(1, int(limits.per_second)))
        self._chats: dict[int, _Bucket] = {}
        self._paused_until: dict[int | None, float] = {}
        self._last_sweep = 0.0

    def reserve(self, chat_id: int | None) -> float:
        """Reserve a send slot; return how many seconds to wait before sending."""
        with self._lock:
            now = self._clock()
            at = max(now, self._paused_until.get(None, 0.0), self._paused_until.get(chat_id, 0.0))
            if self.limits.enabled:
                buckets = [self._global]
                if chat_id is not None:
                    buckets.append(self._chat_bucket(chat_id))
                at = max([at] + [b.earliest(now) for b in buckets])
                for bucket in buckets:
                    bucket.take(at)
                self._sweep(now)
            return at - now

    def with_limits(self, limits: Limits) -> RateLimiter:
        """A limiter for new limits (a reload) that still honours the 429 pauses running now."""
        fresh = RateLimiter(limits, self._clock)
        with self._lock:
            fresh._paused_until = dict(self._paused_until)
        return fresh

    def pause(self, chat_id: int | None, seconds: float) -> None:
        """Telegram answered 429: nothing goes to this scope (None: every chat) for `seconds`."""
        with self._lock:
            until = self._clock() + seconds
            self._paused_until[chat_id] = max(self._paused_until.get(chat_id, 0.0), until)

    def _chat_bucket(self, chat_id: int) -> _Bucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            if chat_id < 0:  # groups, supergroups and channels have negative ids
                bucket = _Bucket(self.limits.per_group_per_minute / 60.0, 1)
            else:
                bucket = _Bucket(self.limits.per_chat_per_second, self.limits.per_chat_burst)
            self._chats[chat_id] = bucket
        return bucket

    def _sweep(self, now: float) -> None:
        """Forget buckets that are back to full, so 10,000 chats do not stay in memory."""
        if now - self._last_sweep < 60.0:
            return
        self._last_sweep = now
        self._chats = {c: b for c, b in self._chats.items() if b.tat > now}
        self._paused_until = {c: t for c, t in self._paused_until.items() if t > now}
