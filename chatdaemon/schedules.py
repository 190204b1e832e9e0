"""Schedules: each chat's periodic jobs, and the ticks they queue in the inbox.

The `schedules` table is their one source of truth: a row per running schedule, with
when it is next due. A handler's start_schedule / stop_schedule change the conversation
in memory; the commit of that update writes the change here in the same transaction
(conversations.save), so a schedule starts or stops exactly when its update is done.
A commit that changes no schedule does not touch this table.

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
    for name, spec in wanted.items():
        every = float(spec["every"])
        if name in saved and float(saved[name]["every"]) == every:
            continue
        db.execute("INSERT OR REPLACE INTO schedules(chat_id, name, every, next_at)"
                   " VALUES (?, ?, ?, ?)", (chat_id, name, every, now + every))


def next_due(db: sqlite3.Connection) -> float | None:
    """When the earliest schedule falls due (time.time() seconds), or None with none."""
    [(next_at,)] = db.execute("SELECT MIN(next_at) FROM schedules").fetchall()
    return next_at


def anything_to_do(db: sqlite3.Connection, now: float) -> bool:
    """Whether a schedule is due, or lies more than one interval ahead (the clock jumped back)."""
    return db.execute("SELECT 1 FROM schedules WHERE next_at <= ? OR next_at > ? + every"
                      " LIMIT 1", (now, now)).fetchone() is not None


def queue_due_ticks(db: sqlite3.Connection, now: float, received: float) -> list[int]:
    """Queue one tick for every due schedule and re-arm it; return the chats to wake.

    Missed ticks are coalesced: however long the daemon was down, a schedule gets one
    catch-up tick and its next one an interval from now. A schedule whose next tick lies
    more than one interval ahead (the clock jumped back) is re-armed from now.
    """
    db.execute("UPDATE schedules SET next_at = ? + every WHERE next_at > ? + every", (now, now))
    due = db.execute("SELECT chat_id, name, every FROM schedules WHERE next_at <= ?",
                     (now,)).fetchall()
    ticks: list[tuple[int, str, dict]] = []
    for chat_id, name, every in due:
        db.execute("UPDATE schedules SET next_at = ? WHERE chat_id = ? AND name = ?",
                   (now + every, chat_id, name))
        if inbox.has_pending(db, chat_id, TICK_KIND, f"$.{TICK_KIND}.name", name):
            continue  # the last tick is still queued: don't pile up more
        ticks.append((chat_id, TICK_KIND, {"name": name, "at": now}))
    inbox.insert_local(db, ticks, received)
    return [chat_id for chat_id, _, _ in ticks]
