"""End-to-end: one database, one bot, one process; private files; no secret in logs; hook bounds.

Every test runs the real `chatdaemon run` (or `chatdaemon chat`) process against the Bot
API test double on 127.0.0.1 with a real SQLite file. All waits are bounded.
"""

from __future__ import annotations

import http.client
import os
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import HANDLERS, TOKEN, TOKEN_SECRET, wait_until
from shop_server import ShopServer

OTHER_TOKEN = "654321:OTHER-token_abcdefghijklmnopqrstuvwxyz"


def write_bot(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text).lstrip())
    return directory


def counts(telegram, chat_id: int) -> list[int]:
    return [int(text) for text in telegram.sent_to(chat_id)]


def say(telegram, chat_id: int, text: str, answers: int) -> None:
    telegram.push_message(chat_id, text)
    assert telegram.wait_for(lambda: len(telegram.sent_to(chat_id)) >= answers, timeout=15), \
        telegram.sent_to(chat_id)


def exit_line(daemon) -> tuple[int, list[str]]:
    """The exit status of a daemon that refused to start, and its output's lines."""
    status = daemon.wait(30)
    return status, [line for line in daemon.log().splitlines() if line.strip()]


def chat(handlers: Path, db: Path, lines: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CHATDAEMON_TOKEN", "NOTIFY_SOCKET")}
    return subprocess.run([sys.executable, "-m", "chatdaemon", "chat", "--handlers", str(handlers),
                           "--db", str(db)], input=lines, capture_output=True, text=True,
                          timeout=60, cwd=str(db.parent), env=env)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the database records its bot -------------------------------------------------------------

def test_another_bots_database_is_refused_naming_both_bots(telegram, start_daemon, tmp_path):
    db = tmp_path / "bot.sqlite3"
    first = start_daemon(db=db)
    say(telegram, 501, "one", 1)
    assert first.stop() == 0

    other = start_daemon(db=db, token=OTHER_TOKEN)
    status, lines = exit_line(other)
    assert status == 78, lines
    assert lines == [f"chatdaemon: database {db} belongs to bot 123456, not to bot 654321 "
                     "(give each bot its own --db)"]
    assert "OTHER-token" not in other.log()

    again = start_daemon(db=db)  # nothing changed for the database's own bot
    say(telegram, 501, "two", 2)
    assert counts(telegram, 501) == [1, 2]
    assert again.stop() == 0


def newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE inbox (update_id INTEGER PRIMARY KEY)")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()


def another_application(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.commit()
    db.close()


def not_sqlite(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


@pytest.mark.parametrize("make, cause", [
    (newer_schema, "has schema version 99, and this chatdaemon knows versions up to"),
    (another_application, "is not a chatdaemon database (it has tables customers, invoices)"),
    (not_sqlite, "is damaged or not an SQLite database"),
], ids=["newer-schema", "another-application", "not-sqlite"])
def test_an_unusable_database_exits_78_with_one_line(telegram, start_daemon, tmp_path, make, cause):
    db = tmp_path / "bot.sqlite3"
    make(db)
    before = db.read_bytes()
    daemon = start_daemon(db=db)
    status, lines = exit_line(daemon)
    assert status == 78, lines
    assert len(lines) == 1 and lines[0].startswith(f"chatdaemon: database {db} {cause}"), lines
    assert db.read_bytes() == before, "a refused database is left as it was"
    assert telegram.calls_to("getUpdates") == []


# -- one process per database -----------------------------------------------------------------

def test_a_second_daemon_on_a_database_in_use_exits_75_and_kill_9_frees_it(telegram, start_daemon,
                                                                         tmp_path):
    db = tmp_path / "bot.sqlite3"
    first = start_daemon(db=db)
    say(telegram, 502, "one", 1)

    second = start_daemon(db=db)
    status, lines = exit_line(second)
    assert status == 75, lines
    assert lines == [f"chatdaemon: database {db} is in use by process {first.pid} "
                     "(one process per database)"]

    in_chat = chat(HANDLERS / "counter", db, "hello\n")
    assert in_chat.returncode == 75, in_chat.stderr
    assert f"is in use by process {first.pid}" in in_chat.stderr

    # a read-only reader is not a second writer: it works while the daemon runs
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT value FROM meta WHERE key = 'bot'").fetchone() == ("123456",)
    finally:
        reader.close()

    first.kill()  # the kernel releases the lock with the process
    third = start_daemon(db=db)
    say(telegram, 502, "two", 2)
    assert counts(telegram, 502) == [1, 2]
    assert third.stop() == 0


def test_chat_twice_on_one_database_answers_both_sessions(tmp_path):
    db = tmp_path / "chat.sqlite3"
    first = chat(HANDLERS / "counter", db, "a\nb\n")
    assert first.returncode == 0, first.stderr
    second = chat(HANDLERS / "counter", db, "c\nd\n")
    assert second.returncode == 0, second.stderr
    assert [line for line in second.stdout.splitlines() if line.startswith("bot: ")] == \
        ["bot: 3", "bot: 4"], second.stdout


def test_a_database_of_the_terminal_chat_is_not_a_bots(telegram, start_daemon, tmp_path):
    db = tmp_path / "tried.sqlite3"
    assert chat(HANDLERS / "counter", db, "a\n").returncode == 0
    daemon = start_daemon(db=db)
    status, lines = exit_line(daemon)
    assert status == 78, lines
    assert lines == [f"chatdaemon: database {db} belongs to the terminal chat (`chatdaemon chat`), "
                     "not to bot 123456 (give each bot its own --db)"]


# -- files ------------------------------------------------------------------------------------

def test_an_existing_0644_database_is_made_private_with_its_wal_and_shm(telegram, start_daemon,
                                                                       tmp_path):
    db = tmp_path / "bot.sqlite3"
    first = start_daemon(db=db)
    say(telegram, 503, "one", 1)
    first.kill()  # leaves -wal and -shm behind
    companions = [Path(f"{db}-wal"), Path(f"{db}-shm")]
    for path in (db, *companions):
        assert path.exists(), path
        os.chmod(path, 0o644)

    daemon = start_daemon(db=db)
    say(telegram, 503, "two", 2)
    modes = {path.name: oct(mode_of(path)) for path in (db, *companions, Path(f"{db}.lock"))}
    assert set(modes.values()) == {"0o600"}, modes
    assert daemon.stop() == 0


# -- secrets ----------------------------------------------------------------------------------

ENV_BOT = {
    "bot.yaml": "python: envbot:EnvBot\n",
    "envbot.py": '''
        """Says whether it, or a program it runs, can see the token variable."""
        import os
        import subprocess

        from chatdaemon import ChatHandler


        class EnvBot(ChatHandler):
            def on_chat_message(self, msg):
                names = [line.split("=", 1)[0] for line in
                         subprocess.run(["env"], capture_output=True, text=True).stdout.splitlines()]
                self.sender.sendMessage(f"mine: {'CHATDAEMON_TOKEN' in os.environ}; "
                                        f"env's: {'CHATDAEMON_TOKEN' in names}")
    ''',
}


def test_the_token_reaches_neither_a_handlers_subprocess_nor_the_log(telegram, start_daemon,
                                                                     tmp_path):
    bot = write_bot(tmp_path / "envbot", ENV_BOT)
    daemon = start_daemon(bot, args=["--log-level", "DEBUG"])
    say(telegram, 504, "env?", 1)
    assert telegram.sent_to(504) == ["mine: False; env's: False"]
    assert daemon.stop() == 0
    log = daemon.log()
    assert "getUpdates" in log or "DEBUG" in log  # the log is the verbose one
    assert TOKEN not in log and TOKEN_SECRET not in log


def test_an_upstream_api_key_never_reaches_the_log(telegram, start_daemon, tmp_path):
    with ShopServer() as shop:
        bot = write_bot(tmp_path / "shopbot", {"bot.yaml": f"""
            env: {{key: "UPSTREAM-KEY-0042"}}
            handlers:
              - name: order
                pattern: '^order (?P<id>[0-9]+)$'
                request:
                  url: "{shop.url}/orders/{{{{ pattern.id }}}}"
                  params: {{apikey: "{{{{ env.key }}}}", q: "{{{{ pattern.id }}}}"}}
                response: {{text: "{{{{ response.data.status }}}}"}}
        """})
        daemon = start_daemon(bot, args=["--log-level", "DEBUG"])
        say(telegram, 505, "order 42", 1)
        assert telegram.sent_to(505) == ["shipped"]
        assert any("apikey=UPSTREAM-KEY-0042" in path for path in shop.requests)  # it was sent
        assert daemon.stop() == 0
    log = daemon.log()
    assert "GET /orders/42?apikey=<redacted>&q=<redacted>" in log, log[-3000:]
    assert "UPSTREAM-KEY-0042" not in log
    assert TOKEN_SECRET not in log


# -- the hook server --------------------------------------------------------------------------

HOOK_BOT = """
handlers:
  - {name: any, response: {text: "ok"}}
hooks:
  - name: alert
    key: "s3cret-key-0123456789"
    recipients: [111]
    response: {text: "Alert: {{ data.msg }}"}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthz(port: int, source: str = "127.0.0.1") -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_healthz_answers_while_40_slow_connections_are_open(telegram, start_daemon, tmp_path):
    bot = write_bot(tmp_path / "hookbot", {"bot.yaml": HOOK_BOT})
    port = free_port()
    daemon = start_daemon(bot, config={"hooks": {"port": port}})
    assert wait_until(lambda: healthz(port) == 200, timeout=15, interval=0.05), daemon.log()

    slow = []
    try:
        for _ in range(40):  # a slowloris from one address: a request line, never finished
            sock = socket.create_connection(("127.0.0.1", port), timeout=5,
                                            source_address=("127.0.0.2", 0))
            sock.sendall(b"POST /hooks/alert HTTP/1.1\r\nX-Slow: ")
            slow.append(sock)
        refused = 0
        for sock in slow:
            sock.settimeout(0.5)
            try:
                if sock.recv(64).startswith(b"HTTP/1.1 503"):
                    refused += 1
            except TimeoutError:
                pass  # held open by the server, waiting for the rest
        assert refused == 40 - 16, refused  # one address holds at most 16 connections
        assert healthz(port) == 200  # everyone else is still served
        assert healthz(port, "127.0.0.3") == 200
    finally:
        for sock in slow:
            sock.close()
    assert daemon.stop() == 0

