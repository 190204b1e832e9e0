"""What type checking found: the behaviour fixed where a type did not hold, and mypy's place in CI."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from conftest import TOKEN
from test_transaction import CHAT, FakeSender, FakeSlot, PythonBot, message, queued, transaction

from chatdaemon import ChatHandler
from chatdaemon.handoff import People
from chatdaemon.store import Store
from chatdaemon.telepot_compat import build_modules
from chatdaemon.telepot_compat import exception as texception
from chatdaemon.telepot_compat.runtime import Runtime
from chatdaemon.testing import TestBot

ROOT = Path(__file__).resolve().parent.parent
OPERATOR = 900


def test_ci_runs_mypy_on_the_package_after_ruff_and_before_the_tests():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    ruff = next(i for i, line in enumerate(lines) if line.startswith("ruff check"))
    mypy = lines.index("mypy chatdaemon")
    tests = next(i for i, line in enumerate(lines) if "pytest" in line)
    assert ruff < mypy < tests


class WaitsInOnClose(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["seen"] = msg["text"]

    def on_close(self, reason):
        self.vars["closed"] = reason
        self.listener.wait(1)


def test_listener_wait_in_on_close_fails_on_close_with_a_clear_error(tmp_path, caplog):
    store = Store(str(tmp_path / "t.sqlite3"))
    try:
        txn = transaction(store, FakeSender(), FakeSlot(store), PythonBot(WaitsInOnClose))
        txn.handle(queued(store, message(1, "hi"))[0])
        with caplog.at_level(logging.ERROR, logger="chatdaemon.transaction"):
            txn.close("idle")
        assert "listener.wait() cannot be called in on_close" in caplog.text
        assert "NoneType" not in caplog.text
        # on_close failed as a whole: its change is rolled back, the update's stays
        assert store.load_conversation(CHAT).vars == {"seen": "hi"}
        assert store.backlog() == 0
    finally:
        store.close()


@pytest.fixture
def telepot_bot(telegram):
    runtime = Runtime(telegram.url)
    yield build_modules(runtime)["telepot"].Bot(TOKEN)
    runtime.close()


def test_a_getfile_answer_without_a_path_is_a_telegram_error_with_a_numeric_code(
        telepot_bot, telegram, tmp_path):
    telegram.set_next_response("getFile", 200, {"ok": True, "result": {"file_id": "F1"}})
    with pytest.raises(texception.TelegramError) as caught:
        telepot_bot.download_file("F1", str(tmp_path / "f1"))
    assert (caught.value.description, caught.value.error_code) == ("No file_path returned", 0)
    assert str(caught.value) == "getFile: 0 No file_path returned"
    assert not (tmp_path / "f1").exists()


def test_every_type_ignore_names_its_error_code_and_says_why():
    unexplained = []
    for path in sorted((ROOT / "chatdaemon").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            found = re.search(r"#\s*type:\s*ignore(\[[a-z-, ]+\])?(.*)", line)
            if found is None:
                continue
            above = number - 2   # the reason may head a run of lines that share it
            while "type: ignore" in lines[above]:
                above -= 1
            reason = found.group(2).strip(" #-—") or lines[above].strip().startswith("#")
            if not found.group(1) or not reason:
                unexplained.append(f"{path.relative_to(ROOT)}:{number}")
    assert unexplained == []


def test_a_testbot_handoff_reaches_the_operators_and_their_reply_the_person():
    with TestBot(str(ROOT / "handlers" / "support")) as bot:
        bot.bot.people = People(operators=(OPERATOR,))
        bot.send("Talk to a person", chat=1)
        assert bot.replies(1) == ["OK, I'm getting a person. Write your question here; "
                                  "they will answer in this chat."]
        assert "asks for a human" in bot.replies(OPERATOR)[0]
        bot.send("my order is late", chat=1)
        assert bot.replies(1) == []
        assert bot.replies(OPERATOR) == ["💬 User 1 (chat 1):\nmy order is late"]
        bot.send("/reply 1 Looking into it", chat=OPERATOR)
        assert bot.replies(1) == ["Looking into it"]
