"""Human handoff in-process: a bot from YAML, a real store, real transactions, recorded sends."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from chatdaemon.bots import load_bot
from chatdaemon.config import load_config
from chatdaemon.errors import ConfigError
from chatdaemon.handoff import TIMER, People
from chatdaemon.inbox import to_row
from chatdaemon.store import Store
from chatdaemon.transaction import UpdateTransaction

PERSON, OPERATOR = 111, 900

BOT = """
handlers:
  - name: start
    pattern: '^/start$'
    response: {text: "menu", keyboard: [["Help"], ["Human"]]}
  - name: human
    pattern: '(?i)^human$'
    response: "getting a person"
    handoff: true
fallback: "fallback"
"""


class Sends:
    """A sender that records what goes to each chat and numbers the messages."""

    def __init__(self):
        self.sent: list[dict] = []
        self.token_rejected = False
        self._ids = itertools.count(1)

    def call(self, method, params=None, *, on_migrate=None, check=None, waiting=None):
        if check is not None:
            check()
        record = {"method": method, **dict(params or {}), "message_id": next(self._ids)}
        self.sent.append(record)
        return {"message_id": record["message_id"], "chat": {"id": record.get("chat_id")}}

    def to(self, chat_id: int) -> list[str]:
        return [r["text"] for r in self.sent if r.get("chat_id") == chat_id and "text" in r]


class Slot:
    def __init__(self):
        self.abandoned = False
        self.woken: list[int] = []

    def handling(self, update_id):
        pass

    def handled(self):
        pass

    def pause(self):
        pass

    def resume(self):
        pass

    def wait_for_work(self, timeout):
        return "idle"

    def hold_chat(self, chat_id):
        pass

    def release_chat(self, chat_id):
        pass

    def count(self, name):
        pass

    def wake(self, chat_ids):
        self.woken.extend(chat_ids)


class Chats:
    """Chats with one bot: push messages, run every chat's pending rows, read what was sent."""

    def __init__(self, tmp_path: Path, yaml_text: str, people: People | None = None,
                 db: Path | None = None):
        directory = tmp_path / "bot"
        directory.mkdir(exist_ok=True)
        (directory / "bot.yaml").write_text(yaml_text)
        self.bot = load_bot(str(directory))
        self.bot.people = people or People()
        self.db = db or tmp_path / "chats.sqlite3"
        self.store = Store(str(self.db))
        self.sender = Sends()
        self.slot = Slot()
        self._transactions: dict[int, UpdateTransaction] = {}
        self._ids = itertools.count((self.store.last_update_id() or 0) + 1)

    def push(self, chat_id: int, text: str, **extra) -> int:
        update_id = next(self._ids)
        message = {"message_id": update_id, "date": 0, "text": text,
                   "from": {"id": chat_id, "is_bot": False, "first_name": f"P{chat_id}",
                            "username": f"p{chat_id}"},
                   "chat": {"id": chat_id, "type": "private"}, **extra}
        self.store.add_updates([to_row({"update_id": update_id, "message": message})])
        return update_id

    def press(self, chat_id: int, data: str) -> None:
        update_id = next(self._ids)
        query = {"id": f"q{update_id}", "data": data, "chat_instance": "x",
                 "from": {"id": chat_id, "is_bot": False, "first_name": "P"},
                 "message": {"message_id": 1, "chat": {"id": chat_id, "type": "private"}}}
        self.store.add_updates([to_row({"update_id": update_id, "callback_query": query})])
        self.run()

    def say(self, chat_id: int, text: str, **extra) -> list[str]:
        """Send a message, handle everything it sets off; what the bot sent to that chat."""
        before = len(self.sender.to(chat_id))
        self.push(chat_id, text, **extra)
        self.run()
        return self.sender.to(chat_id)[before:]

    def run(self) -> None:
        for _ in range(50):  # bounded: every round handles every pending row
            chats = self.store.pending_chats()
            if not chats:
                return
            for chat_id in chats:
                transaction = self._transaction(chat_id)
                for row in self.store.pending(chat_id):
                    transaction.handle(row)
        raise AssertionError("rows kept coming")

    def _transaction(self, chat_id: int) -> UpdateTransaction:
        if chat_id not in self._transactions:
            self._transactions[chat_id] = UpdateTransaction(
                chat_id, self.store, self.sender, self.bot, self.slot, sleep=lambda s: False)
        return self._transactions[chat_id]

    def message_about(self, operator: int, piece: str) -> dict:
        return next(r for r in self.sender.sent if r.get("chat_id") == operator
                    and piece in r.get("text", ""))

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def desk(tmp_path):
    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR,), handoff_timeout=60))
    yield chats
    chats.close()


