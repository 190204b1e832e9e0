"""A typed number picks an option of the latest keyboard: on Telegram and in `chat` alike."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import HANDLERS, ROOT
from test_handoff import Chats

CHAT = 5

MENU = """
handlers:
  - name: start
    pattern: '^/start$'
    response: {text: "menu", keyboard: [["Tea", "Coffee"], ["Quantity"]]}
  - name: tea
    pattern: '^Tea$'
    response: {text: "tea it is", remove_keyboard: true}
  - name: coffee
    pattern: '^Coffee$'
    response: "coffee it is"
  - name: quantity
    pattern: '^Quantity$'
    response: {text: "how many?", keyboard: [["1", "2"]]}
    target_state: counting
  - name: count
    source_states: [counting]
    pattern: '^(?P<n>\\d+)$'
    response: "you want {{ pattern.n }}"
  - name: buttons
    pattern: '^/buttons$'
    response:
      text: "pick"
      buttons: [[{text: "Yes", data: "yes"}, {text: "Docs", url: "https://example.org/docs"}]]
  - name: pressed
    pattern: '^yes$'
    response: "pressed yes"
  - name: many
    pattern: '^/many$'
    response:
      text: "<b>many</b>"
      parse_mode: HTML
      keyboard: [{% for i in range(1, 15) %}["Option {{ i }}<"],{% endfor %}]
  - name: long
    pattern: '^/long$'
    response:
      text: "long"
      keyboard: [["A label far too long to fit on one button of a phone screen"], ["Short"]]
  - name: option
    pattern: '^Option (?P<n>\\d+)<$'
    response: "option {{ pattern.n }}"
  - name: short
    pattern: '^Short$'
    response: "short"
fallback: "fallback"
"""


@pytest.fixture
def chats(tmp_path):
    # the keyboard of /many is built by a loop: write it out as YAML rows instead
    rows = "".join(f'["Option {i}<"], ' for i in range(1, 15))
    text = MENU.replace('[{% for i in range(1, 15) %}["Option {{ i }}<"],{% endfor %}]', f"[{rows}]")
    bot = Chats(tmp_path, text)
    yield bot
    bot.close()


def test_a_number_picks_the_option_of_the_latest_keyboard(chats):
    chats.say(CHAT, "/start")
    assert chats.say(CHAT, "2") == ["coffee it is"]      # rows are numbered left to right
    assert chats.say(CHAT, "1") == ["tea it is"]         # the keyboard is still there
    assert chats.say(CHAT, "1") == ["fallback"]          # tea removed it: 1 is just text
    assert chats.say(CHAT, "9") == ["fallback"]          # out of range: just text


def test_a_handler_whose_own_pattern_takes_the_number_comes_first(chats):
    chats.say(CHAT, "/start")
    assert chats.say(CHAT, "3") == ["how many?"]
    assert chats.say(CHAT, "2") == ["you want 2"]
    assert chats.say(CHAT, "17") == ["you want 17"]


def test_a_number_presses_an_inline_button_or_gives_a_link(chats):
    chats.say(CHAT, "/buttons")
    assert chats.say(CHAT, "1") == ["pressed yes"]
    assert chats.say(CHAT, "2") == ["https://example.org/docs"]


def test_options_that_do_not_fit_become_a_numbered_list(chats):
    chats.say(CHAT, "/many")
    listed = chats.sender.sent[-1]
    assert listed["reply_markup"] == {"remove_keyboard": True}
    assert "1. Option 1&lt;\n" in listed["text"] and "14. Option 14&lt;" in listed["text"]
    assert chats.say(CHAT, "13") == ["option 13"]
    chats.say(CHAT, "/long")
    assert "2. Short" in chats.sender.sent[-1]["text"]
    assert chats.say(CHAT, "2") == ["short"]


def test_the_latest_keyboard_survives_a_restart(chats, tmp_path):
    chats.say(CHAT, "/start")
    chats.close()
    again = Chats(tmp_path, "handlers:\n  - {name: c, pattern: '^Coffee$', response: coffee}\n"
                  "fallback: fallback\n", db=chats.db)
    try:
        assert again.say(CHAT, "2") == ["coffee"]
    finally:
        again.close()


def chat(handlers, lines: list[str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "chatdaemon", "chat", "--handlers", str(handlers),
                           *args], input="".join(f"{line}\n" for line in lines),
                          capture_output=True, text=True, timeout=120, env=env)


def test_chat_numbers_go_to_the_bot_as_typed_and_buttons_with_tap(tmp_path):
    bot = tmp_path / "bot"
    bot.mkdir()
    rows = "".join(f'["Option {i}<"], ' for i in range(1, 15))
    (bot / "bot.yaml").write_text(MENU.replace(
        '[{% for i in range(1, 15) %}["Option {{ i }}<"],{% endfor %}]', f"[{rows}]"))
    done = chat(bot, ["/buttons", "/start", "/tap 1", "2", "/tap 9"])
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "  [2] Docs → https://example.org/docs" in out
    # /tap presses the latest inline buttons; 2 picks from the latest keyboard (/start's)
    assert out[out.index("you: /tap 1") + 1] == "bot: pressed yes"
    assert out[out.index("you: 2") + 1] == "bot: coffee it is"
    assert "(no such button" in out[out.index("you: /tap 9") + 1]
    assert "/as NAME" in done.stderr  # the banner; piped output stays the conversation


def test_chat_several_people_and_a_visible_silence(tmp_path):
    bot = tmp_path / "bot"
    bot.mkdir()
    (bot / "bot.yaml").write_text(
        "handlers:\n  - {name: hi, pattern: '^hi$', response: 'hi {{ user.first_name }}'}\n"
        "fallback: none\n")
    done = chat(bot, ["hi", "/as Bea", "hi", "unknown"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "you: hi", "bot: hi You", "you: /as Bea", "(you are Bea now, chat 1002)",
        "you: hi", "bot: hi Bea", "you: unknown", "(no answer: the bot sent nothing)"]


def test_chat_shows_the_operators_side_of_a_handoff(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("operators: [900]\n")
    done = chat(HANDLERS / "support", ["/start", "3", "/as 900", "/reply 1001 hello", "/as You"],
                "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "bot → chat 900: 🙋 You (@you, chat 1001) asks for a human:" in done.stdout
    assert "bot → You: hello" in done.stdout


def test_orders_menu_number_on_telegram(telegram, start_daemon):
    start_daemon(HANDLERS / "orders")
    telegram.push_message(7, "/start")
    telegram.push_message(7, "1")
    assert telegram.wait_for(lambda: len(telegram.sent_to(7)) == 2, 20)
    assert telegram.sent_to(7)[1] == "Your order number?"


ROWS = """
env:
  sizes: "S,M,L"
