"""What a bot author's mistakes, a hostile user and a bad upstream do to the YAML pipeline:
aliases that expand a file past any size, answers nested too deep, text a request cannot
carry, an answer in another charset, template methods that build text unforeseeably,
commands addressed to a bot by name."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest
from test_pipeline import Chat, bot

from chatdaemon import yamlfile
from chatdaemon.definitions import Compiler
from chatdaemon.errors import ConfigError, UpdateFailed
from chatdaemon.httpcall import MAX_DEPTH, deadline_adapter
from chatdaemon.pipeline import own_command
from chatdaemon.sandbox import MAX_SIZE
from chatdaemon.templates import TemplateError, Templates

WAIT = 10.0   # seconds any step here may take at most


def asking(**request: object) -> dict:
    """A handler that asks the upstream and answers with what it said, or with its error."""
    return {"name": "ask", "pattern": ".*",
            "request": {"url": "http://upstream.example/q", **request},
            "response": "got {{ response.data }}", "on_error": "error: {{ response.error }}"}


def say_failing(chat: Chat, text: str) -> str:
    """What the chat answers to `text` when the update fails, answered by on_error."""
    with pytest.raises(UpdateFailed) as failed:
        chat.say(text)
    assert failed.value.answered
    return chat.sender.texts()[-1]


# -- YAML aliases ----------------------------------------------------------------------------

def laughs(levels: int) -> str:
    """A request body of ten lists of ten aliases, `levels` deep: 10**levels templates."""
    lines = ["a0: &a0 ['{{ message.text }}', x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    lines += ["handlers:", "  - name: h", "    pattern: x", "    request:",
              "      url: http://example.com/", "      method: POST", f"      json: *a{levels}",
              "    response: hi"]
    return "\n".join(lines) + "\n"


def test_aliases_expanding_past_the_bound_are_refused_at_once(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(laughs(8))   # 10**8 templates to compile: hours, before this bound
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        yamlfile.load(str(path))
    assert time.monotonic() - started < WAIT
    assert "aliases" in str(refused.value) and refused.value.where == f"{path}:1"


def test_aliases_within_the_bound_still_load_as_shared_values(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(laughs(3))   # 1,111 lists and 10,000 strings: an author may do this
    data = yamlfile.load(str(path))
    assert data["a3"][0] is data["a2"]


def test_an_alias_inside_itself_stays_a_clear_error(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("a: &a [1, *a]\n")   # counted once, then refused by the constructor
    with pytest.raises(ConfigError) as refused:
        yamlfile.load(str(path))
    assert "recursive" in str(refused.value)


def test_a_long_file_without_aliases_is_not_counted_as_aliased(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("items: [" + ", ".join(["x"] * 110_000) + "]\n")   # more than MAX_ALIASED
    assert len(yamlfile.load(str(path))["items"]) == 110_000


# -- upstream answers --------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 600, 100_000])
def test_a_json_answer_nested_too_deep_answers_with_on_error(depth):
    chat = Chat(bot([asking()]))
    chat.adapter.answers.append((200, b"[" * depth + b"]" * depth, "application/json"))
    assert say_failing(chat, "hi") == "error: too deep"


def test_a_json_answer_nested_within_the_bound_reaches_the_template():
    chat = Chat(bot([asking()]))
    depth = MAX_DEPTH
    chat.adapter.answers.append((200, b"[" * depth + b"]" * depth, "application/json"))
    assert chat.say("hi") == "got " + "(" * (depth - 1) + "()" + ",)" * (depth - 1)


@pytest.mark.parametrize("key", ["params", "data"])
def test_a_lone_surrogate_in_a_query_or_form_value_answers_with_on_error(key):
    request = {key: {"q": "{{ message.text }}"}, "method": "POST" if key == "data" else "GET"}
    chat = Chat(bot([asking(**request)]))
    chat.adapter.answer(200, {})
    assert say_failing(chat, "a\ud800b") == "error: invalid"
    assert chat.adapter.sent == []


def test_an_answer_in_a_declared_charset_is_decoded_in_it():
    chat = Chat(bot([asking()]))
    chat.adapter.answers.append((200, "café ½".encode("latin-1"), "text/plain; charset=ISO-8859-1"))
    chat.adapter.answers.append((200, "café".encode(), "text/plain"))
    chat.adapter.answers.append((200, "café".encode(), "text/plain; charset=no-such-codec"))
    assert [chat.say("hi") for _ in range(3)] == ["got café ½", "got café", "got café"]


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b'{"ok": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/q"
    server.shutdown()
    server.server_close()
    thread.join(WAIT)


def test_user_text_a_header_cannot_carry_answers_with_on_error(upstream):
    pipeline = bot([asking(url=upstream, headers={"X-Query": "{{ message.text }}"})])
    chat = Chat(pipeline)
    pipeline.session.get().mount("http://", deadline_adapter()())   # loopback, not the fake
    assert chat.say("plain") == "got {'ok': 1}"
    assert say_failing(chat, "привет") == "error: invalid"


# -- templates -------------------------------------------------------------------------------

def test_text_built_by_a_builtin_method_counts_against_the_render_bounds():
    templates = Templates()
    one = templates.compile("{{ now().strftime('%c' * 30000) | length }}", "bot.yaml:1")
    with pytest.raises(TemplateError) as refused:
        one.render({})
    assert refused.value.bound == "size" and str(MAX_SIZE) in str(refused.value)
    many = templates.compile("{% set f = '%c' * 5000 %}{% set kept = [] %}"
                             "{% for i in range(1000) %}{% if kept.append(now().strftime(f)) %}"
                             "{% endif %}{% endfor %}{{ kept | length }}", "bot.yaml:1")
    with pytest.raises(TemplateError) as refused:
        many.render({})
    assert refused.value.bound == "memory"
    assert templates.compile("{{ now().strftime('%Y') | length }}", "bot.yaml:1").render({}) == "4"


# -- commands addressed by name ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "read"), [
    ("/start@Test_Bot", "/start"),            # Telegram's usernames are case-insensitive
    ("/price@test_bot 3 apples", "/price 3 apples"),
    ("/start@other_bot", None),                # another bot's: not this one's to answer
    ("/start", "/start"),
    ("/start@test_botx", None),
    ("/start@test_bot.", "/start@test_bot."),  # not a command followed by text: left as it is
    ("mail me@test_bot", "mail me@test_bot"),
    ("", ""),
])
def test_a_command_addressed_by_name_is_read_as_the_command(text, read):
    assert own_command(text, "test_bot") == read


def test_without_a_known_username_any_addressed_command_is_the_bots():
    assert own_command("/start@whoever", None) == "/start"


def test_a_command_addressed_to_this_bot_reaches_its_handler_and_another_bots_is_silence():
    pipeline = bot([{"name": "start", "pattern": "^/start$", "response": "welcome"}])
    pipeline.username = "test_bot"
    chat = Chat(pipeline)
    assert chat.say("/start@test_bot") == "welcome"
    assert chat.say("/start@other_bot") is None
    assert chat.say("/help@other_bot") is None        # not even the fallback
    assert chat.say("/help@test_bot") == "fallback"
    assert [method for method, _ in chat.sender.calls] == ["sendMessage"] * 2


# -- options listed as text ------------------------------------------------------------------

def unescaped_markdown(text: str) -> list[str]:
    """The MarkdownV2 reserved characters in `text` that no backslash escapes."""
    bare, escaped = [], False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "_*[]()~`>#+-=|{}.!":
            bare.append(char)
    return bare


def test_options_listed_as_text_in_markdown_v2_escape_what_the_list_adds():
    labels = [f"option {n}" for n in range(1, 15)]   # more than fit on buttons
    chat = Chat(bot([{"name": "menu", "pattern": "^menu$",
                      "response": {"text": "Pick one\\!", "parse_mode": "MarkdownV2",
                                   "keyboard": [labels]}}]))
    text = chat.say("menu")
    assert text is not None and "14\\. option 14" in text
    assert unescaped_markdown(text) == []   # Telegram answers 400 to any bare one


def test_options_listed_as_text_in_html_stay_as_they_were():
    labels = [f"a<{n}>" for n in range(1, 15)]
    chat = Chat(bot([{"name": "menu", "pattern": "^menu$",
                      "response": {"text": "<b>Pick</b>", "parse_mode": "HTML",
                                   "keyboard": [labels]}}]))
    assert chat.say("menu") == ("<b>Pick</b>\n\n" + "\n".join(f"{n}. a&lt;{n}&gt;" for n in range(1, 15))
                                + "\n\nAnswer with a number.")


@pytest.mark.parametrize("mode", ["MarkdownV2", "HTML", None])
def test_a_trees_default_texts_fit_its_parse_mode(mode):
    compiler = Compiler(Templates(), environ={})
    compiler.add_tree({"say": "Pick", "answers": [{"answer": "a", "say": "A"}],
                       **({"parse_mode": mode} if mode else {})}, "bot.yaml:1")
    tree = compiler.result.tree
    texts = [template.render({}) for template in (tree.not_understood, tree.goodbye, tree.again)]
    if mode == "MarkdownV2":
        assert [unescaped_markdown(text) for text in texts] == [[], [], []]
        assert texts[1] == "OK\\. Send /start whenever you want to start again\\."
    else:
        assert texts[1] == "OK. Send /start whenever you want to start again."


@pytest.mark.parametrize("status", [302, 404, 500])
def test_on_error_sees_response_error_for_an_answer_that_is_not_2xx_too(status):
    chat = Chat(bot([dict(asking(), on_error="error: {{ response.error }} {{ response.status }}")]))
    chat.adapter.answer(status, {"why": "no"})
    assert say_failing(chat, "hi") == f"error: status {status}"


# -- keyboards rendered from a template ----------------------------------------------------------

def test_a_keyboard_template_rendering_brackets_thousands_deep_answers_with_on_error():
    chat = Chat(bot([{"name": "pick", "pattern": r"^pick (?P<rows>.+)$",
                      "response": {"text": "choose", "keyboard": "{{ pattern.rows }}"},
                      "on_error": "cannot show those"}]))
    assert chat.say('pick [["a", "b"]]') == "choose"
    assert say_failing(chat, "pick " + "[" * 4000) == "cannot show those"


# -- request URLs computed from user-derived values ----------------------------------------------

@pytest.mark.parametrize(("path", "sent"), [
    ("shard/{{ chat.id % 10 }}", "shard/2"),
    ("length/{{ message.text | length }}", "length/2"),
    ("next/{{ message.message_id + 1 }}", "next/2"),
    ("{{ '%05d' % message.message_id }}", "00001"),
    ("{% if chat.id > 40 %}big{% else %}small{% endif %}", "big"),
])
def test_a_request_url_may_compute_with_user_derived_values(path, sent):
    chat = Chat(bot([dict(asking(url="http://upstream.example/" + path), pattern=r"^\d+$")]))
    chat.adapter.answer(200, {"ok": 1})
    assert chat.say("12") == "got {'ok': 1}"
    assert chat.adapter.sent[-1].url == "http://upstream.example/" + sent


@pytest.mark.parametrize("host", ["{{ message.text | length }}.example",
                                  "up{{ chat.id % 10 }}.example",
                                  "{% if chat.id > 40 %}a{% else %}b{% endif %}.example"])
def test_a_host_computed_from_user_derived_values_is_still_refused(host):
    chat = Chat(bot([asking(url=f"http://{host}/q")]))
    assert say_failing(chat, "12") == "error: refused"
    assert chat.adapter.sent == []


@pytest.mark.parametrize("source", ["{{ now().fromtimestamp(pattern.n | int) }}",
                                    "{{ 'some text' | truncate(pattern.n | int) }}"])
def test_a_template_failing_on_a_users_number_answers_with_on_error(source):
    chat = Chat(bot([{"name": "when", "pattern": r"^(?P<n>-?\d+)$", "response": source,
                      "on_error": "not a number I can use"}]))
    assert chat.say("5") != "not a number I can use"
    huge = "1" + "0" * 18 if "fromtimestamp" in source else "-1"
    assert say_failing(chat, huge) == "not a number I can use"
