"""Unit tests of chatdaemon.pipeline in-process: matching, states, request → response → save.

The handler runs with a recording sender and an HTTP session whose adapter answers from
the test instead of the network.
"""

from __future__ import annotations

import io
import json

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from chatdaemon.definitions import Compiler
from chatdaemon.errors import UpdateFailed
from chatdaemon.httpcall import deadline_adapter
from chatdaemon.pipeline import FrozenDict, Pipeline, PipelineHandler, frozen, render_reply
from chatdaemon.store import Conversation
from chatdaemon.templates import Templates

CHAT = 42


class Sender:
    """The rate-limited sender, recorded: every Bot API call this chat's handler makes."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def call(self, method: str, params: dict, **_: object) -> dict:
        self.calls.append((method, dict(params)))
        return {"message_id": len(self.calls)}

    def texts(self) -> list[str]:
        return [params["text"] for method, params in self.calls if method == "sendMessage"]


class FakeAdapter(deadline_adapter()):
    """Answers every request with the next queued (status, body, content type), recorded."""

    def __init__(self):
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []
        self.answers: list[tuple[int, bytes, str]] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        status, body, content_type = self.answers.pop(0)
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict({"Content-Type": content_type})
        response.raw = io.BytesIO(body)
        response.url = request.url
        response.request = request
        return response

    def answer(self, status: int, data: object) -> None:
        self.answers.append((status, json.dumps(data).encode(), "application/json"))


def bot(handlers: list[dict], fallback: str | None = "fallback", env: dict | None = None,
        schedules: list[dict] | None = None) -> Pipeline:
    compiler = Compiler(Templates(), environ={})
    if env:
        compiler.add_env(env)
    compiler.add_handlers(handlers)
    if schedules:
        compiler.add_schedules(schedules)
    if fallback is None:  # `fallback: none`: silence on purpose (else a default one answers)
        compiler.result.fallback = compiler.fallback("none", "bot.yaml:99")
    definitions = compiler.finish()
    compiler.problems.raise_any()
    if fallback is not None:
        definitions.fallback = compiler.response(fallback, "bot.yaml:99")
    return Pipeline(definitions, "Sorry.")


class Chat:
    """One chat's handler over a conversation, as a delegate would run it."""

    def __init__(self, pipeline: Pipeline, state: str | None = None):
        self.pipeline = pipeline
        self.adapter = FakeAdapter()
        pipeline.session.get().mount("http://", self.adapter)
        pipeline.session.get().mount("https://", self.adapter)
        self.conversation = Conversation(CHAT, state, {})
        self.sender = Sender()
        self.handler = PipelineHandler(None, self.conversation, self.sender, pipeline)

    def say(self, text: str, **message: object) -> str | None:
        before = len(self.sender.texts())
        self.handler.on_update("message", {"message_id": 1, "chat": {"id": CHAT, "type": "private"},
                                           "from": {"id": 5, "first_name": "Ada"}, "text": text,
                                           **message})
        texts = self.sender.texts()
        return texts[-1] if len(texts) > before else None


# -- matching ---------------------------------------------------------------------------------

def test_the_first_matching_handler_in_file_order_answers():
    chat = Chat(bot([
        {"name": "hello", "pattern": "^hello", "response": "first"},
        {"name": "hello_world", "pattern": "^hello world", "response": "second"},
    ]))
    assert chat.say("hello world") == "first"


def test_a_higher_priority_wins_over_file_order_and_ties_keep_file_order():
    pipeline = bot([
        {"name": "any", "response": "any"},
        {"name": "digits", "pattern": r"^\d+$", "priority": 5, "response": "digits"},
        {"name": "digits_too", "pattern": r"^\d+$", "priority": 5, "response": "too"},
        {"name": "low", "pattern": "^x$", "priority": -3, "response": "low"},
    ])
    assert [h.name for h in pipeline.definitions.handlers][:2] == ["digits", "digits_too"]
    chat = Chat(pipeline)
    assert chat.say("123") == "digits"
    assert chat.say("x") == "any"


def test_a_handler_without_a_pattern_matches_anything_in_its_states():
    pipeline = bot([{"name": "enter", "pattern": "^s$", "response": "in s", "target_state": "s"},
                    {"name": "anything", "source_states": ["s"], "response": "got it"}])
    assert pipeline.match("whatever", "s")[0].name == "anything"
    assert pipeline.match("whatever", None) == (None, None)


def test_no_match_answers_with_the_fallback_or_stays_silent():
    assert Chat(bot([{"name": "a", "pattern": "^a$", "response": "a"}])).say("b") == "fallback"
    silent = Chat(bot([{"name": "a", "pattern": "^a$", "response": "a"}], fallback=None))
    assert silent.say("b") is None
    assert silent.sender.calls == []


