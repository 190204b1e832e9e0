"""What the store writes to the disk: small pages, and older files rewritten once into that shape."""

from __future__ import annotations

import json
import sqlite3
import time

from chatdaemon.conversations import Conversation
from chatdaemon.inbox import to_row
from chatdaemon.store import AUTO_VACUUM_INCREMENTAL, PAGE_SIZE, Store


def message(update_id: int, chat_id: int = 42, text: str = "hi") -> dict:
    return {"update_id": update_id,
            "message": {"message_id": update_id, "chat": {"id": chat_id, "type": "private"},
                        "date": 1_700_000_000, "text": text}}


def shape(path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA page_size").fetchone()[0],
                db.execute("PRAGMA auto_vacuum").fetchone()[0])
    finally:
        db.close()


def wal_frames(path) -> int:
    """Frames in the WAL file (its header is 32 bytes, each frame 24 bytes + a page)."""
    size = (path.parent / (path.name + "-wal")).stat().st_size
    return max(0, size - 32) // (PAGE_SIZE + 24)


def test_a_new_database_has_small_pages_and_incremental_vacuum(tmp_path):
    path = tmp_path / "new.sqlite3"
    Store(str(path)).close()
    assert shape(path) == (PAGE_SIZE, AUTO_VACUUM_INCREMENTAL) == (512, 2)


def test_an_older_file_is_rewritten_once_into_the_new_shape_keeping_its_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    store = Store(str(path))
    store.add_updates([to_row(message(1)), to_row(message(2))])
    store.finish(1, Conversation(42, "asked", {"n": 1}))
    store.close()
    db = sqlite3.connect(path)   # the shape an earlier version made: 4 KiB pages, no auto-vacuum
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA auto_vacuum=NONE")
    db.execute("VACUUM")
    db.close()
    assert shape(path) == (4096, 0)

    store = Store(str(path))
    try:
        assert store.is_done(1) and not store.is_done(2)
        assert [row.update_id for row in store.pending(42)] == [2]
        assert store.load_conversation(42).vars == {"n": 1}
        with store.reading() as db:
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    finally:
        store.close()
    assert mode == "wal"
    assert shape(path) == (512, 2)


def test_an_update_costs_a_few_small_pages_in_the_wal(tmp_path):
    path = tmp_path / "frames.sqlite3"
    store = Store(str(path))
    try:
        for n in range(1, 301):   # a table deep enough to have interior pages
            store.add_updates([to_row(message(n, chat_id=n % 10, text="x" * 120))])
            store.finish(n, Conversation(n % 10, None, {"count": n}))
        with store.reading() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.add_updates([to_row(message(1000, chat_id=3, text="x" * 120))])
        inserted = wal_frames(path)
        store.finish(1000, Conversation(3, None, {"count": 1000}))
        done = wal_frames(path) - inserted
    finally:
        store.close()
    # the inbox leaf, its pending index and at most a split's pages; the done mark: the row's
    # leaf, the index and the conversation — each 512 bytes, where 4 KiB pages made them 4 KiB
    assert 1 <= inserted <= 5
    assert 1 <= done <= 4
    assert (inserted + done) * (PAGE_SIZE + 24) <= 5 * 1024


# -- schedule ticks: one write transaction each ----------------------------------------------

CHAT = 42


def waiting_ticks(store: Store) -> list[tuple]:
    with store.reading() as db:
        return db.execute("SELECT update_id, received FROM inbox WHERE kind = 'schedule'"
                          " AND done = 0").fetchall()


def make_due(store: Store) -> None:
    with store.writing() as db:
        db.execute("UPDATE inbox SET received = received - 3600 WHERE kind = 'schedule'")
        db.execute("UPDATE schedules SET next_at = next_at - 3600")


def commits(store: Store) -> list[str]:
    """Every COMMIT the store runs from now on."""
    seen: list[str] = []
    store._connection.set_trace_callback(lambda sql: sql == "COMMIT" and seen.append(sql))
    return seen


