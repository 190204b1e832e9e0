"""Gentle on a Pi: what a bot does not import, an idle daemon that does not wake, few connections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import HANDLERS, ROOT, TOKEN, wait_until
from fake_telegram import FakeTelegram

from chatdaemon.errors import NetworkError
from chatdaemon.hookserver import HookDoor, HookServer
from chatdaemon.telegram import MAX_CONNECTIONS, TelegramClient

HEAVY = ("jinja2", "regex", "requests", "urllib3")
LOADED = """
import json, sys
from chatdaemon import app, cli, daemon, telegram
from chatdaemon.bots import load_bot
try:
    load_bot(sys.argv[1])
    error = None
except Exception as exc:
    error = str(exc)
print(json.dumps({"modules": sorted({name.split(".")[0] for name in sys.modules}), "error": error}))
"""


def load_in_fresh_process(handlers: Path) -> dict:
    """Load the bot in `handlers` as `chatdaemon run` does; what got imported, and any error."""
    out = subprocess.run([sys.executable, "-c", LOADED, str(handlers)], capture_output=True,
                         text=True, check=True, cwd=str(ROOT), timeout=60).stdout
    return json.loads(out)


def heavy_modules(loaded: dict) -> set[str]:
    return set(HEAVY) & set(loaded["modules"])


def write_bot(directory: Path, text: str) -> Path:
    directory.mkdir()
    (directory / "bot.yaml").write_text(text)
    return directory


# -- lazy imports ------------------------------------------------------------------------------

def test_a_python_handler_bot_imports_no_template_regex_or_http_library():
    loaded = load_in_fresh_process(HANDLERS / "counter")
    assert loaded["error"] is None
    assert heavy_modules(loaded) == set()


def test_a_yaml_bot_without_requests_imports_jinja2_and_regex_but_not_requests():
    loaded = load_in_fresh_process(HANDLERS / "signup")
    assert loaded["error"] is None
    assert heavy_modules(loaded) == {"jinja2", "regex"}


def test_a_bad_pattern_is_still_a_clear_error_from_a_lazily_imported_regex(tmp_path):
    bot = write_bot(tmp_path / "bad", "handlers:\n  - name: broken\n    pattern: '(unclosed'\n"
                                      "    response: {text: hi}\n")
    loaded = load_in_fresh_process(bot)
    assert loaded["error"] is not None
    assert "bot.yaml:3" in loaded["error"] and "pattern does not compile" in loaded["error"]


def test_a_python_bot_with_a_broken_hook_template_names_its_file(tmp_path):
    # the template compiler is built only now, for the hook: its errors still name file:line
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "counter.py").write_text((HANDLERS / "counter" / "counter.py").read_text())
    (tmp_path / "bot" / "bot.yaml").write_text(
        "python: counter:MessageCounter\nhooks:\n  - name: alert\n    key: k3y-long-enough-1234\n"
        "    recipients: [1]\n    response: {text: '{{ data.x '}\n")
    loaded = load_in_fresh_process(tmp_path / "bot")
    assert loaded["error"] is not None and "bot.yaml:" in loaded["error"], loaded["error"]


def test_a_yaml_request_still_works_once_requests_is_imported_on_first_use(tmp_path):
    from chatdaemon.bots import load_bot
    from chatdaemon.httpcall import RequestFailed, new_session, perform
    bot = load_bot(str(write_bot(tmp_path / "req", REQUEST_BOT)))
    request = bot.definitions.handlers[0].request
    session = new_session()
    with pytest.raises(RequestFailed) as caught:  # nothing listens on port 9: a clear failure
        perform(request, {}, session)
    assert caught.value.response["error"] == "connection"
    assert session.get() is session.get(), "one requests session per pipeline, made once"


REQUEST_BOT = ("handlers:\n  - name: ask\n"
               "    request: {method: GET, url: 'http://127.0.0.1:9/x', timeout: 2}\n"
               "    response: {text: '{{ response.status }}'}\n")


# -- wake-ups ------------------------------------------------------------------------------------

def voluntary_switches(pid: int, tid: int | None = None) -> int:
    """Voluntary context switches of one thread, or summed over every thread of `pid`."""
    tasks = [Path(f"/proc/{pid}/task/{tid}")] if tid else list(Path(f"/proc/{pid}/task").iterdir())
    total = 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def door() -> HookDoor:
    status = {"last_poll_age": 1.0, "backlog": 0, "delegates": 0, "waiting_chats": 0,
              "last_error": None}
    return HookDoor(find_hook=lambda name: None, render=lambda response, context: {},
                    env=dict, queue=lambda chats, payload: None, status=lambda: status,
                    counters=dict, health_limit=lambda: 60.0)


def test_an_idle_hook_server_sleeps_until_a_request_and_shuts_down_at_once():
    server = HookServer(door(), ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert json.load(answer)["ok"] is True
        assert wait_until(lambda: thread.native_id is not None, 5)
        before = voluntary_switches(os.getpid(), thread.native_id)
        time.sleep(2.0)  # measuring idleness: nothing to wait for
        woke = voluntary_switches(os.getpid(), thread.native_id) - before
        assert woke <= 1, f"the idle hook server woke {woke} times in 2 s"
    finally:
        began = time.monotonic()
        server.shutdown()
        took = time.monotonic() - began
        server.server_close()
        thread.join(5)
    assert not thread.is_alive()
    assert took < 0.25, f"shutdown took {took:.2f} s"


def test_shutdown_before_serving_does_not_hang():
    server = HookServer(door(), ("127.0.0.1", 0))
    stopping = threading.Thread(target=server.shutdown, daemon=True)
    stopping.start()
    stopping.join(5)
    assert not stopping.is_alive(), "shutdown() waited for a serve loop that never ran"
    server.server_close()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()


def test_an_idle_daemon_with_its_hook_server_hardly_wakes(telegram, start_daemon, tmp_path):
    from test_e2e_service import free_port
    port = free_port()
    daemon = start_daemon(config={"polling": {"timeout": 20}, "hooks": {"port": port}})
    telegram.push_message(801, "hi")
    assert telegram.wait_for(lambda: telegram.sent_to(801) == ["1"], timeout=15), daemon.log()
    assert telegram.wait_for(lambda: telegram.polling, timeout=10)
    # what the reply set going (its commit, the poll that follows) ends within a moment
    assert wait_until(lambda: _quiet(daemon.pid), timeout=10)
    before = voluntary_switches(daemon.pid)
    time.sleep(5.0)  # measuring idleness
    woke = voluntary_switches(daemon.pid) - before
    # every second (the old supervising loop) plus twice a second (the hook server's poll)
    # would be about 15 here; the long poll answers once in 20 s
    assert woke <= 4, f"the idle daemon woke {woke} times in 5 s"
    telegram.push_message(801, "again")  # and it still answers at once
    assert telegram.wait_for(lambda: telegram.sent_to(801) == ["1", "2"], timeout=5), daemon.log()


def _quiet(pid: int) -> bool:
    before = voluntary_switches(pid)
    time.sleep(0.5)
    return voluntary_switches(pid) - before == 0


def test_sighup_wakes_an_idle_daemon_to_reload(telegram, start_daemon):
    daemon = start_daemon(config={"polling": {"timeout": 20}})
    telegram.push_message(802, "hi")
    assert telegram.wait_for(lambda: telegram.sent_to(802) == ["1"], timeout=15), daemon.log()
    assert wait_until(lambda: _quiet(daemon.pid), timeout=10)  # the loop sleeps long now
    daemon.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reloaded" in daemon.log(), timeout=5), daemon.log()


# -- connections to the Bot API ------------------------------------------------------------------

def test_concurrent_calls_share_at_most_the_pool_of_connections():
    with FakeTelegram(TOKEN) as fake:
        fake.set_latency(0.02)
        client = TelegramClient(TOKEN, fake.url)
        peak = 0
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, fake.open_connections())
                done.wait(0.002)

        def send(chat: int) -> None:
            for _ in range(5):
                client.call("sendMessage", {"chat_id": chat, "text": "x"})

        watcher = threading.Thread(target=watch)
        watcher.start()
        senders = [threading.Thread(target=send, args=(900 + i,)) for i in range(32)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        done.set()
        watcher.join()
        client.close()
        assert len(fake.sent) == 32 * 5
        assert 2 <= peak <= MAX_CONNECTIONS, peak


def test_a_call_that_finds_no_free_connection_in_time_fails_as_not_sent():
    with FakeTelegram(TOKEN) as fake:
        fake.set_latency(1.5)
        # a call waits for a free connection as long as a call may take: 0.1 + 0.4 s here
        client = TelegramClient(TOKEN, fake.url, connect_timeout=0.1, read_timeout=0.4, pool_size=1)
        busy = threading.Thread(target=client.call, args=("getMe", {}), kwargs={"timeout": 5})
        busy.start()
        assert fake.wait_for(lambda: fake.open_connections() == 1, 5)
        with pytest.raises(NetworkError) as caught:
            client.call("sendMessage", {"chat_id": 1, "text": "x"})
        assert caught.value.maybe_delivered is False
        assert fake.sent == []
        busy.join(10)
        client.close()


def test_a_busy_daemon_holds_few_connections_to_the_bot_api(telegram, start_daemon):
    daemon = start_daemon(config={"delegates": {"max": 64}})
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, telegram.open_connections())
            done.wait(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        telegram.push_many([(5000 + c, "m") for _ in range(10) for c in range(64)])
        finished = telegram.wait_for(
            lambda: all(telegram.sent_to(5000 + c)[-1:] == ["10"] for c in range(64)), timeout=120)
    finally:
        done.set()
        watcher.join()
    assert finished, daemon.log()
    assert all(telegram.sent_to(5000 + c) == [str(n) for n in range(1, 11)] for c in range(64))
    assert peak <= MAX_CONNECTIONS, f"{peak} connections to the Bot API"


# -- the units ---------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["chatdaemon.service", "chatdaemon@.service"])
def test_the_units_limit_malloc_arenas(unit):
    lines = (ROOT / "systemd" / unit).read_text().splitlines()
    assert "Environment=MALLOC_ARENA_MAX=2" in lines


def test_malloc_arenas_are_capped_unless_the_environment_says_otherwise():
    from chatdaemon.memory import limit_malloc_arenas
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) is False  # glibc reads that one itself
    if "glibc" in " ".join(os.confstr("CS_GNU_LIBC_VERSION").split()[:1]):
        assert limit_malloc_arenas({}) is True
