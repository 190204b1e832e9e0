"""The poller: the one thread that long-polls getUpdates and fills the inbox.

Invariant enforced here: the offset advances only after the inbox commit. Telegram forgets
an update when a later getUpdates carries an offset above its id, and that later call is
made only once the batch is on disk; a crash before then means Telegram sends it again,
and the inbox recognises it by its exact update_id.

A new poller first listens without acknowledging anything (`ConflictWatch`): quick
getUpdates with timeout 0 and one long poll among them, their answers left with Telegram.
Only when they show no other poller on the token does it start storing; a 409 past the
restart grace, or updates it saw vanishing without its acknowledgement, mean it is the
second poller, and it exits before it has taken a single update from the first.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

from .errors import (
    BadAnswer,
    Conflict,
    NetworkError,
    TelegramError,
    WebhookActive,
    is_bad_token,
)
from .inbox import Rejection, parse_update, usable_update_id, without_lone_surrogates
from .retry import RetryPolicy
from .store import InboxRow, Store
from .telegram import BotAPI

log = logging.getLogger(__name__)

STEP_SLACK = 10.0           # how far past its own bound a step may run before it counts as wedged
STORE_BUDGET = 60.0         # one inbox batch commit, even on a slow SD card
ME_TIMEOUT = 30.0           # getMe, asked to confirm a 401/404 from getUpdates
SETTLE_PROBES = 5           # answered 409-free probes in a row before a new poller stores
LISTEN_AT = 3               # the probe that long-polls (see ConflictWatch.next_timeout)
PROBE_EVERY = 0.2           # seconds between probes while a new poller listens
CONFLICT_RETRY = 0.5        # the first poller's wait after a 409: its chats keep flowing
OUTLAST = 4                 # the first poller gives up after 409s for OUTLAST × the grace
_FIRST_UPDATE_ID = re.compile(
    rb'\s*\{\s*"ok"\s*:\s*true\s*,\s*"result"\s*:\s*\[\s*\{\s*"update_id"\s*:\s*(\d{1,19})\s*[,}]')


class ConflictWatch:
    """Tells the second poller on a token from the first, by 409s and by vanished updates.

    The test double answers 409 to the NEW getUpdates while another is open; Telegram ends
    the OLD one instead. Both are covered: a newcomer probing with timeout 0 meets the first
    poller's open long poll (409 at the double); its one long poll among the probes is ended
    by the first poller's next call (409 at Telegram); and under traffic, updates it left
    unacknowledged vanish because the first poller acknowledged them. The first poller
    meets only the newcomer's brief calls. A 409 in the first `grace` seconds is forgiven
    (usually our own previous run's long poll, still open).
    """

    def __init__(self, grace: float):
        self.grace = grace
        self.started = time.monotonic()
        self.settled = False            # this process polled alone: it is the first poller
        self.clean_probes = 0
        self.held_head: int | None = None   # the first update of the last batch left unacknowledged
        self.episode_start: float | None = None
        self.last_conflict: float | None = None

    def on_conflict(self) -> None:
        """A 409 (another poller): raise Conflict when this process should be the one to go."""
        now = time.monotonic()
        self.clean_probes = 0
        if not self.settled and now - self.started > self.grace:
            raise Conflict("another process is polling getUpdates with this token (Telegram "
                           f"still answered 409 Conflict {now - self.started:.0f} s after start)")
        if self.last_conflict is None or now - self.last_conflict > self.grace:
            self.episode_start = now
        self.last_conflict = now
        assert self.episode_start is not None   # set with the first conflict, just above; never reset
        if self.settled and now - self.episode_start > OUTLAST * self.grace:
            raise Conflict("another process is polling getUpdates with this token (Telegram "
                           f"answered 409 Conflict for {now - self.episode_start:.0f} s)")

    def on_answer(self, updates: list) -> None:
        """An answered probe while not settled; raise Conflict when someone else took updates."""
        ids = [usable_update_id(update) for update in updates]
        if self.held_head is not None and self.held_head not in ids:
            raise Conflict("another process is polling getUpdates with this token (updates "
                           "this process had not acknowledged were taken)")
        self.held_head = ids[0] if ids else None
        self.clean_probes += 1
        if self.clean_probes >= SETTLE_PROBES:
            self.settled = True
            if self.last_conflict is not None:
                log.info("getUpdates: the 409s stopped; this process is the only poller")

    def next_timeout(self, poll_timeout: int) -> int:
        """The next getUpdates' timeout: a long poll once settled, and once while probing."""
        return poll_timeout if self.settled or self.clean_probes == LISTEN_AT else 0

    def wait_after_conflict(self) -> float:
        return CONFLICT_RETRY if self.settled else PROBE_EVERY


class Poller:
    """getUpdates → inbox → notify; typed exits for every kind of failure."""

    def __init__(self, api: BotAPI, store: Store, notify: Callable[[list[int]], None],
                 stop: threading.Event, *, poll_timeout: int = 25, limit: int = 100,
                 allowed_updates: Sequence[str] = (), conflict_grace: float | None = None,
                 handles: Callable[[InboxRow], bool] = lambda row: row.chat_id is not None,
                 on_polling: Callable[[], None] = lambda: None):
        self.api = api
        self.store = store
        self.notify = notify
        self.stop = stop
        self.poll_timeout = poll_timeout
        self.limit = limit
        self.batch_limit = limit      # smaller for a while after an answer too big to read
        self.allowed_updates = list(allowed_updates)
        # 409 right after a restart is usually our previous run's long poll still open:
        # it ends within one poll period; the margin covers its answer's way back.
        self.conflict_grace = poll_timeout + 10 if conflict_grace is None else conflict_grace
        self.handles = handles
        self.on_polling = on_polling  # called once, when the first getUpdates has answered
        # the long poll's HTTP read timeout: the poll itself plus a margin for the answer
        self.call_timeout = poll_timeout + 15
        self.offset: int | None = None
        self.last_poll = 0.0          # time.monotonic() of the last answered getUpdates
        self.busy_until = 0.0         # when the loop's current step (call, wait, commit) must end
        self.last_error: str | None = None
        self.received = 0
        self.rejected = 0
        self.polls = 0
        self.policy = RetryPolicy()

    def run(self) -> None:
        """Poll until `stop` is set; raise BadToken/Conflict/WebhookActive when polling can't go on."""
        policy = self.policy
        watch = ConflictWatch(self.conflict_grace)
        while not self.stop.is_set():
            try:
                self._step(self.call_timeout)
                updates = self._get_updates(watch.next_timeout(self.poll_timeout))
            except BadAnswer as exc:
                self._on_bad_answer(exc, policy, holding=not watch.settled)
                continue
            except TelegramError as exc:
                self._on_error(exc, policy, watch)
                continue
            except NetworkError as exc:
                self._note(exc.detail)
                self._wait(policy.delay(exc))
                continue
            self.last_error = None
            if not watch.settled:
                policy.succeeded()
                watch.on_answer(updates)
                self._wait(0 if watch.settled else PROBE_EVERY)
            elif not updates:
                policy.succeeded()
            else:
                self._step(STORE_BUDGET)
                self._store(updates)

    def _add(self, updates: list) -> tuple[list[InboxRow], list[int], list[Rejection]]:
        """Store a batch in one durable commit: (the new rows, the ids no chat handles, the
        rejections)."""
        rows: list[InboxRow] = []
        rejections: list[Rejection] = []
        for update in updates:
            parsed = parse_update(update)
            if isinstance(parsed, InboxRow):
                rows.append(parsed)
            else:
                rejections.append(parsed)
        unhandled = [row.update_id for row in rows if not self.handles(row)]
        new = self.store.add_updates(rows, done=unhandled, rejected=[
            (rejection.reason, rejection.payload_text()) for rejection in rejections])
        return new, unhandled, rejections

    def _step(self, bound: float) -> None:
        """The loop promises to finish its next step within `bound` seconds (see `alive`)."""
        self.busy_until = time.monotonic() + bound + STEP_SLACK

    def _wait(self, seconds: float) -> None:
        self._step(seconds)
        if seconds > 0:
            self.stop.wait(seconds)

    def alive(self) -> bool:
        """True while the loop keeps its promises: every call, back-off and commit ends within
        its bound. A network outage is alive (calls fail fast, waits are bounded); a call
        hanging past its timeout, or a deadlock, is not: that is what the watchdog is for."""
        return time.monotonic() <= self.busy_until

    def _get_updates(self, timeout: int) -> list:
        """One getUpdates; the first (a probe, timeout 0) answers at once, so READY needs no
        long poll."""
        params: dict = {"timeout": timeout, "limit": self.batch_limit}
        if self.offset is not None:
            params["offset"] = self.offset
        if self.polls == 0 and self.allowed_updates:
            params["allowed_updates"] = self.allowed_updates
        updates = self.api.call("getUpdates", params, timeout=self.call_timeout)
        self.polls += 1
        self.last_poll = time.monotonic()
        if self.polls == 1:
            self.on_polling()
        if not isinstance(updates, list):
            self._note(f"the result is a {type(updates).__name__}, not a list of updates; ignored")
            return []
        return updates

    def _store(self, updates: list) -> None:
        last_id = _last_usable_id(updates)
        if last_id is None:
            # Nothing in the batch can be acknowledged: storing it would store it again on
            # every poll. Leave it with Telegram, say why, and back off (1 s, 2 s, … 30 s).
            reasons = {parsed.reason for parsed in map(parse_update, updates)
                       if isinstance(parsed, Rejection)}
            self._note(f"{len(updates)} update(s) without a usable update_id, so none can be "
                       f"acknowledged: {'; '.join(sorted(reasons))}")
            self._wait(self.policy.backoff())
            return
        self.policy.succeeded()
        try:
            try:
                new, unhandled, rejections = self._add(updates)
            except UnicodeEncodeError:
                # a lone surrogate (half of an emoji, "\ud83d" alone in the JSON) is no text
                # UTF-8 can hold: the batch is stored and answered with U+FFFD in its place
                new, unhandled, rejections = self._add(list(map(without_lone_surrogates, updates)))
        except sqlite3.OperationalError as exc:
            # a full disk, a card remounted read-only, a writer outside holding the lock: the
            # batch is not on disk, so it is not acknowledged and Telegram keeps it (24 h)
            self._note(f"the inbox cannot store {len(updates)} update(s) ({exc}); they stay "
                       "with Telegram and are fetched again")
            self._wait(self.policy.backoff())
            return
        self._log_stored(new, unhandled, rejections)
        self.received += len(new)
        # Only now, with the batch on disk, may the next call acknowledge it; every update
        # of the batch is acknowledged, rejected ones too (else Telegram re-sends them forever).
        self.offset = last_id + 1
        self.batch_limit = min(self.limit, self.batch_limit * 10)
        # a row without a chat has no delegate to wake (the default `handles` leaves it done)
        self.notify(list(dict.fromkeys(r.chat_id for r in new
                                       if r.chat_id is not None and r.update_id not in unhandled)))

    def _log_stored(self, new: list[InboxRow], unhandled: list[int],
                    rejections: list[Rejection]) -> None:
        for row in new:
            if row.update_id in unhandled:
                log.info("update %s (%s) belongs to no chat; stored and marked done",
                         row.update_id, row.kind)
        for rejection in rejections:
            log.warning("rejected update %s: %s (kept in the rejected table)",
                        rejection.update_id if rejection.update_id is not None else "without an id",
                        rejection.reason)
        self.rejected += len(rejections)

    def _on_error(self, exc: TelegramError, policy: RetryPolicy, watch: ConflictWatch) -> None:
        """A getUpdates error: raise for the final ones, otherwise wait as the policy says."""
        if exc.status == 409:
            if "webhook" in exc.description.lower():
                raise WebhookActive(
                    "a webhook is set for this bot, so Telegram refuses getUpdates; remove it "
                    "with `chatdaemon run --delete-webhook` (pending updates are kept)")
            watch.on_conflict()
            self._note("409 conflict: another poller holds this token; retrying")
            self._wait(watch.wait_after_conflict())
        elif is_bad_token(exc):
            self._confirm_token(exc)
        else:
            self._note(exc.detail)
            self._wait(policy.delay(exc))

    def _confirm_token(self, exc: TelegramError) -> None:
        """getUpdates said 401/404: a blip, or a revoked token? Only getMe can say.

        getMe is asked after a back-off, and again while it cannot answer; the token is bad
        (BadToken, exit 78, no restart) only when getMe answers 401/404 too.
        """
        self._note(f"{exc.detail}; asking getMe whether the token is still good")
        policy = RetryPolicy()
        self._wait(min(policy.backoff(), policy.network_cap))
        while not self.stop.is_set():
            try:
                self._step(ME_TIMEOUT)
                self.api.call("getMe", {}, timeout=ME_TIMEOUT)
            except (TelegramError, NetworkError) as error:
                self._wait(policy.delay(error))   # raises BadToken on a 401/404
                continue
            log.warning("getUpdates answered %s, yet getMe accepts the token; polling on",
                        exc.status)
            return

    def _on_bad_answer(self, exc: BadAnswer, policy: RetryPolicy, holding: bool) -> None:
        """An answer too big or too deep to read: ask for fewer updates, then skip the bad one."""
        self._note(exc.detail)
        if exc.problem == BadAnswer.NOT_JSON:
            self._wait(policy.delay(exc))
        elif self.batch_limit > 1:
            self.batch_limit = max(1, self.batch_limit // 10)
            log.warning("getUpdates: asking for %d update(s) at a time", self.batch_limit)
        elif holding:
            self._wait(PROBE_EVERY)
        else:
            self._skip_unreadable(exc, policy)

    def _skip_unreadable(self, exc: BadAnswer, policy: RetryPolicy) -> None:
        """One update alone makes the answer unreadable: keep its head, acknowledge past it."""
        match = _FIRST_UPDATE_ID.match(exc.head)
        update_id = int(match.group(1)) if match else None
        if update_id is None or usable_update_id({"update_id": update_id}) is None:
            self._wait(policy.delay(exc))
            return
        head = exc.head.decode("utf-8", "replace")
        try:
            self.store.add_rejected([(f"update {update_id}: {exc.description}", head)])
        except sqlite3.OperationalError as error:   # as in _store: not kept, not acknowledged
            self._note(f"the inbox cannot keep update {update_id} ({error}); fetched again")
            self._wait(policy.backoff())
            return
        self.rejected += 1
        log.warning("rejected update %s: %s (its first %d bytes kept in the rejected table)",
                    update_id, exc.description, len(exc.head))
        # the rejection is on disk: the next call may acknowledge the update
        self.offset = update_id + 1

    def _note(self, error: str) -> None:
        if error != self.last_error:
            log.warning("getUpdates: %s", error)
        self.last_error = error


def _last_usable_id(updates: list) -> int | None:
    """The id the next offset follows: the batch's last usable one (ids may jump back)."""
    for update in reversed(updates):
        update_id = usable_update_id(update)
        if update_id is not None:
            return update_id
    return None
