"""`chatdaemon run` as a process against a Pi owner's mistakes and a busy machine."""

from __future__ import annotations

import sqlite3

from chatdaemon.store import Store

BUSY_TIMEOUT = 10   # seconds the store waits for SQLite's write lock at start (store.py)


def test_a_database_held_by_another_writer_at_start_exits_75_not_78(
        tmp_path, telegram, start_daemon):
    db = tmp_path / "bot.sqlite3"
    Store(str(db), owner="123456").close()
    writer = sqlite3.connect(db, isolation_level=None)   # a backup, the sqlite3 shell in a transaction
    writer.execute("BEGIN IMMEDIATE")
    try:
        daemon = start_daemon(db=db)
        # 75 is not in the units' RestartPreventExitStatus: systemd retries once it passes
        assert daemon.wait(BUSY_TIMEOUT + 20) == 75
    finally:
        writer.rollback()
        writer.close()
    assert "cannot be opened for now: database is locked" in daemon.log()
    assert db.exists()   # an existing database is never removed by a refused start
    restarted = start_daemon(db=db)
    telegram.push_message(7, "/start")
    assert telegram.wait_for_sent(1, timeout=20)
    assert restarted.stop() == 0
