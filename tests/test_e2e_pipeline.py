"""Conversations with YAML bots, through the real daemon, read like transcripts."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import time

import pytest
from conftest import HANDLERS, wait_until
from fake_telegram import BAD_QUERY_ID
from shop_server import ShopServer


@pytest.fixture
def shop():
    with ShopServer() as server:
        yield server


class Chat:
    """One user talking to the bot: say() a line, get the bot's answers back."""

    def __init__(self, telegram, chat_id: int):
        self.telegram = telegram
        self.chat_id = chat_id

    def _answers(self):
        return [s for s in self.telegram.sent if s["chat_id"] == self.chat_id]

    def say(self, text: str, answers: int = 1, timeout: float = 15) -> list[dict]:
        before = len(self._answers())
        self.telegram.push_message(self.chat_id, text, first_name="Ann")
        assert self.telegram.wait_for(lambda: len(self._answers()) >= before + answers, timeout), \
            f"no answer to {text!r}"
        return self._answers()[before:]

    def press(self, data: str, timeout: float = 15) -> list[dict]:
        before = len(self._answers())
        self.telegram.push_callback(self.chat_id, data)
        assert self.telegram.wait_for(lambda: len(self._answers()) >= before + 1, timeout)
        return self._answers()[before:]


def text_of(answers):
    return [a["text"] for a in answers]


def keyboard_of(answer):
    markup = answer["params"].get("reply_markup") or {}
    return [[b["text"] for b in row] for row in markup.get("keyboard", [])]


def write_bot(tmp_path, yaml_text):
    directory = tmp_path / "bot"
    directory.mkdir(exist_ok=True)
    (directory / "bot.yaml").write_text(textwrap.dedent(yaml_text))
    return directory


def test_orders_bot_transcript(telegram, start_daemon, shop, tmp_path):
    start_daemon(HANDLERS / "orders", env={"SHOP_API": shop.url})
    ann = Chat(telegram, 101)
    [hello] = ann.say("/start")
    assert hello["text"] == "Hi Ann! What can I do? 👋"
    assert keyboard_of(hello) == [["Order status"], ["Talk to a human"]]
    assert text_of(ann.say("order status")) == ["Your order number?"]
    assert text_of(ann.say("abc")) == ["Order numbers are digits only. Your order number?"]
    assert text_of(ann.say("42")) == ["Order 42: shipped"]
    assert shop.requests == ["/orders/42"]
    # back in the menu: the order step is not active any more
    assert text_of(ann.say("7")) == ["Sorry, I didn't get that. Try /start."]
    assert text_of(ann.say("Order status")) == ["Your order number?"]
    # a failing lookup answers with on_error and leaves the state where it was
    assert text_of(ann.say("999")) == [
        "I couldn't find order 999 right now. Check the number and try again."]
    assert text_of(ann.say("7")) == ["Order 7: packing"]
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    query = "SELECT state, json_extract(vars, '$.last_order') FROM conversations WHERE chat_id = 101"
    # the reply goes out just before the commit that records it
    assert wait_until(lambda: db.execute(query).fetchone() == ("menu", "7"), timeout=5), \
        db.execute(query).fetchone()


def test_signup_bot_transcript(telegram, start_daemon):
    start_daemon(HANDLERS / "signup")
    bob = Chat(telegram, 102)
    assert text_of(bob.say("hello")) == ["Send /start to sign up."]
    assert text_of(bob.say("/start")) == ["Welcome! Let's sign you up. What's your name?"]
    assert text_of(bob.say("Bob")) == ["Nice to meet you, Bob. What's your e-mail address?"]
    assert text_of(bob.say("bob at example")) == [
        "That doesn't look like an e-mail address. Please try again."]
    assert text_of(bob.say("bob@example.org")) == [
        "Thank you, Bob! We'll write to bob@example.org. 🎉"]
    assert text_of(bob.say("anything")) == [
        "You're signed up as Bob <bob@example.org>. Send /start to begin again."]


def test_diceyclock_bot(telegram, start_daemon):
    start_daemon(HANDLERS / "diceyclock")
    carol = Chat(telegram, 103)
    rolls = {carol.say("/roll")[0]["text"] for _ in range(12)}
    assert all(r.startswith("🎲 ") and r.split()[1] in "123456" for r in rolls)
    [clock] = text_of(carol.say("/time"))
    assert clock.startswith("🕒 ") and clock.count(":") == 2


