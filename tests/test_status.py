"""`chatdaemon status` says whether a daemon holds the database, without taking its lock."""

from __future__ import annotations

import os

from chatdaemon.dbfile import lock_holder
from chatdaemon.status import format_status, open_read_only, read_status
from chatdaemon.store import Store


def test_status_names_the_process_holding_the_database_and_takes_no_lock(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    store = Store(path, owner="123")
    try:
        status = read_status(open_read_only(path))
        assert status["daemon_pid"] == os.getpid()
        assert f"running as pid {os.getpid()}" in format_status(status)
        assert lock_holder(path) == os.getpid()
    finally:
        store.close()
    # looking took no lock: the database opens again at once, and nobody holds it now
    assert lock_holder(path) is None
    again = Store(path, owner="123")
    again.close()
    status = read_status(open_read_only(path))
    assert status["daemon_pid"] is None and "not running" in format_status(status)


def test_no_lock_file_means_no_holder(tmp_path):
    assert lock_holder(str(tmp_path / "never.sqlite3")) is None
