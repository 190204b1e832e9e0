"""chatdaemon.testing: a bot's author tests a conversation in memory, YAML or Python alike."""

from __future__ import annotations

import socket
import textwrap
import threading

import pytest
from conftest import ROOT

from chatdaemon.testing import NoReply, TestBot


@pytest.fixture(autouse=True)
def in_the_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the checkout


# -- the README's example, verbatim ------------------------------------------------------------

def test_counter_counts_each_chat_on_its_own():
    bot = TestBot("handlers/counter")
    bot.send("hello", chat=1)
    bot.send("again", chat=1)
    bot.send("hi", chat=2)
    assert bot.replies(chat=1) == ["1", "2"]
    assert bot.pop() == "1"            # chat 2's answer
    assert bot.vars(1) == {"count": 2}


def test_signup_asks_for_a_name_then_an_email():
    bot = TestBot("handlers/signup")
    bot.send("/start")
    bot.send("Ann")
    assert bot.state() == "asked_email"
    bot.send("ann@example.org")
    assert bot.replies()[-1].startswith("Thank you, Ann!")

# -- end of the README's example -----------------------------------------------------------------


def yaml_bot(tmp_path, text: str):
    directory = tmp_path / "bot"
    directory.mkdir(exist_ok=True)
    (directory / "bot.yaml").write_text(textwrap.dedent(text))
    return str(directory)


def test_no_network_and_no_thread_is_used(monkeypatch):
    def refuse(*args):
        raise AssertionError("a TestBot must not open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    before = threading.active_count()
    with TestBot("handlers/guess") as bot:
        bot.send("/start", chat=5)
        assert bot.pop().startswith("I'm thinking of a number")
        secret = bot.vars(5)["secret"]
        bot.send(str(secret), chat=5)
        assert bot.pop().startswith("correct! (1 try)")
    assert threading.active_count() == before


def test_pop_says_so_when_the_bot_sent_nothing_new(tmp_path):
    bot = TestBot(yaml_bot(tmp_path, """
        handlers:
          - {name: hi, pattern: '^hi$', response: {text: "hello"}}
        fallback: none
    """))
    bot.send("something else")       # `fallback: none`: a deliberate silence
    with pytest.raises(NoReply):
        bot.pop()
    bot.send("hi")
    assert bot.pop() == "hello"
    assert bot.replies() == []


def test_press_answers_an_inline_button_on_the_last_message(tmp_path):
    bot = TestBot(yaml_bot(tmp_path, """
        handlers:
          - name: menu
            pattern: '^/menu$'
            response: {text: "Pick one", buttons: [[{text: Red, data: red}, {text: Blue, data: blue}]]}
          - name: picked
            pattern: '^(?P<colour>red|blue)$'
            response: {text: "You picked {{ pattern.colour }}"}
            target_state: picked
    """))
    bot.send("/menu", chat=3)
    menu = bot.calls[-1]
    assert menu.params["reply_markup"]["inline_keyboard"][0][0] == {"text": "Red", "callback_data": "red"}
    bot.press("blue", chat=3)
    assert bot.replies(chat=3) == ["Pick one", "You picked blue"]
    assert bot.state(3) == "picked"
    answers = [call for call in bot.calls if call.method == "answerCallbackQuery"]
    assert len(answers) == 1                       # the spinner stopped, once


def test_tick_runs_a_schedule_the_chat_started_and_not_one_it_stopped():
    bot = TestBot("handlers/pimonitor")
    bot.send("/1m", chat=8)
    assert bot.pop().startswith("I'll report every minute")
    bot.tick("report", chat=8)
    assert bot.pop().startswith("CPU temperature:")
    bot.send("/cancel", chat=8)
    assert bot.pop() == "Stopped."
    bot.tick("report", chat=8)
    with pytest.raises(NoReply):
        bot.pop()


def test_a_failing_update_answers_the_error_text_and_keeps_the_committed_vars(tmp_path):
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: mod:Bot\nerror_text: Oops.\n")
    (directory / "mod.py").write_text(textwrap.dedent("""
        from chatdaemon import ChatHandler

        class Bot(ChatHandler):
            def on_chat_message(self, msg):
                self.vars["n"] = self.vars.get("n", 0) + 1
                if msg["text"] == "boom":
                    raise RuntimeError("boom")
                self.sender.sendMessage(self.vars["n"])
    """))
    bot = TestBot(str(directory))
    for text in ("a", "boom", "b"):
        bot.send(text)
    assert bot.replies() == ["1", "Oops.", "2"]
    assert bot.vars() == {"n": 2}


def test_users_and_environment_reach_the_templates(tmp_path):
    bot = TestBot(yaml_bot(tmp_path, """
        env: {greeting: "${GREETING}"}
        handlers:
          - name: hi
            response: {text: "{{ env.greeting }}, {{ user.first_name }} in {{ chat.type }}"}
    """), environ={"GREETING": "Howdy"})
    bot.send("x", chat=-40, user={"id": 9, "is_bot": False, "first_name": "Bo"})
    assert bot.pop() == "Howdy, Bo in group"
