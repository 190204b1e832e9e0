"""Resident memory on a Pi: modules a running bot never needs stay unimported (urllib.request
without a *_proxy variable, 1.1 MB; html's entity table, 0.6 MB; difflib), and the daemon
gives freed memory back once ready and after each prune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import HANDLERS, ROOT
from test_app import WAIT, RecordingAPI, bot, build_daemon, config
from test_footprint import load_in_fresh_process

__all__ = ["bot", "config"]   # fixtures, used by name

CLIENT = """
import json, sys
from chatdaemon.telegram import TelegramClient
client = TelegramClient("123:abc", "https://api.telegram.org")
print(json.dumps({"imported": "urllib.request" in sys.modules, "proxy": client._proxy}))
"""


def build_client(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    out = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True,
                         check=True, cwd=str(ROOT), env={**clean, **env}, timeout=60).stdout
    return json.loads(out)


def test_without_a_proxy_variable_urllib_request_is_never_imported():
    assert build_client() == {"imported": False, "proxy": None}


def test_a_proxy_variable_is_still_found():
    assert build_client(HTTPS_PROXY="http://proxy.invalid:3128") == \
        {"imported": True, "proxy": ["proxy.invalid", 3128]}


def test_no_proxy_still_bypasses_it():
    found = build_client(https_proxy="http://proxy.invalid:3128", no_proxy="api.telegram.org")
    assert found["proxy"] is None


def test_a_bot_loaded_as_run_loads_it_imports_no_html_difflib_or_urllib_request():
    for name in ("counter", "signup", "orders"):
        loaded = load_in_fresh_process(HANDLERS / name)
        assert loaded["error"] is None
        assert {"html", "difflib"} & set(loaded["modules"]) == set(), name


MEMORY = """
from chatdaemon.memory import release_freed_memory
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024
blocks = [bytes(2000) for _ in range(30000)]
kept = blocks[::100]   # one block in a hundred stays: the freed pages lie between used ones
del blocks
before = rss()
done = release_freed_memory()
print(before, rss(), done)
"""


def test_memory_freed_after_start_up_goes_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", MEMORY], capture_output=True, text=True,
                         check=True, cwd=str(ROOT), timeout=60).stdout.split()
    before, after, done = int(out[0]), int(out[1]), out[2]
    if done != "True":
        pytest.skip("no malloc_trim in this C library")
    assert before - after > 30, f"RSS {before} MB before, {after} MB after"



def test_the_daemon_gives_memory_back_once_ready_and_after_each_prune(config, bot, monkeypatch):
    from chatdaemon import app as app_module
    trims: list[str] = []
    two = threading.Event()

    def trim() -> bool:
        trims.append("trim")
        if len(trims) == 2:
            two.set()
        return True

    monkeypatch.setattr(app_module, "release_freed_memory", trim)
    daemon = build_daemon(config, bot, RecordingAPI(Path(config.database)))
    runner = threading.Thread(target=daemon.run, name="test-daemon", daemon=True)
    runner.start()
    try:
        assert two.wait(WAIT), trims   # the prune of the first round, and once ready
        assert daemon.poller.polls >= 1
    finally:
        daemon.stop()
        runner.join(WAIT)
    assert len(trims) == 2   # the next prune is an hour away
