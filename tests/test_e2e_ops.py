"""End-to-end: running bots for months — two bots on one machine, --daemon that tells the
truth, stop, log rotation, and looking inside a running bot's database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import HANDLERS, TOKEN, TOKEN_SECRET, Daemon, wait_until
from fake_telegram import FakeTelegram

from chatdaemon.store import Store

OTHER_TOKEN = "654321:OTHER-token_abcdefghijklmnopqrstuvwxyz"


def counts(telegram, chat_id: int) -> list[int]:
    return [int(text) for text in telegram.sent_to(chat_id)]


def chatdaemon(*args: str, cwd: Path, token: str | None = TOKEN,
               timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "CHATDAEMON_TOKEN", "NOTIFY_SOCKET")}
    if token:
        env["CHATDAEMON_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "chatdaemon", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


# -- 1. two bots, one machine, the defaults ---------------------------------------------------

def test_two_bots_with_default_config_both_run_on_one_machine(tmp_path):
    # No config file at all: before, both wanted 127.0.0.1:8787 and the second exited 78.
    with FakeTelegram(TOKEN) as first_api, FakeTelegram(OTHER_TOKEN) as second_api:
        daemons = []
        try:
            for api, token, name in ((first_api, TOKEN, "a"), (second_api, OTHER_TOKEN, "b")):
                bot_dir = tmp_path / name
                bot_dir.mkdir()
                daemons.append(Daemon(bot_dir, api.url, HANDLERS / "counter",
                                      bot_dir / "bot.sqlite3", {}, [], {}, token))
            first_api.push_message(501, "one")
            second_api.push_message(502, "one")
            second_api.push_message(502, "two")
            assert first_api.wait_for(lambda: counts(first_api, 501) == [1], timeout=20), \
                daemons[0].log()
            assert second_api.wait_for(lambda: counts(second_api, 502) == [1, 2], timeout=20), \
                daemons[1].log()
            for daemon in daemons:
                assert daemon.process.poll() is None, daemon.log()
                assert "/healthz: off" in daemon.log()
            for daemon in daemons:
                assert daemon.stop() == 0, daemon.log()
        finally:
            for daemon in daemons:
                daemon.close()
        for daemon in daemons:
            assert TOKEN_SECRET not in daemon.log()


def test_a_taken_hook_port_names_the_setting_that_fixes_it(telegram, start_daemon, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_daemon(config={"hooks": {"port": port}})
        assert daemon.wait(30) == 78
    assert f"cannot listen on 127.0.0.1:{port}" in daemon.log()
    assert "hooks.port" in daemon.log()


# -- 2. --daemon tells the truth -------------------------------------------------------------

def daemon_args(telegram, tmp_path: Path, config: dict | None = None, *more: str) -> list[str]:
    settings = {"polling": {"timeout": 1}, "stop_timeout": 10, **(config or {})}
    config_path = tmp_path / "daemon-config.yaml"
    config_path.write_text(yaml.safe_dump(settings))
    return ["run", "--daemon", "--pidfile", str(tmp_path / "bot.pid"),
            "--handlers", str(HANDLERS / "counter"), "--db", str(tmp_path / "bot.sqlite3"),
            "--api-url", telegram.url, "--config", str(config_path), "--rate-limits", "off", *more]


def test_daemon_mode_reports_a_failure_after_detaching_and_leaves_nothing_behind(telegram, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = chatdaemon(*daemon_args(telegram, tmp_path, {"hooks": {"port": port}}), cwd=tmp_path)
    # the detached daemon found the port taken; its status and its words reach the terminal
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "chatdaemon.log" in result.stderr
    assert not (tmp_path / "bot.pid").exists()
    assert not list(tmp_path.glob("bot.sqlite3*")), list(tmp_path.iterdir())
    assert f"cannot listen on 127.0.0.1:{port}" in (tmp_path / "chatdaemon.log").read_text()
    assert telegram.calls_to("getMe"), "the failure came from the detached daemon, after getMe"


def test_daemon_mode_refuses_symlinked_pidfile_and_log_file(telegram, tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("do not touch\n")
    (tmp_path / "bot.pid").symlink_to(precious)
    result = chatdaemon(*daemon_args(telegram, tmp_path), cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "symbolic link" in result.stderr and "bot.pid" in result.stderr

    (tmp_path / "bot.pid").unlink()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "bot.log").symlink_to(precious)
    result = chatdaemon(*daemon_args(telegram, tmp_path, None, "--log-file",
                                     str(tmp_path / "logs" / "bot.log")), cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "refusing log file" in result.stderr and "symbolic link" in result.stderr
    assert precious.read_text() == "do not touch\n"
    assert not (tmp_path / "bot.pid").exists()
    assert not list(tmp_path.glob("bot.sqlite3*"))


def test_daemon_mode_start_status_chats_logrotate_and_stop(telegram, tmp_path):
    pidfile = tmp_path / "bot.pid"
    log = tmp_path / "chatdaemon.log"
    pid = None
    try:
        result = chatdaemon(*daemon_args(telegram, tmp_path), cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "polling" in result.stdout
        # it said "polling" only after the first getUpdates reached Telegram
        assert telegram.calls_to("getUpdates")
        pid = int(pidfile.read_text())
        assert f"pid {pid}" in result.stdout and alive(pid)

        telegram.push_message(601, "x", user_id=601)
        assert telegram.wait_for(lambda: counts(telegram, 601) == [1], timeout=15), log.read_text()

        # status and chats read the database while the daemon runs
        status = chatdaemon("status", "--db", str(tmp_path / "bot.sqlite3"), "--json", cwd=tmp_path,
                            token=None)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["chats"] == 1
        assert json.loads(status.stdout)["last_update_received"]
        chats = chatdaemon("chats", "--db", str(tmp_path / "bot.sqlite3"), cwd=tmp_path, token=None)
        assert chats.returncode == 0, chats.stderr
        assert "601" in chats.stdout

        # logrotate: move the file away, SIGHUP, and the daemon writes to a new one
        rotated = tmp_path / "chatdaemon.log.1"
        log.rename(rotated)
        os.kill(pid, signal.SIGHUP)
        assert wait_until(lambda: log.exists() and "log file reopened" in log.read_text(),
                          timeout=10), rotated.read_text()
        assert "@" in rotated.read_text()   # the start-up line stayed in the rotated file

        stopped = chatdaemon("stop", "--pidfile", str(pidfile), cwd=tmp_path, token=None)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"stopped pid {pid}" in stopped.stdout
        assert not alive(pid) and not pidfile.exists()
        assert "received SIGTERM" in log.read_text()

        again = chatdaemon("stop", "--pidfile", str(pidfile), cwd=tmp_path, token=None)
        assert again.returncode == 3 and "not running" in again.stderr
        for path in (log, rotated):
            assert TOKEN_SECRET not in path.read_text()
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_stop_reports_a_daemon_that_does_not_stop_in_time(tmp_path):
    # a process that holds a pidfile and ignores SIGTERM stands in for a wedged daemon
    pidfile = tmp_path / "stuck.pid"
    with subprocess.Popen(
            [sys.executable, "-c",
             "import signal, sys; from chatdaemon.daemon import PidFile\n"
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
             f"p = PidFile({str(pidfile)!r}); p.acquire(); print('held', flush=True)\n"
             "sys.stdin.read()\n"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            result = chatdaemon("stop", "--pidfile", str(pidfile), "--timeout", "1", cwd=tmp_path,
                                token=None)
            assert result.returncode == 1, result.stdout + result.stderr
            assert f"pid {holder.pid}" in result.stderr and "still running" in result.stderr
            assert holder.poll() is None
        finally:
            holder.kill()


@pytest.mark.parametrize("hooks", [False, True])
def test_check_says_where_healthz_is(tmp_path, hooks):
    bot = tmp_path / "bot"
    bot.mkdir()
    definition = {"handlers": [{"name": "hi", "response": {"text": "hi"}}]}
    if hooks:
        definition["hooks"] = [{"name": "door", "key": "k" * 24, "recipients": [1],
                                "response": {"text": "ding"}}]
    (bot / "bot.yaml").write_text(yaml.safe_dump(definition))
    result = chatdaemon("check", "--handlers", str(bot), cwd=tmp_path, token=None)
    assert result.returncode == 0, result.stdout + result.stderr
    if hooks:
        assert "/healthz and /metrics on http://127.0.0.1:8787" in result.stdout
    else:
        assert "hook server: off, no /healthz" in result.stdout


def test_a_refused_foreground_start_leaves_no_new_database(telegram, start_daemon, tmp_path):
    daemon = start_daemon(token="999999:WRONG-token_abcdefghijklmnopqrstuvwxyz",
                          db=tmp_path / "fresh.sqlite3")
    assert daemon.wait(20) == 78
    assert "rejected the bot token" in daemon.log()
    assert not list(tmp_path.glob("fresh.sqlite3*"))
    # a database that was there before is kept, empty or not
    Store(str(tmp_path / "before.sqlite3")).close()
    kept = start_daemon(token="999999:WRONG-token_abcdefghijklmnopqrstuvwxyz",
                        db=tmp_path / "before.sqlite3")
    assert kept.wait(20) == 78
    assert (tmp_path / "before.sqlite3").exists()


def test_daemon_mode_without_network_returns_while_the_daemon_keeps_trying(telegram, tmp_path):
    telegram.set_down(True)   # a Pi booting before its Wi-Fi
    pidfile = tmp_path / "bot.pid"
    pid = None
    try:
        result = chatdaemon(*daemon_args(telegram, tmp_path, None, "--start-timeout", "2"),
                            cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "not polling yet" in result.stderr and "getMe" in result.stderr
        pid = int(pidfile.read_text())
        telegram.set_down(False)
        telegram.push_message(602, "x")
        assert telegram.wait_for(lambda: counts(telegram, 602) == [1], timeout=30), \
            (tmp_path / "chatdaemon.log").read_text()
        stopped = chatdaemon("stop", "--pidfile", str(pidfile), cwd=tmp_path, token=None)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