def test_inline_buttons_are_answered_and_matched_in_order(telegram, start_daemon, tmp_path):
    bot = write_bot(tmp_path, """
        handlers:
          - name: ask
            pattern: '^/ask$'
            response:
              text: "Coffee or tea?"
              buttons: [[{text: "Coffee", data: "coffee"}, {text: "Tea", data: "tea"}]]
            target_state: asked
          - name: choice
            source_states: [asked]
            pattern: '^(?P<drink>coffee|tea)$'
            response: {text: "One {{ pattern.drink }} for {{ user.first_name }}."}
            target_state: served
        fallback: {text: "?"}
    """)
    start_daemon(bot)
    dan = Chat(telegram, 104)
    [question] = dan.say("/ask")
    markup = question["params"]["reply_markup"]
    assert markup == {"inline_keyboard": [[{"text": "Coffee", "callback_data": "coffee"},
                                           {"text": "Tea", "callback_data": "tea"}]]}
    assert text_of(dan.press("tea")) == ["One tea for Ann."]
    answered = [c for c in telegram.calls if c["method"] == "answerCallbackQuery"]
    assert len(answered) == 1
    # a press that waited too long (downtime, a backlog): Telegram refuses the answer with
    # 400, and the press is still matched like any other
    dan.say("/ask")
    telegram.set_next_response("answerCallbackQuery", 400,
                               {"ok": False, "error_code": 400, "description": BAD_QUERY_ID})
    assert text_of(dan.press("coffee")) == ["One coffee for Ann."]


def test_html_escapes_user_text_and_templates_errors_answer_error_text(telegram, start_daemon,
                                                                        tmp_path):
    bot = write_bot(tmp_path, """
        error_text: "Something broke."
        handlers:
          - name: echo
            pattern: '^say (?P<what>.+)$'
            response: {text: "<b>You said</b> {{ pattern.what }}", parse_mode: HTML}
          - name: broken
            pattern: '^broken$'
            response: {text: "{{ vars.never_saved.deeper }}"}
            target_state: elsewhere
          - name: elsewhere
            source_states: [elsewhere]
            response: {text: "in elsewhere"}
        fallback: {text: "state is {{ state or 'none' }}"}
    """)
    daemon = start_daemon(bot)
    eve = Chat(telegram, 105)
    [echo] = eve.say("say <i>hi</i> & bye")
    assert echo["text"] == "<b>You said</b> &lt;i&gt;hi&lt;/i&gt; &amp; bye"
    assert echo["params"]["parse_mode"] == "HTML"
    assert text_of(eve.say("broken")) == ["Something broke."]
    assert text_of(eve.say("other")) == ["state is none"]  # the state did not change
    assert daemon.stop() == 0
    assert "handler broken" in daemon.log() and "bot.yaml" in daemon.log()


def test_request_timeouts_and_url_encoding(telegram, start_daemon, shop, tmp_path):
    shop.slow_seconds = 3
    bot = write_bot(tmp_path, f"""
        env: {{api: "{shop.url}"}}
        handlers:
          - name: slow
            pattern: '^slow (?P<id>\\d+)$'
            request: {{url: "{{{{ env.api }}}}/slow/{{{{ pattern.id }}}}", timeout: 1}}
            response: {{text: "slow {{{{ response.data.status }}}}"}}
            on_error: {{text: "timed out ({{{{ response.error }}}})"}}
          - name: lookup
            pattern: '^look (?P<what>.+)$'
            request:
              url: "{{{{ env.api }}}}/orders/{{{{ pattern.what }}}}"
              params: {{q: "{{{{ pattern.what }}}}"}}
            response: {{text: "found"}}
            on_error: {{text: "status {{{{ response.status }}}}"}}
    """)
    start_daemon(bot)
    fay = Chat(telegram, 106)
    assert text_of(fay.say("slow 42")) == ["timed out (timeout)"]
    assert text_of(fay.say("look ../../admin?x=1#y")) == ["status 404"]
    assert shop.requests[-1] == "/orders/..%2F..%2Fadmin%3Fx%3D1%23y?q=..%2F..%2Fadmin%3Fx%3D1%23y"
    before = len(shop.requests)
    assert text_of(fay.say("look ..")) == ["status None"]  # refused: never sent
    assert len(shop.requests) == before


