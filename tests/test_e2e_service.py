"""End-to-end: the daemon as a service — signals, outages, hooks, schedules, --daemon, sd_notify.

Every test runs the real `chatdaemon run` process (or the `chatdaemon` command) against the
Bot API test double on 127.0.0.1, with a real SQLite file. All waits are bounded.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import HANDLERS, ROOT, TEST_HANDLERS, TOKEN, TOKEN_SECRET, wait_until

HOOK_KEY = "s3cret-key-0123456789"
GOOD_KEY = {"Authorization": f"Bearer {HOOK_KEY}"}

HOOK_BOT = """
handlers:
  - {name: any, response: {text: "ok"}}
hooks:
  - name: alert
    key: "s3cret-key-0123456789"
    recipients: [111, 222]
    response: {text: "Alert: {{ data.msg }}"}
    rate_limit: 100000
  - name: burst
    key: "s3cret-key-0123456789"
    recipients: [444]
    response: {text: "{{ data.t }}:{{ data.seq }}"}
    rate_limit: 100000
  - name: limited
    key: "s3cret-key-0123456789"
    recipients: [333]
    response: {text: "limited {{ data.n }}"}
    rate_limit: 3
"""


# -- helpers ---------------------------------------------------------------------------------

def counts(telegram, chat_id):
    return [int(t) for t in telegram.sent_to(chat_id)]


def write_bot(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bot.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def query(db_path: Path, sql: str, *args) -> list[tuple]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def undone(db_path: Path) -> int:
    return query(db_path, "SELECT COUNT(*) FROM inbox WHERE done = 0")[0][0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> Answer:
    """One request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def post(port: int, path: str, data, headers: dict | None = None) -> Answer:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return request(port, "POST", path, body, {"Content-Type": "application/json", **(headers or {})})


def healthz_status(port: int) -> int | None:
    try:
        return request(port, "GET", "/healthz").status
    except OSError:
        return None


def start_hook_daemon(start_daemon, tmp_path: Path, rate_limits: str = "off", config: dict | None = None):
    """The hooks bot with its HTTP server on a free loopback port, once /healthz says ok."""
    bot = tmp_path / "hookbot"
    write_bot(bot, HOOK_BOT)
    port = free_port()
    daemon = start_daemon(bot, config={"hooks": {"port": port}, **(config or {})},
                          rate_limits=rate_limits)
    assert wait_until(lambda: healthz_status(port) == 200, timeout=15, interval=0.05), daemon.log()
    return daemon, port


