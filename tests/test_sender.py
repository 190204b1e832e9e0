"""The sender in-process: the retry policy's named exits, migration and splitting.

A scripted Bot API answers each call in turn; the sender's waits go to a fake clock that
the rate limiter shares, so every wait is asserted exactly and nothing sleeps.
"""

from __future__ import annotations

import threading

import pytest

from chatdaemon.errors import BadToken, NetworkError, RetryAfter, ShuttingDown, TelegramError
from chatdaemon.ratelimit import Limits, RateLimiter
from chatdaemon.retry import FIRST_SEND_BACKOFF, MAX_BACKOFF, MAX_NETWORK_BACKOFF
from chatdaemon.sender import Sender
from chatdaemon.textsplit import utf16_len

CHAT = 42


class ScriptedAPI:
    """Answers calls from a script: an exception is raised, anything else returned."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[tuple[str, dict]] = []

    def call(self, method, params=None, timeout=None):
        self.calls.append((method, dict(params or {})))
        answer = self.answers.pop(0) if self.answers else {"message_id": len(self.calls)}
        if isinstance(answer, BaseException):
            raise answer
        return answer


class Clock:
    """Monotonic time that moves only when the sender waits; `waits` lists every wait."""

    def __init__(self, stop_after: int | None = None):
        self.now = 1000.0
        self.waits: list[float] = []
        self._stop_after = stop_after

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self._stop_after is not None and len(self.waits) >= self._stop_after


def make_sender(api, clock, limits: Limits | None = None, **kwargs) -> Sender:
    limiter = RateLimiter(limits or Limits(enabled=False), clock)
    return Sender(api, limiter, threading.Event(), sleep=clock.sleep, **kwargs)


def server_error(status=502):
    return TelegramError("sendMessage", status, "Bad Gateway")


def test_a_429_waits_what_telegram_says_for_that_chat_then_sends():
    clock = Clock()
    api = ScriptedAPI(RetryAfter("sendMessage", 429, "Too Many Requests", {"retry_after": 7}))
    sender = make_sender(api, clock)
    assert sender.call("sendMessage", {"chat_id": CHAT, "text": "hi"}) == {"message_id": 2}
    assert clock.waits == [7.0]
    assert [method for method, _ in api.calls] == ["sendMessage", "sendMessage"]
    assert sender.stats == {"sent": 1, "retries": 0, "throttled_429": 1}
    # the pause was for that chat: another chat is not held back
    sender.call("sendMessage", {"chat_id": CHAT + 1, "text": "other"})
    assert clock.waits == [7.0]


def test_a_429_on_a_call_the_limiter_does_not_hold_waits_in_place():
    clock = Clock()
    api = ScriptedAPI(RetryAfter("answerCallbackQuery", 429, "Too Many Requests",
                                 {"retry_after": 3}), True)
    assert make_sender(api, clock).call("answerCallbackQuery", {"callback_query_id": "q"}) is True
    assert clock.waits == [3.0]


def test_5xx_backs_off_doubling_and_capped_at_30_s():
    clock = Clock()
    api = ScriptedAPI(*[server_error() for _ in range(9)])
    make_sender(api, clock).call("sendMessage", {"chat_id": CHAT, "text": "hi"})
    assert clock.waits == [0.5, 1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    assert FIRST_SEND_BACKOFF == 0.5 and MAX_BACKOFF == 30.0
    assert len(api.calls) == 10


def test_network_errors_retry_capped_at_5_s():
    clock = Clock()
    api = ScriptedAPI(*[NetworkError("sendMessage", "connection refused") for _ in range(6)])
    make_sender(api, clock).call("sendMessage", {"chat_id": CHAT, "text": "hi"})
    assert clock.waits == [0.5, 1, 2, 4, MAX_NETWORK_BACKOFF, MAX_NETWORK_BACKOFF]
    assert MAX_NETWORK_BACKOFF == 5.0


def test_a_success_starts_the_back_off_over_for_the_next_call():
    clock = Clock()
    api = ScriptedAPI(server_error(), server_error(), {"message_id": 1}, server_error())
    sender = make_sender(api, clock)
    sender.call("sendMessage", {"chat_id": CHAT, "text": "one"})
    sender.call("sendMessage", {"chat_id": CHAT, "text": "two"})
    assert clock.waits == [0.5, 1, 0.5]


def test_a_401_stops_this_and_every_later_call():
    clock = Clock()
    api = ScriptedAPI(TelegramError("sendMessage", 401, "Unauthorized"))
    sender = make_sender(api, clock)
    with pytest.raises(BadToken, match="401 Unauthorized.*sendMessage"):
        sender.call("sendMessage", {"chat_id": CHAT, "text": "hi"})
    assert sender.token_rejected
    with pytest.raises(BadToken):
        sender.call("sendMessage", {"chat_id": CHAT, "text": "again"})
    assert len(api.calls) == 1 and clock.waits == []


@pytest.mark.parametrize("status", [400, 403, 404])
def test_other_4xx_are_raised_at_once(status):
    clock = Clock()
    api = ScriptedAPI(TelegramError("sendMessage", status, "Bad Request: chat not found"))
    sender = make_sender(api, clock)
    with pytest.raises(TelegramError) as raised:
        sender.call("sendMessage", {"chat_id": CHAT, "text": "hi"})
    assert raised.value.status == status and not isinstance(raised.value, BadToken)
    assert len(api.calls) == 1 and clock.waits == [] and not sender.token_rejected


def test_stopping_during_a_back_off_gives_up_with_shutting_down():
    clock = Clock(stop_after=2)
    api = ScriptedAPI(*[server_error() for _ in range(5)])
    with pytest.raises(ShuttingDown):
        make_sender(api, clock).call("sendMessage", {"chat_id": CHAT, "text": "hi"})
    assert clock.waits == [0.5, 1] and len(api.calls) == 2


def test_a_group_moved_to_a_supergroup_is_followed_and_reported():
    clock = Clock()
    moved = TelegramError("sendMessage", 400, "Bad Request: group chat was upgraded",
                          {"migrate_to_chat_id": -100123})
    api = ScriptedAPI(moved)
    heard = []
    sender = make_sender(api, clock)
    sender.call("sendMessage", {"chat_id": -5, "text": "hi"},
                on_migrate=lambda old, new: heard.append((old, new)))
    assert [params["chat_id"] for _, params in api.calls] == [-5, -100123]
    assert heard == [(-5, -100123)] and clock.waits == []


def test_long_text_goes_out_in_parts_with_the_keyboard_on_the_last():
    clock = Clock()
    api = ScriptedAPI()
    keyboard = {"keyboard": [[{"text": "ok"}]]}
    text = "word " * 2000
    make_sender(api, clock).call("sendMessage",
                                 {"chat_id": CHAT, "text": text, "reply_markup": keyboard})
    parts = [params for _, params in api.calls]
    assert len(parts) == 3
    assert all(utf16_len(part["text"]) <= 4096 for part in parts)
    assert " ".join(part["text"] for part in parts).split() == text.split()  # split at spaces
    assert [("reply_markup" in part) for part in parts] == [False, False, True]


def test_the_per_chat_limit_spaces_sends_through_the_injected_clock():
    clock = Clock()
    sender = make_sender(ScriptedAPI(), clock,
                         limits=Limits(per_chat_per_second=1, per_chat_burst=1))
    for n in range(3):
        sender.call("sendMessage", {"chat_id": CHAT, "text": str(n)})
    assert clock.waits == [1.0, 1.0]