def test_pattern_groups_reach_the_template_by_number_and_name_missing_ones_empty():
    chat = Chat(bot([{"name": "g", "pattern": r"^(?P<word>\w+)(?: (\d+))?$",
                      "response": "[{{ pattern.word }}|{{ pattern[1] }}|{{ pattern[2] }}"
                                  "|{{ pattern[0] }}]"}]))
    assert chat.say("abc 12") == "[abc|abc|12|abc 12]"
    assert chat.say("abc") == "[abc|abc||abc]"


def test_a_caption_is_matched_when_there_is_no_text():
    chat = Chat(bot([{"name": "c", "pattern": "^look$", "response": "seen"}]))
    chat.handler.on_update("message", {"message_id": 2, "chat": {"id": CHAT}, "caption": "look",
                                       "photo": [{"file_id": "f"}]})
    assert chat.sender.texts() == ["seen"]


# -- states -----------------------------------------------------------------------------------

def test_states_gate_handlers_and_target_state_moves_the_conversation():
    chat = Chat(bot([
        {"name": "start", "pattern": "^/start$", "response": "menu?", "target_state": "menu"},
        {"name": "pick", "source_states": ["menu"], "pattern": "^(a|b)$",
         "response": "picked {{ pattern[1] }} from {{ state }}", "target_state": "done"},
        {"name": "again", "source_states": ["done"], "pattern": ".", "response": "done already"},
    ]))
    assert chat.say("a") == "fallback"            # not in the menu yet
    assert chat.conversation.state is None
    assert chat.say("/start") == "menu?"
    assert chat.conversation.state == "menu"
    assert chat.say("b") == "picked b from menu"
    assert chat.conversation.state == "done"
    assert chat.conversation.state_context["done"]["pattern"] == {"1": "b", "0": "b"}
    assert chat.say("a") == "done already"
    assert chat.conversation.state == "done"       # no target_state: stays


def test_save_puts_rendered_values_into_vars_for_later_templates():
    chat = Chat(bot([
        {"name": "name", "pattern": r"^my name is (\w+)$", "response": "ok",
         "save": {"name": "{{ pattern[1] }}", "by": "{{ user.first_name }}"}},
        {"name": "who", "pattern": r"^who\?$", "response": "{{ vars.name }} (told by {{ vars.by }})"},
    ]))
    chat.say("my name is Bob")
    assert chat.conversation.vars == {"name": "Bob", "by": "Ada"}
    assert chat.say("who?") == "Bob (told by Ada)"


def test_a_template_cannot_change_the_conversation():
    chat = Chat(bot([{"name": "h", "pattern": ".", "response": "{{ vars.update({'x': 1}) }}"}]))
    with pytest.raises(UpdateFailed):
        chat.say("x")
    assert chat.conversation.vars == {}
    with pytest.raises(TypeError):
        frozen({"a": [1]})["a"] = 2
    assert isinstance(frozen({"a": {"b": 1}})["a"], FrozenDict)
    assert frozen({"a": [1, {"b": 2}]})["a"] == (1, {"b": 2})


# -- request → response → save ----------------------------------------------------------------

ENTER = {"name": "enter", "pattern": "^/order$", "response": "Your order?", "target_state": "order"}
ORDER = {
    "name": "order", "source_states": ["order"], "pattern": r"^(?P<id>\w+)$",
    "request": {"method": "GET", "url": "{{ env.api }}/orders/{{ pattern.id }}", "timeout": 5,
                "params": {"who": "{{ user.first_name }}"}},
    "response": "Order {{ pattern.id }}: {{ response.data.status }} ({{ response.status }})",
    "on_error": "No order {{ pattern.id }} ({{ response.status }})",
    "save": {"last": "{{ response.data.status }}"},
    "target_state": "menu",
}


def test_a_request_answer_is_rendered_saved_and_moves_the_state():
    chat = Chat(bot([ENTER, ORDER], env={"api": "http://shop.example"}), state="order")
    chat.adapter.answer(200, {"status": "shipped"})
    assert chat.say("A17") == "Order A17: shipped (200)"
    (sent,) = chat.adapter.sent
    assert (sent.method, sent.url) == ("GET", "http://shop.example/orders/A17?who=Ada")
    assert chat.conversation.vars == {"last": "shipped"}
    assert chat.conversation.state == "menu"
    assert chat.conversation.state_context["menu"]["response"] == {"status": 200,
                                                                  "data": {"status": "shipped"}}