def proc_state(pid: int) -> str | None:
    """The process state letter (R, S, Z, ...), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    # PID 1 in a container may never reap an orphan: a zombie counts as gone
    return pid is not None and proc_state(pid) not in (None, "Z", "X")


def pid_in(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def is_our_daemon(pid: int, pidfile: Path) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().decode(errors="replace")
    except OSError:
        return False
    return "chatdaemon" in cmdline and str(pidfile) in cmdline


class NotifySocket:
    """A systemd-style $NOTIFY_SOCKET: a datagram socket whose messages are kept with their time."""

    def __init__(self, path: Path):
        assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append((time.monotonic(), data.decode(errors="replace")))

    def values(self, name: str) -> list[tuple[float, str]]:
        """(time received, value) of every NAME=value field received, in order."""
        with self._lock:
            messages = list(self._messages)
        found = []
        for when, message in messages:
            for line in message.split("\n"):
                key, _, value = line.partition("=")
                if key == name:
                    found.append((when, value))
        return found

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


# -- 1. SIGTERM under load -------------------------------------------------------------------

def test_sigterm_during_load_loses_nothing(telegram, start_daemon, tmp_path):
    chats = range(4000, 4060)
    telegram.push_many([(chat, f"n{i}") for i in range(10) for chat in chats])
    telegram.set_latency(0.005)  # keep the load going long enough to stop it in the middle
    first = start_daemon(config={"delegates": {"max": 8}})
    assert wait_until(lambda: len(telegram.sent) >= 100, timeout=30), first.log()
    assert first.stop(timeout=20) == 0, first.log()
    sent_before = len(telegram.sent)
    assert sent_before < 600, "the load finished before SIGTERM; the test proves nothing"
    assert "received SIGTERM" in first.log()
    telegram.set_latency(0)
    start_daemon()
    assert wait_until(lambda: all(telegram.sent_to(c)[-1:] == ["10"] for c in chats), timeout=60)
    # nothing more may follow: a sentinel per chat is answered after anything still due
    telegram.push_many([(chat, "sentinel") for chat in chats])
    assert wait_until(lambda: all(telegram.sent_to(c)[-1:] == ["11"] for c in chats), timeout=30)
    for chat in chats:
        # a clean stop finishes in-flight updates and commits them: no gap, no repeat
        assert counts(telegram, chat) == list(range(1, 12)), (chat, counts(telegram, chat))
    db = tmp_path / "bot.sqlite3"
    assert wait_until(lambda: undone(db) == 0, timeout=10)
    assert query(db, "SELECT COUNT(*) FROM inbox")[0][0] == 600 + len(chats)  # with the sentinels


def test_sigterm_lets_a_reply_waiting_for_its_send_slot_go_out(telegram, start_daemon):
    """With the flood limits on, SIGTERM must not cut an update between two of its sends:
    the update would replay on the next start and its first message would go out twice."""
    telegram.push_many([(5001, "long 5000")] * 3)  # each answer is two messages (split at 4096)
    first = start_daemon(TEST_HANDLERS / "echo", rate_limits="on")
    # 1/s per chat with a burst of 3: the first answer's two parts and the second's first part
    # go out at once; its second part waits about a second for its slot
    assert telegram.wait_for(lambda: len(telegram.sent_to(5001)) >= 3, timeout=15), first.log()
    assert first.stop(timeout=20) == 0, first.log()
    assert len(telegram.sent_to(5001)) == 4, "the waiting part was dropped, or more went out"
    start_daemon(TEST_HANDLERS / "echo", rate_limits="on")
    assert telegram.wait_for(lambda: len(telegram.sent_to(5001)) >= 6, timeout=20)
    # a replayed second answer would add two more before the sentinel's echo (per-chat order)
    telegram.push_message(5001, "sentinel")
    assert telegram.wait_for(lambda: telegram.sent_to(5001)[-1:] == ["sentinel"], timeout=20)
    assert len(telegram.sent_to(5001)) == 7


# -- 2. SIGHUP reload ------------------------------------------------------------------------

def yaml_answering(text: str) -> str:
    return f"""
        handlers:
          - name: a
            response: {{text: "{text}"}}
        """


def test_sighup_reloads_a_good_bot_and_keeps_it_after_a_bad_one(telegram, start_daemon, tmp_path):
    bot_file = write_bot(tmp_path / "bot", yaml_answering("v1"))
    daemon = start_daemon(tmp_path / "bot")
    telegram.push_message(201, "hi")
    assert telegram.wait_for(lambda: telegram.sent_to(201) == ["v1"], timeout=10), daemon.log()

    write_bot(tmp_path / "bot", yaml_answering("v2"))
    daemon.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reloaded:" in daemon.log(), timeout=5), daemon.log()
    telegram.push_message(202, "hi")  # a new chat gets the new bot ...
    assert telegram.wait_for(lambda: telegram.sent_to(202) == ["v2"], timeout=10), daemon.log()
    telegram.push_message(201, "again")  # ... and so does a chat whose delegate is still open
    assert telegram.wait_for(lambda: telegram.sent_to(201) == ["v1", "v2"], timeout=10), daemon.log()

    bot_file.write_text(textwrap.dedent("""\
        handlers:
          - name: a
            response:
              text: "{{ oops"
        """))
    daemon.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload failed" in daemon.log(), timeout=5), daemon.log()
    failure = next(line for line in daemon.log().splitlines() if "reload failed" in line)
    assert re.search(re.escape(str(bot_file)) + r":\d+: template error", failure), failure
    assert "stays as it was" in failure
    telegram.push_message(203, "hi")
    assert telegram.wait_for(lambda: telegram.sent_to(203) == ["v2"], timeout=10), daemon.log()
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


# -- 3. network outage: see test_e2e_outages.py (a dozen seconds of silence, a getUpdates 5xx/429 storm)


# -- 4. 5xx storm ----------------------------------------------------------------------------

def test_5xx_storm_delivers_every_count_in_order(telegram, start_daemon):
    start_daemon()
    chats = range(401, 406)
    telegram.set_faults("sendMessage", p500=0.5, seed=1)
    telegram.push_many([(chat, f"m{i}") for i in range(4) for chat in chats])
    wait_until(lambda: telegram.faults_injected["500"] >= 10 or len(telegram.sent) >= 20, timeout=3)
    injected = telegram.faults_injected["500"]
    telegram.clear_faults()
    assert telegram.wait_for_sent(20, timeout=20)
    # a sentinel per chat is answered after every retry still due in that chat
    telegram.push_many([(chat, "sentinel") for chat in chats])
    assert telegram.wait_for(lambda: all(counts(telegram, c)[-1:] == [5] for c in chats), timeout=20)
    assert injected >= 3, "the storm did not happen"
    assert len(telegram.sent) == 25
    for chat in chats:
        assert counts(telegram, chat) == [1, 2, 3, 4, 5], (chat, counts(telegram, chat))


# -- 5. hooks, /healthz, /metrics ------------------------------------------------------------

def test_hooks_authenticate_validate_and_deliver(telegram, start_daemon, tmp_path):
    daemon, port = start_hook_daemon(start_daemon, tmp_path)

    # a wrong key and an unknown hook look the same
    wrong = post(port, "/hooks/alert", {"msg": "x"}, {"Authorization": "Bearer wrong-key-0123456789"})
    unknown = post(port, "/hooks/no-such-hook", {"msg": "x"}, GOOD_KEY)
    assert wrong.status == unknown.status == 401
    assert wrong.body == unknown.body
    assert post(port, "/hooks/alert", {"msg": "x"}).status == 401  # no key at all
    # a non-ASCII key is just wrong, never a server error
    raw_key = "ключ".encode()
    for headers in ({"Authorization": b"Bearer " + raw_key}, {"X-Chatdaemon-Key": raw_key}):
        answer = post(port, "/hooks/alert", {"msg": "x"}, headers)
        assert answer.status == 401, (headers, answer)
    assert post(port, "/hooks/alert?key=%D0%BA%FF", {"msg": "x"}).status == 401

    # the three ways to present the key
    assert post(port, f"/hooks/alert?key={HOOK_KEY}", {"msg": "query"}).status == 202
    bearer = post(port, "/hooks/alert", {"msg": "bearer"}, GOOD_KEY)
    assert bearer.status == 202 and bearer.json() == {"ok": True, "queued": 2}
    assert post(port, "/hooks/alert", {"msg": "header"}, {"X-Chatdaemon-Key": HOOK_KEY}).status == 202

    # bodies: at most 64 KiB, and JSON
    big = post(port, "/hooks/alert", {"msg": "a" * (64 * 1024)}, GOOD_KEY)
    assert big.status == 413, big
    not_json = post(port, "/hooks/alert", b"msg=hello", GOOD_KEY)
    assert not_json.status == 400
    assert "not JSON" in not_json.json()["error"]

    expected = ["Alert: query", "Alert: bearer", "Alert: header"]
    assert telegram.wait_for(lambda: telegram.sent_to(111) == expected
                             and telegram.sent_to(222) == expected, timeout=10), telegram.sent

    health = request(port, "GET", "/healthz")
    assert health.status == 200
    assert health.headers["Content-Type"].startswith("application/json")
    assert health.json()["ok"] is True
    metrics = request(port, "GET", "/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    assert re.search(r"^chatdaemon_updates_received_total \d+$", text, re.M), text
    assert re.search(r"^chatdaemon_queue_depth \d+$", text, re.M), text
    assert re.search(r"^chatdaemon_hooks_accepted_total 3$", text, re.M), text

    # a hook's own rate limit: 3 per minute
    answers = [post(port, "/hooks/limited", {"n": n}, GOOD_KEY) for n in range(4)]
    assert [a.status for a in answers] == [202, 202, 202, 429]
    assert int(answers[3].headers["Retry-After"]) > 0
    assert telegram.wait_for(lambda: len(telegram.sent_to(333)) == 3, timeout=10)

    assert daemon.stop() == 0
    assert HOOK_KEY not in daemon.log()


def test_a_rejected_hook_post_keeps_a_kept_alive_connection_usable(telegram, start_daemon, tmp_path):
    daemon, port = start_hook_daemon(start_daemon, tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/hooks/alert", body=b'{"msg": "wrong key"}',
                     headers={"Authorization": "Bearer wrong-key-0123456789"})
        response = conn.getresponse()
        response.read()
        assert response.status == 401
        conn.request("POST", "/hooks/alert", body=b'{"msg": "after a 401"}', headers=GOOD_KEY)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 202, body[:300]
    assert telegram.wait_for(lambda: telegram.sent_to(111) == ["Alert: after a 401"], timeout=10)


def test_hook_server_caps_its_connections_and_recovers(telegram, start_daemon, tmp_path):
    daemon, port = start_hook_daemon(start_daemon, tmp_path)
    def healthz_status() -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(32)]
    try:
        # every one of them holds a slot, sending nothing, once the server has accepted it
        assert wait_until(lambda: healthz_status() == 503, timeout=10), daemon.log()
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: healthz_status() == 200, timeout=10), daemon.log()


def test_a_chunked_hook_post_is_read_and_the_connection_kept(telegram, start_daemon, tmp_path):
    daemon, port = start_hook_daemon(start_daemon, tmp_path)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # an iterable body without Content-Length goes out as Transfer-Encoding: chunked
        conn.request("POST", "/hooks/alert", body=iter([b'{"msg": "chunked"}']), headers=GOOD_KEY)
        first = conn.getresponse()
        first.read()
        assert first.status == 202, first.status  # decoded, and the connection kept
        assert not first.will_close
        conn.request("POST", "/hooks/alert", body=b'{"msg": "next"}', headers=GOOD_KEY)
        second = conn.getresponse()
        second.read()
        assert second.status == 202, second.status
    finally:
        conn.close()
    expected = ["Alert: chunked", "Alert: next"]
    assert telegram.wait_for(lambda: telegram.sent_to(111) == expected
                             and telegram.sent_to(222) == expected, timeout=10), telegram.sent


def test_hook_burst_of_1000_is_accepted_and_delivered_in_order(telegram, start_daemon, tmp_path):
    # the flood limits on, raised so that the test takes seconds, not Telegram's 1000 s
    per_second, burst = 200, 5
    daemon, port = start_hook_daemon(start_daemon, tmp_path, rate_limits="on", config={
        "rate_limits": {"per_second": 400, "per_chat_per_second": per_second,
                        "per_chat_burst": burst}})
    senders, per_sender = 4, 250
    statuses: dict[int, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def send(t: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for seq in range(per_sender):
                conn.request("POST", "/hooks/burst", body=json.dumps({"t": t, "seq": seq}),
                             headers=GOOD_KEY)
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(t,)) for t in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert statuses == {202: senders * per_sender}

    assert telegram.wait_for(lambda: len(telegram.sent_to(444)) >= 1000, timeout=60), \
        len(telegram.sent_to(444))
    # a sentinel notification, delivered after anything still due to the chat (per-chat order)
    assert post(port, "/hooks/burst", {"t": "end", "seq": 0}, GOOD_KEY).status == 202
    assert telegram.wait_for(lambda: telegram.sent_to(444)[-1:] == ["end:0"], timeout=20)
    everything = telegram.sent_to(444)
    delivered = everything[:-1]
    assert len(delivered) == 1000 and len(set(delivered)) == 1000
    for t in range(senders):  # each sender's notifications arrive in the order it posted them
        seqs = [int(text.split(":")[1]) for text in delivered if text.startswith(f"{t}:")]
        assert seqs == list(range(per_sender)), t
    # and all of them in exactly the order the inbox accepted them
    db = tmp_path / "bot.sqlite3"
    accepted = [text for (text,) in query(
        db, "SELECT json_extract(payload, '$.hook.message.text') FROM inbox"
            " WHERE kind = 'hook' AND chat_id = 444 ORDER BY update_id")]
    assert accepted == everything
    assert wait_until(lambda: undone(db) == 0, timeout=10)
    # and no second saw more than the chat's limit (plus its burst)
    times = sorted(call["time"] for call in telegram.sent if call["chat_id"] == 444)
    busiest = max(sum(1 for t in times[i:i + 400] if t - start < 1.0)
                  for i, start in enumerate(times))
    assert busiest <= per_second + burst, busiest
    assert times[-1] - times[0] >= (1000 - burst) / per_second * 0.9


def test_hook_notifications_obey_the_per_chat_rate_limit(telegram, start_daemon, tmp_path):
    daemon, port = start_hook_daemon(start_daemon, tmp_path, rate_limits="on")
    posted = []
    for seq in range(6):
        assert post(port, "/hooks/burst", {"t": 0, "seq": seq}, GOOD_KEY).status == 202
        posted.append(time.monotonic())
    assert telegram.wait_for(lambda: len(telegram.sent_to(444)) >= 6, timeout=20)
    assert telegram.sent_to(444) == [f"0:{seq}" for seq in range(6)]
    times = telegram.sent_times(444)
    # a burst of 3 (each goes out as soon as it is stored) ...
    assert times[2] - times[0] < max(1.0, posted[2] - posted[0] + 0.5), (times, posted)
    # ... then one per second
    assert times[5] - times[0] >= 2.8, times
    assert all(later - earlier >= 0.8 for earlier, later in itertools.pairwise(times[2:])), times


# -- 6. schedules ----------------------------------------------------------------------------

def test_schedule_ticks_survive_a_restart_with_one_catch_up_tick(telegram, start_daemon, tmp_path):
    chat = 600

    def texts():
        return telegram.sent_to(chat)

    first = start_daemon(TEST_HANDLERS / "ticker")
    telegram.push_message(chat, "/start")
    assert telegram.wait_for(lambda: texts() == ["started"], timeout=10), first.log()
    assert telegram.wait_for(lambda: len(texts()) >= 2, timeout=9), first.log()
    assert texts() == ["started", "tick"]
    started, ticked = telegram.sent_times(chat)
    assert 4.0 <= ticked - started <= 7.5, ticked - started

    assert first.stop() == 0
    db = tmp_path / "bot.sqlite3"
    [(next_at,)] = query(db, "SELECT next_at FROM schedules WHERE chat_id = ? AND name = 't'", chat)
    time.sleep(max(0.0, next_at - time.time() + 0.3))  # behaviour: the next tick falls due while down
    # ... and as if it had been down for a minute: a dozen intervals missed
    database = sqlite3.connect(db)
    try:
        with database:
            database.execute("UPDATE schedules SET next_at = next_at - 60 WHERE chat_id = ?", (chat,))
    finally:
        database.close()

    restarted = time.monotonic()
    second = start_daemon(TEST_HANDLERS / "ticker")
    assert telegram.wait_for(lambda: len(texts()) >= 3, timeout=5), second.log()
    catch_up = telegram.sent_times(chat)[2]
    assert catch_up - restarted < 4.0
    assert telegram.wait_for(lambda: len(texts()) >= 4, timeout=8), second.log()
    assert texts() == ["started", "tick", "tick", "tick"]
    # one catch-up tick, then the schedule's own rhythm: a whole interval until the next one
    assert telegram.sent_times(chat)[3] - catch_up >= 4.0, telegram.sent_times(chat)

    telegram.push_message(chat, "/stop")
    assert telegram.wait_for(lambda: texts()[-1:] == ["stopped"], timeout=10)
    # no tick where the next would have fallen due: an interval after the last, plus the
    # daemon's 1 s schedule check and a margin (the time passing is what is tested)
    time.sleep(max(0.0, telegram.sent_times(chat)[3] + 5 + 2 - time.monotonic()))
    assert texts() == ["started", "tick", "tick", "tick", "stopped"]
    assert query(db, "SELECT COUNT(*) FROM schedules")[0][0] == 0
    assert second.stop() == 0


def test_yaml_schedule_tick_renders_its_response(telegram, start_daemon, tmp_path):
    write_bot(tmp_path / "sched", """
        handlers:
          - name: go
            pattern: '^/go$'
            response: {text: "going"}
            save: {n: "7"}
            schedule: {start: r, every: 5}
        schedules:
          - name: r
            response: {text: "report {{ vars.n }}"}
        """)
    daemon = start_daemon(tmp_path / "sched")
    telegram.push_message(700, "/go")
    assert telegram.wait_for(lambda: telegram.sent_to(700) == ["going"], timeout=10), daemon.log()
    assert telegram.wait_for(lambda: len(telegram.sent_to(700)) >= 2, timeout=9), daemon.log()
    assert telegram.sent_to(700) == ["going", "report 7"]
    began, ticked = telegram.sent_times(700)
    assert 4.0 <= ticked - began <= 7.5
    assert daemon.stop() == 0


# -- 7. --daemon and the pidfile -------------------------------------------------------------

def daemon_command(telegram, tmp_path: Path, pidfile: Path) -> list[str]:
    config = tmp_path / "daemon-config.yaml"
    config.write_text(yaml.safe_dump({"polling": {"timeout": 1}, "hooks": {"port": 0},
                                      "delegates": {"idle_timeout": 30}, "stop_timeout": 10}))
    return [sys.executable, "-m", "chatdaemon", "run", "--daemon", "--pidfile", str(pidfile),
            "--handlers", str(HANDLERS / "counter"), "--db", str(tmp_path / "bot.sqlite3"),
            "--api-url", telegram.url, "--config", str(config), "--rate-limits", "off"]


def launch(command: list[str], cwd: Path, token: str = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "CHATDAEMON_TOKEN", "NOTIFY_SOCKET")}
    env["CHATDAEMON_TOKEN"] = token
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=30,
                          preexec_fn=lambda: os.umask(0o022))


def test_daemon_mode_pidfile_file_modes_and_a_stale_pidfile(telegram, tmp_path):
    pidfile = tmp_path / "chatdaemon.pid"
    command = daemon_command(telegram, tmp_path, pidfile)
    seen: list[int] = []

    def running_pid(other_than: int | None = None) -> int | None:
        pid = pid_in(pidfile)
        if pid is not None and pid != other_than and alive(pid) and is_our_daemon(pid, pidfile):
            if pid not in seen:
                seen.append(pid)
            return pid
        return None

    try:
        began = time.monotonic()
        result = launch(command, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert time.monotonic() - began < 15
        assert wait_until(running_pid, timeout=10), (pidfile.exists() and pidfile.read_text(),
                                                      (tmp_path / "chatdaemon.log").read_text())
        pid = running_pid()
        telegram.push_message(701, "x")
        assert telegram.wait_for_sent(1, timeout=10)

        second = launch(command, tmp_path)
        assert second.returncode == 78, second.stdout + second.stderr
        assert "already running" in second.stderr
        assert str(pid) in second.stderr
        assert pid_in(pidfile) == pid and alive(pid)

        for name in ("bot.sqlite3", "chatdaemon.log"):
            mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
            assert mode == 0o600, (name, oct(mode))

        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: not alive(pid) and not pidfile.exists(), timeout=15)

        # kill -9 leaves the pidfile behind; it does not stand in the way of the next start
        assert launch(command, tmp_path).returncode == 0
        assert wait_until(lambda: running_pid(other_than=pid), timeout=10)
        killed = running_pid(other_than=pid)
        os.kill(killed, signal.SIGKILL)
        assert wait_until(lambda: not alive(killed), timeout=10)
        assert pid_in(pidfile) == killed, "expected a stale pidfile"
        restart = launch(command, tmp_path)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert wait_until(lambda: running_pid(other_than=killed), timeout=10)
        last = running_pid(other_than=killed)
        telegram.push_message(701, "y")
        assert telegram.wait_for_sent(2, timeout=15)
        assert counts(telegram, 701) == [1, 2]
        os.kill(last, signal.SIGTERM)
        assert wait_until(lambda: not alive(last) and not pidfile.exists(), timeout=15)
        assert TOKEN_SECRET not in (tmp_path / "chatdaemon.log").read_text()
    finally:
        # a daemon left running after a failure would keep polling 127.0.0.1 and could answer
        # another test's messages once that test's double takes over its port
        for pid in [*seen, pid_in(pidfile)]:
            if pid is not None and alive(pid) and is_our_daemon(pid, pidfile):
                os.kill(pid, signal.SIGKILL)


def test_daemon_mode_refuses_a_rejected_token_in_the_foreground(telegram, tmp_path):
    # "Everything that can fail is checked while the terminal is still attached" (cli.py):
    # the commonest failure, a token Telegram rejects, must not exit 0 and die unseen
    pidfile = tmp_path / "chatdaemon.pid"
    command = daemon_command(telegram, tmp_path, pidfile)
    try:
        result = launch(command, tmp_path, token="999999:WRONG-token_abcdefghijklmnopqrstuvwxyz")
        assert result.returncode == 78, (result.returncode, result.stderr)
        assert "rejected the bot token" in result.stderr
        assert "WRONG-token" not in result.stderr
        assert not alive(pid_in(pidfile))
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the detached process ends by itself; wait for it
            pid = pid_in(pidfile)
            if pid is None or not alive(pid):
                break
            time.sleep(0.05)
        pid = pid_in(pidfile)
        if alive(pid) and is_our_daemon(pid, pidfile):
            os.kill(pid, signal.SIGKILL)


# -- 8. sd_notify ----------------------------------------------------------------------------

def test_sd_notify_ready_status_watchdog_and_stopping(telegram, start_daemon, tmp_path):
    with NotifySocket(tmp_path / "notify.sock") as notify:
        telegram.set_down(True)  # a Pi booting before its Wi-Fi: getMe fails for a while
        daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
        # start-up keeps asking systemd for more time instead of timing out
        assert wait_until(lambda: notify.values("EXTEND_TIMEOUT_USEC"), timeout=15), daemon.log()
        assert int(notify.values("EXTEND_TIMEOUT_USEC")[0][1]) >= 60_000_000
        assert not notify.values("READY")
        telegram.fail_next("getUpdates", "latency", seconds=2)  # the first poll answers late
        telegram.set_down(False)
        assert wait_until(lambda: notify.values("READY"), timeout=15), daemon.log()
        ready_at, ready = notify.values("READY")[0]
        assert ready == "1"
        first_poll = telegram.calls_to("getUpdates")[0]["time"]
        assert ready_at - first_poll >= 2.0, "READY=1 before the first getUpdates answered"
        statuses = [value for _, value in notify.values("STATUS")]
        assert statuses and any("polling" in value for value in statuses), statuses

        # the watchdog is fed while the poll loop makes progress ...
        assert wait_until(lambda: len(notify.values("WATCHDOG")) >= 2, timeout=5), notify.values("WATCHDOG")
        assert all(value == "1" for _, value in notify.values("WATCHDOG"))
        # ... and a network outage is progress too (bounded retries), not a reason to be
        # killed and restarted; only a wedged poll loop starves it (tests/test_units.py)
        down_at = time.monotonic()
        telegram.set_down(True)
        try:
            time.sleep(5.5)  # the outage's length is the behaviour tested: watchdog fed throughout
        finally:
            telegram.set_down(False)
        up_at = time.monotonic()
        fed = [when for when, _ in notify.values("WATCHDOG") if down_at + 2.0 < when <= up_at]
        assert len(fed) >= 3, f"the watchdog starved during a network outage: {fed}"
        assert wait_until(lambda: any("last error" not in value and when > up_at
                                      for when, value in notify.values("STATUS")), timeout=15), \
            notify.values("STATUS")[-3:]

        assert daemon.stop() == 0
        assert wait_until(lambda: notify.values("STOPPING"), timeout=3)
        assert notify.values("STOPPING")[0][1] == "1"
        assert len(notify.values("READY")) == 1


def test_logs_under_journald_have_priority_prefixes_and_no_timestamps(telegram, start_daemon,
                                                                      tmp_path):
    # start_daemon names the log after the number of logs already there: with this one made
    # in advance, it is the file (the same inode) the daemon's stderr goes to
    log_path = tmp_path / "daemon-1.log"
    log_path.touch()
    info = log_path.stat()
    daemon = start_daemon(env={"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
    assert daemon.log_path == log_path
    assert telegram.wait_for(lambda: telegram.calls_to("getUpdates"), timeout=15), daemon.log()
    telegram.set_down(True)  # a warning too
    assert wait_until(lambda: "getUpdates:" in daemon.log(), timeout=15), daemon.log()
    telegram.set_down(False)
    assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert "<6>chatdaemon.app: received SIGTERM; stopping" in lines, lines
    assert any(line.startswith("<4>chatdaemon.poller: getUpdates:") for line in lines), lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines), lines


# -- 9. the systemd unit ---------------------------------------------------------------------

def unit_copy(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart/ExecStartPre pointing at this venv's chatdaemon."""
    executable = shutil.which("chatdaemon") or str(Path(sys.executable).parent / "chatdaemon")
    if not os.access(executable, os.X_OK):
        pytest.skip("no chatdaemon executable to point the unit at")
    text = (ROOT / "systemd" / "chatdaemon.service").read_text()
    text = text.replace("/opt/chatdaemon/.venv/bin/chatdaemon", executable)
    directory = tmp_path / "unit"
    directory.mkdir()
    copy = directory / "chatdaemon.service"
    copy.write_text(text)
    return copy


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed here")


