"""`chatdaemon run` as a process against a Pi owner's mistakes and a busy machine."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import HANDLERS, TOKEN, TOKEN_SECRET, clean_environment, wait_until

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


def test_a_hook_bind_address_this_machine_lacks_says_so(tmp_path, telegram, start_daemon):
    # 192.0.2.1 is TEST-NET-1: no interface here has it
    daemon = start_daemon(config={"hooks": {"bind": "192.0.2.1", "port": 8999}})
    assert daemon.wait(20) == 78
    log = daemon.log()
    assert "cannot listen on 192.0.2.1:8999" in log
    assert "check hooks.bind" in log and "another bot" not in log
    assert not (tmp_path / "bot.sqlite3").exists()   # a refused start leaves no new database


def test_daemon_mode_with_the_database_as_pidfile_keeps_the_database(tmp_path, telegram):
    db = tmp_path / "bot.sqlite3"
    Store(str(db), owner="123456").close()
    before = db.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "chatdaemon", "run", "--daemon", "--pidfile", str(db),
         "--db", str(db), "--handlers", str(HANDLERS / "counter"), "--api-url", telegram.url],
        env=clean_environment(CHATDAEMON_TOKEN=TOKEN), cwd=tmp_path, capture_output=True,
        text=True, timeout=60)
    assert result.returncode == 78, result.stderr
    assert "refusing pidfile" in result.stderr
    assert db.read_bytes() == before
    assert telegram.calls == []   # refused before anything talks to Telegram


def test_a_token_from_the_environment_leaves_proc_environ(telegram, start_daemon):
    daemon = start_daemon()   # the token in $CHATDAEMON_TOKEN
    telegram.push_message(8, "/start")
    assert telegram.wait_for_sent(1, timeout=20)   # read the token, polling, answered
    environ = Path(f"/proc/{daemon.pid}/environ").read_bytes()
    assert b"CHATDAEMON_TOKEN=" in environ   # the name stays, the value is blanked
    assert TOKEN_SECRET.encode() not in environ
    assert TOKEN.split(":")[0].encode() + b":" not in environ
    assert daemon.stop() == 0


def test_a_token_given_as_argument_leaves_the_command_line(telegram, start_daemon):
    daemon = start_daemon(token=None, args=[TOKEN])
    telegram.push_message(9, "/start")
    assert telegram.wait_for_sent(1, timeout=20)   # the token was read and works
    cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().split(b"\0")
    assert TOKEN_SECRET.encode() not in b" ".join(cmdline)
    assert b"x" * len(TOKEN) in cmdline   # the argument is still there, blanked
    assert b"run" in cmdline   # the rest of the command line is untouched
    assert daemon.stop() == 0


def test_a_reload_applies_the_log_level_and_names_settings_that_wait_for_a_restart(
        telegram, start_daemon, tmp_path):
    daemon = start_daemon(config={"log_level": "INFO"})
    telegram.push_message(10, "/start")
    assert telegram.wait_for_sent(1, timeout=20)
    config_file = tmp_path / "config-0.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["log_level"] = "DEBUG"
    config["polling"]["allowed_updates"] = ["message"]
    config["polling"]["conflict_grace"] = 99
    config_file.write_text(yaml.safe_dump(config))
    daemon.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reloaded:" in daemon.log(), timeout=10), daemon.log()
    log = daemon.log()
    assert "reload: allowed_updates changed; that takes effect only after a restart" in log
    assert "reload: conflict_grace changed; that takes effect only after a restart" in log
    assert "reload: log level now DEBUG" in log
    telegram.push_message(10, "again")
    assert telegram.wait_for_sent(2, timeout=20)
    assert wait_until(lambda: " DEBUG " in daemon.log(), timeout=10)   # the new level is live
    assert daemon.stop() == 0
