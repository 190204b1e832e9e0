"""Operating a bot, in process: status and chats, the shipped files, init, pidfile and log file
rules, the start report of --daemon, the hook server's address, the version."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

import chatdaemon
from chatdaemon import cli, config, shipped
from chatdaemon.config import Config, load_config
from chatdaemon.daemon import (
    EXIT_NOT_RUNNING,
    AlreadyRunning,
    NotRunning,
    PidFile,
    StartReport,
    await_start,
    open_regular,
    remove_new_database,
    stop_daemon,
)
from chatdaemon.errors import ConfigError
from chatdaemon.status import chat_name, list_chats, open_read_only, read_status
from chatdaemon.store import MIGRATIONS, Conversation, InboxRow, Store


def message(update_id: int, chat_id: int, text: str, **chat: str) -> InboxRow:
    update = {"update_id": update_id,
              "message": {"message_id": update_id, "text": text,
                          "chat": {"id": chat_id, "type": "private", **chat}}}
    return InboxRow(update_id, chat_id, "message", update)


@pytest.fixture
def bot_db(tmp_path) -> Path:
    """A database as a daemon leaves it: handled, pending, quarantined, rejected, a schedule."""
    path = tmp_path / "bot.sqlite3"
    store = Store(str(path))
    store.add_updates([message(1, 10, "hi", first_name="Ada", last_name="Lovelace"),
                       message(2, 20, "yo", title="Pi\x1b[31m club"),
                       message(3, 10, "again", first_name="Ada"),
                       message(4, 30, "boom", username="crasher"),
                       message(5, 40, "stuck", first_name="Bob")])
    store.finish(1, Conversation(10, "asked_name", {"n": 1},
                                 schedules={"report": {"every": 3600}}))
    store.finish(2, Conversation(20, None, {}))
    store.add_local([(10, "hook", {"text": "from a hook"})])  # not a message: no name from it
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("UPDATE inbox SET attempts = 3, quarantined = 'crashed 3 times' WHERE update_id = 4")
    db.execute("UPDATE inbox SET attempts = 1 WHERE update_id = 5")
    db.execute("INSERT INTO rejected(received, reason, payload) VALUES (?, ?, ?)",
               (time.time(), "update_id is not an integer", '{"update_id": "x"}'))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- status and chats -----------------------------------------------------------------------

def test_status_counts_backlog_failures_quarantine_rejections_and_schedules(bot_db):
    status = read_status(open_read_only(str(bot_db)))
    assert status["schema"] == len(MIGRATIONS)
    assert status["chats"] == 2
    # pending: 3 (chat 10), 5 (chat 40, failed once), the hook row; not the quarantined 4
    assert status["backlog"] == 3
    assert status["failing"] == 1
    assert status["quarantined"] == 1
    assert status["latest_quarantined"][0]["update_id"] == 4
    assert status["latest_quarantined"][0]["quarantined"] == "crashed 3 times"
    assert status["rejected"] == 1
    assert status["latest_rejected"][0]["reason"] == "update_id is not an integer"
    assert status["schedules"] == 1
    assert status["next_schedule"]["name"] == "report"
    assert status["last_update_received"] is not None


def test_status_and_chats_never_write_to_the_database(bot_db):
    before = digest(bot_db)
    db = open_read_only(str(bot_db))
    read_status(db)
    list_chats(db)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.conn.execute("DELETE FROM inbox")
    db.conn.close()
    assert digest(bot_db) == before


def test_chats_lists_names_states_and_pending_updates_newest_first(bot_db):
    chats = {chat["id"]: chat for chat in list_chats(open_read_only(str(bot_db)))}
    assert set(chats) == {10, 20, 30, 40}   # conversations, and chats only the inbox knows
    assert chats[10]["name"] == "Ada"        # from its last update, not the hook row
    assert chats[10]["state"] == "asked_name"
    assert chats[10]["pending"] == 2         # update 3 and the hook notification
    assert chats[20]["name"] == "Pi [31m club"   # control characters do not reach the terminal
    assert chats[30]["name"] == "@crasher"
    assert chats[40]["state"] is None and chats[40]["pending"] == 1
    assert all(chat["last_seen"] for chat in chats.values())


def test_chat_name_survives_malformed_payloads():
    assert chat_name(None) == ""
    assert chat_name("not json") == ""
    assert chat_name("[1, 2]") == ""
    assert chat_name(json.dumps({"message": {"chat": "nope"}})) == ""
    assert chat_name(json.dumps({"message": {"chat": {"first_name": 5, "title": ["x"]}}})) == ""
    callback = {"callback_query": {"message": {"chat": {"title": "Group"}}}}
    assert chat_name(json.dumps(callback)) == "Group"
    assert len(chat_name(json.dumps({"message": {"chat": {"title": "x" * 500}}}))) == 40


def test_status_and_chats_commands_print_tables_or_json(bot_db, capsys):
    assert cli.main(["status", "--db", str(bot_db)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^backlog\s+3 update", text, re.M), text
    assert re.search(r"^quarantined\s+1 update", text, re.M), text
    assert "crashed 3 times" in text
    assert cli.main(["status", "--db", str(bot_db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rejected"] == 1
    assert cli.main(["chats", "--db", str(bot_db), "--limit", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert cli.main(["chats", "--db", str(bot_db)]) == 0
    assert "Ada" in capsys.readouterr().out


def test_status_of_a_missing_or_foreign_database_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["status", "--db", str(tmp_path / "nothing.sqlite3")]) == 78
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "nothing.sqlite3").exists()
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.close()
    assert cli.main(["chats", "--db", str(other)]) == 78
    assert "not a chatdaemon database" in capsys.readouterr().err


# -- the hook server's address ---------------------------------------------------------------

def test_hook_server_runs_only_for_bots_with_hooks_unless_a_port_is_named():
    assert Config().hook_address(bot_defines_hooks=False) is None
    assert Config().hook_address(bot_defines_hooks=True) == ("127.0.0.1", config.DEFAULT_HOOK_PORT)
    assert Config(hook_port=9100).hook_address(bot_defines_hooks=False) == ("127.0.0.1", 9100)
    assert Config(hook_port=0).hook_address(bot_defines_hooks=True) is None


# -- shipped files, the sample config, init --------------------------------------------------

def test_the_default_handlers_work_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = Path(shipped.resolve_handlers(shipped.DEFAULT_HANDLERS))
    assert (resolved / "bot.yaml").is_file() and resolved.name == "counter"
    assert shipped.resolve_handlers("somewhere/else") == "somewhere/else"
    monkeypatch.chdir(ROOT)  # in a checkout the relative default stays what it says
    assert shipped.resolve_handlers(shipped.DEFAULT_HANDLERS) == shipped.DEFAULT_HANDLERS


def test_sample_config_lists_every_key_and_loads_to_the_defaults():
    sample = ROOT / "config" / "chatdaemon.yaml"
    text = sample.read_text()
    keys = set(config._TOP_KEYS) | {key for section in config._SECTIONS.values() for key in section}
    keys |= set(config._LIMIT_KEYS)
    missing = [key for key in sorted(keys) if not re.search(rf"^\s*(# )?{key}:", text, re.M)]
    assert missing == [], f"keys missing from {sample}: {missing}"
    loaded = load_config(str(sample))
    # paths in a config file are relative to that file's directory
    assert loaded.database == str(sample.parent / Config().database)
    assert os.path.realpath(loaded.handlers) == str(ROOT / Config().handlers)
    assert loaded.replace(database=Config().database, handlers=Config().handlers) == Config()


def test_init_writes_a_bot_and_a_config_that_check_accepts_and_never_overwrites(tmp_path, capsys):
    target = tmp_path / "mybot"
    assert cli.main(["init", str(target)]) == 0
    loaded = load_config(str(target / "chatdaemon.yaml"))
    assert loaded.handlers == str(target / "bot")
    assert loaded.database == str(target / "chatdaemon.sqlite3")
    assert cli.main(["check", "--config", str(target / "chatdaemon.yaml")]) == 0
    assert "handlers: 3" in capsys.readouterr().out

    (target / "bot" / "bot.yaml").write_text("# mine\n")
    assert cli.main(["init", str(target)]) == 78
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (target / "bot" / "bot.yaml").read_text() == "# mine\n"


def test_init_refuses_a_symlink_where_a_file_would_go(tmp_path):
    target = tmp_path / "mybot"
    target.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (target / "chatdaemon.yaml").symlink_to(victim)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        shipped.write_starter(str(target))
    assert victim.read_text() == "keep\n"
    assert not (target / "bot").exists()


def test_version_is_defined_once_and_setup_py_reads_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"chatdaemon {chatdaemon.__version__}"
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == chatdaemon.__version__, result.stderr
    assert not re.search(r"version=\"\d", (ROOT / "setup.py").read_text())


# -- pidfile and log file --------------------------------------------------------------------

def test_open_regular_refuses_symlinks_and_non_regular_files(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        open_regular(str(link), os.O_WRONLY | os.O_CREAT | os.O_APPEND, "log file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):  # and does not hang
        open_regular(str(fifo), os.O_WRONLY | os.O_CREAT | os.O_APPEND, "log file")
    with pytest.raises(ConfigError, match="not a regular file"):
        open_regular(str(tmp_path), os.O_RDONLY, "pidfile")
    assert target.read_text() == "precious\n"


def test_pidfile_check_creates_nothing_and_names_the_holder(tmp_path):
    path = tmp_path / "bot.pid"
    PidFile(str(path)).check_free()
    assert not path.exists()
    with pytest.raises(ConfigError, match="directory does not exist"):
        PidFile(str(tmp_path / "no" / "bot.pid")).check_free()
    holder = PidFile(str(path))
    holder.acquire()
    try:
        with pytest.raises(AlreadyRunning) as info:
            PidFile(str(path)).check_free()
        assert info.value.pid == os.getpid()
        with pytest.raises(AlreadyRunning):
            PidFile(str(path)).acquire()
    finally:
        holder.release()
    assert not path.exists()


def test_pidfile_acquire_refuses_a_symlink(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    (tmp_path / "bot.pid").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        PidFile(str(tmp_path / "bot.pid")).acquire()
    assert target.read_text() == "root:x:0:0\n"


def test_stop_without_a_running_daemon_says_so(tmp_path, capsys):
    path = tmp_path / "bot.pid"
    with pytest.raises(NotRunning, match="no pidfile"):
        stop_daemon(str(path))
    path.write_text(f"{os.getpid()}\n")   # a stale pidfile naming a live process: not signalled
    assert cli.main(["stop", "--pidfile", str(path)]) == EXIT_NOT_RUNNING
    assert "not held by any process" in capsys.readouterr().err


# -- the start report ------------------------------------------------------------------------

class FakeApp:
    def __init__(self, polls: int = 0, start_error: str | None = None):
        self.poller = type("P", (), {"polls": polls})()
        self.start_error = start_error


def report_pipe():
    read_end, write_end = os.pipe()
    return read_end, StartReport(write_end)


def test_start_report_says_ready_only_after_the_first_poll():
    read_end, report = report_pipe()
    report.starting(FakeApp(start_error="getMe: retrying"))
    report.tick(FakeApp(polls=0))
    report.tick(FakeApp(polls=1))
    report.failed(78, "too late: only the log hears this")
    outcome = await_start(read_end, timeout=5)
    assert (outcome.kind, outcome.status) == ("ready", 0)
    assert os.read(read_end, 100) == b""   # the pipe closed after the one final word
    os.close(read_end)


def test_start_report_carries_the_error_and_status_without_the_token():
    read_end, report = report_pipe()
    report.failed(78, "cannot listen on 127.0.0.1:8787\nbot123456:SECRET-token_abcdefghij in a url")
    outcome = await_start(read_end, timeout=5)
    os.close(read_end)
    assert (outcome.kind, outcome.status) == ("failed", 78)
    assert outcome.text.startswith("cannot listen on 127.0.0.1:8787 bot<redacted>")
    assert "SECRET" not in outcome.text


def test_start_report_of_a_daemon_that_died_or_is_still_starting():
    read_end, write_end = os.pipe()
    os.close(write_end)
    assert await_start(read_end, timeout=5).kind == "died"
    os.close(read_end)
    read_end, report = report_pipe()
    report.starting(FakeApp(start_error="getMe: retrying"))
    began = time.monotonic()
    outcome = await_start(read_end, timeout=0.5)
    assert time.monotonic() - began < 3
    assert (outcome.kind, outcome.text) == ("starting", "getMe: retrying")
    os.close(read_end)
    report.failed(1, "x")   # the foreground gave up: writing into the closed pipe is harmless


def test_a_refused_start_removes_only_an_empty_new_database(tmp_path, bot_db):
    empty = tmp_path / "new ?#%.sqlite3"   # characters a URI would misread
    Store(str(empty)).close()
    assert remove_new_database(str(empty)) is True
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("new ")]
    assert remove_new_database(str(bot_db)) is False
    assert bot_db.exists()


def test_install_test_extra_and_dev_extra_are_separate():
    text = (ROOT / "setup.py").read_text()
    extras = re.search(r"extras_require=\{(.*?)\n    \}", text, re.S).group(1)
    test_extra = re.search(r'"test": \[(.*?)\]', extras).group(1)
    assert "ruff" not in test_extra and "mypy" not in test_extra
    assert "ruff" in extras and "mypy" in extras
    assert "'.[test,dev,chart]'" in (ROOT / ".ci" / "run").read_text()
    chart_extra = re.search(r'"chart": \[(.*?)\]', extras).group(1)
    assert "matplotlib" in chart_extra and "matplotlib" not in test_extra
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert yaml.safe_load((shipped.STARTER / "bot.yaml").read_text())["handlers"]


def test_init_can_start_from_a_shipped_example(tmp_path, capsys):
    assert cli.main(["init", str(tmp_path / "pi"), "--example", "pimonitor"]) == 0
    assert sorted(p.name for p in (tmp_path / "pi" / "bot").iterdir()) == ["bot.yaml", "pimonitor.py"]
    assert cli.main(["check", "--config", str(tmp_path / "pi" / "chatdaemon.yaml")]) == 0
    assert "python handler: pimonitor:PiMonitor" in capsys.readouterr().out
    assert cli.main(["init", str(tmp_path / "etc" / "shop"), "--example", "guess",
                     "--config", str(tmp_path / "etc" / "shop.yaml")]) == 0
    assert load_config(str(tmp_path / "etc" / "shop.yaml")).handlers == str(tmp_path / "etc" / "shop" / "bot")
    assert not (tmp_path / "etc" / "shop" / "chatdaemon.yaml").exists()
    capsys.readouterr()
    assert cli.main(["init", str(tmp_path / "x"), "--example", "nope"]) == 78
    assert "there are: counter," in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_files_names_the_shipped_directories(capsys):
    assert cli.main(["files", "systemd"]) == 0
    systemd = Path(capsys.readouterr().out.strip())
    assert (systemd / "chatdaemon@.service").is_file()
    assert cli.main(["files"]) == 0
    assert re.findall(r"^(\w+): /", capsys.readouterr().out, re.M) == ["handlers", "systemd", "config"]