def test_a_reply_by_message_id_alone_reaches_the_person(desk):
    assert desk.say(PERSON, "human") == ["getting a person"]
    notice = desk.message_about(OPERATOR, "asks for a human")
    assert "P111 (@p111, chat 111)" in notice["text"] and "human" in notice["text"]
    # the mapping alone (no text in reply_to_message) names the person
    assert desk.say(OPERATOR, "hello Ann", reply_to_message={"message_id": notice["message_id"]}) \
        == ["✓ Sent to P111 (@p111, chat 111)."]
    assert desk.sender.to(PERSON)[-1] == "hello Ann"


def test_the_person_is_not_answered_by_the_bot_while_with_a_human(desk):
    desk.say(PERSON, "human")
    assert desk.say(PERSON, "anything") == []  # no fallback
    assert desk.say(PERSON, "/start") == []    # nor a handler
    assert "💬 P111 (@p111, chat 111):\n/start" in desk.sender.to(OPERATOR)


def test_handoff_state_is_in_the_database_not_in_memory(desk, tmp_path):
    desk.say(PERSON, "human")
    desk.say(PERSON, "are you there?")
    notice = desk.message_about(OPERATOR, "are you there?")
    desk.close()
    again = Chats(tmp_path, BOT, People(operators=(OPERATOR,)), db=desk.db)
    try:
        assert again.say(PERSON, "still waiting") == []
        again.say(OPERATOR, "yes!", reply_to_message={"message_id": notice["message_id"]})
        assert again.sender.to(PERSON) == ["yes!"]
    finally:
        again.close()


def test_a_failed_update_queues_nothing_for_the_operators(desk):
    desk.say(PERSON, "human")
    sent = len(desk.sender.to(OPERATOR))
    original = desk.sender.call

    def fail_for_operator(method, params=None, **kw):
        if (params or {}).get("chat_id") == OPERATOR:
            raise RuntimeError("boom")
        return original(method, params, **kw)
    desk.sender.call = fail_for_operator
    desk.say(OPERATOR, "/unread")   # the operator's update fails and rolls back
    desk.sender.call = original
    with desk.store.reading() as db:
        assert db.execute("SELECT COUNT(*) FROM inbox WHERE done = 0"
                          " AND kind != 'schedule'").fetchone() == (0,)   # the timer's tick waits
    assert len(desk.sender.to(OPERATOR)) == sent


def make_ticks_due(chats: Chats, seconds: float) -> None:
    """The waiting schedule ticks fall due now, as if `seconds` had passed; queue them."""
    with chats.store.writing() as db:
        db.execute("UPDATE inbox SET received = received - ? WHERE kind = 'schedule' AND done = 0",
                   (seconds,))
        db.execute("UPDATE schedules SET next_at = next_at - ?", (seconds,))
    chats.store.queue_due_ticks(time.time())


def age_messages(chats: Chats, seconds: float) -> None:
    """The person's messages were written `seconds` earlier (instead of waiting that long)."""
    with chats.store.writing() as db:
        db.execute("UPDATE handoff_messages SET received = received - ?", (seconds,))


