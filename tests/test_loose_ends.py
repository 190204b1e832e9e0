"""Handoff while a Python handler waits, button tokens pruned or expired, long static button data."""

from __future__ import annotations

import time

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
            answer = self.listener.wait(timeout=60)
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


# -- long button data: kept under a token, pruned, and answered as expired once gone ----------

LONG = "order:" + "x" * 80   # over Telegram's 64 bytes of callback_data

BUTTONS = f"""
handlers:
  - name: menu
    pattern: '^/menu$'
    response:
      text: "pick"
      buttons: [[{{text: "Static", data: "{LONG}"}}, {{text: "Made", data: "made:{{{{ user.id }}}}"}}]]
  - name: chosen
    pattern: '^order:(?P<rest>x+)$'
    response: "ordered {{{{ pattern.rest | length }}}}"
fallback: "send /menu"
"""


@pytest.fixture
def buttons(tmp_path):
    (tmp_path / "bot.yaml").write_text(BUTTONS)
    with TestBot(str(tmp_path)) as bot:
        yield bot


def sent_buttons(bot: TestBot) -> list[str]:
    call = [c for c in bot.calls if c.method == "sendMessage"][-1]
    return [b["callback_data"] for b in call.params["reply_markup"]["inline_keyboard"][0]]


def token_rows(bot: TestBot) -> list[tuple]:
    with bot.store.reading() as db:
        return db.execute("SELECT token, data, chat_id FROM button_tokens").fetchall()


def test_static_button_data_over_64_bytes_goes_under_a_token(buttons):
    buttons.send("/menu", chat=PERSON)
    static, made = sent_buttons(buttons)
    assert static.startswith("~t:") and len(static.encode()) <= 64
    assert made == f"made:{PERSON}"   # short data goes out as it is
    assert (static, LONG, PERSON) in token_rows(buttons)
    buttons.replies()
    buttons.press(static, chat=PERSON)
    assert buttons.replies(PERSON) == ["ordered 80"]


def test_check_warns_about_long_static_data_instead_of_failing(buttons, tmp_path):
    from chatdaemon.bots import load_bot
    bot = load_bot(str(tmp_path))
    assert any("longer than Telegram's 64 bytes" in w and "token" in w for w in bot.warnings)


def test_a_hooks_long_static_button_data_is_still_refused(tmp_path):
    from chatdaemon.bots import load_bot
    from chatdaemon.errors import ConfigError
    (tmp_path / "bot.yaml").write_text(
        "handlers: [{name: a, response: hi}]\n"
        "hooks:\n"
        "  - name: ping\n"
        "    key: a-long-enough-hook-key-123\n"
        "    recipients: [1]\n"
        f"    response: {{text: hi, buttons: [[{{text: go, data: \"{LONG}\"}}]]}}\n")
    with pytest.raises(ConfigError, match="hook ping: button data is longer"):
        load_bot(str(tmp_path))


def test_a_pruned_buttons_press_is_answered_as_expired(buttons):
    from chatdaemon.store import Retention
    buttons.send("/menu", chat=PERSON)
    static = sent_buttons(buttons)[0]
    buttons.replies()
    # a month and a day later (no forget_conversations_after): the token is gone
    later = time.time() + 31 * 86400
    buttons.store.apply_retention(Retention(max_database_bytes=0), now=later)
    assert token_rows(buttons) == []
    buttons.press(static, chat=PERSON)
    answers = [c.params for c in buttons.calls if c.method == "answerCallbackQuery"]
    assert answers[-1].get("text") == "This button has expired."
    assert buttons.replies(PERSON) == []   # no fallback for a token: a clear answer instead


def test_a_number_typed_for_a_pruned_button_says_it_expired(buttons):
    from chatdaemon.store import Retention
    buttons.send("/menu", chat=PERSON)
    buttons.replies()
    buttons.store.apply_retention(Retention(max_database_bytes=0), now=time.time() + 31 * 86400)
    buttons.send("1", chat=PERSON)
    assert buttons.replies(PERSON) == ["This button has expired."]


