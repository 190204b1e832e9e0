"""The inbox cannot store a batch (the disk is full, the SD card went read-only): the poller
acknowledges nothing, says why, backs off and stores the batch once it can; it never dies."""

from __future__ import annotations

import logging

from test_intake import fresh_db, make_poller, message, quick, settle

__all__ = ["fresh_db", "quick"]   # fixtures, used by name


def fill_up(store) -> None:
    """SQLite's own cap on the file: the next page it needs fails as SQLITE_FULL."""
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count={pages}")


def test_a_full_disk_leaves_the_batch_with_telegram_and_stores_it_once_there_is_room(
        fresh_db, quick, caplog):
    fill_up(fresh_db)
    big = [message(10 + i, chat_id=7, text="x" * 3000) for i in range(20)]

    def room_again(method):
        fresh_db._db.execute("PRAGMA max_page_count=1073741823")
        return big

    poller, api, notified = make_poller(fresh_db, settle() + [big, big, room_again])
    with caplog.at_level(logging.WARNING, logger="chatdaemon.poller"):
        poller.run()   # returns: the script ends with empty polls that set stop
    offsets = [params.get("offset") for _, params in api.calls]
    first = offsets.index(None, len(settle()))   # the batch's first fetch
    assert offsets[first + 1] is None, "a batch that was not stored was acknowledged"
    assert offsets[-1] == 30
    assert fresh_db._db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (20,)
    assert notified == [[7]]
    assert any("full" in record.getMessage() and "20 update(s)" in record.getMessage()
               for record in caplog.records)
    assert poller.last_error is None   # cleared by the poll that stored it


def test_a_read_only_database_is_an_outage_too(fresh_db, quick):
    fresh_db._db.execute("PRAGMA query_only=1")   # what a remounted read-only card looks like here

    def writable_again(method):
        fresh_db._db.execute("PRAGMA query_only=0")
        return [message(40)]

    poller, api, notified = make_poller(fresh_db, settle() + [[message(40)], writable_again])
    poller.run()
    assert fresh_db._db.execute("SELECT update_id FROM inbox").fetchall() == [(40,)]
    assert notified == [[7]]