def test_a_failed_request_answers_on_error_changes_nothing_and_fails_the_update():
    chat = Chat(bot([ENTER, ORDER], env={"api": "http://shop.example"}), state="order")
    chat.adapter.answer(404, {"error": "no such order"})
    with pytest.raises(UpdateFailed) as info:
        chat.say("B2")
    assert info.value.answered is True
    assert chat.sender.texts() == ["No order B2 (404)"]
    assert "handler order" in str(info.value) and "404" in str(info.value)
    assert chat.conversation.vars == {} and chat.conversation.state == "order"


def test_user_text_is_encoded_into_the_path_and_cannot_climb_out_of_it():
    pipeline = bot([ENTER, {**ORDER, "pattern": r"^(?P<id>.+)$"}], env={"api": "http://shop.example"})
    chat = Chat(pipeline, state="order")
    chat.adapter.answer(200, {"status": "ok"})
    chat.say("a/b?c")
    assert chat.adapter.sent[0].url.startswith("http://shop.example/orders/a%2Fb%3Fc?")
    chat.conversation.state = "order"
    with pytest.raises(UpdateFailed) as info:
        chat.say("..")
    assert "path segment" in str(info.value)
    assert len(chat.adapter.sent) == 1          # refused before any request
    assert chat.conversation.state == "order"


def test_a_request_with_a_json_body_sends_the_rendered_body():
    chat = Chat(bot([{"name": "post", "pattern": r"^add (\w+)$",
                      "request": {"method": "POST", "url": "http://shop.example/items",
                                  "json": {"item": "{{ pattern[1] }}", "n": 1}},
                      "response": "added {{ response.data.id }}"}]))
    chat.adapter.answer(201, {"id": 9})
    assert chat.say("add tea") == "added 9"
    assert json.loads(chat.adapter.sent[0].body) == {"item": "tea", "n": 1}


def test_a_handler_without_on_error_fails_unanswered_for_the_bot_error_text():
    chat = Chat(bot([{"name": "t", "pattern": ".", "response": "{{ vars.nothing.here }}"}]))
    with pytest.raises(UpdateFailed) as info:
        chat.say("x")
    assert info.value.answered is False
    assert chat.sender.calls == []


# -- replies ----------------------------------------------------------------------------------

def test_render_reply_builds_parse_mode_keyboards_and_buttons():
    compiler = Compiler(Templates(), environ={})
    keyboard = compiler.response({"text": "<b>{{ vars.x }}</b>", "parse_mode": "HTML",
                                  "keyboard": [["A", "{{ vars.x }}"]], "one_time_keyboard": True,
                                  "disable_web_page_preview": True}, "f:1")
    reply = render_reply(keyboard, {"vars": {"x": "<i>"}})
    assert reply == {"text": "<b>&lt;i&gt;</b>", "parse_mode": "HTML",
                     "link_preview_options": {"is_disabled": True},
                     "reply_markup": {"keyboard": [[{"text": "A"}, {"text": "<i>"}]],  # plain labels
                                      "resize_keyboard": True, "one_time_keyboard": True}}
    buttons = compiler.response({"text": "t", "buttons": [[{"text": "Go", "data": "go:{{ vars.x }}"},
                                                           {"text": "Site", "url": "https://e.org"}]]},
                                "f:2")
    assert render_reply(buttons, {"vars": {"x": 1}})["reply_markup"] == {"inline_keyboard": [[
        {"text": "Go", "callback_data": "go:1"}, {"text": "Site", "url": "https://e.org"}]]}
    removed = compiler.response({"text": "t", "remove_keyboard": True}, "f:3")
    assert render_reply(removed, {})["reply_markup"] == {"remove_keyboard": True}


def test_an_empty_reply_or_overlong_button_data_is_a_template_error():
    from chatdaemon.templates import TemplateError
    compiler = Compiler(Templates(), environ={})
    with pytest.raises(TemplateError, match="empty"):
        render_reply(compiler.response("{{ vars.x }}", "f:1"), {"vars": {"x": "  "}})
    long_data = compiler.response({"text": "t", "buttons": [[{"text": "b", "data": "{{ vars.x }}"}]]}, "f:2")
    with pytest.raises(TemplateError, match="64 bytes"):
        render_reply(long_data, {"vars": {"x": "é" * 33}})
    assert render_reply(long_data, {"vars": {"x": "é" * 32}})["reply_markup"]


def test_a_button_press_is_answered_and_its_data_matched():
    chat = Chat(bot([{"name": "b", "pattern": "^go:(\\d)$", "response": "went {{ pattern[1] }}"}]))
    chat.handler.on_update("callback_query", {
        "id": "q1", "from": {"id": 5}, "data": "go:3", "chat_instance": "c",
        "message": {"message_id": 8, "chat": {"id": CHAT}}})
    assert chat.sender.calls[0] == ("answerCallbackQuery", {"callback_query_id": "q1"})
    assert chat.sender.texts() == ["went 3"]
