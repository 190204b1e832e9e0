"""The sender: the only way out to Telegram's send methods.

Every outgoing call passes through `Sender.call`, which applies the proactive flood limits,
follows a group's migration to a supergroup, splits text longer than 4096 UTF-16 units,
sends a caption too long for its photo or document (1024 units of visible text) as a text
message after it, and retries by the one retry policy (retry.py) — an upload exactly as a
text — so a reply is never dropped because Telegram hiccuped:

    RetryAfter (429)      wait what Telegram says, for that scope (the chat, or all sends)
    NetworkError          retry after a back-off capped at 5 s
    401                   stop: BadToken, now and for every later call
    5xx, unreadable 5xx   retry after a back-off capped at 30 s
    any other 4xx         raised: the request itself is wrong

A 401 on any call means the token was revoked: the sender raises BadToken and refuses every
later call, so no update is marked done for a reply that could not go out.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeAlias, TypeGuard

from .errors import BadToken, NetworkError, RetryAfter, ShuttingDown, TelegramError
from .ratelimit import RateLimiter
from .retry import FIRST_SEND_BACKOFF, MAX_BACKOFF, RetryPolicy
from .telegram import BotAPI
from .textsplit import split_text, utf16_len

log = logging.getLogger(__name__)

# entered around each wait for Telegram; its argument says whether the wait is the flood
# limits' pace (else a 429's retry_after or a retry after an error)
Waiting: TypeAlias = Callable[[bool], contextlib.AbstractContextManager[None]]

MAX_TEXT = 4096
MAX_CAPTION = 1024   # a caption's limit, counted after its markup is parsed
CAPTIONED = frozenset({"sendPhoto", "sendDocument", "sendAudio", "sendVideo", "sendAnimation",
                       "sendVoice"})
# what a message sent after the media keeps of the media's parameters (beside text and markup)
FOLLOWING = ("chat_id", "message_thread_id", "disable_notification", "protect_content")
_HTML_TAG = re.compile(r"<[^<>]*>")
REVOKED = 401   # a send answered 401: the token was revoked (a 404 here is the request's own)


def caption_units(caption: str, parse_mode: str | None) -> int:
    """A caption's length as Telegram limits it: the text after its markup is parsed, in
    UTF-16 units. HTML tags and entities are parsed here; MarkdownV2 is counted with its
    markup (never less than Telegram counts, so never too long for it)."""
    if (parse_mode or "").upper() == "HTML":
        import html  # its entity table is 0.6 MB resident: only captions in HTML pay for it
        caption = html.unescape(_HTML_TAG.sub("", caption))
    return utf16_len(caption)


def entity_shares(text: str, parts: list[str], params: dict) -> list[dict]:
    """For each part of a split `text`, the `entities` parameter that part needs: the
    entities it overlaps, cut to it, their offsets counted from its start (UTF-16 units).
    Empty dicts when there are no entities to share out (none, or markup instead); with
    no parse_mode the parts are pieces of `text`, which places them."""
    entities = params.get("entities")
    if params.get("parse_mode") or not _are_entities(entities):
        return [{} for _ in parts]
    shares, cursor = [], 0
    for part in parts:
        found = text.find(part, cursor)   # found: with no parse_mode, parts are pieces of text
        start = utf16_len(text[:found])
        end = start + utf16_len(part)
        cursor = found + len(part)
        shares.append({"entities": [
            {**entity, "offset": max(entity["offset"], start) - start,
             "length": min(entity["offset"] + entity["length"], end) - max(entity["offset"], start)}
            for entity in entities
            if entity["offset"] < end and entity["offset"] + entity["length"] > start]})
    return shares


def _are_entities(value: object) -> TypeGuard[list[dict]]:
    return isinstance(value, list) and all(
        isinstance(entity, dict) and isinstance(entity.get("offset"), int)
        and isinstance(entity.get("length"), int) for entity in value)


def is_flood_limited(method: str) -> bool:
    """Methods that put a message into a chat count against Telegram's flood limits."""
    if method == "sendChatAction":
        return False
    return method.startswith(("send", "forward", "copy", "editMessage"))


