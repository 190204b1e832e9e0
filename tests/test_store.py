"""The store in-process: its transactions, and migrations from the schemas that came before."""

from __future__ import annotations

import sqlite3
import time

import pytest

from chatdaemon.inbox import LOCAL_BASE, InboxRow, to_row
from chatdaemon.store import MIGRATIONS, Store

CHAT = 42


def message(update_id: int, chat_id: int = CHAT) -> dict:
    return {"update_id": update_id, "message": {"message_id": update_id, "date": 0,
                                                "chat": {"id": chat_id, "type": "private"},
                                                "text": "hi"}}


def old_database(path, version: int) -> sqlite3.Connection:
    """A database as chatdaemon left it at schema `version`."""
    db = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:version]:
        for statement in filter(str.strip, script.split(";")):
            db.execute(statement)
    db.execute(f"PRAGMA user_version={version}")
    return db


# -- transactions -------------------------------------------------------------------------

def test_state_and_the_done_mark_commit_together(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    conversation = fresh_db.load_conversation(CHAT)
    assert conversation.is_new
    conversation.state, conversation.vars = "asked", {"n": 1}
    fresh_db.finish(1, conversation)
    assert fresh_db.is_done(1) and not conversation.is_new
    saved = fresh_db.load_conversation(CHAT)
    assert (saved.state, saved.vars, saved.is_new) == ("asked", {"n": 1}, False)


def test_a_guard_that_refuses_rolls_back_state_and_done_mark(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    conversation = fresh_db.load_conversation(CHAT)
    conversation.state = "changed"

    def refuse():
        raise RuntimeError("given up")

    with pytest.raises(RuntimeError):
        fresh_db.finish(1, conversation, guard=refuse)
    assert not fresh_db.is_done(1) and fresh_db.backlog() == 1
    assert fresh_db.load_conversation(CHAT).is_new
    assert conversation.is_new   # not marked saved: the next commit creates it
    # the lock was released and the connection is usable
    fresh_db.finish(1, conversation)
    assert fresh_db.is_done(1)


def test_a_batch_is_deduplicated_by_exact_id_with_its_rejections_in_the_same_commit(fresh_db):
    first = fresh_db.add_updates([to_row(message(5)), to_row(message(9))],
                                 rejected=[("update_id is not an id", '{"update_id": "x"}')])
    assert [row.update_id for row in first] == [5, 9]
    # ids may go backwards after a quiet week: a lower id is new, a repeated one is not
    again = fresh_db.add_updates([to_row(message(3)), to_row(message(9))], done=[3])
    assert [row.update_id for row in again] == [3]
    assert fresh_db.is_done(3) and fresh_db.pending_chats() == [CHAT]
    assert [row.update_id for row in fresh_db.pending(CHAT)] == [5, 9]
    (rejected,) = fresh_db._connection.execute("SELECT COUNT(*) FROM rejected").fetchone()
    assert rejected == 1 and fresh_db.last_update_id() == 9


def test_local_rows_are_numbered_above_telegrams_and_left_out_of_the_last_id(fresh_db):
    fresh_db.add_updates([to_row(message(5))])
    ids = fresh_db.add_local([(CHAT, "hook", {"text": "a"}), (CHAT, "hook", {"text": "b"})])
    assert ids == [LOCAL_BASE, LOCAL_BASE + 1]
    assert fresh_db.last_update_id() == 5
    assert [row.kind for row in fresh_db.pending(CHAT)] == ["message", "hook", "hook"]


def test_quarantine_and_attempts_are_kept_on_the_row(fresh_db):
    fresh_db.add_updates([to_row(message(1)), to_row(message(2, 7))])
    assert fresh_db.count_interrupted() == 2      # no clean stop was noted: both were in flight
    fresh_db.add_attempt(1)
    assert fresh_db.pending(CHAT)[0].attempts == 2
    fresh_db.quarantine(1, "cut short 3 times")
    assert fresh_db.is_done(1) and fresh_db.quarantined_count() == 1
    fresh_db.note_clean_stop()
    assert fresh_db.count_interrupted() == 0      # after a clean stop nothing is counted


def test_pruning_keeps_undone_rows_whatever_their_age(fresh_db):
    fresh_db.add_updates([to_row(message(1)), to_row(message(2))])
    fresh_db.finish(1, None)
    assert fresh_db.prune(keep_seconds=-1) == 1
    assert fresh_db.backlog() == 1 and not fresh_db.is_done(1)


# -- migrations ---------------------------------------------------------------------------

def test_a_new_database_has_every_migration(tmp_path):
    path = str(tmp_path / "new.sqlite3")
    Store(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)


def test_schedules_kept_in_the_conversation_move_to_their_table(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    db = old_database(path, 4)
    now = time.time()
    db.execute("INSERT INTO conversations(chat_id, state, vars, updated, schedules)"
               " VALUES (1, 's', '{\"n\": 3}', 0, '{\"report\": {\"every\": 60.0}}')")
    db.execute("INSERT INTO schedules(chat_id, name, every, next_at) VALUES (1, 'report', 60, ?)",
               (now + 12,))
    # a schedule only in the JSON (its row lost) and malformed JSON must not stop the upgrade
    db.execute("INSERT INTO conversations(chat_id, state, vars, updated, schedules)"
               " VALUES (2, NULL, '{}', 0, '{\"daily\": {\"every\": 86400}, \"bad\": \"x\"}')")
    db.execute("INSERT INTO conversations(chat_id, state, vars, updated, schedules)"
               " VALUES (3, NULL, '{}', 0, 'not json')")
    db.close()

    store = Store(path)
    try:
        assert store.load_conversation(1).schedules == {"report": {"every": 60.0}}
        assert store.load_conversation(1).vars == {"n": 3}
        assert store.load_conversation(2).schedules == {"daily": {"every": 86400.0}}
        assert store.load_conversation(3).schedules == {}
        kept = dict(store._connection.execute(
            "SELECT chat_id, next_at FROM schedules").fetchall())
        assert kept[1] == pytest.approx(now + 12)            # its next tick is kept
        assert now + 86400 - 5 < kept[2] < time.time() + 86400 + 5   # starts an interval from now
        assert store._connection.execute(
            "SELECT COUNT(*) FROM conversations WHERE schedules != '{}'").fetchone() == (0,)
        assert store._connection.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    finally:
        store.close()


@pytest.mark.parametrize("version", range(1, 4))
def test_every_older_schema_upgrades_and_keeps_its_rows(tmp_path, version):
    path = str(tmp_path / f"v{version}.sqlite3")
    db = old_database(path, version)
    db.execute("INSERT INTO inbox(update_id, chat_id, kind, payload, done, received)"
               " VALUES (1, 42, 'message', ?, 0, 0)", ('{"message": {"text": "hi"}}',))
    db.execute("INSERT INTO conversations(chat_id, state, vars, updated) VALUES (42, 's', '{}', 0)")
    db.close()
    store = Store(path)
    try:
        [row] = store.pending(CHAT)
        assert (row.update_id, row.kind, row.attempts) == (1, "message", 0)
        conversation = store.load_conversation(CHAT)
        assert (conversation.state, conversation.schedules) == ("s", {})
        conversation.schedules["report"] = {"every": 60.0}
        store.finish(1, conversation)
        assert store.load_conversation(CHAT).schedules == {"report": {"every": 60.0}}
    finally:
        store.close()


class FullDisk:
    """A connection whose COMMIT fails as on a full disk: SQLite has rolled back already."""

    def __init__(self, real: sqlite3.Connection):
        self.real = real

    def execute(self, sql: str, *args):
        if sql == "COMMIT":
            self.real.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_a_failed_commit_raises_its_own_cause_not_the_rollbacks(fresh_db):
    fresh_db.add_updates([InboxRow(1, 5, "message", {"update_id": 1, "message": {}})])
    real = fresh_db._connection
    fresh_db._connection = FullDisk(real)
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        fresh_db.add_updates([InboxRow(2, 5, "message", {"update_id": 2, "message": {}})])
    fresh_db._connection = real
    assert [row.update_id for row in fresh_db.pending(5)] == [1]   # nothing half-written
    fresh_db.add_updates([InboxRow(2, 5, "message", {"update_id": 2, "message": {}})])
    assert [row.update_id for row in fresh_db.pending(5)] == [1, 2]


def test_a_rejected_update_sent_again_is_kept_once(fresh_db):
    """A batch not acknowledged before a restart comes back whole, its malformed ones too."""
    batch = [("update 9: callback_query.message is a str, not an object", '{"update_id": 9}')]
    fresh_db.add_updates([], rejected=batch)
    fresh_db.add_updates([], rejected=batch)
    fresh_db.add_rejected(batch + [("update 10: too deep", '{"update_id": 10}')])
    with fresh_db.reading() as db:
        assert [reason for (reason,) in db.execute("SELECT reason FROM rejected ORDER BY id")] == [
            batch[0][0], "update 10: too deep"]
