"""Handoff while a Python handler waits, button tokens pruned or expired, long static button data."""

from __future__ import annotations

import pytest

from chatdaemon.handoff import People
from chatdaemon.testing import TestBot

PERSON, OPERATOR = 111, 900

WAITER = '''
from chatdaemon import ChatHandler, WaitTooLong


class Waiter(ChatHandler):
    def on_chat_message(self, msg):
        if msg.get("text") != "human":
            self.sender.sendMessage(f"bot: {msg.get('text')}")
            return
        self.sender.sendMessage("getting a person; meanwhile, your order number?")
        self.handoff()
        try:
            answer = self.listener.wait(timeout=5)
        except WaitTooLong:
            return
        self.sender.sendMessage(f"bot got {answer.get('text')}")
'''


@pytest.fixture
def waiter(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: waiter:Waiter\n")
    (tmp_path / "waiter.py").write_text(WAITER)
    with TestBot(str(tmp_path)) as bot:
        bot.bot.people = People(operators=(OPERATOR,), handoff_timeout=600)
        yield bot


def test_messages_during_a_handoff_go_to_the_operators_not_to_the_waiting_handler(waiter):
    waiter.queue("human", chat=PERSON)
    waiter.queue("order 42", chat=PERSON)   # arrives while the handler waits
    waiter.queue("hello?", chat=PERSON)
    waiter.run(PERSON)
    to_person = waiter.replies(PERSON)
    assert to_person == ["getting a person; meanwhile, your order number?"]
    to_operator = waiter.replies(OPERATOR)
    assert len(to_operator) == 3 and "asks for a human" in to_operator[0]
    assert "order 42" in to_operator[1] and "hello?" in to_operator[2]
    with waiter.store.reading() as db:
        kept = [text for (text,) in db.execute("SELECT text FROM handoff_messages ORDER BY id")]
    assert kept == ["human", "order 42", "hello?"]


def test_an_operators_done_hands_the_person_back_to_the_bot(waiter):
    waiter.queue("human", chat=PERSON)
    waiter.queue("order 42", chat=PERSON)
    waiter.run(PERSON)
    waiter.replies()
    waiter.send("/done 111", chat=OPERATOR)
    waiter.run(PERSON)
    assert "back with the bot" in waiter.replies(PERSON)[-1]
    waiter.send("again", chat=PERSON)
    assert waiter.replies(PERSON) == ["bot: again"]


def test_without_a_handoff_the_waiting_handler_still_gets_the_next_message(waiter):
    waiter.bot.people = People(operators=(), handoff_timeout=600)   # nobody to hand off to
    waiter.queue("human", chat=PERSON)
    waiter.queue("order 42", chat=PERSON)
    waiter.run(PERSON)
    assert waiter.replies(PERSON)[-1] == "bot got order 42"
