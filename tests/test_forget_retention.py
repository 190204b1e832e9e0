"""What /forget marks done without handling (its schedules' next ticks, results posted to its
callback URLs) gets a handled time, so age-based retention prunes it like any handled row."""

from __future__ import annotations

import time

from chatdaemon import callbacks, conversations
from chatdaemon.privacy import forget_chat, forget_member
from chatdaemon.store import Retention, Store

GROUP = -100777
MEMBER = 55
DAY = 86400.0


def queue_rows(store: Store) -> None:
    store.add_local([
        (GROUP, "schedule", {"name": "report", "at": time.time() + 60}),
        (GROUP, "schedule", {"name": f"daily{conversations.MEMBER_MARK}{MEMBER}",
                             "at": time.time() + 60}),
        (GROUP, callbacks.KIND, {"member": MEMBER, "data": {"x": 1}}),
    ])


def unstamped(store: Store) -> int:
    with store.reading() as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM inbox WHERE done = 1 AND handled IS NULL").fetchone()
    return count


def commit(store: Store, write) -> None:
    with store.writing() as db:
        write(db)


def test_forget_chat_stamps_what_it_marks_done_and_retention_prunes_it(fresh_db):
    queue_rows(fresh_db)
    commit(fresh_db, forget_chat(GROUP))
    assert fresh_db.backlog() == 0
    assert unstamped(fresh_db) == 0
    keep = Retention(keep_handled=DAY, max_database_bytes=0)
    assert fresh_db.apply_retention(keep, now=time.time() + 2 * DAY).updates == 3


def test_forget_member_stamps_what_it_marks_done(fresh_db):
    queue_rows(fresh_db)
    commit(fresh_db, forget_member(GROUP, MEMBER))
    commit(fresh_db, lambda db: conversations.forget_member(db, GROUP, MEMBER))
    assert fresh_db.backlog() == 1   # the chat's own schedule keeps ticking
    assert unstamped(fresh_db) == 0
    keep = Retention(keep_handled=DAY, max_database_bytes=0)
    assert fresh_db.apply_retention(keep, now=time.time() + 2 * DAY).updates == 2
