"""A Pi owner's mistakes with the CLI, the config, the database file and the status output."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import socket
import sqlite3
import stat
import time

import pytest

from chatdaemon import app, cli, dbfile, errors, status
from chatdaemon.config import load_config
from chatdaemon.daemon import (
    LogFile,
    Notifier,
    PidFile,
    check_distinct_files,
    detached_signal_map,
    removing_new_database,
)
from chatdaemon.errors import ConfigError, DatabaseInUse
from chatdaemon.signals import EarlySignals
from chatdaemon.store import Store

TOKEN = "123456:abcdefghijklmnopqrstuvwxyz"
OTHER = "654321:zyxwvutsrqponmlkjihgfedcba"


# -- the config: values that pass `check` and then crash or mean nothing --------------------

@pytest.mark.parametrize("text, key", [
    ("hooks: {port: 70000}\n", "hooks.port"),
    ("hooks: {port: -1}\n", "hooks.port"),
    ("stop_timeout: -5\n", "stop_timeout"),
    ("polling: {conflict_grace: -1}\n", "polling.conflict_grace"),
])
def test_an_impossible_number_in_the_config_is_named(tmp_path, text, key):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert key in str(info.value)
    assert str(info.value.where).startswith(str(path))


def test_check_refuses_a_hook_port_out_of_range(tmp_path, capsys):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("handlers: bot\nhooks: {port: 70000}\n")
    assert cli.main(["check", "--config", str(path)]) == errors.EXIT_CONFIG
    assert "hooks.port must be between 0 (off) and 65535" in capsys.readouterr().err


def test_the_edges_of_the_ranges_are_accepted(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("hooks: {port: 65535}\nstop_timeout: 0\npolling: {conflict_grace: 0}\n")
    config = load_config(str(path))
    assert (config.hook_port, config.stop_timeout, config.conflict_grace) == (65535, 0.0, 0.0)


# -- the database: a refused start never removes another process's new database -----------

def test_a_start_refused_by_the_lock_leaves_the_holders_new_database(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    holder = Store(path, owner="123456")   # the first of two starts at once on a new path
    try:
        with pytest.raises(DatabaseInUse):
            # the second start saw no file yet (existed=False), then lost the lock
            with removing_new_database(path, existed=False):
                Store(path, owner="123456")
        assert os.path.exists(path) and os.path.exists(path + ".lock")
        # the holder's database is still the file at the path, and its lock still stands
        with holder.writing() as db:
            db.execute("INSERT INTO meta(key, value) VALUES ('probe', 'kept')")
        with pytest.raises(DatabaseInUse):
            Store(path, owner="123456")
    finally:
        holder.close()
    reopened = Store(path, owner="123456")
    try:
        with reopened.writing() as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'probe'").fetchone() == ("kept",)
    finally:
        reopened.close()


def test_a_refused_start_still_removes_the_empty_database_it_created(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    with pytest.raises(ConfigError):
        with removing_new_database(path, existed=False):
            Store(path, owner="123456").close()
            raise ConfigError("the hook port is taken")
    assert not os.path.exists(path)
    assert not os.path.exists(path + ".lock")


# -- the token: two sources that disagree ------------------------------------------------

@pytest.fixture
def no_token_sources(monkeypatch):
    monkeypatch.delenv("CHATDAEMON_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def test_two_different_tokens_are_refused_naming_the_sources_not_the_tokens(
        tmp_path, monkeypatch, no_token_sources):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "token").write_text(TOKEN + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("CHATDAEMON_TOKEN", OTHER)   # left in an EnvironmentFile, say
    with pytest.raises(ConfigError) as info:
        cli.read_token(cli.build_parser().parse_args(["run"]))
    message = str(info.value)
    assert "$CHATDAEMON_TOKEN" in message and "the systemd credential" in message
    assert TOKEN.split(":")[1] not in message and OTHER.split(":")[1] not in message
    assert "CHATDAEMON_TOKEN" not in os.environ


def test_the_argument_and_a_different_environment_token_are_refused(monkeypatch, no_token_sources):
    monkeypatch.setenv("CHATDAEMON_TOKEN", OTHER)
    with pytest.raises(ConfigError) as info:
        cli.read_token(cli.build_parser().parse_args(["run", TOKEN]))
    assert "the TOKEN argument" in str(info.value)


def test_the_same_token_twice_is_fine_whitespace_aside(tmp_path, monkeypatch, no_token_sources):
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n\n")
    monkeypatch.setenv("CHATDAEMON_TOKEN", TOKEN)
    args = cli.build_parser().parse_args(["run", "--token-file", str(token_file)])
    assert cli.read_token(args) == TOKEN


def test_a_credentials_directory_without_a_token_does_not_stop_another_source(
        tmp_path, monkeypatch, no_token_sources):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))   # holds other credentials
    monkeypatch.setenv("CHATDAEMON_TOKEN", TOKEN)
    assert cli.read_token(cli.build_parser().parse_args(["run"])) == TOKEN


def test_a_malformed_token_names_where_it_came_from(tmp_path, no_token_sources):
    token_file = tmp_path / "token"
    token_file.write_text(f"CHATDAEMON_TOKEN={TOKEN}\n")   # an environment file given as the token
    args = cli.build_parser().parse_args(["run", "--token-file", str(token_file)])
    with pytest.raises(ConfigError) as info:
        cli.read_token(args)
    assert "the token from --token-file does not look like a bot token" in str(info.value)
    assert TOKEN.split(":")[1] not in str(info.value)


# -- init: the commands it prints can be pasted back -------------------------------------

def test_init_prints_commands_that_survive_a_path_with_spaces(tmp_path, capsys):
    directory = tmp_path / "my bots" / "wetter bot é"
    assert cli.main(["init", str(directory)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "chatdaemon chat --config" in line)
    command = shlex.split(line.split("next:", 1)[1].split("(")[0])
    assert command == ["chatdaemon", "chat", "--config", str(directory / "chatdaemon.yaml")]


# -- status: a clock set back ------------------------------------------------------------

def test_status_says_when_the_last_update_lies_in_the_future(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    Store(path, owner="123456").close()
    read = status.read_status(status.open_read_only(path))
    ahead = time.time() + 3 * 86400   # received while the clock ran three days ahead
    read["last_update_received"] = status._when(ahead)
    line = next(line for line in status.format_status(read).splitlines()
                if line.startswith("last update received"))
    assert "3 d in the future" in line and "ago" not in line


# -- a database busy at start: a passing cause, not a config error ------------------------

def test_a_database_another_writer_holds_is_unavailable_for_now_not_unusable(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    Store(path, owner="123456").close()
    writer = sqlite3.connect(path, isolation_level=None)   # the sqlite3 shell, a backup tool
    writer.execute("BEGIN IMMEDIATE")
    try:
        error = dbfile.unreadable(path, _busy_error(path))
    finally:
        writer.rollback()
        writer.close()
    assert isinstance(error, errors.DatabaseUnavailable)
    assert error.code.startswith("SQLITE_BUSY")
    assert error.exit_status == errors.EXIT_CONFLICT != errors.EXIT_CONFIG


def _busy_error(path: str) -> sqlite3.DatabaseError:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.DatabaseError as exc:
        return exc
    finally:
        other.close()
    raise AssertionError("the second writer was not refused")


def test_a_damaged_file_is_still_a_config_error(tmp_path):
    path = tmp_path / "bot.sqlite3"
    path.write_bytes(b"SQLite format 3\0" + b"\xff" * 200)
    with pytest.raises(errors.UnusableDatabase) as info:
        Store(str(path), owner="123456")
    assert not isinstance(info.value, errors.DatabaseUnavailable)
    assert info.value.exit_status == errors.EXIT_CONFIG


# -- the hook server's port: the hint fits the error ----------------------------------------

def test_a_port_below_1024_without_root_is_named_as_such():
    assert "below 1024 need root" in app.listen_hint(errno.EACCES, 80)
    assert "another bot" not in app.listen_hint(errno.EACCES, 80)


def test_a_taken_port_still_points_at_another_bot():
    assert "another bot on this machine" in app.listen_hint(errno.EADDRINUSE, 8787)


# -- --daemon: a pidfile or log file named by mistake ---------------------------------------

def test_a_pidfile_that_holds_more_than_a_pid_is_never_truncated(tmp_path):
    database = tmp_path / "bot.sqlite3"
    Store(str(database), owner="123456").close()
    before = database.read_bytes()
    pidfile = PidFile(str(database))   # --pidfile given the database's path
    with pytest.raises(ConfigError) as info:
        pidfile.check_free()
    assert "holds more than a pid" in str(info.value)
    with pytest.raises(ConfigError):
        pidfile.acquire()   # the detached side checks again before it truncates
    assert database.read_bytes() == before


def test_a_stale_pidfile_is_taken_over(tmp_path):
    path = tmp_path / "bot.pid"
    path.write_text("4242\n")   # left by a daemon killed with -9
    pidfile = PidFile(str(path))
    pidfile.check_free()
    pidfile.acquire()
    try:
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        pidfile.release()


@pytest.mark.parametrize("pid_name, log_name, named", [
    ("bot.pid", "bot.sqlite3", "log file"),
    ("bot.pid", "bot.sqlite3-wal", "log file"),
    ("bot.sqlite3.lock", "bot.log", "pidfile"),
    ("bot.pid", "chatdaemon.yaml", "log file"),
    ("same", "same", "log file"),
])
def test_a_pidfile_or_log_file_may_not_be_a_file_the_bot_keeps(tmp_path, pid_name, log_name, named):
    database, config = str(tmp_path / "bot.sqlite3"), str(tmp_path / "chatdaemon.yaml")
    kept = {"database": database, "database's lock file": database + ".lock",
            "database's wal file": database + "-wal", "config": config}
    with pytest.raises(ConfigError) as info:
        check_distinct_files(str(tmp_path / pid_name), str(tmp_path / log_name), kept)
    assert str(info.value).startswith(f"refusing {named} ")


def test_distinct_files_pass(tmp_path):
    check_distinct_files(str(tmp_path / "bot.pid"), str(tmp_path / "bot.log"),
                         {"database": str(tmp_path / "bot.sqlite3"), "config": ""})


# -- --db at the wrong file: a refused start changes nothing in it -------------------------

@pytest.mark.parametrize("content", [b"handlers: bot\nhooks: {port: 8787}\n",
                                     b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8])
def test_a_file_that_is_no_database_keeps_its_mode_and_content(tmp_path, content):
    path = tmp_path / "chatdaemon.yaml"
    path.write_bytes(content)
    path.chmod(0o644)   # a config the service's user must be able to read
    with pytest.raises(errors.UnusableDatabase) as info:
        Store(str(path), owner="123456")
    assert "not an SQLite database" in str(info.value)
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_database_left_readable_by_others_is_still_made_private(tmp_path):
    path = tmp_path / "bot.sqlite3"
    Store(str(path), owner="123456").close()
    path.chmod(0o644)
    Store(str(path), owner="123456").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_detaching_keeps_the_early_signal_handlers():
    early = EarlySignals()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP,
                                                                 signal.SIGINT)}
    early.install()
    try:
        mapping = detached_signal_map()
        assert mapping[signal.SIGTERM] == early._remember   # remembered, not SystemExit
        assert mapping[signal.SIGHUP] == early._remember
        assert mapping[signal.SIGTSTP] is None               # python-daemon's others stay
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# -- retention: forgetting faster than a chat's handler lets go ----------------------------

def test_forgetting_conversations_sooner_than_handlers_idle_out_is_refused(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("retention: {forget_conversations_after: 60}\n")   # 60 s, not 60 d
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "forget_conversations_after must be longer than delegates.idle_timeout (300 s)" \
        in str(info.value)
    path.write_text("delegates: {idle_timeout: 30}\nretention: {forget_conversations_after: 1m}\n")
    assert load_config(str(path)).retention.forget_conversations_after == 60


# -- sd_notify: an error description cannot add assignments --------------------------------

def test_a_newline_in_the_status_stays_inside_status(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(address)
        systemd.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        notifier.send("STATUS=polling; last error: 502 Bad Gateway\nWATCHDOG=1\r\nMAINPID=1")
        lines = systemd.recv(4096).decode().split("\n")
    assert len(lines) == 1 and lines[0].startswith("STATUS=polling; last error: 502")
    assert "MAINPID=1" in lines[0]   # kept as text inside STATUS=, not as its own assignment


# -- api_url with the token in it ----------------------------------------------------------

def test_an_api_url_with_the_token_in_its_path_is_named_without_the_token(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text(f"api_url: https://api.telegram.org/bot{TOKEN}/\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "without /bot<token>" in str(info.value)
    assert TOKEN.split(":")[1] not in str(info.value)


def test_an_api_url_with_a_proxy_path_is_fine(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("api_url: https://pi.example.org/telegram-bot-api\n")
    assert load_config(str(path)).api_url == "https://pi.example.org/telegram-bot-api"


def test_a_token_file_other_users_can_read_is_warned_about(tmp_path, capsys, no_token_sources):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    args = cli.build_parser().parse_args(["run", "--token-file", str(token_file)])
    assert cli.read_token(args) == TOKEN
    err = capsys.readouterr().err
    assert "readable by other users (mode 0644)" in err and TOKEN not in err
    token_file.chmod(0o600)
    assert cli.read_token(args) == TOKEN
    assert capsys.readouterr().err == ""


# -- allowed_updates: a misspelt type would silence the bot --------------------------------

def test_a_misspelt_update_type_is_named(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("polling: {allowed_updates: [mesage, callback_query, 7]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "'mesage', 7 is no Bot API update type" in str(info.value)


def test_every_update_type_the_inbox_routes_by_chat_is_allowed(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("polling: {allowed_updates: [message, chat_member, message_reaction,"
                    " poll_answer, inline_query]}\n")
    assert "chat_member" in load_config(str(path)).allowed_updates


def test_the_update_types_cover_the_inbox_and_the_defaults():
    from chatdaemon import config, inbox
    assert set(inbox._CHAT_KINDS) <= config.UPDATE_TYPES
    assert set(inbox.DEFAULT_ALLOWED_UPDATES) <= config.UPDATE_TYPES


def test_status_survives_a_schedule_beyond_the_calendar(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    store = Store(path, owner="123456")
    with store.writing() as db:   # `every: 99999999999999d` in a YAML bot comes to this
        db.execute("INSERT INTO schedules(chat_id, name, every, next_at) VALUES (1, 'x', ?, ?)",
                   (8.6e18, 8.6e18))
    store.close()
    assert cli.main(["status", "--db", path]) == 0
    assert cli.main(["status", "--db", path, "--json"]) == 0
    read = status.read_status(status.open_read_only(path))
    assert read["next_schedule"]["next_at"] == "beyond the year 9999"


# -- init into a place it cannot write ------------------------------------------------------

def test_init_where_a_file_stands_says_so_without_a_traceback(tmp_path, capsys):
    taken = tmp_path / "mybot"
    taken.write_text("a file, not a directory\n")
    assert cli.main(["init", str(taken)]) == errors.EXIT_CONFIG
    assert "cannot write" in capsys.readouterr().err


def test_init_that_fails_half_way_leaves_nothing_to_refuse_next_time(tmp_path, capsys):
    blocked = tmp_path / "etc"
    blocked.write_text("")   # the config's directory cannot be made: a file is there
    target = tmp_path / "mybot"
    assert cli.main(["init", str(target), "--config", str(blocked / "mybot.yaml")]) \
        == errors.EXIT_CONFIG
    assert not list(target.rglob("*.yaml"))   # the bot written first was taken back
    capsys.readouterr()
    assert cli.main(["init", str(target), "--config", str(tmp_path / "mybot.yaml")]) == 0
    assert (target / "bot" / "bot.yaml").exists() and (tmp_path / "mybot.yaml").exists()


def test_a_log_file_in_a_missing_directory_is_refused_before_detaching(tmp_path):
    log_file = LogFile(str(tmp_path / "nodir" / "bot.log"))
    with pytest.raises(ConfigError) as info:
        log_file.check()
    assert "its directory does not exist" in str(info.value)
    assert not (tmp_path / "nodir").exists()
    LogFile(str(tmp_path / "bot.log")).check()   # a new file in a directory that exists
    assert not (tmp_path / "bot.log").exists()    # checked, not created
