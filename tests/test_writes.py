"""What the store writes to the disk: small pages, and older files rewritten once into that shape."""

from __future__ import annotations

import sqlite3

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
    assert shape(path) == (PAGE_SIZE, AUTO_VACUUM_INCREMENTAL) == (1024, 2)


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
    assert shape(path) == (1024, 2)


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
    # leaf, the index and the conversation — each 1 KiB, where 4 KiB pages made them 4 KiB
    assert 1 <= inserted <= 5
    assert 1 <= done <= 4