def test_user_text_cannot_choose_the_host(telegram, start_daemon, shop, tmp_path):
    bot = write_bot(tmp_path, """
        handlers:
          - name: host
            pattern: '^go (?P<host>\\S+)$'
            request: {url: "http://{{ pattern.host }}/orders/42"}
            response: {text: "fetched"}
            on_error: {text: "refused"}
    """)
    start_daemon(bot)
    gil = Chat(telegram, 107)
    assert text_of(gil.say(f"go {shop.url[7:]}")) == ["refused"]
    assert shop.requests == []


def test_redirects_are_not_followed(telegram, start_daemon, shop, tmp_path):
    bot = write_bot(tmp_path, f"""
        handlers:
          - name: r
            pattern: '^r$'
            request: {{url: "{shop.url}/redirect"}}
            response: {{text: "followed"}}
            on_error: {{text: "not followed: {{{{ response.status }}}}"}}
    """)
    start_daemon(bot)
    assert text_of(Chat(telegram, 108).say("r")) == ["not followed: 302"]


def test_state_context_and_priorities(telegram, start_daemon, tmp_path):
    bot = write_bot(tmp_path, """
        handlers:
          - name: pick
            pattern: '^pick (?P<item>\\w+)$'
            response: {text: "picked {{ pattern.item }}"}
            target_state: picked
          - name: generic
            source_states: [picked]
            response: {text: "you picked {{ state_context.picked.pattern.item }} earlier"}
          - name: special
            source_states: [picked]
            pattern: '^again$'
            priority: 5
            response: {text: "again!"}
    """)
    start_daemon(bot)
    hal = Chat(telegram, 109)
    assert text_of(hal.say("pick apple")) == ["picked apple"]
    assert text_of(hal.say("again")) == ["again!"]
    assert text_of(hal.say("what")) == ["you picked apple earlier"]


def test_a_trickling_answer_is_cut_off_at_the_timeout(telegram, start_daemon, shop, tmp_path):
    bot = write_bot(tmp_path, f"""
        handlers:
          - name: t
            pattern: '^t$'
            request: {{url: "{shop.url}/trickle", timeout: 1}}
            response: {{text: "got it"}}
            on_error: {{text: "gave up ({{{{ response.error }}}})"}}
    """)
    start_daemon(bot)
    began = time.monotonic()
    assert text_of(Chat(telegram, 110).say("t")) == ["gave up (timeout)"]
    assert time.monotonic() - began < 4  # the answer would take 6 s


def test_post_with_json_and_headers_a_failing_api_and_markdown(telegram, start_daemon, shop,
                                                               tmp_path):
    bot = write_bot(tmp_path, f"""
        env:
          api: "{shop.url}"
        handlers:
          - name: start
            pattern: '^/start$'
            response: {{text: "menu", keyboard: [["report"]]}}
            target_state: menu
          - name: report
            source_states: [menu]
            pattern: '^report (?P<what>.+)$'
            request:
              method: POST
              url: "{{{{ env.api }}}}/orders/42"
              headers: {{X-Reporter: "{{{{ user.first_name }}}}"}}
              json: {{what: "{{{{ pattern.what }}}}", chat: "{{{{ chat.id }}}}"}}
            response:
              text: >-
                *Order {{{{ response.data.id }}}}* is {{{{ response.data.status }}}}: {{{{ pattern.what }}}}
              parse_mode: MarkdownV2
              remove_keyboard: true
            target_state: reported
          - name: broken
            source_states: [menu]
            pattern: '^fail$'
            request: {{method: POST, url: "{{{{ env.api }}}}/fail", data: {{x: "1"}}}}
            response: {{text: "never"}}
            on_error: {{text: "the shop answered {{{{ response.status }}}}: {{{{ response.data.error }}}}"}}
            target_state: reported
          - name: where
            pattern: '^where$'
            response: {{text: "in {{{{ state }}}}"}}
    """)
    start_daemon(bot)
    ivy = Chat(telegram, 111)
    ivy.say("/start")
    # a 500 answers with on_error, which sees the answer, and the state stays where it was
    assert text_of(ivy.say("fail")) == ["the shop answered 500: down"]
    assert shop.bodies[-1][0] == "POST" and shop.bodies[-1][2] == b"x=1"
    assert text_of(ivy.say("where")) == ["in menu"]
    # JSON body and headers are rendered; MarkdownV2 escapes the user's text, not the template's
    [answer] = ivy.say("report late (2 days)!")
    method, headers, body = shop.bodies[-1]
    assert method == "POST" and headers["X-Reporter"] == "Ann"
    assert json.loads(body) == {"what": "late (2 days)!", "chat": "111"}
    assert answer["text"] == "*Order 42* is shipped: late \\(2 days\\)\\!"
    assert answer["params"]["parse_mode"] == "MarkdownV2"
    assert answer["params"]["reply_markup"] == {"remove_keyboard": True}
    assert text_of(ivy.say("where")) == ["in reported"]


