"""SIGHUP reloads the bot, and nothing a reload reads can end the daemon.

Every test runs the real `chatdaemon run` against the Bot API test double. A bad file —
bytes that are not UTF-8, a list as a key, 5,000 levels of nesting, an unknown tag, a
handler module that raises SystemExit or KeyboardInterrupt — keeps the running bot, which
goes on answering, and the log names the file and line; the next good edit is loaded.
"""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_until

from chatdaemon.bots import load_bot
from chatdaemon.errors import ConfigError

BOT_YAML = """\
handlers:
  - name: any
    response: {{text: "{version}"}}
"""

# (what it is, the file's bytes, what the log must say)
BAD_BOT_FILES = [
    ("latin-1 byte", b'handlers:\n  - name: any\n    response: {text: "caf\xe9"}\n',
     "bot.yaml:3: not UTF-8: byte 0xe9"),
    ("list as a key", b"handlers:\n  - name: any\n    ? [a, b]\n    : 1\n    response: v\n",
     "bot.yaml:3: a key must be a plain value, not a list"),
    ("5,000 levels", b"handlers: " + b"[" * 5000 + b"]" * 5000 + b"\n",
     "bot.yaml:1: nested more than 64 levels deep"),
    ("unknown tag", b"handlers: !include more.yaml\n",
     "bot.yaml:1: YAML error: could not determine a constructor for the tag '!include'"),
    ("python tag", b"handlers: !!python/object/apply:os.system [echo]\n",
     "bot.yaml:1: YAML error: could not determine a constructor"),
    ("unreadable int", b"handlers:\n  - name: any\n    priority: !!int nine\n    response: v\n",
     "bot.yaml:3: cannot read this int value"),
    ("unterminated quote", b'handlers:\n  - name: any\n    response:\n      text: "v\n\n',
     "bot.yaml:4: YAML syntax error: while scanning a quoted scalar"),
]

BAD_CONFIGS = [
    ("latin-1 byte", b'polling: {timeout: 1}\nerror_text: "d\xe9sol\xe9"\n',
     "config-0.yaml:2: not UTF-8: byte 0xe9"),
    ("not a mapping", b"- polling\n- timeout\n",
     "config-0.yaml:1: the daemon config must be a mapping of `key: value` lines, not a list"),
    ("list as a key", b"polling: {timeout: 1}\n? [a, b]\n: c\n",
     "config-0.yaml:2: a key must be a plain value, not a list"),
]

HANDLER_MODULE = '''\
import json

from chatdaemon import ChatHandler

VERSION = "{version}"


class Bot(ChatHandler):
    def on_chat_message(self, msg):
        self.sender.sendMessage(VERSION + " " + json.dumps(msg.get("text")))
'''

# appended to a module that would answer "bad": (the line, what the log must say)
BAD_MODULE_ENDINGS = [
    ("raise SystemExit(3)", "SystemExit: 3"),
    ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ("import sys; sys.exit(0)", "SystemExit: 0"),
    ("raise ValueError('broken')", "ValueError: broken"),
    ("def broken(:", "SyntaxError"),
]

GATED_MODULE = '''\
import os
import time

from chatdaemon import ChatHandler

HERE = os.path.dirname(__file__)
with open(os.path.join(HERE, "importing"), "a") as marker:
    marker.write("import\\n")
deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(HERE, "go")) and time.monotonic() < deadline:
    time.sleep(0.01)


class Bot(ChatHandler):
    def on_chat_message(self, msg):
        self.sender.sendMessage("up")
'''


class Chats:
    """A fresh chat id for every question, so each answer is easy to find."""

    def __init__(self, start: int):
        self.next = start

    def ask(self, telegram, text: str = "hi") -> int:
        self.next += 1
        telegram.push_message(self.next, text)
        return self.next


def lines_with(daemon, text: str) -> list[str]:
    return [line for line in daemon.log().splitlines() if text in line]


def hang_up(daemon, expect: str) -> str:
    """SIGHUP, then the first new log line containing `expect` (reload failed / reloaded:)."""
    before = len(lines_with(daemon, expect))
    daemon.process.send_signal(signal.SIGHUP)
    assert wait_until(lambda: len(lines_with(daemon, expect)) > before, timeout=10), daemon.log()
    return lines_with(daemon, expect)[before]


def answers(telegram, chats: Chats, expected: str, text: str = "hi") -> None:
    chat = chats.ask(telegram, text)
    assert telegram.wait_for(lambda: telegram.sent_to(chat) == [expected], timeout=10), \
        telegram.sent_to(chat)


def test_a_bad_yaml_file_or_config_keeps_the_running_bot(telegram, start_daemon, tmp_path):
    bot_file = tmp_path / "bot" / "bot.yaml"
    bot_file.parent.mkdir()
    bot_file.write_text(BOT_YAML.format(version="v1"))
    daemon = start_daemon(bot_file.parent)
    chats = Chats(1000)
    answers(telegram, chats, "v1")

    for what, content, expected in BAD_BOT_FILES:
        bot_file.write_bytes(content)
        failure = hang_up(daemon, "reload failed")
        assert expected in failure and "stays as it was" in failure, (what, failure)
        answers(telegram, chats, "v1")
    bot_file.write_text(BOT_YAML.format(version="v1"))

    config_file = tmp_path / "config-0.yaml"
    good_config = config_file.read_bytes()
    for what, content, expected in BAD_CONFIGS:
        config_file.write_bytes(content)
        failure = hang_up(daemon, "reload failed")
        assert expected in failure, (what, failure)
        answers(telegram, chats, "v1")
    config_file.write_bytes(good_config)

    bot_file.write_text(BOT_YAML.format(version="v2"))
    hang_up(daemon, "reloaded:")
    answers(telegram, chats, "v2")
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.log()
    assert daemon.stop() == 0