@needs_systemd_analyze
def test_systemd_unit_verifies_cleanly(tmp_path):
    copy = unit_copy(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=60)
    output = result.stdout + result.stderr
    # only lines about our unit count; missing /etc and /opt files are the installer's business
    ours = [line for line in output.splitlines()
            if ("chatdaemon.service" in line or str(copy) in line)
            and not re.search(r"/(etc|opt|var/lib)/chatdaemon", line)]
    assert result.returncode == 0, output
    assert ours == [], output


@needs_systemd_analyze
def test_systemd_unit_exposure_level_is_low(tmp_path):
    copy = unit_copy(tmp_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    if result.returncode != 0 and re.search(r"(unrecognized|unknown) option", output, re.I):
        pytest.skip(f"this systemd-analyze has no offline security check: {output.strip()[:200]}")
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert found, output
    assert float(found.group(1)) <= 2.0, output


def test_units_start_the_daemon_once_and_never_restart_it_on_a_bad_config():
    # `run` checks what `check` checks, so a unit that ran `check` first paid for start-up twice
    for name in ("chatdaemon.service", "chatdaemon@.service"):
        lines = (ROOT / "systemd" / name).read_text().splitlines()
        assert not any(line.startswith("ExecStartPre=") for line in lines), name
        prevent = [line for line in lines if line.startswith("RestartPreventExitStatus=")]
        assert len(prevent) == 1 and "78" in prevent[0].split("=", 1)[1].split(), name


def test_run_names_every_config_error_exits_78_and_never_polls(telegram, start_daemon, tmp_path):
    bot = write_bot(tmp_path / "broken", """
        handlers:
          - name: greet
            pattern: "^/start"
            response: {text: "{{ user.frist_name }}"}
          - name: greet
            pattern: "(unclosed"
            response: {text: hi}
        """)
    daemon = start_daemon(bot.parent)
    assert daemon.wait(60) == 78, daemon.log()
    output = daemon.log()
    assert "did you mean first_name" in output, output
    assert "duplicate" in output.lower(), output
    assert "pattern does not compile" in output, output
    assert len(re.findall(r"bot\.yaml:\d+", output)) >= 3, output
    assert telegram.calls_to("getUpdates") == [], output


# -- 10. chatdaemon check --------------------------------------------------------------------

def run_check(handlers: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatdaemon", "check", "--handlers", str(handlers)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_check_passes_for_pimonitor():
    result = run_check(HANDLERS / "pimonitor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "python handler: pimonitor:PiMonitor" in result.stdout


def test_check_lists_hook_urls(tmp_path):
    write_bot(tmp_path / "hookbot", HOOK_BOT)
    result = run_check(tmp_path / "hookbot")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("alert", "burst", "limited"):
        assert f"POST /hooks/{name}" in result.stdout, result.stdout
    assert HOOK_KEY not in result.stdout + result.stderr
