"""The poller: the one thread that long-polls getUpdates and fills the inbox.

Invariant enforced here: the offset advances only after the inbox commit. Telegram forgets
an update when a later getUpdates carries an offset above its id, and that later call is
made only once the batch is on disk; a crash before then means Telegram sends it again,
and the inbox recognises it by its exact update_id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from .errors import BadToken, Conflict, NetworkError, RetryAfter, TelegramError, WebhookActive
from .inbox import to_row
from .store import InboxRow, Store
from .telegram import BotAPI

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0          # Telegram answering errors: give it room
MAX_NETWORK_BACKOFF = 5.0   # no network: keep trying often enough to resume within seconds
STEP_SLACK = 10.0           # how far past its own bound a step may run before it counts as wedged
STORE_BUDGET = 60.0         # one inbox batch commit, even on a slow SD card


class Poller:
    """getUpdates → inbox → notify; typed exits for every kind of failure."""

    def __init__(self, api: BotAPI, store: Store, notify: Callable[[list[int]], None],
                 stop: threading.Event, *, poll_timeout: int = 25, limit: int = 100,
                 allowed_updates: Sequence[str] = (), conflict_grace: float | None = None,
                 handles: Callable[[InboxRow], bool] = lambda row: row.chat_id is not None):
        self.api = api
        self.store = store
        self.notify = notify
        self.stop = stop
        self.poll_timeout = poll_timeout
        self.limit = limit
        self.allowed_updates = list(allowed_updates)
        # 409 right after a restart is usually our previous run's long poll still open.
        self.conflict_grace = 2 * poll_timeout + 10 if conflict_grace is None else conflict_grace
        self.handles = handles
        # the long poll's HTTP read timeout: the poll itself plus a margin for the answer
        self.call_timeout = poll_timeout + 15
        self.offset: int | None = None
        self.last_poll = 0.0          # time.monotonic() of the last answered getUpdates
        self.busy_until = 0.0         # when the loop's current step (call, wait, commit) must end
        self.last_error: str | None = None
        self.received = 0
        self.polls = 0

    def run(self) -> None:
        """Poll until `stop` is set; raise BadToken/Conflict/WebhookActive when polling can't go on."""
        backoff = 1.0
        conflict_since: float | None = None
        while not self.stop.is_set():
            try:
                self._step(self.call_timeout)
                updates = self._get_updates()
            except RetryAfter as exc:
                self._note(f"429, waiting {exc.retry_after:.0f} s")
                self._wait(exc.retry_after)
                continue
            except TelegramError as exc:
                conflict_since = self._on_error(exc, conflict_since)
                self._wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            except NetworkError as exc:
                self._note(str(exc))
                self._wait(min(backoff, MAX_NETWORK_BACKOFF))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff, conflict_since = 1.0, None
            self.last_error = None
            if updates:
                self._step(STORE_BUDGET)
                self._store(updates)

    def _step(self, bound: float) -> None:
        """The loop promises to finish its next step within `bound` seconds (see `alive`)."""
        self.busy_until = time.monotonic() + bound + STEP_SLACK

    def _wait(self, seconds: float) -> None:
        self._step(seconds)
        self.stop.wait(seconds)

    def alive(self) -> bool:
        """True while the loop keeps its promises: every call, back-off and commit ends within
        its bound. A network outage is alive (calls fail fast, waits are bounded); a call
        hanging past its timeout, or a deadlock, is not: that is what the watchdog is for."""
        return time.monotonic() <= self.busy_until

    def _get_updates(self) -> list:
        params: dict = {"timeout": self.poll_timeout, "limit": self.limit}
        if self.offset is not None:
            params["offset"] = self.offset
        if self.polls == 0 and self.allowed_updates:
            params["allowed_updates"] = self.allowed_updates
        updates = self.api.call("getUpdates", params, timeout=self.call_timeout)
        self.polls += 1
        self.last_poll = time.monotonic()
        return updates if isinstance(updates, list) else []

    def _store(self, updates: list) -> None:
        rows, malformed = [], 0
        for update in updates:
            row = to_row(update)
            if row is None:
                malformed += 1
            else:
                rows.append(row)
        if malformed:
            log.warning("skipped %d malformed update(s) without an update_id", malformed)
        unhandled = [row.update_id for row in rows if not self.handles(row)]
        new = self.store.add_updates(rows, done=unhandled)
        for row in new:
            if row.update_id in unhandled:
                log.info("update %s (%s) belongs to no chat; stored and marked done",
                         row.update_id, row.kind)
        self.received += len(new)
        # Only now, with the batch on disk, may the next call acknowledge it.
        if rows:
            self.offset = rows[-1].update_id + 1
        self.notify(list(dict.fromkeys(r.chat_id for r in new if r.update_id not in unhandled)))

    def _on_error(self, exc: TelegramError, conflict_since: float | None) -> float | None:
        """Classify a getUpdates error: raise for the final ones, return the conflict clock."""
        if exc.status in (401, 404):
            raise BadToken(f"Telegram rejected the bot token ({exc.status} {exc.description})")
        if exc.status == 409:
            if "webhook" in exc.description.lower():
                raise WebhookActive(
                    "a webhook is set for this bot, so Telegram refuses getUpdates; remove it "
                    "with `chatdaemon run --delete-webhook` (pending updates are kept)")
            now = time.monotonic()
            conflict_since = conflict_since if conflict_since is not None else now
            if now - conflict_since > self.conflict_grace:
                raise Conflict("another process is polling getUpdates with this token (Telegram "
                               f"answered 409 Conflict for {now - conflict_since:.0f} s)")
            self._note("409 conflict: another poller holds this token; retrying")
            return conflict_since
        self._note(str(exc))
        return conflict_since

    def _note(self, error: str) -> None:
        if error != self.last_error:
            log.warning("getUpdates: %s", error)
        self.last_error = error