def test_tokens_go_with_their_conversation_and_by_the_conversations_age(buttons):
    from chatdaemon.store import Retention
    buttons.send("/menu", chat=PERSON)
    buttons.send("/menu", chat=PERSON + 1)
    assert len(token_rows(buttons)) == 2
    # kept while young, even when conversations are forgotten after a day
    day = Retention(max_database_bytes=0, forget_conversations_after=86400)
    buttons.store.apply_retention(day, now=time.time() + 60)
    assert len(token_rows(buttons)) == 2
    with buttons.store.writing() as db:   # one chat's conversation is gone (forgotten)
        db.execute("DELETE FROM conversations WHERE chat_id = ?", (PERSON + 1,))
    buttons.store.apply_retention(day, now=time.time() + 60)
    assert [row[2] for row in token_rows(buttons)] == [PERSON]
    # the same button sent again is as new: its age starts again
    with buttons.store.writing() as db:
        db.execute("UPDATE button_tokens SET created = created - 2 * 86400")
    buttons.send("/menu", chat=PERSON)
    buttons.store.apply_retention(day, now=time.time() + 60)
    assert [row[2] for row in token_rows(buttons)] == [PERSON]
    buttons.store.apply_retention(day, now=time.time() + 2 * 86400)
    assert token_rows(buttons) == []


# -- typed numbers for a Python ChatHandler's reply keyboard -------------------------------

KEYBOARDS = '''
from chatdaemon import ChatHandler


class Menu(ChatHandler):
    def on_chat_message(self, msg):
        text = msg.get("text")
        if text == "/menu":
            self.sender.sendMessage("drink?", reply_markup={
                "keyboard": [["Tea", "Coffee"], [{"text": "Water"}]], "resize_keyboard": True})
        elif text == "/amount":
            self.sender.sendMessage("how many?", reply_markup={"keyboard": [["1", "5", "10"]]})
        elif text == "/none":
            self.sender.sendMessage("ok", reply_markup={"remove_keyboard": True})
        else:
            self.sender.sendMessage(f"got {text}")
'''


@pytest.fixture
def menu(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: menu:Menu\n")
    (tmp_path / "menu.py").write_text(KEYBOARDS)
    with TestBot(str(tmp_path)) as bot:
        yield bot


def test_a_typed_number_picks_the_python_bots_keyboard_option(menu):
    menu.send("/menu", chat=PERSON)
    menu.send("2", chat=PERSON)
    menu.send("3", chat=PERSON)    # the keyboard stays until another replaces or removes it
    menu.send("4", chat=PERSON)    # no fourth option: the text as typed
    assert menu.replies(PERSON) == ["drink?", "got Coffee", "got Water", "got 4"]


def test_the_python_bots_keyboard_survives_a_restart(menu):
    menu.send("/menu", chat=PERSON)
    menu.end(PERSON)               # the handler ends; the next update meets a new one
    menu.send("1", chat=PERSON)
    assert menu.replies(PERSON) == ["drink?", "got Tea"]


def test_numbers_stay_numbers_after_a_keyboard_of_numbers_or_none(menu):
    menu.send("/amount", chat=PERSON)
    menu.send("2", chat=PERSON)
    menu.send("/menu", chat=PERSON)
    menu.send("/none", chat=PERSON)
    menu.send("1", chat=PERSON)
    assert menu.replies(PERSON) == ["how many?", "got 2", "drink?", "ok", "got 1"]


def test_typed_numbers_are_per_member_in_a_per_user_group(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: menu:Menu\nconversation: per_user\n")
    (tmp_path / "menu.py").write_text(KEYBOARDS)
    group = -77
    with TestBot(str(tmp_path)) as bot:
        bot.send("/menu", chat=group, user=1)
        bot.send("1", chat=group, user=2)   # no keyboard was sent for member 2
        bot.send("1", chat=group, user=1)
        assert bot.replies(group) == ["drink?", "got 1", "got Tea"]


def test_e2e_a_waiting_handlers_chat_with_a_human_reaches_the_operator(
        telegram, start_daemon, tmp_path):
    bot = tmp_path / "waiter"
    bot.mkdir()
    (bot / "bot.yaml").write_text("python: waiter:Waiter\n")
    (bot / "waiter.py").write_text(WAITER)
    start_daemon(bot, config={"operators": [OPERATOR]})
    telegram.push_message(PERSON, "human")
    assert telegram.wait_for(lambda: any("asks for a human" in t
                                         for t in telegram.sent_to(OPERATOR)), 20)
    telegram.push_message(PERSON, "order 42")   # the handler is waiting in listener.wait()
    assert telegram.wait_for(lambda: any("order 42" in t for t in telegram.sent_to(OPERATOR)), 20)
    telegram.push_message(OPERATOR, "/done 111")
    assert telegram.wait_for(lambda: any("back with the bot" in t
                                         for t in telegram.sent_to(PERSON)), 20)
    # back with the bot: the handler, still waiting, gets the next message, and only that one
    telegram.push_message(PERSON, "sentinel")
    assert telegram.wait_for(lambda: "bot got sentinel" in telegram.sent_to(PERSON), 20)
    assert not any("order 42" in text for text in telegram.sent_to(PERSON))