class Sender:
    """Sends Bot API calls politely and persistently; raises only for final answers."""

    def __init__(self, api: BotAPI, limiter: RateLimiter, stop: threading.Event,
                 max_backoff: float = MAX_BACKOFF,
                 sleep: Callable[[float], bool] | None = None):
        """`sleep(seconds)` waits and returns True when the daemon is stopping (default:
        waiting on `stop`); tests inject one that only records."""
        self.api = api
        self.limiter = limiter
        self._stop = stop
        self._wait = sleep or stop.wait
        self._max_backoff = max_backoff
        self._stats_lock = threading.Lock()  # delegates send from many threads at once
        self._stats = {"sent": 0, "retries": 0, "throttled_429": 0}
        self.token_rejected = False

    def call(self, method: str, params: dict | None = None, *,
             on_migrate: Callable[[int, int], None] | None = None,
             check: Callable[[], None] | None = None,
             waiting: Waiting | None = None) -> Any:
        """Call `method`; a sendMessage too long for one message goes out in parts.

        Returns Telegram's result (for split text, the last part's message). `on_migrate`
        hears of a group's move to a supergroup found by this call (the update that sent it
        moves the conversation in its own commit); `check` runs before every attempt and may
        raise to cancel it; `waiting(paced)` is entered around each wait for Telegram (paced:
        its flood limits' pace, else a 429 or a retry after an error).
        """
        params = dict(params or {})
        text = params.get("text")
        send = functools.partial(self._call_until_answered,
                                 on_migrate=on_migrate, check=check, waiting=waiting)
        caption = params.get("caption")
        if method in CAPTIONED and isinstance(caption, str) \
                and caption_units(caption, params.get("parse_mode")) > MAX_CAPTION:
            return self._caption_after(method, params, on_migrate, check, waiting)
        if method == "sendMessage" and isinstance(text, str) and utf16_len(text) > MAX_TEXT:
            parts = split_text(text, params.get("parse_mode"))
            markup = params.pop("reply_markup", None)
            shares = entity_shares(text, parts, params)
            for part, share in zip(parts[:-1], shares, strict=False):
                send(method, {**params, "text": part, **share})
            last = {**params, "text": parts[-1], **shares[-1]}
            if markup is not None:
                last["reply_markup"] = markup  # the keyboard goes with the last part only
            return send(method, last)
        return send(method, params)

    def _caption_after(self, method: str, params: dict,
                       on_migrate: Callable[[int, int], None] | None,
                       check: Callable[[], None] | None, waiting: Waiting | None) -> Any:
        """The media without its caption, then the caption as a text message (split as any
        long text) carrying the keyboard; the text message's result is returned."""
        caption = params.pop("caption")
        parse_mode = params.pop("parse_mode", None)
        entities = params.pop("caption_entities", None)
        markup = params.pop("reply_markup", None)
        self._call_until_answered(method, params, on_migrate=on_migrate, check=check,
                                  waiting=waiting)
        follow = {key: params[key] for key in FOLLOWING if key in params}  # chat_id: migrated
        follow["text"] = caption
        if parse_mode is not None:
            follow["parse_mode"] = parse_mode
        if entities is not None:
            follow["entities"] = entities   # the caption's formatting, now the text's
        if markup is not None:
            follow["reply_markup"] = markup
        return self.call("sendMessage", follow, on_migrate=on_migrate, check=check,
                         waiting=waiting)

    def _call_until_answered(self, method: str, params: dict,
                             on_migrate: Callable[[int, int], None] | None = None,
                             check: Callable[[], None] | None = None,
                             waiting: Waiting | None = None) -> Any:
        policy = RetryPolicy(first=FIRST_SEND_BACKOFF, cap=self._max_backoff)
        limited = is_flood_limited(method)
        while True:
            chat_id = params.get("chat_id") if isinstance(params.get("chat_id"), int) else None
            if limited:
                # Stopping while waiting for a slot leaves the update undone: it replays,
                # and since nothing was sent yet, nothing is sent twice.
                self._sleep(self.limiter.reserve(chat_id), waiting, paced=True)
            self._check_allowed(method, check)
            try:
                result = self.api.call(method, params)
            except (TelegramError, NetworkError) as exc:
                if isinstance(exc, TelegramError) and exc.migrate_to_chat_id is not None \
                        and chat_id is not None:
                    self._migrate(chat_id, exc.migrate_to_chat_id, params, on_migrate)
                    continue
                self._wait_after(method, exc, policy, chat_id, limited, waiting)
                continue
            if limited:
                self._count("sent")
            return result

    def _wait_after(self, method: str, exc: TelegramError | NetworkError, policy: RetryPolicy,
                    chat_id: int | None, limited: bool, waiting: Waiting | None) -> None:
        """Wait as the retry policy says after a failed call, or raise where retrying cannot help."""
        if isinstance(exc, TelegramError) and not isinstance(exc, RetryAfter) \
                and exc.status < 500 and exc.status != REVOKED:
            raise exc   # a 4xx: the same request would fail the same way
        try:
            wait = policy.delay(exc)
        except BadToken as refused:
            # from here on every call is refused: no update is marked done for a reply
            # that could not go out
            self.token_rejected = True
            raise BadToken(f"{refused} on {method}; was it revoked?") from None
        if isinstance(exc, RetryAfter):
            self._count("throttled_429")
            log.warning("%s: Telegram asks to wait %.0f s (429)", method, wait)
            self.limiter.pause(chat_id, wait)   # that scope waits: this chat, or every send
            if not limited:
                self._sleep(wait, waiting)   # a call the limiter does not hold waits here itself
            self._give_up_if_stopping()
            return
        self._count("retries")
        log.warning("%s failed (%s); retrying in %.1f s", method, exc, wait)
        self._sleep(wait, waiting)

    @property
    def stats(self) -> dict:
        with self._stats_lock:
            return dict(self._stats)

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._stats[name] += 1

    def _check_allowed(self, method: str, check: Callable[[], None] | None) -> None:
        """A rejected token stops every call; `check` may cancel this one (a given-up update)."""
        if self.token_rejected:
            raise BadToken(f"{method}: not sent, Telegram rejected the bot token")
        if check is not None:
            check()

    def _migrate(self, chat_id: int, new_chat_id: int, params: dict,
                 on_migrate: Callable[[int, int], None] | None) -> None:
        log.info("chat %s moved to supergroup %s", chat_id, new_chat_id)
        params["chat_id"] = new_chat_id
        if on_migrate is not None:
            on_migrate(chat_id, new_chat_id)

    def _sleep(self, seconds: float, waiting: Waiting | None = None, paced: bool = False) -> None:
        if seconds <= 0:
            return
        with waiting(paced) if waiting is not None else contextlib.nullcontext():
            stopping = self._wait(seconds)
        if stopping:
            raise ShuttingDown()

    def _give_up_if_stopping(self) -> None:
        if self._stop.is_set():
            raise ShuttingDown()