def test_helpdesk_tree_transcript_survives_a_restart(telegram, start_daemon, tmp_path):
    first = start_daemon(HANDLERS / "helpdesk")
    jo = Chat(telegram, 112)
    [menu] = jo.say("/help")
    assert menu["text"] == "Hi Ann! 👋 What can I help you with?"
    assert keyboard_of(menu) == [["Opening hours"], ["Wi-Fi"], ["Something else"]]
    assert text_of(jo.say("HOURS")) == [
        "We're open Monday to Friday 8:00–18:00 and Saturday 9:00–14:00."]
    # after a leaf the next message is asked to start again, never left to the fallback
    assert text_of(jo.say("hours")) == ["Anything else? Start again?"]
    assert text_of(jo.say("no")) == ["OK. Send /start whenever you want to start again."]
    assert text_of(jo.say("hours")) == ["Send /help to see what I can do."]  # out of the tree
    jo.say("/start")
    [networks] = jo.say("2")
    assert keyboard_of(networks) == [["Guest network"], ["Staff network"]]
    # the place in the tree is conversation state: it survives a restart
    assert first.stop() == 0
    start_daemon(HANDLERS / "helpdesk")
    [unclear] = jo.say("network")  # fits both answers: not understood
    assert unclear["text"] == "Sorry, I didn't understand that. Start again?"
    assert keyboard_of(unclear) == [["Yes"], ["No"]]
    assert keyboard_of(jo.say("yes")[0]) == [["Opening hours"], ["Wi-Fi"], ["Something else"]]
    jo.say("wi-fi")
    assert text_of(jo.say("guest")) == ['Network "cafe-guest", password on the receipt.']
    jo.say("/help")
    jo.say("nonsense")
    [bye] = jo.say("no")
    assert bye["text"] == "OK. Send /start whenever you want to start again."
    assert bye["params"]["reply_markup"] == {"remove_keyboard": True}
    # a leaf can hand the conversation to the handlers; a command still reaches the tree
    jo.say("/help")
    assert text_of(jo.say("something")) == [
        "Leave your question here and someone will get back to you."]
    assert text_of(jo.say("my cup was cold")) == [
        "Thanks, Ann, noted: “my cup was cold”. Anything to add? (/help for the menu)"]
    assert text_of(jo.say("/help")) == ["Hi Ann! 👋 What can I help you with?"]


def test_inside_a_tree_button_presses_and_odd_digits_reach_the_right_place(telegram, start_daemon,
                                                                          tmp_path):
    bot = write_bot(tmp_path, """
        tree:
          say: "Pick one"
          answers:
            - {answer: Apples, say: "apples!"}
            - {answer: Pears, say: "pears!"}
        handlers:
          - name: post
            pattern: '^/post$'
            response: {text: "A post", buttons: [[{text: "Like", data: "like"}]]}
          - name: like
            pattern: '^like$'
            response: {text: "liked"}
    """)
    start_daemon(bot)
    kim = Chat(telegram, 113)
    kim.say("/post")
    assert text_of(kim.say("/start")) == ["Pick one"]
    assert text_of(kim.press("like")) == ["liked"]  # an inline press is not a tree answer
    assert text_of(kim.say("²")) == ["Sorry, I didn't understand that. Start again?"]
    assert text_of(kim.say("yes")) == ["Pick one"]
    assert text_of(kim.say("2")) == ["pears!"]
