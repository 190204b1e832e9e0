"""End-to-end: hook recipients taken from the posted data, and late results through callback URLs.

The real `chatdaemon run` process against the Bot API test double, a real SQLite file, and
a loopback upstream that records the callback URL it is given and later POSTs to it. All
waits are bounded conditions.
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import sqlite3
import textwrap
import time
from pathlib import Path

from conftest import HANDLERS, wait_until

KEY = "notify-key-0123456789abcdef"
WORKING = "⏳ Working on the sales report; I'll write when it's ready."
READY = "✅ Your report is ready: {}"

NOTIFY_BOT = f"""
handlers:
  - {{name: any, response: "ok"}}
hooks:
  - name: notify
    key: "{KEY}"
    recipients: "{{{{ data.chat_ids }}}}"
    response: "Notice: {{{{ data.msg }}}}"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        conn.close()


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def start_with_hooks(start_daemon, handlers: Path, port: int, **kwargs):
    config = kwargs.pop("config", {})
    config.setdefault("hooks", {})["port"] = port
    daemon = start_daemon(handlers, config=config, **kwargs)
    assert wait_until(lambda: healthy(port), timeout=20, interval=0.05), daemon.log()
    return daemon


def start_job_bot(start_daemon, upstream, port: int, **kwargs):
    env = {"LONGJOB_URL": f"http://127.0.0.1:{upstream.server_port}/jobs"}
    return start_with_hooks(start_daemon, HANDLERS / "longjob", port, env=env, **kwargs)


def callback_url_of_first_job(telegram, upstream, chat: int) -> str:
    telegram.push_message(chat, "/report sales")
    assert telegram.wait_for(lambda: telegram.sent_to(chat) == [WORKING], timeout=15), telegram.sent
    with upstream.lock:
        (job,) = upstream.bodies
    assert job["topic"] == "sales"
    return job["callback"]


def pending(db_path: Path) -> int:
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT COUNT(*) FROM inbox WHERE done = 0").fetchone()[0]
    finally:
        db.close()


# -- recipients from the posted data -----------------------------------------------------------

def write_bot(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "notifybot"
    directory.mkdir()
    (directory / "bot.yaml").write_text(textwrap.dedent(text).lstrip())
    return directory


def test_a_hook_reaches_the_chats_its_data_names(telegram, start_daemon, tmp_path):
    port = free_port()
    start_with_hooks(start_daemon, write_bot(tmp_path, NOTIFY_BOT), port)
    status, body = post(port, "/hooks/notify", b'{"chat_ids": [111, "222"], "msg": "hi"}',
                        {"Authorization": f"Bearer {KEY}"})
    assert (status, body) == (202, {"ok": True, "queued": 2})
    assert telegram.wait_for(lambda: telegram.sent_to(111) == ["Notice: hi"]
                             and telegram.sent_to(222) == ["Notice: hi"], timeout=15), telegram.sent


def test_a_bad_recipient_is_a_400_and_nothing_is_sent(telegram, start_daemon, tmp_path):
    port = free_port()
    start_with_hooks(start_daemon, write_bot(tmp_path, NOTIFY_BOT), port)
    auth = {"Authorization": f"Bearer {KEY}"}
    status, body = post(port, "/hooks/notify", b'{"chat_ids": [111, "@bob"], "msg": "bad"}', auth)
    assert status == 400 and "'@bob'" in body["error"] and "not a chat id" in body["error"]
    status, body = post(port, "/hooks/notify", b'{"chat_ids": [111, true], "msg": "bad"}', auth)
    assert status == 400 and "True" in body["error"]
    # a sentinel behind them: per-chat order means a queued bad one would arrive first
    assert post(port, "/hooks/notify", b'{"chat_ids": [111], "msg": "sentinel"}', auth)[0] == 202
    assert telegram.wait_for(lambda: telegram.sent_to(111) == ["Notice: sentinel"], timeout=15), \
        telegram.sent
    assert telegram.sent_to(222) == []


# -- callback URLs ---------------------------------------------------------------------------

def test_a_callback_is_delivered_after_a_kill_9(telegram, start_daemon, tmp_path, upstream):
    port = free_port()
    daemon = start_job_bot(start_daemon, upstream, port)
    url = callback_url_of_first_job(telegram, upstream, 42)
    assert url.startswith(f"http://127.0.0.1:{port}/callbacks/")
    token = url.rsplit("/", 1)[1]
    assert len(token) >= 43   # 256 bits, urlsafe base64

    # the job's update committed (else it replays after the kill: a second job, as
    # documented for a crash between a send and its commit), then SIGKILL before the result
    assert wait_until(lambda: pending(daemon.db) == 0, timeout=15), daemon.log()
    daemon.kill()
    again = start_job_bot(start_daemon, upstream, port)
    status, body = post(port, f"/callbacks/{token}", b'{"summary": "3 sales"}')
    assert (status, body) == (202, {"ok": True})
    assert telegram.wait_for(lambda: telegram.sent_to(42) == [WORKING, READY.format("3 sales")],
                             timeout=15), telegram.sent
    for log in (daemon.log(), again.log()):
        assert token not in log


def test_an_unknown_or_expired_token_is_a_404_and_nothing_is_sent(telegram, start_daemon,
                                                                   tmp_path, upstream):
    port = free_port()
    daemon = start_job_bot(start_daemon, upstream, port, config={"hooks": {"callback_expiry": 1}})
    url = callback_url_of_first_job(telegram, upstream, 42)
    made = time.time()
    token = url.rsplit("/", 1)[1]

    for path in (f"/callbacks/{secrets.token_urlsafe(32)}", "/callbacks/short", "/callbacks/",
                 f"/callbacks/{token[:-2]}"):
        status, body = post(port, path, b'{"summary": "forged"}')
        assert status == 404, path
        assert body == {"ok": False, "error": "unknown or expired callback"}
    # the real token, once its second is over
    assert wait_until(lambda: time.time() > made + 1.5, timeout=5)
    assert post(port, f"/callbacks/{token}", b'{"summary": "late"}')[0] == 404

    telegram.push_message(42, "hello")   # a sentinel: anything queued before would come first
    assert telegram.wait_for(lambda: len(telegram.sent_to(42)) >= 2, timeout=15), telegram.sent
    assert telegram.sent_to(42) == [WORKING, "Send /report (or /report TOPIC) to start a report."]
    assert token not in daemon.log()