def started(store: Store, every: float = 60.0) -> Store:
    store.add_updates([to_row(message(1, CHAT))])
    running = Conversation(CHAT, None, {}, schedules={"report": {"every": every}},
                           saved_schedules={})
    store.finish(1, running)
    return store


def test_a_tick_is_queued_and_handled_in_one_commit_that_queues_the_next(tmp_path):
    store = started(Store(str(tmp_path / "ticks.sqlite3")))
    try:
        make_due(store)
        seen = commits(store)
        assert store.queue_due_ticks(time.time()) == [CHAT]     # found by reading alone
        [tick] = store.pending(CHAT)
        store.finish(tick.update_id, store.load_conversation(CHAT))
        assert seen == ["COMMIT"]
        [(next_id, due)] = waiting_ticks(store)
        assert next_id > tick.update_id and time.time() + 55 < due <= time.time() + 60
        assert store.pending(CHAT) == [] and store.backlog() == 0
    finally:
        store.close()


def test_a_schedule_without_a_waiting_tick_gets_one_when_due(tmp_path):
    """A database from an earlier version holds schedules whose ticks were never queued."""
    store = started(Store(str(tmp_path / "old-ticks.sqlite3")))
    try:
        with store.writing() as db:
            db.execute("DELETE FROM inbox WHERE kind = 'schedule'")
        make_due(store)
        assert store.queue_due_ticks(time.time()) == [CHAT]
        assert len(store.pending(CHAT)) == 1
        assert store.queue_due_ticks(time.time()) == [CHAT]     # not a second one
        assert len(store.pending(CHAT)) == 1
    finally:
        store.close()


def test_a_quarantined_tick_still_leaves_the_next_one_queued(tmp_path):
    store = started(Store(str(tmp_path / "q.sqlite3")))
    try:
        make_due(store)
        [tick] = store.pending(CHAT)
        store.quarantine(tick.update_id, "kept crashing")
        [(next_id, due)] = waiting_ticks(store)
        assert next_id != tick.update_id and due > time.time()
    finally:
        store.close()


def test_a_clock_set_back_rearms_the_waiting_tick_from_now(tmp_path):
    store = started(Store(str(tmp_path / "clock.sqlite3")))
    try:
        with store.writing() as db:   # as if the clock had been a day ahead when it was queued
            db.execute("UPDATE inbox SET received = received + 86400 WHERE kind = 'schedule'")
            db.execute("UPDATE schedules SET next_at = next_at + 86400")
        now = time.time()
        assert store.queue_due_ticks(now) == []
        [(_, due)] = waiting_ticks(store)
        assert due == now + 60
    finally:
        store.close()


def test_a_clock_set_back_hides_no_message(tmp_path):
    store = Store(str(tmp_path / "hide.sqlite3"))
    try:
        store.add_updates([to_row(message(7, CHAT))])
        with store.writing() as db:
            db.execute("UPDATE inbox SET received = received + 86400")
        assert [row.update_id for row in store.pending(CHAT)] == [7]
        assert store.backlog() == 1 and store.pending_chats() == [CHAT]
    finally:
        store.close()


def test_a_database_of_the_1_kib_version_is_rewritten_and_its_json_rows_replay(tmp_path):
    path = tmp_path / "kib.sqlite3"
    Store(str(path)).close()
    db = sqlite3.connect(path)   # as the previous version left it: 1 KiB pages, JSON text rows
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("INSERT INTO inbox(update_id, chat_id, kind, payload, done, received)"
               " VALUES (?, ?, 'message', ?, 0, ?)", (5, 42, json.dumps(message(5)), time.time()))
    db.commit()
    db.execute("PRAGMA page_size=1024")
    db.execute("VACUUM")
    db.close()
    assert shape(path)[0] == 1024

    store = Store(str(path))
    try:
        assert [(row.update_id, row.payload) for row in store.pending(42)] == [(5, message(5))]
    finally:
        store.close()
    assert shape(path) == (PAGE_SIZE, AUTO_VACUUM_INCREMENTAL)
