"""on_callback as more than an answer: a late result saves variables and moves the conversation.

In-process: the compiler for what `check` accepts and refuses, and the YAML pipeline through
chatdaemon.testing with the loopback upstream, for what a delivered result changes (and
what a failing one leaves alone).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import textwrap
from contextlib import closing
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import HANDLERS, wait_until
from test_e2e_callbacks import healthy, post

from chatdaemon import callbacks
from chatdaemon.chathandler import DEFAULT_ERROR_TEXT
from chatdaemon.definitions import Compiler, OnCallback
from chatdaemon.errors import ConfigError
from chatdaemon.templates import Templates
from chatdaemon.testing import TestBot

REQUEST = {"method": "POST", "url": "http://127.0.0.1:9/jobs",
           "json": {"callback": "{{ conversation.callback_url }}"}}
MOVING = {"response": "done: {{ callback.data.result }}",
          "save": {"result": "{{ callback.data.result }}"}, "target_state": "done"}
SHOW = {"name": "show", "pattern": "^/show$", "source_states": ["done"],
        "response": "it was {{ vars.result }}"}


def job(on_callback, **more):
    return {"name": "job", "pattern": "^/job$", "request": REQUEST, "response": "started",
            "on_callback": on_callback, **more}


def checked(handlers):
    """The definitions, or the ConfigError `check` would report."""
    compiler = Compiler(Templates(), environ={})
    compiler.add_handlers(handlers)
    result = compiler.finish()
    compiler.problems.raise_any()
    return result


# -- check: the forms it accepts --------------------------------------------------------------

def test_the_plain_response_form_is_an_answer_only():
    result = checked([job("done: {{ callback.data.result }}")])
    action = result.handlers[0].on_callback
    assert isinstance(action, OnCallback)
    assert action.save == {} and action.target_state is None
    assert action.response.text.source == "done: {{ callback.data.result }}"


def test_a_response_mapping_stays_a_response():
    result = checked([job({"text": "done", "parse_mode": "HTML"})])
    action = result.handlers[0].on_callback
    assert action.response.parse_mode == "HTML" and action.target_state is None


def test_the_mapping_form_has_a_response_save_and_target_state():
    result = checked([job(MOVING), SHOW])
    action = result.handlers[0].on_callback
    assert action.target_state == "done"
    assert list(action.save) == ["result"]
    assert action.response.text.source == "done: {{ callback.data.result }}"
    assert result.warnings == []


# -- check: what it refuses --------------------------------------------------------------------

@pytest.mark.parametrize("on_callback, words", [
    (dict(MOVING, text="x"), ["unknown key 'text' in an on_callback"]),
    (dict(MOVING, schedule={"stop": "all"}), ["unknown key 'schedule'"]),
    ({"save": {"a": "{{ callback.data }}"}, "target_state": "done"}, ["needs a response"]),
    (dict(MOVING, save={"not a name": "x"}), ["'not a name' is not a variable name"]),
    (dict(MOVING, save={"a": "{{ callback.data "}), ["template"]),
    (dict(MOVING, save={"a": "{{ nothing.here }}"}), ["unknown name"]),
    (dict(MOVING, response="{{ callback.data "), ["template"]),
    (dict(MOVING, target_state=True), ["YAML read target_state as True"]),
    (dict(MOVING, target_state=""), ["target_state must be a state name"]),
    (dict(MOVING, save="x"), ["save must map variable names"]),
])
def test_check_refuses_a_bad_mapping(on_callback, words):
    with pytest.raises(ConfigError) as info:
        checked([job(on_callback), SHOW])
    for word in words:
        assert word in str(info.value)


def test_check_reports_every_mistake_of_one_on_callback_at_once():
    bad = {"response": "{{ x ", "save": {"1a": "y"}, "extra": 1}
    with pytest.raises(ConfigError) as info:
        checked([job(bad)])
    text = str(info.value)
    assert "unknown key 'extra'" in text and "'1a' is not a variable name" in text
    assert "template" in text


# -- check: a state an on_callback enters counts as entered -------------------------------------

def test_a_state_only_an_on_callback_enters_may_be_a_source_state():
    result = checked([job(MOVING), SHOW])
    assert [h.name for h in result.handlers] == ["job", "show"]
    assert not any("never runs" in warning for warning in result.warnings)
    # without the on_callback's target_state, nothing enters `done`: the same check refuses
    with pytest.raises(ConfigError, match="no handler has target_state 'done'"):
        checked([job(dict(MOVING, target_state=None)), SHOW])


def test_a_handler_left_out_for_an_error_still_counts_its_on_callback_state():
    broken = job(dict(MOVING, save={"bad name": "x"}))
    with pytest.raises(ConfigError) as info:
        checked([broken, SHOW])
    assert "not a variable name" in str(info.value)
    assert "no handler has target_state" not in str(info.value)


def test_a_chain_through_an_on_callback_state_is_reachable():
    later = {"name": "later", "pattern": "^/again$", "source_states": ["shown"], "response": "x"}
    result = checked([job(MOVING), dict(SHOW, target_state="shown"), later])
    assert not any("never runs" in warning for warning in result.warnings), result.warnings


# -- the pipeline: a delivered result ---------------------------------------------------------------

BOT = """
handlers:
  - name: job
    pattern: '^/job$'
    request:
      method: POST
      url: "http://127.0.0.1:{port}/jobs"
      json: {{callback: "{{{{ conversation.callback_url }}}}"}}
    response: "started"
    target_state: waiting
    on_callback: {on_callback}
  - name: show
    pattern: '^/show$'
    source_states: {states}
    response: "{{{{ state }}}}: {{{{ vars.result | default('none') }}}}"