def test_a_handler_module_that_raises_anything_keeps_the_running_bot(telegram, start_daemon,
                                                                     tmp_path):
    # the module is called json: it must neither shadow the standard library (which the
    # daemon itself uses) nor be shadowed by it
    directory = tmp_path / "pybot"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: json:Bot\n")
    module = directory / "json.py"
    module.write_text(HANDLER_MODULE.format(version="v1"))
    daemon = start_daemon(directory)
    chats = Chats(2000)
    answers(telegram, chats, 'v1 "hi"')

    lines = HANDLER_MODULE.format(version="bad").count("\n")
    for ending, expected in BAD_MODULE_ENDINGS:
        module.write_text(HANDLER_MODULE.format(version="bad") + ending + "\n")
        failure = hang_up(daemon, "reload failed")
        assert f"json.py:{lines + 1}: cannot import json: {expected}" in failure, failure
        assert daemon.process.poll() is None, f"{ending} ended the daemon"
        answers(telegram, chats, 'v1 "hi"')

    module.write_text(HANDLER_MODULE.format(version="v2"))
    hang_up(daemon, "reloaded:")
    answers(telegram, chats, 'v2 "again"', text="again")
    assert daemon.stop() == 0


def test_sighup_while_the_bot_is_loading_is_remembered_not_fatal(telegram, start_daemon, tmp_path):
    directory = tmp_path / "gated"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: gate:Bot\n")
    (directory / "gate.py").write_text(GATED_MODULE)
    marker = directory / "importing"
    daemon = start_daemon(directory)
    assert wait_until(marker.exists, timeout=20), daemon.log()
    daemon.process.send_signal(signal.SIGHUP)  # the default action would end the process
    daemon.process.send_signal(signal.SIGHUP)
    (directory / "go").touch()
    chat = Chats(3000).ask(telegram)
    assert telegram.wait_for(lambda: telegram.sent_to(chat) == ["up"], timeout=20), daemon.log()
    # remembered: once running, the bot is loaded again (so an edit made meanwhile counts)
    assert wait_until(lambda: "reloaded:" in daemon.log(), timeout=10), daemon.log()
    assert marker.read_text().count("import") == 2
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_sigterm_while_the_bot_is_loading_stops_cleanly_before_polling(telegram, start_daemon,
                                                                       tmp_path):
    directory = tmp_path / "gated"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: gate:Bot\n")
    (directory / "gate.py").write_text(GATED_MODULE)
    daemon = start_daemon(directory)
    assert wait_until((directory / "importing").exists, timeout=20), daemon.log()
    daemon.process.send_signal(signal.SIGTERM)
    (directory / "go").touch()
    assert daemon.wait(timeout=20) == 0, daemon.log()
    assert telegram.calls_to("getUpdates") == []
    assert "stopped before it started" in daemon.log()


# -- handler modules live in their own package -----------------------------------------------

def python_bot(directory: Path, module: str, source: str, **neighbours: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bot.yaml").write_text(f"python: {module}:Bot\n")
    (directory / f"{module}.py").write_text(textwrap.dedent(source))
    for name, text in neighbours.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(text))
    return directory


def test_a_module_named_like_the_standard_library_shadows_nothing(tmp_path):
    import json
    bot = load_bot(str(python_bot(tmp_path / "a", "json", """
        from chatdaemon import ChatHandler
        class Bot(ChatHandler):
            pass
    """)))
    assert sys.modules["json"] is json and json.dumps([1]) == "[1]"
    assert bot.handler_class.__module__.startswith("chatdaemon_bots.")
    assert not any(str(tmp_path) in entry for entry in sys.path)


def test_two_bots_with_the_same_module_name_do_not_collide(tmp_path):
    source = """
        from chatdaemon import ChatHandler
        from . import helper
        class Bot(ChatHandler):
            WORD = helper.WORD
    """
    first = load_bot(str(python_bot(tmp_path / "a", "handler", source, helper="WORD = 'a'\n")))
    second = load_bot(str(python_bot(tmp_path / "b", "handler", source, helper="WORD = 'b'\n")))
    assert (first.handler_class.WORD, second.handler_class.WORD) == ("a", "b")
    assert first.handler_class.__module__ != second.handler_class.__module__


def test_loading_again_runs_the_edited_module_and_its_neighbours(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as on a Pi: .pyc files are written
    source = """
        from chatdaemon import ChatHandler
        from . import helper
        class Bot(ChatHandler):
            WORD = helper.WORD
    """
    directory = python_bot(tmp_path / "a", "handler", source, helper="WORD = 'old'\n")
    old = load_bot(str(directory))
    (directory / "helper.py").write_text("WORD = 'new'\n")  # same size, same second
    assert load_bot(str(directory)).handler_class.WORD == "new"
    assert old.handler_class.WORD == "old"


@pytest.mark.parametrize("ending", ["raise SystemExit(3)", "raise KeyboardInterrupt"])
def test_a_failed_load_keeps_the_modules_the_running_bot_came_from(tmp_path, ending):
    source = """
        from chatdaemon import ChatHandler
        from . import helper
        class Bot(ChatHandler):
            WORD = helper.WORD
    """
    directory = python_bot(tmp_path / "a", "handler", source, helper="WORD = 'old'\n")
    running = load_bot(str(directory))
    package = running.handler_class.__module__.rpartition(".")[0]
    (directory / "handler.py").write_text(textwrap.dedent(source) + ending + "\n")
    with pytest.raises(ConfigError, match="cannot import handler"):
        load_bot(str(directory))
    assert sys.modules[f"{package}.helper"].WORD == "old"
    assert sys.modules[running.handler_class.__module__].Bot is running.handler_class
