"""Trees as people write them: answers as a mapping, any first message, never silence."""

from __future__ import annotations

import time

import pytest
from test_handoff import Chats

from chatdaemon import pipeline
from chatdaemon.bots import describe_definitions, load_bot
from chatdaemon.errors import ConfigError

CHAT = 8

ARTICLE = """
tree:
  say: "What do you need?"
  answers:
    Opening hours: "Monday to Friday."
    Wi-Fi:
      say: "Which network?"
      answers:
        Guest network: "cafe-guest"
        Staff network: "Ask at the counter."
    "Yes": "A label YAML would read as true, quoted."
"""

LIST = """
tree:
  say: "What do you need?"
  answers:
    - {answer: Opening hours, say: "Monday to Friday."}
    - answer: Wi-Fi
      say: "Which network?"
      answers:
        - {answer: Guest network, say: "cafe-guest"}
        - {answer: Staff network, say: "Ask at the counter."}
    - {answer: "Yes", say: "A label YAML would read as true, quoted."}
"""


@pytest.fixture
def article(tmp_path):
    chats = Chats(tmp_path, ARTICLE)
    yield chats
    chats.close()


def test_the_mapping_form_is_the_same_tree_as_the_list_form(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "bot.yaml").write_text(ARTICLE)
    (tmp_path / "b" / "bot.yaml").write_text(LIST)
    article, listed = load_bot(str(tmp_path / "a")), load_bot(str(tmp_path / "b"))
    assert article.definitions.tree.fingerprint == listed.definitions.tree.fingerprint


def test_an_article_tree_is_walked_by_label_piece_and_number(article):
    assert article.say(CHAT, "/start") == ["What do you need?"]
    assert article.sender.sent[-1]["reply_markup"]["keyboard"] == [
        [{"text": "Opening hours"}], [{"text": "Wi-Fi"}], [{"text": "Yes"}]]
    assert article.say(CHAT, "wifi") == ["Which network?"]   # no hyphen needed
    assert article.say(CHAT, "1") == ["cafe-guest"]


def test_the_message_after_a_leaf_is_asked_to_start_again(article):
    article.say(CHAT, "/start")
    article.say(CHAT, "hours")
    assert article.say(CHAT, "thanks") == ["Anything else? Start again?"]
    assert article.say(CHAT, "yes") == ["What do you need?"]
    article.say(CHAT, "hours")
    article.say(CHAT, "thanks")
    assert article.say(CHAT, "no") == ["OK. Send /start whenever you want to start again."]
    # out of the tree now: the default fallback answers, it names the command
    assert article.say(CHAT, "hello") == [
        "Sorry, I didn't understand that. Send /start to see the options."]


def test_a_tree_may_open_with_any_first_message(tmp_path):
    chats = Chats(tmp_path, ARTICLE.replace("tree:\n", "tree:\n  open_on_any_message: true\n"))
    try:
        assert chats.say(CHAT, "hello there") == ["What do you need?"]
        assert chats.say(CHAT, "hours") == ["Monday to Friday."]
        assert chats.say(CHAT, "ok") == ["Anything else? Start again?"]
    finally:
        chats.close()


@pytest.mark.parametrize(("answers", "message", "line"), [
    ("    true: yes\n", "label as true/false/null: put it in quotes", 4),
    ("    Hours: [1, 2]\n", "give what the bot says, or a mapping", 4),
    ("    Hours: {answer: x, say: y}\n", "the label is the key here", 4),
    ("    Hours: {say: y, sayy: z}\n", "unknown key 'sayy'", 4),
])
def test_mistakes_in_the_mapping_form_name_their_line(tmp_path, answers, message, line):
    (tmp_path / "bot.yaml").write_text(f"tree:\n  say: hi\n  answers:\n{answers}")
    with pytest.raises(ConfigError, match=message) as error:
        load_bot(str(tmp_path))
    assert str(error.value.where).endswith(f"bot.yaml:{line}")


def test_no_fallback_gets_the_default_and_none_is_silence_with_a_warning(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bot.yaml").write_text("handlers:\n  - {name: h, pattern: '^h$', response: hi}\n")
    default = load_bot(str(tmp_path / "a"))
    assert "  fallback: the default" in describe_definitions(default.definitions)
    chats = Chats(tmp_path, "handlers:\n  - {name: h, pattern: '^h$', response: hi}\n")
    try:
        assert chats.say(CHAT, "what?") == ["Sorry, I didn't understand that."]
    finally:
        chats.close()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bot.yaml").write_text(
        "handlers:\n  - {name: h, pattern: '^h$', response: hi}\nfallback: none\n")
    silent = load_bot(str(tmp_path / "b"))
    assert silent.definitions.fallback is None
    assert any("bot.yaml:3: fallback: none" in warning for warning in silent.warnings)
    assert "  fallback: none (on purpose: unmatched messages get no answer)" in \
        describe_definitions(silent.definitions)


SESSION = """
session_timeout: 10m
handlers:
  - name: start
    pattern: '^/start$'
    response: "menu"
    target_state: menu
  - name: in_menu
    source_states: [menu]
    pattern: '^status$'
    response: "in the menu"
fallback: "start with /start"
"""


class Clock:
    """Stands in for the time module in the pipeline: time() is whatever the test says."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()


def make_ticks_due(chats: Chats, seconds: float) -> None:
    """The waiting schedule ticks fall due now, as if `seconds` had passed; queue them."""
    with chats.store.writing() as db:
        db.execute("UPDATE inbox SET received = received - ? WHERE kind = 'schedule' AND done = 0",
                   (seconds,))
        db.execute("UPDATE schedules SET next_at = next_at - ?", (seconds,))
    chats.store.queue_due_ticks(time.time())


def test_session_timeout_returns_an_idle_conversation_to_its_start_state(tmp_path, monkeypatch):
    clock = Clock(time.time())
    monkeypatch.setattr(pipeline, "time", clock)
    chats = Chats(tmp_path, SESSION)
    try:
        chats.say(CHAT, "/start")
        assert chats.store.load_conversation(CHAT).schedules["chatdaemon.session"]["every"] == 150
        clock.now += 300                      # not idle long enough yet
        make_ticks_due(chats, 1000)
        chats.run()
        assert chats.say(CHAT, "status") == ["in the menu"]
        clock.now += 601
        make_ticks_due(chats, 2000)
        chats.run()
        conversation = chats.store.load_conversation(CHAT)
        assert conversation.state is None and "chatdaemon.session" not in conversation.schedules
        assert chats.say(CHAT, "status") == ["start with /start"]
    finally:
        chats.close()