def test_timeout_hands_back_only_when_nobody_answered(tmp_path):
    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR,), handoff_timeout=1))
    try:
        chats.say(PERSON, "human")
        conversation = chats.store.load_conversation(PERSON)
        assert conversation.schedules[TIMER]["every"] == 1.0
        chats.say(OPERATOR, "/reply 111 on it")
        age_messages(chats, 5)
        make_ticks_due(chats, 5)
        chats.run()
        assert "back with" not in " ".join(chats.sender.to(PERSON))
        chats.say(PERSON, "hello?")
        age_messages(chats, 5)
        make_ticks_due(chats, 10)
        chats.run()
        assert "nobody could answer in time" in chats.sender.to(PERSON)[-1]
        assert chats.say(PERSON, "/start") == ["menu"]
        assert TIMER not in chats.store.load_conversation(PERSON).schedules
        with chats.store.reading() as db:  # what the person wrote is not kept once it ends
            assert [db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in
                    ("handoffs", "handoff_messages")] == [0, 0]
    finally:
        chats.close()


def test_a_python_handler_hands_off_with_self_handoff(tmp_path):
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "handler.py").write_text(
        "from chatdaemon import ChatHandler\n"
        "class Handler(ChatHandler):\n"
        "    def on_chat_message(self, msg):\n"
        "        self.sender.sendMessage('a person will answer')\n"
        "        self.handoff(note='needs help with ' + msg['text'])\n")
    chats = Chats(tmp_path, "python: handler:Handler\n", People(operators=(OPERATOR,)))
    try:
        assert chats.say(PERSON, "billing") == ["a person will answer"]
        assert "needs help with billing" in chats.sender.to(OPERATOR)[0]
        assert chats.say(PERSON, "more") == []
    finally:
        chats.close()


def test_operators_and_handoff_timeout_in_the_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("operators: [900, -1001]\nhandoff_timeout: 120\nforget_command: off\n")
    loaded = load_config(str(config))
    assert (loaded.operators, loaded.handoff_timeout, loaded.forget_command) == \
        ((900, -1001), 120.0, None)
    config.write_text("handoff_timeout: 0.5\n")
    with pytest.raises(ConfigError, match="handoff_timeout"):
        load_config(str(config))
    config.write_text("forget_command: forget me\n")
    with pytest.raises(ConfigError, match="c.yaml:1"):
        load_config(str(config))


def test_handoff_must_be_true_or_false(tmp_path):
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "bot.yaml").write_text(
        "handlers:\n  - name: h\n    response: hi\n    handoff: yes please\n")
    with pytest.raises(ConfigError, match="handoff must be true or false"):
        load_bot(str(directory))


def test_an_operator_reply_without_text_is_refused_not_sent_as_a_placeholder(desk):
    desk.say(PERSON, "human")
    notice = desk.message_about(OPERATOR, "asks for a human")
    before = list(desk.sender.to(PERSON))
    told = desk.say(OPERATOR, "", sticker={"file_id": "s"},
                    reply_to_message={"message_id": notice["message_id"]})
    assert told == ["Only text, a photo or a document reaches a person from here; nothing was sent."]
    assert desk.sender.to(PERSON) == before


def test_check_says_who_answers_a_handoff(tmp_path, capsys):
    from conftest import HANDLERS

    from chatdaemon.cli import main
    assert main(["check", "--handlers", str(HANDLERS / "orders")]) == 0
    assert "handoff: no operators in the config, so a handoff tells the person nobody is " \
        "available; forget command: /forget" in capsys.readouterr().out
    config = tmp_path / "c.yaml"
    config.write_text("operators: [900]\nhandoff_timeout: 120\nforget_command: off\n")
    assert main(["check", "--handlers", str(HANDLERS / "support"), "--config", str(config)]) == 0
    assert "operators: 900; handoff after person, bot again after 120 s unanswered; " \
        "forget command: off" in capsys.readouterr().out


def test_stopping_all_of_a_chats_schedules_keeps_the_daemons_timers():
    from chatdaemon import ChatHandler
    from chatdaemon.store import Conversation
    conversation = Conversation(PERSON, None, {}, schedules={TIMER: {"every": 5.0},
                                                             "mine": {"every": 60.0}})
    ChatHandler(Slot(), conversation, Sends()).stop_schedule()
    assert conversation.schedules == {TIMER: {"every": 5.0}}
