"""Retention: what the database keeps of finished work, for how long and up to what size."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import wait_until

from chatdaemon.config import Config, load_config
from chatdaemon.conversations import Conversation
from chatdaemon.errors import ConfigError
from chatdaemon.inbox import KEEP_DONE_AT_LEAST_SECONDS, to_row
from chatdaemon.store import Retention, Store

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400.0


@pytest.fixture
def fresh_db(tmp_path):
    store = Store(str(tmp_path / "retention.sqlite3"))
    yield store
    store.close()


def message(update_id: int, chat_id: int = 42, text: str = "hello") -> dict:
    return {"update_id": update_id,
            "message": {"message_id": update_id, "chat": {"id": chat_id, "type": "private"},
                        "date": 1_700_000_000, "text": text}}


def handle(store: Store, update_ids, chat_id: int = 42, text: str = "hello") -> None:
    """Store the updates and handle them (state + done mark), one by one."""
    for update_id in update_ids:
        store.add_updates([to_row(message(update_id, chat_id, text))])
        store.finish(update_id, Conversation(chat_id, "seen", {"last": update_id}))


def age(store: Store, seconds: float, where: str = "1 = 1") -> None:
    """Move the received and handled times of the matching rows `seconds` into the past."""
    with store.writing() as db:
        db.execute(f"UPDATE inbox SET received = received - ?, handled = handled - ? WHERE {where}",
                   (seconds, seconds))


def ids(store: Store) -> list[int]:
    with store.reading() as db:
        return [uid for (uid,) in db.execute("SELECT update_id FROM inbox ORDER BY update_id")]


# -- by age -------------------------------------------------------------------------------

def test_handled_updates_go_after_keep_handled_and_unhandled_ones_never(fresh_db):
    handle(fresh_db, [1, 2])
    fresh_db.add_updates([to_row(message(3))])          # never handled
    age(fresh_db, 3 * DAY)
    handle(fresh_db, [4])                               # handled just now
    pruned = fresh_db.apply_retention(Retention(keep_handled=2 * DAY, max_database_bytes=0))
    assert pruned.updates == 2
    assert ids(fresh_db) == [3, 4]
    assert [row.update_id for row in fresh_db.pending(42)] == [3]


def test_a_kept_handled_update_still_recognises_its_redelivery(fresh_db):
    handle(fresh_db, [1])
    age(fresh_db, DAY)
    fresh_db.apply_retention(Retention())
    assert fresh_db.add_updates([to_row(message(1))]) == []   # recognised: not new


# -- by size ------------------------------------------------------------------------------

def test_over_the_size_cap_the_oldest_handled_updates_go(fresh_db):
    handle(fresh_db, range(1, 401), text="x" * 300)
    age(fresh_db, 2 * KEEP_DONE_AT_LEAST_SECONDS)
    fresh_db.add_updates([to_row(message(500, text="y" * 300))])   # unhandled
    age(fresh_db, DAY, "update_id = 500")
    cap = fresh_db.database_bytes() * 2 // 3
    pruned = fresh_db.apply_retention(Retention(max_database_bytes=cap))
    assert 0 < pruned.updates < 400 and not pruned.over_cap_bytes
    assert fresh_db.database_bytes() <= cap
    left = ids(fresh_db)
    assert left == [*range(401 - len(left) + 1, 401), 500]         # the oldest went first
    assert [row.update_id for row in fresh_db.pending(42)] == [500]


def test_the_size_cap_never_takes_the_last_hours_updates_nor_unhandled_ones(fresh_db):
    handle(fresh_db, range(1, 301), text="x" * 300)
    age(fresh_db, 2 * KEEP_DONE_AT_LEAST_SECONDS, "update_id <= 200")
    fresh_db.add_updates([to_row(message(900, text="y" * 300))])
    age(fresh_db, DAY, "update_id = 900")                          # old but never handled
    pruned = fresh_db.apply_retention(Retention(max_database_bytes=1024))   # unreachable
    assert pruned.updates == 200
    assert ids(fresh_db) == [*range(201, 301), 900]
    assert pruned.over_cap_bytes > 0
    assert [row.update_id for row in fresh_db.pending(42)] == [900]


def test_pruning_gives_the_space_back_to_the_disk(tmp_path):
    path = tmp_path / "shrink.sqlite3"
    store = Store(str(path))
    try:
        handle(store, range(1, 2001), chat_id=7, text="z" * 400)
        with store.reading() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        before = path.stat().st_size
        age(store, 3 * DAY)
        pruned = store.apply_retention(Retention())
        with store.reading() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (free,) = db.execute("PRAGMA freelist_count").fetchone()
    finally:
        store.close()
    assert pruned.updates == 2000 and pruned.freed_bytes > 0
    assert free == 0
    assert path.stat().st_size < before // 5


def test_the_old_prune_keeps_its_meaning(fresh_db):
    handle(fresh_db, [1])
    fresh_db.add_updates([to_row(message(2))])
    assert fresh_db.prune(keep_seconds=-1) == 1
    assert ids(fresh_db) == [2]


# -- conversations --------------------------------------------------------------------------

def conversations(store: Store) -> list[int]:
    with store.reading() as db:
        return [c for (c,) in db.execute("SELECT chat_id FROM conversations ORDER BY chat_id")]


def test_idle_conversations_are_kept_unless_asked_and_then_only_the_unused_ones(fresh_db):
    for chat in (1, 2, 3, 4):
        handle(fresh_db, [chat * 10], chat_id=chat)
    fresh_db.add_updates([to_row(message(21, chat_id=2))])          # chat 2 has one pending
    busy = Conversation(3, "seen", {}, schedules={"report": {"every": 60.0}}, saved_schedules={})
    fresh_db.finish(None, busy)                                       # chat 3 has a schedule
    with fresh_db.writing() as db:
        db.execute("INSERT INTO handoffs(chat_id, name, started) VALUES (4, 'Ann', 0)")
        db.execute("UPDATE conversations SET updated = updated - ?", (400 * DAY,))
    assert fresh_db.apply_retention(Retention()).conversations == 0   # default: kept for ever
    assert conversations(fresh_db) == [1, 2, 3, 4]
    pruned = fresh_db.apply_retention(Retention(forget_conversations_after=180 * DAY))
    assert pruned.conversations == 1
    assert conversations(fresh_db) == [2, 3, 4]


# -- config -------------------------------------------------------------------------------

def write(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_retention_config_reads_durations_sizes_and_off(tmp_path):
    config = load_config(write(tmp_path, "retention:\n  keep_handled: 3d\n  max_database_mb: 8\n"
                                         "  forget_conversations_after: 90d\n"))
    assert config.retention == Retention(3 * DAY, 8 * 2 ** 20, 90 * DAY)
    config = load_config(write(tmp_path, "retention: {keep_handled: 90000, max_database_mb: off}\n"))
    assert config.retention == Retention(90000.0, 0, None)
    assert Config().retention == Retention(2 * DAY, 64 * 2 ** 20, None)


@pytest.mark.parametrize("text, key", [
    ("retention: {keep_handled: 12h}", "keep_handled"),
    ("retention: {keep_handled: soon}", "keep_handled"),
    ("retention: {max_database_mb: -1}", "max_database_mb"),
    ("retention: {forget_conversations_after: 0}", "forget_conversations_after"),
    ("retention: {keep: 48h}", "keep"),
])
def test_bad_retention_values_are_refused_naming_the_key_and_line(tmp_path, text, key):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text + "\n"))
    assert key in str(caught.value) and "config.yaml:1" in str(caught.value)


def test_the_sample_config_documents_every_retention_key():
    from chatdaemon import config
    text = (ROOT / "config" / "chatdaemon.yaml").read_text()
    for key in config._RETENTION_KEYS:
        assert re.search(rf"^\s*(# )?{key}:", text, re.M), key


# -- the daemon -----------------------------------------------------------------------------

def test_the_daemon_prunes_at_start_not_an_hour_later(tmp_path, telegram, start_daemon):
    path = tmp_path / "bot.sqlite3"
    store = Store(str(path))
    handle(store, [1, 2, 3], chat_id=5)
    age(store, 3 * DAY, "update_id <= 2")
    store.close()

    daemon = start_daemon(db=path)

    def left() -> list[int]:
        with sqlite3.connect(path) as db:
            return [uid for (uid,) in db.execute("SELECT update_id FROM inbox ORDER BY update_id")]

    assert wait_until(lambda: left() == [3], 20), daemon.log()
    # the rows go in the prune's commit, its log line just after
    assert wait_until(lambda: "pruned 2 handled update(s)" in daemon.log(), 10), daemon.log()
    started = time.monotonic()
    telegram.push_message(5, "hi")                 # the daemon still works after pruning
    assert telegram.wait_for_sent(1, 20)
    assert time.monotonic() - started < 20