handlers:
  - name: sizes
    pattern: '^/sizes$'
    response:
      text: "which size?"
      keyboard: "{{ env.sizes.split(',') | tojson }}"
  - name: links
    pattern: '^/links$'
    response:
      text: "links"
      buttons: >-
        [[{'text': 'Docs', 'url': 'https://example.org'},
          {'text': 'More', 'data': '{{ 'm' * 80 }}'}]]
  - name: size
    pattern: '^(?P<s>[SML])$'
    response: "size {{ pattern.s }}"
  - name: more
    pattern: '^m{80}$'
    response: "more"
  - name: broken
    pattern: '^/broken$'
    response: {text: "x", keyboard: "{{ 'not rows' }}"}
    on_error: "the keyboard did not render"
fallback: "fallback"
"""


def test_keyboards_and_buttons_from_a_template_that_renders_rows(tmp_path):
    chats = Chats(tmp_path, ROWS)
    try:
        chats.say(CHAT, "/sizes")
        assert chats.sender.sent[-1]["reply_markup"]["keyboard"] == [
            [{"text": "S"}], [{"text": "M"}], [{"text": "L"}]]
        assert chats.say(CHAT, "2") == ["size M"]
        chats.say(CHAT, "/links")
        [[docs, more]] = chats.sender.sent[-1]["reply_markup"]["inline_keyboard"]
        assert docs == {"text": "Docs", "url": "https://example.org"}
        assert len(more["callback_data"].encode()) <= 64
        chats.press(CHAT, more["callback_data"])
        assert chats.sender.to(CHAT)[-1] == "more"
        assert chats.say(CHAT, "/broken") == ["the keyboard did not render"]
    finally:
        chats.close()
