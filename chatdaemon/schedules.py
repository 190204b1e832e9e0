"""Schedules: each chat's periodic jobs, and the ticks they queue in the inbox.

The `schedules` table is their one source of truth: a row per running schedule, with
when it is next due. A handler's start_schedule / stop_schedule change the conversation
in memory; the commit of that update writes the change here in the same transaction
(conversations.save), so a schedule starts or stops exactly when its update is done.
A commit that changes no schedule does not touch this table.

A running schedule's next tick waits in the inbox already, an unhandled row whose
`received` is when it falls due (the inbox hides it until then). The commit that handles
a tick queues the next one (`rearm_after_tick`), so a tick costs one write transaction,
not one to queue it and one to handle it; at the due time only reads happen. Where no
tick waits (a database from an earlier version, a quarantined tick), `queue_due_ticks`
queues one when the schedule falls due.

The functions run on the store's connection inside the transaction the store holds.
"""

from __future__ import annotations

import sqlite3

from . import inbox

TICK_KIND = "schedule"


def of_chat(db: sqlite3.Connection, chat_id: int) -> dict[str, dict]:
    """The chat's running schedules: name → {"every": seconds}."""
    return {name: {"every": every} for name, every in db.execute(
        "SELECT name, every FROM schedules WHERE chat_id = ?", (chat_id,))}


def save(db: sqlite3.Connection, chat_id: int, saved: dict | None, wanted: dict,
         now: float) -> None:
    """Make the chat's rows say `wanted`, given they said `saved` (None: not known).

    A schedule kept with the same interval keeps its next tick; a new one, or one with a
    new interval, first ticks one interval from now.
    """
    if saved is None:
        saved = of_chat(db, chat_id)
    for name in saved.keys() - wanted.keys():
        db.execute("DELETE FROM schedules WHERE chat_id = ? AND name = ?", (chat_id, name))
        _drop_waiting_tick(db, chat_id, name, now)
    for name, spec in wanted.items():
        every = float(spec["every"])
        if name in saved and float(saved[name]["every"]) == every:
            continue
        db.execute("INSERT OR REPLACE INTO schedules(chat_id, name, every, next_at)"
                   " VALUES (?, ?, ?, ?)", (chat_id, name, every, now + every))
        _drop_waiting_tick(db, chat_id, name, now)
        _queue_tick(db, chat_id, name, now + every)


def rearm_after_tick(db: sqlite3.Connection, update_id: int, now: float) -> None:
    """The tick `update_id` is handled: queue its schedule's next one, an interval from now.

    Runs in the commit that marks the tick done, so a tick is handled and re-armed at once.
    Nothing for any other row, nor for a schedule that stopped or already has a tick waiting.
    """
    if update_id < inbox.LOCAL_BASE:
        return   # a Telegram update: never a tick
    row = db.execute(f"SELECT chat_id, {inbox.LOCAL_FIELD} FROM inbox WHERE update_id = ?"
                     " AND kind = ?", (f"$.{TICK_KIND}.name", update_id, TICK_KIND)).fetchone()
    if row is None:
        return
    chat_id, name = row
    every = db.execute("SELECT every FROM schedules WHERE chat_id = ? AND name = ?",
                       (chat_id, name)).fetchone()
    if every is None or _has_waiting_tick(db, chat_id, name):
        return
    db.execute("UPDATE schedules SET next_at = ? WHERE chat_id = ? AND name = ?",
               (now + every[0], chat_id, name))
    _queue_tick(db, chat_id, name, now + every[0])


def _queue_tick(db: sqlite3.Connection, chat_id: int, name: str, due: float) -> None:
    inbox.insert_local(db, [(chat_id, TICK_KIND, {"name": name, "at": due})], due)


def _has_waiting_tick(db: sqlite3.Connection, chat_id: int, name: str) -> bool:
    return inbox.has_pending(db, chat_id, TICK_KIND, f"$.{TICK_KIND}.name", name)


def _drop_waiting_tick(db: sqlite3.Connection, chat_id: int, name: str, now: float) -> None:
    # marked done, never deleted: a deleted row's id would be given again to the next local
    # row, and the done mark of the update being committed could then land on that one
    db.execute("UPDATE inbox SET done = 1, handled = ? WHERE chat_id = ? AND kind = ? AND done = 0"
               f" AND {inbox.LOCAL_FIELD} = ?",
               (now, chat_id, TICK_KIND, f"$.{TICK_KIND}.name", name))


def next_due(db: sqlite3.Connection) -> float | None:
    """When the earliest schedule falls due (time.time() seconds), or None with none."""
    [(next_at,)] = db.execute("SELECT MIN(next_at) FROM schedules").fetchall()
    return next_at


def anything_to_do(db: sqlite3.Connection, now: float) -> bool:
    """Whether a due schedule has no tick waiting, or lies more than one interval ahead
    (the clock jumped back): the cases `queue_due_ticks` must write for."""
    return db.execute(
        "SELECT 1 FROM schedules AS s WHERE s.next_at > ? + s.every OR (s.next_at <= ?"
        " AND NOT EXISTS (SELECT 1 FROM inbox WHERE chat_id = s.chat_id AND kind = ?"
        f" AND done = 0 AND {inbox.LOCAL_FIELD} = s.name)) LIMIT 1",
        (now, now, TICK_KIND, f"$.{TICK_KIND}.name")).fetchone() is not None


def due_chats(db: sqlite3.Connection, now: float) -> list[int]:
    """Chats with a tick that fell due and waits to be handled (a read: nothing changes)."""
    return [chat_id for (chat_id,) in db.execute(
        "SELECT DISTINCT chat_id FROM inbox WHERE done = 0 AND kind = ? AND received <= ?",
        (TICK_KIND, now))]


def queue_due_ticks(db: sqlite3.Connection, now: float, received: float) -> list[int]:
    """Queue a tick for every due schedule that has none waiting; return the chats with a
    due tick to wake.

    Missed ticks are coalesced: however long the daemon was down, a schedule gets one
    catch-up tick and its next one an interval after that tick is handled. A schedule
    whose next tick lies more than one interval ahead (the clock jumped back) is re-armed
    from now, its waiting tick with it.
    """
    jumped = db.execute("SELECT chat_id, name, every FROM schedules WHERE next_at > ? + every",
                        (now,)).fetchall()
    for chat_id, name, every in jumped:
        db.execute("UPDATE schedules SET next_at = ? WHERE chat_id = ? AND name = ?",
                   (now + every, chat_id, name))
        _drop_waiting_tick(db, chat_id, name, now)
        _queue_tick(db, chat_id, name, now + every)
    due = db.execute("SELECT chat_id, name FROM schedules WHERE next_at <= ?", (now,)).fetchall()
    for chat_id, name in due:
        if not _has_waiting_tick(db, chat_id, name):
            _queue_tick(db, chat_id, name, min(now, received))
    return due_chats(db, now)