"""

MOVING_YAML = ('{response: "done: {{ callback.data.result }}", '
               'save: {result: "{{ callback.data.result }}"}, target_state: done}')


def job_bot(tmp_path, upstream, on_callback=MOVING_YAML, states="[done, waiting]") -> TestBot:
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "bot.yaml").write_text(textwrap.dedent(
        BOT.format(port=upstream.server_port, on_callback=on_callback, states=states)))
    bot = TestBot(str(directory))
    bot.bot.pipeline.callback_base = "https://pi.example.org/bot"
    return bot


def start_job(bot: TestBot, upstream, chat: int = 42) -> str:
    bot.send("/job", chat=chat)
    assert bot.replies(chat) == ["started"]
    assert bot.state(chat) == "waiting"
    return upstream.bodies[-1]["callback"].rsplit("/", 1)[1]


def deliver(bot: TestBot, token: str, data, chat: int = 42) -> list[str]:
    assert callbacks.deliver(bot.store, token, data)
    bot.run(chat)
    return bot.replies(chat)


def test_a_result_answers_saves_and_moves_the_conversation(tmp_path, upstream):
    with job_bot(tmp_path, upstream) as bot:
        token = start_job(bot, upstream)
        assert deliver(bot, token, {"result": 49}) == ["done: 49"]
        assert bot.state(42) == "done"
        assert bot.vars(42)["result"] == "49"
        bot.send("/show", chat=42)
        assert bot.replies(42) == ["done: 49"]


def test_the_new_state_remembers_the_result(tmp_path, upstream):
    with job_bot(tmp_path, upstream) as bot:
        token = start_job(bot, upstream)
        assert deliver(bot, token, {"result": "x", "items": [1, 2]}) == ["done: x"]
        kept = bot.store.load_conversation(42).state_context["done"]
        assert kept == {"callback": {"data": {"result": "x", "items": [1, 2]}}}


@pytest.mark.parametrize("data", [{"no_result": 1}, {"result": {"deep": 1}, "x": 1}])
def test_a_failing_render_answers_the_error_text_and_changes_nothing(tmp_path, upstream, data):
    # the save template fails on the second data; the response on the first
    on_callback = ('{response: "done: {{ callback.data.result }}", '
                   'save: {result: "{{ callback.data.result.missing }}"}, target_state: done}')
    with job_bot(tmp_path, upstream, on_callback) as bot:
        token = start_job(bot, upstream)
        assert deliver(bot, token, data) == [bot.bot.error_text]
        assert bot.state(42) == "waiting"
        assert "result" not in bot.vars(42)
        bot.send("/show", chat=42)   # the conversation is where it was
        assert bot.replies(42) == ["waiting: none"]


def test_the_plain_form_answers_and_leaves_the_conversation_alone(tmp_path, upstream):
    with job_bot(tmp_path, upstream, '"done: {{ callback.data.result }}"', "[waiting]") as bot:
        token = start_job(bot, upstream)
        assert deliver(bot, token, {"result": 7}) == ["done: 7"]
        assert bot.state(42) == "waiting"
        assert "result" not in bot.vars(42)


def test_each_chat_moves_only_its_own_conversation(tmp_path, upstream):
    with job_bot(tmp_path, upstream) as bot:
        first = start_job(bot, upstream, chat=1)
        start_job(bot, upstream, chat=2)
        assert deliver(bot, first, {"result": "a"}, chat=1) == ["done: a"]
        bot.run(2)
        assert bot.replies(2) == []
        assert (bot.state(1), bot.state(2)) == ("done", "waiting")
        assert "result" not in bot.vars(2)


# -- end to end: the longjob example as a daemon process ------------------------------------------

WORKING = "⏳ Working on the sales report; I'll write when it's ready."
FALLBACK = "Send /report (or /report TOPIC) to start a report."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post_result(port: int, url: str, data: dict) -> int:
    return post(port, urlsplit(url).path, json.dumps(data).encode())[0]



def start_longjob(start_daemon, upstream, port: int, db: Path):
    daemon = start_daemon(HANDLERS / "longjob", db=db, config={"hooks": {"port": port}},
                          env={"LONGJOB_URL": f"http://127.0.0.1:{upstream.server_port}/jobs"})
    assert wait_until(lambda: healthy(port), timeout=20, interval=0.05), daemon.log()
    return daemon


def pending(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT COUNT(*) FROM inbox WHERE done = 0").fetchone()[0]


def test_a_late_result_moves_the_chat_on_and_a_restart_keeps_it(telegram, start_daemon,
                                                                 tmp_path, upstream):
    port, db = free_port(), tmp_path / "longjob.sqlite3"
    daemon = start_longjob(start_daemon, upstream, port, db)
    urls = []
    for chat in (42, 43):   # one after the other: the upstream's n-th job is the n-th chat's
        telegram.push_message(chat, "/report sales")
        assert telegram.wait_for(lambda chat=chat: telegram.sent_to(chat) == [WORKING],
                                 timeout=15), telegram.sent
        with upstream.lock:
            urls.append(upstream.bodies[-1]["callback"])
    good, bad = urls

    assert post_result(port, good, {"summary": "3 sales"}) == 202   # chat 42's job
    assert post_result(port, bad, {"no_summary": True}) == 202      # chat 43's: its render fails
    assert telegram.wait_for(lambda: len(telegram.sent_to(42)) == 2
                             and len(telegram.sent_to(43)) == 2, timeout=15), telegram.sent
    assert telegram.sent_to(42)[1] == "✅ Your report is ready: 3 sales"
    assert telegram.sent_to(43)[1] == DEFAULT_ERROR_TEXT

    # the saved summary and the new state are on disk: they outlive a kill -9
    assert wait_until(lambda: pending(db) == 0, timeout=15), daemon.log()
    daemon.kill()
    start_longjob(start_daemon, upstream, port, db)
    for chat in (42, 43):
        telegram.push_message(chat, "/last")
    assert telegram.wait_for(lambda: len(telegram.sent_to(42)) == 3
                             and len(telegram.sent_to(43)) == 3, timeout=15), telegram.sent
    assert telegram.sent_to(42)[2] == "The last report: 3 sales"
    assert telegram.sent_to(43)[2] == FALLBACK   # the failed result moved nothing
