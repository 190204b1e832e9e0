"""Unit tests: the database file (owner, schema, lock, modes), secrets in logs, the hook server's bounds."""

from __future__ import annotations

import ast
import http.client
import io
import json
import logging
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import ROOT, wait_until

from chatdaemon import logs
from chatdaemon.dbfile import TERMINAL, owner_of_token
from chatdaemon.errors import (
    EXIT_CONFIG,
    EXIT_CONFLICT,
    DatabaseInUse,
    OtherBotsDatabase,
    UnusableDatabase,
)
from chatdaemon.hookserver import HookDoor, HookServer
from chatdaemon.local import LocalTelegram
from chatdaemon.store import Store
from chatdaemon.templates import TemplateError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def foreign_database(path: Path, *statements: str) -> bytes:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path.read_bytes()


# -- the database records its bot -----------------------------------------------------------

def test_the_database_records_its_bot_and_refuses_another(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    Store(path, owner=owner_of_token("111111:AAAA")).close()
    Store(path, owner="111111").close()  # the same bot opens it again
    with pytest.raises(OtherBotsDatabase) as refused:
        Store(path, owner="222222")
    error = refused.value
    assert (error.path, error.recorded, error.wanted) == (path, "111111", "222222")
    assert error.exit_status == EXIT_CONFIG
    assert str(error) == (f"database {path} belongs to bot 111111, not to bot 222222 "
                          "(give each bot its own --db)")
    with pytest.raises(OtherBotsDatabase, match="not to the terminal chat"):
        Store(path, owner=TERMINAL)
    Store(path, owner="111111").close()  # a refusal leaves the lock free


def test_a_database_from_before_owners_is_adopted_by_its_first_bot(tmp_path):
    path = str(tmp_path / "old.sqlite3")
    Store(path).close()  # no owner recorded (as a database from before schema 4)
    Store(path, owner="5").close()
    with pytest.raises(OtherBotsDatabase):
        Store(path, owner="6")


def test_a_newer_schema_is_refused_unchanged(tmp_path):
    path = tmp_path / "newer.sqlite3"
    before = foreign_database(path, "CREATE TABLE inbox (x)", "PRAGMA user_version=99")
    with pytest.raises(UnusableDatabase) as refused:
        Store(str(path), owner="1")
    assert "has schema version 99" in str(refused.value)
    assert "knows versions up to" in str(refused.value)
    assert refused.value.exit_status == EXIT_CONFIG
    assert path.read_bytes() == before, "a refused database must not be touched"


@pytest.mark.parametrize("version", [0, 2])
def test_another_applications_database_is_refused_unchanged(tmp_path, version):
    path = tmp_path / "other.sqlite3"
    before = foreign_database(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
                              "INSERT INTO users VALUES (1, 'ann')", f"PRAGMA user_version={version}")
    with pytest.raises(UnusableDatabase) as refused:
        Store(str(path), owner="1")
    assert str(refused.value) == (f"database {path} is not a chatdaemon database (it has tables "
                                  "users): give the bot its own --db file")
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(b"this is not a database\n" * 300)
    with pytest.raises(UnusableDatabase, match="is damaged or not an SQLite database"):
        Store(str(path), owner="1")


def test_a_damaged_database_is_refused(tmp_path):
    path = tmp_path / "damaged.sqlite3"
    store = Store(str(path), owner="1")
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[page:] = b"\xff" * (len(data) - page)  # every page after the first: garbage
    path.write_bytes(bytes(data))
    with pytest.raises(UnusableDatabase, match="damaged"):
        Store(str(path), owner="1")


# -- one process per database -------------------------------------------------------------

def test_a_second_store_on_an_open_database_is_refused_with_the_holders_pid(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    store = Store(path, owner="1")
    try:
        with pytest.raises(DatabaseInUse) as refused:
            Store(path, owner="1")
        assert refused.value.pid == os.getpid()
        assert refused.value.exit_status == EXIT_CONFLICT
        assert str(refused.value) == (f"database {path} is in use by process {os.getpid()} "
                                      "(one process per database)")
        # a read-only reader (a status command) still works while the database is held
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert reader.execute("SELECT value FROM meta WHERE key = 'bot'").fetchone() == ("1",)
        finally:
            reader.close()
    finally:
        store.close()
    Store(path, owner="1").close()  # closing released it


def test_a_symlink_to_an_open_database_meets_the_same_lock(tmp_path):
    path = tmp_path / "bot.sqlite3"
    (tmp_path / "link.sqlite3").symlink_to(path)
    store = Store(str(path), owner="1")
    try:
        with pytest.raises(DatabaseInUse):
            Store(str(tmp_path / "link.sqlite3"), owner="1")
    finally:
        store.close()


def test_kill_9_never_leaves_the_database_locked(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from chatdaemon.store import Store; "
         f"s = Store({path!r}, owner='1'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, cwd=str(ROOT))
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(DatabaseInUse) as refused:
            Store(path, owner="1")
        assert refused.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        holder.stdout.close()
    Store(path, owner="1").close()


def test_the_lock_is_not_inherited_by_child_processes(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    store = Store(path, owner="1")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        store.close()
        Store(path, owner="1").close()  # the child still runs, yet the lock is free
    finally:
        child.kill()
        child.wait(10)


# -- files: 0600 --------------------------------------------------------------------------

def test_an_existing_0644_database_and_its_wal_and_shm_are_made_private(tmp_path):
    path = tmp_path / "open.sqlite3"
    wal, shm, lock = Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")
    Store(str(path)).close()
    holder = sqlite3.connect(path)  # a reader keeps -wal and -shm on disk
    try:
        holder.execute("SELECT * FROM inbox").fetchall()
        for name in (path, wal, shm, lock):
            os.chmod(name, 0o644)  # as an earlier version, or a careless copy, left them
        store = Store(str(path), owner="1")
        try:
            modes = {p.name: mode_of(p) for p in (path, wal, shm, lock)}
        finally:
            store.close()
    finally:
        holder.close()
    assert set(modes.values()) == {0o600}, {k: oct(v) for k, v in modes.items()}


def test_new_database_files_are_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "new.sqlite3"
    old = os.umask(0)
    try:
        store = Store(str(path), owner="1")
        try:
            store.add_local([(1, "hook", {"x": 1})])
            names = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
            modes = {p.name: mode_of(p) for p in names}
        finally:
            store.close()
    finally:
        os.umask(old)
    assert set(modes.values()) == {0o600}, {k: oct(v) for k, v in modes.items()}


def test_a_database_that_cannot_be_made_private_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "shared.sqlite3"
    Store(str(path)).close()
    os.chmod(path, 0o640)

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(UnusableDatabase) as refused:
        Store(str(path), owner="1")
    assert "is readable by others (mode 0640) and cannot be made private" in str(refused.value)


# -- chat mode numbers its updates above what the database holds ---------------------------

def test_local_telegram_continues_above_the_highest_stored_id():
    api = LocalTelegram(lambda method, params: None)
    assert api.push("message", {"text": "a"}) == 1
    api.continue_after(41)
    assert api.push("message", {"text": "b"}) == 42
    api.continue_after(None)
    assert api.push("message", {"text": "c"}) == 1


def test_store_last_update_id_ignores_the_daemons_own_rows(tmp_path):
    from chatdaemon.inbox import to_row
    store = Store(str(tmp_path / "ids.sqlite3"))
    try:
        assert store.last_update_id() is None
        store.add_updates([to_row({"update_id": 7, "message": {
            "message_id": 1, "chat": {"id": 5, "type": "private"}, "text": "x"}})])
        store.add_local([(5, "hook", {})])
        assert store.last_update_id() == 7
    finally:
        store.close()


# -- secrets ------------------------------------------------------------------------------

def test_upstream_query_values_are_redacted_in_urllib3_debug_lines():
    class Upstream(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, sys.excepthook, threading.excepthook)
    try:
        logs.configure("DEBUG", stream=out)
        url = f"http://127.0.0.1:{server.server_address[1]}/weather"
        with requests.Session() as session:
            assert session.get(url, params={"appid": "UPSTREAM-KEY-42", "q": "Oslo"}, timeout=5).ok
        logging.getLogger("chatdaemon.pipeline").error("request %s failed",
                                                       f"{url}?appid=UPSTREAM-KEY-42")
    finally:
        server.shutdown()
        server.server_close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        sys.excepthook, threading.excepthook = saved[2], saved[3]
    text = out.getvalue()
    assert "GET /weather?appid=<redacted>&q=<redacted> HTTP/1.1" in text, text
    assert f"{url}?appid=<redacted>" in text
    assert "UPSTREAM-KEY-42" not in text and "Oslo" not in text


def test_redact_queries_keeps_names_and_text_without_urls():
    assert logs.redact_queries("see https://h.example/a?k=1&flag#top, ok?") == \
        "see https://h.example/a?k=<redacted>&<redacted>#top, ok?"
    assert logs.redact_queries("really? yes") == "really? yes"


def test_the_token_leaves_the_environment_once_read(monkeypatch):
    from chatdaemon.cli import build_parser, read_token
    token = "123456:ENV-token_abcdefghijklmnopqrstuvwxyz"
    monkeypatch.setenv("CHATDAEMON_TOKEN", token)
    assert read_token(build_parser().parse_args(["run"])) == token
    assert "CHATDAEMON_TOKEN" not in os.environ
    child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.environ))"],
                           capture_output=True, text=True, timeout=30)
    assert "CHATDAEMON_TOKEN" not in child.stdout


# -- the hook server --------------------------------------------------------------------------

class Hook:
    key = "k" * 20
    recipients = [7, 8]
    rate_limit = 1000
    response = "Alert: {msg}"


class Door:
    """What the daemon would give the hook server, recorded."""

    def __init__(self):
        self.queued: list[tuple[list[int], dict]] = []

    def render(self, response, context):
        if "msg" not in context["data"]:
            raise TemplateError("bot.yaml:1", "no msg")
        return {"text": response.format(msg=context["data"]["msg"])}

    def door(self) -> HookDoor:
        status = {"last_poll_age": 1.0, "backlog": 0, "delegates": 0, "waiting_chats": 0,
                  "last_error": None}
        return HookDoor(find_hook=lambda name: Hook() if name == "alert" else None,
                        render=self.render, env=dict,
                        queue=lambda chats, payload: self.queued.append((chats, payload)),
                        status=lambda: status, counters=lambda: {"replies_sent_total": 3},
                        health_limit=lambda: 60.0)


@pytest.fixture
def hooks():
    recorder = Door()
    server = HookServer(recorder.door(), ("127.0.0.1", 0), request_timeout=1.0,
                        max_connections=64, max_per_client=4)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    server.recorder = recorder
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def connect(server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(server.server_address, timeout=5, source_address=(source, 0))
    return sock


def get(server, path: str, source: str = "127.0.0.1") -> int:
    conn = http.client.HTTPConnection(*server.server_address, timeout=5,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_slowloris_is_cut_off_by_the_request_deadline(hooks):
    sock = connect(hooks)
    began = time.monotonic()
    closed_after = None
    try:
        sock.sendall(b"POST /hooks/alert HTTP/1.1\r\n")
        sock.settimeout(0.2)
        for _ in range(50):  # one header byte every 0.1 s, for at most 5 s
            try:
                sock.sendall(b"X")
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - began
                    break
            except TimeoutError:
                continue
            except OSError:
                closed_after = time.monotonic() - began
                break
    finally:
        sock.close()
    assert closed_after is not None, "the server kept a trickling request open for 5 s"
    assert closed_after < 2.5, closed_after  # the deadline is 1 s for the whole request


def test_connections_per_client_are_capped_and_others_still_get_healthz(hooks):
    held = [connect(hooks, "127.0.0.2") for _ in range(4)]
    try:
        assert wait_until(lambda: sum(hooks.slots._open.values()) == 4, timeout=5)
        assert get(hooks, "/healthz", "127.0.0.2") == 503  # that client's fifth connection
        assert get(hooks, "/healthz", "127.0.0.1") == 200  # another client is served
    finally:
        for sock in held:
            sock.close()
    assert wait_until(lambda: get(hooks, "/healthz", "127.0.0.2") == 200, timeout=5)


def chunked_post(conn: http.client.HTTPConnection, body: bytes) -> http.client.HTTPResponse:
    conn.request("POST", "/hooks/alert", body=iter([body[:5], body[5:]]),
                 headers={"Authorization": f"Bearer {Hook.key}"})
    return conn.getresponse()


def test_a_chunked_hook_post_is_decoded_and_the_connection_kept(hooks):
    conn = http.client.HTTPConnection(*hooks.server_address, timeout=5)
    try:
        first = chunked_post(conn, json.dumps({"msg": "chunked"}).encode())
        assert (first.status, json.loads(first.read())) == (202, {"ok": True, "queued": 2})
        assert not first.will_close
        conn.request("POST", "/hooks/alert", body=b'{"msg": "next"}',
                     headers={"Authorization": f"Bearer {Hook.key}"})
        assert conn.getresponse().status == 202
    finally:
        conn.close()
    assert hooks.recorder.queued == [([7, 8], {"hook": "alert", "message": {"text": "Alert: chunked"}}),
                                     ([7, 8], {"hook": "alert", "message": {"text": "Alert: next"}})]


def test_bad_or_oversized_chunked_bodies_are_answered_before_close(hooks):
    for raw, status in [(b"zz\r\nhello\r\n0\r\n\r\n", 400),
                        (b"%x\r\n" % (65 * 1024) + b"a" * (65 * 1024) + b"\r\n0\r\n\r\n", 413)]:
        sock = connect(hooks)
        try:
            sock.sendall(b"POST /hooks/alert HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Authorization: Bearer " + Hook.key.encode() + b"\r\n\r\n" + raw)
            answer = sock.makefile("rb").readline()
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    assert hooks.recorder.queued == []


def test_metrics_and_templates_go_through_the_door(hooks):
    conn = http.client.HTTPConnection(*hooks.server_address, timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.request("POST", "/hooks/alert", body=b'{"other": 1}',
                     headers={"Authorization": f"Bearer {Hook.key}"})
        assert conn.getresponse().status == 422
    finally:
        conn.close()
    assert "chatdaemon_replies_sent_total 3" in text


def imports_of(module: str) -> set[str]:
    tree = ast.parse((ROOT / "chatdaemon" / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_hook_server_imports_neither_the_app_nor_the_pipeline():
    assert imports_of("hookserver") & {"app", "pipeline", "delegator", "chathandler"} == set()
    for lower in ("store", "dbfile"):
        assert imports_of(lower) & {"app", "hookserver", "pipeline", "cli"} == set()
