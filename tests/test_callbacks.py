"""Hook recipients from the posted data, and callback tokens: rendering, checking, storing, expiring.

In-process: the compiler, the hook server with a recording door, the store in memory or in a
file, and the YAML pipeline through chatdaemon.testing with a loopback upstream.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import textwrap
import threading

import pytest

from chatdaemon import callbacks
from chatdaemon.config import Config, check_callbacks, load_config
from chatdaemon.definitions import (
    MAX_RECIPIENTS,
    Compiler,
    RecipientError,
    chat_id_of,
    rendered_values,
)
from chatdaemon.errors import ConfigError
from chatdaemon.hookserver import HookDoor, HookServer
from chatdaemon.pipeline import render_reply
from chatdaemon.store import Store
from chatdaemon.templates import EMOJI, TemplateError, Templates
from chatdaemon.testing import TestBot

KEY = "s3cret-key-0123456789"


def compile_hook(recipients, response="{{ data.msg }}"):
    compiler = Compiler(Templates(), environ={"OPS": "555"})
    compiler.add_hooks([{"name": "alert", "key": KEY, "recipients": recipients,
                         "response": response}])
    compiler.problems.raise_any()
    return compiler.result.hooks["alert"]


def chats_for(hook, data):
    return hook.chats({"data": data, "env": {}, "emoji": EMOJI})


# -- chat ids --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (123, 123), (-1001234567890, -1001234567890), ("42", 42), (" -7 ", -7),
    (2 ** 63 - 1, 2 ** 63 - 1), (-(2 ** 63), -(2 ** 63)), (str(2 ** 63 - 1), 2 ** 63 - 1),
])
def test_a_chat_id_is_an_int64_or_a_string_of_one(value, expected):
    assert chat_id_of(value) == expected


@pytest.mark.parametrize("value, reason", [
    (True, "true/false"), (False, "true/false"), (1.0, "float"), ("1.0", "whole number"),
    ("1e3", "whole number"), ("@alice", "username"), ("alice", "whole number"), ("", "whole number"),
    (2 ** 63, "64-bit"), (-(2 ** 63) - 1, "64-bit"), ("99999999999999999999", "whole number"),
    (None, "NoneType"), ([1], "list"), ({"id": 1}, "dict"),
])
def test_anything_else_is_refused_with_the_reason(value, reason):
    with pytest.raises(RecipientError) as info:
        chat_id_of(value, "{{ data.to }}")
    assert info.value.value == value
    assert reason in info.value.reason
    assert "{{ data.to }}" in str(info.value)


@pytest.mark.parametrize("text, values", [
    ("[1, 2]", [1, 2]), ("['1', '2']", ["1", "2"]), ("(3, 4)", [3, 4]), ("5", [5]),
    ("  ", []), ("@bob", ["@bob"]), ("[true]", [True]), ("1.5", [1.5]), ("[[1]]", [[1]]),
])
def test_a_rendered_template_gives_a_list_or_one_value(text, values):
    assert rendered_values(text) == values


# -- hooks with recipients from the data ------------------------------------------------------

def test_recipients_as_one_template_render_from_the_data():
    hook = compile_hook("{{ data.chat_ids }}")
    assert hook.recipients == ()
    assert chats_for(hook, {"chat_ids": [11, "22", -33]}) == [11, 22, -33]
    assert chats_for(hook, {"chat_ids": 44}) == [44]


def test_static_and_templated_items_mix_and_each_chat_gets_one_message():
    hook = compile_hook([111, "${OPS}", "{{ data.owner }}", "{{ data.watchers | tojson }}"])
    assert hook.recipients == (111, 555)
    assert chats_for(hook, {"owner": 7, "watchers": [7, 111, 8]}) == [111, 555, 7, 8]


def test_static_lists_keep_working_and_ignore_the_data():
    hook = compile_hook([1, "2", -1003])
    assert hook.recipient_templates == ()
    assert chats_for(hook, {}) == [1, 2, -1003]


@pytest.mark.parametrize("data, bad", [
    ({"to": [1, "@alice"]}, "@alice"), ({"to": [1, True]}, True), ({"to": [1, 2.5]}, 2.5),
    ({"to": [1, 2 ** 63]}, 2 ** 63), ({"to": "bob"}, "bob"), ({"to": [[1]]}, [1]),
])
def test_one_bad_recipient_fails_the_whole_post(data, bad):
    hook = compile_hook(["{{ data.to }}"])
    with pytest.raises(RecipientError) as info:
        chats_for(hook, data)
    assert info.value.value == bad


def test_no_recipients_or_too_many_fail_too():
    hook = compile_hook("{{ data.to }}")
    with pytest.raises(RecipientError, match="empty"):
        chats_for(hook, {"to": []})
    with pytest.raises(RecipientError, match=f"more than {MAX_RECIPIENTS}"):
        chats_for(hook, {"to": list(range(1, MAX_RECIPIENTS + 2))})


def test_a_missing_field_is_a_template_error():
    hook = compile_hook("{{ data.chat_ids }}")
    with pytest.raises(TemplateError, match="chat_ids"):
        chats_for(hook, {"ids": [1]})


@pytest.mark.parametrize("recipients, message", [
    (["@alice"], "username"), ([1.5], "whole number"), ([True], "YAML read a recipient as True"),
    ("12", "a list of chat ids, or a template"), ([], "needs recipients"),
    (["{{ data.to "], "template error"), (["{{ nope.to }}"], "unknown name"),
])
def test_check_refuses_bad_recipients_at_load(recipients, message):
    with pytest.raises(ConfigError, match=message):
        compile_hook(recipients)


def test_check_describes_templated_recipients():
    hook = compile_hook([5, "{{ data.chat_ids }}"])
    assert hook.describe_recipients() == "5, those of {{ data.chat_ids }}"


# -- the hook server answering a POST with templated recipients -------------------------------

@pytest.fixture
def hook_server():
    hook = compile_hook("{{ data.to }}", "Alert: {{ data.msg }}")
    queued: list = []
    door = HookDoor(find_hook={"alert": hook}.get, render=render_reply, env=dict,
                    queue=lambda chats, payload: queued.append((chats, payload)),
                    status=dict, counters=dict, health_limit=lambda: 60.0,
                    recipients=lambda hook, context: hook.chats(context))
    server = HookServer(door, ("127.0.0.1", 0), request_timeout=2.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, queued
    server.shutdown()
    server.server_close()
    thread.join(5)


def post(server, path, body: bytes, headers=None):
    conn = http.client.HTTPConnection(*server.server_address, timeout=5)
    try:
        conn.request("POST", path, body, headers or {})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_a_post_reaches_the_chats_its_data_names(hook_server):
    server, queued = hook_server
    status, body = post(server, "/hooks/alert", b'{"to": [5, "6"], "msg": "hi"}',
                        {"Authorization": f"Bearer {KEY}"})
    assert (status, body) == (202, {"ok": True, "queued": 2})
    assert queued == [([5, 6], {"hook": "alert", "message": {"text": "Alert: hi"}})]


@pytest.mark.parametrize("data, words", [
    ({"to": [5, "@bob"], "msg": "x"}, ["'@bob'", "username"]),
    ({"to": [5, 1.5], "msg": "x"}, ["1.5", "float"]),
    ({"to": [], "msg": "x"}, ["empty"]),
    ({"msg": "x"}, ["recipients failed on this data", "to"]),
])
def test_a_bad_recipient_is_a_400_naming_it_and_nothing_is_queued(hook_server, data, words):
    server, queued = hook_server
    status, body = post(server, "/hooks/alert", json.dumps(data).encode(),
                        {"Authorization": f"Bearer {KEY}"})
    assert status == 400 and body["ok"] is False
    for word in words:
        assert word in body["error"]
    assert "bot.yaml" not in body["error"] and ".yaml:" not in body["error"]
    assert queued == []


def test_json_nested_too_deep_is_a_400(hook_server):
    server, queued = hook_server
    deep = b'{"to": [5], "msg": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}"
    status, body = post(server, "/hooks/alert", deep, {"Authorization": f"Bearer {KEY}"})
    assert status == 400 and "deeper" in body["error"]
    very_deep = b"[" * 100_000 + b"]" * 100_000
    status, body = post(server, "/hooks/alert", very_deep[:60_000], {"Authorization": f"Bearer {KEY}"})
    assert status == 400
    assert queued == []


# -- the hook server answering a POST to a callback URL ----------------------------------------

LIVE = "L" * 43


@pytest.fixture
def callback_server():
    delivered: list = []
    door = HookDoor(find_hook=lambda name: None, render=render_reply, env=dict,
                    queue=lambda chats, payload: None, status=dict, counters=dict,
                    health_limit=lambda: 60.0, find_callback=lambda token: token == LIVE,
                    deliver_callback=lambda token, data: delivered.append((token, data)) is None)
    server = HookServer(door, ("127.0.0.1", 0), request_timeout=2.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, delivered
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_result_for_a_live_token_is_delivered_and_answered_202(callback_server):
    server, delivered = callback_server
    assert post(server, f"/callbacks/{LIVE}", b'{"summary": "ok"}') == (202, {"ok": True})
    assert post(server, f"/callbacks/{LIVE}", b"") == (202, {"ok": True})
    assert delivered == [(LIVE, {"summary": "ok"}), (LIVE, {})]


@pytest.mark.parametrize("path, body, status", [
    ("/callbacks/" + "X" * 43, b'{"a": 1}', 404), ("/callbacks/", b'{"a": 1}', 404),
    (f"/callbacks/{LIVE}", b"not json", 400), (f"/callbacks/{LIVE}", b"[" * 40 + b"]" * 40, 400),
    (f"/callbacks/{LIVE}", b'{"a": "' + b"x" * (64 * 1024) + b'"}', 413),
])
def test_unknown_tokens_and_bad_bodies_deliver_nothing(callback_server, path, body, status):
    server, delivered = callback_server
    assert post(server, path, body)[0] == status
    assert delivered == []


def test_callback_posts_share_one_rate_limit(callback_server, monkeypatch):
    import chatdaemon.hookserver
    monkeypatch.setattr(chatdaemon.hookserver, "CALLBACK_RATE", 2)
    server, delivered = callback_server
    answers = [post(server, f"/callbacks/{LIVE}", b'{"n": 1}')[0] for _ in range(3)]
    assert answers == [202, 202, 429]
    assert len(delivered) == 2


# -- callback tokens -------------------------------------------------------------------------

def test_a_token_is_long_random_and_stored_only_as_its_digest(fresh_db):
    token = callbacks.create(fresh_db, 42, "report", 3600, now=1000.0)
    other = callbacks.create(fresh_db, 42, "report", 3600, now=1000.0)
    assert token != other and len(token) >= 43   # 32 bytes: 256 bits, urlsafe base64
    with fresh_db.reading() as db:
        rows = db.execute("SELECT * FROM callback_tokens").fetchall()
    assert token not in repr(rows) and other not in repr(rows)
    assert (callbacks.digest(token), 42, "report", 1000.0, 4600.0) in rows


def test_a_token_finds_its_chat_and_handler_until_it_expires(fresh_db):
    token = callbacks.create(fresh_db, -100123, "report", 60, now=1000.0)
    found = callbacks.find(fresh_db, token, now=1059.0)
    assert (found.chat_id, found.handler) == (-100123, "report")
    assert callbacks.find(fresh_db, token, now=1060.0) is None
    assert callbacks.find(fresh_db, token[:-1] + ("A" if token[-1] != "A" else "B"), 1000.0) is None
    assert callbacks.find(fresh_db, "../../etc", 1000.0) is None
    assert callbacks.find(fresh_db, "", 1000.0) is None


def test_delivering_queues_the_data_in_the_chat_and_an_unknown_token_queues_nothing(fresh_db):
    token = callbacks.create(fresh_db, 42, "report", 60)
    assert callbacks.deliver(fresh_db, "x" * 43, {"a": 1}) is None
    assert fresh_db.pending(42) == []
    found = callbacks.deliver(fresh_db, token, {"summary": "ok", "n": [1, 2]})
    assert found.chat_id == 42
    rows = fresh_db.pending(42)
    assert [(row.kind, row.payload) for row in rows] == [
        ("callback", {"callback": {"handler": "report", "data": {"summary": "ok", "n": [1, 2]}}})]
    callbacks.deliver(fresh_db, token, {"summary": "again"})   # valid until it expires
    assert len(fresh_db.pending(42)) == 2


def test_prune_deletes_expired_tokens_only(fresh_db):
    old = callbacks.create(fresh_db, 1, "a", 10, now=1000.0)
    new = callbacks.create(fresh_db, 2, "b", 1000, now=1000.0)
    assert callbacks.prune(fresh_db, now=1005.0) == 0
    assert callbacks.prune(fresh_db, now=1010.0) == 1
    assert callbacks.find(fresh_db, old, 1000.0) is None
    assert callbacks.find(fresh_db, new, 1010.0).chat_id == 2


def test_a_token_survives_closing_and_reopening_the_database(tmp_path):
    path = str(tmp_path / "bot.sqlite3")
    store = Store(path)
    token = callbacks.create(store, 42, "report", 3600)
    store.close()
    reopened = Store(path)
    try:
        assert callbacks.find(reopened, token).chat_id == 42
    finally:
        reopened.close()
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM callback_tokens").fetchone()
    assert count == 1


# -- definitions: who may hand out a callback URL ---------------------------------------------

def compile_handlers(handlers, schedules=None):
    compiler = Compiler(Templates(), environ={})
    compiler.add_handlers(handlers)
    if schedules:
        compiler.add_schedules(schedules)
    compiler.problems.raise_any()
    return compiler.result


JOB = {"name": "job", "pattern": "^/job$",
       "request": {"method": "POST", "url": "http://127.0.0.1:9/jobs",
                   "json": {"callback": "{{ conversation.callback_url }}"}},
       "response": "started", "on_callback": "done: {{ callback.data.result }}"}


def test_a_request_naming_the_callback_url_is_recorded():
    result = compile_handlers([JOB, {"name": "plain", "response": "hi"}])
    job = result.handlers[0]
    assert job.request.uses_callback and job.on_callback is not None
    assert result.handlers[1].on_callback is None
    assert [name for name, _ in result.callback_handlers] == ["job"]


@pytest.mark.parametrize("place", ["url", "params", "headers", "data"])
def test_every_part_of_a_request_may_name_it(place):
    request = {"method": "POST", "url": "http://127.0.0.1:9/jobs"}
    if place == "url":
        request["url"] = "http://127.0.0.1:9/jobs?cb={{ conversation.callback_url }}"
    else:
        request[place] = {"cb": "{{ conversation.callback_url }}"}
    result = compile_handlers([dict(JOB, request=request)])
    assert result.handlers[0].request.uses_callback


@pytest.mark.parametrize("change, message", [
    ({"on_callback": None}, "no on_callback"),
    ({"request": {"url": "http://127.0.0.1:9/?x={{ conversation.chat_id }}"}}, "conversation.chat_id"),
    ({"response": "{{ conversation.callback_url }}"}, "unknown name"),
])
def test_check_refuses_what_cannot_work(change, message):
    handler = {key: value for key, value in dict(JOB, **change).items() if value is not None}
    with pytest.raises(ConfigError, match=message):
        compile_handlers([handler])


def test_a_schedule_cannot_hand_out_a_callback_url():
    schedule = {"name": "tick", "response": "x",
                "request": {"url": "http://127.0.0.1:9/?cb={{ conversation.callback_url }}"}}
    with pytest.raises(ConfigError, match="unknown name"):
        compile_handlers([], [schedule])


def test_an_unused_on_callback_is_a_warning():
    result = compile_handlers([{"name": "x", "response": "hi", "on_callback": "never"}])
    assert any("on_callback is never used" in warning for warning in result.warnings)


# -- config: where callback URLs point ---------------------------------------------------------

def config_file(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_the_callback_base_is_the_public_url_or_the_bound_address(tmp_path):
    assert Config().callback_base(True) == "http://127.0.0.1:8787"
    assert Config(hook_port=9000, hook_bind="::1").callback_base(False) == "http://[::1]:9000"
    config = load_config(config_file(tmp_path, """
        hooks: {port: 9000, public_url: "https://pi.example.org/bot/", callback_expiry: 600}
    """))
    assert config.callback_base(True) == "https://pi.example.org/bot"
    assert config.callback_expiry == 600.0
    assert Config(hook_port=0).callback_base(True) is None


@pytest.mark.parametrize("hooks, message", [
    ("{public_url: 'ftp://x/'}", "public_url"), ("{public_url: 'https://x/?a=1'}", "public_url"),
    ("{callback_expiry: 0}", "callback_expiry"), ("{callback_expiry: soon}", "callback_expiry"),
])
def test_bad_callback_settings_are_config_errors(tmp_path, hooks, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_file(tmp_path, f"hooks: {hooks}\n"))


def test_handing_out_callback_urls_with_the_hook_server_off_is_a_load_error(tmp_path):
    class Bot:
        definitions = compile_handlers([JOB])
    check_callbacks(Config(), Bot())   # no port given: the server runs for such a bot
    with pytest.raises(ConfigError, match=r"hook server .* is off \(hooks.port: 0\)") as info:
        check_callbacks(Config(hook_port=0), Bot())
    assert info.value.where == Bot.definitions.callback_handlers[0][1]


# -- the pipeline: the URL goes to the upstream, the result comes back ---------------------------

def job_bot(tmp_path, upstream):
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "bot.yaml").write_text(textwrap.dedent(f"""
        handlers:
          - name: job
            pattern: '^/job (?P<n>\\d+)$'
            request:
              method: POST
              url: "http://127.0.0.1:{upstream.server_port}/jobs"
              json: {{n: "{{{{ pattern.n }}}}", callback: "{{{{ conversation.callback_url }}}}"}}
            response: "started {{{{ pattern.n }}}}"
            on_callback: "job done: {{{{ callback.data.result }}}}"
            target_state: waiting
    """))
    bot = TestBot(str(directory))
    return bot


def test_the_upstream_gets_a_url_whose_result_the_chat_answers(tmp_path, upstream):
    bot = job_bot(tmp_path, upstream)
    bot.bot.pipeline.callback_base = "https://pi.example.org/bot"
    bot.send("/job 7", chat=42)
    assert bot.replies(42) == ["started 7"]
    (body,) = upstream.bodies
    assert body["n"] == "7"
    prefix = "https://pi.example.org/bot/callbacks/"
    assert body["callback"].startswith(prefix)
    token = body["callback"][len(prefix):]
    found = callbacks.find(bot.store, token)
    assert (found.chat_id, found.handler) == (42, "job")

    callbacks.deliver(bot.store, token, {"result": 49})
    bot.run(42)
    assert bot.replies(42) == ["job done: 49"]
    assert bot.state(42) == "waiting"   # on_callback answers; the state is the handler's


def test_without_a_hook_server_the_request_fails_with_the_error_text(tmp_path, upstream):
    bot = job_bot(tmp_path, upstream)   # callback_base None: as in `chatdaemon chat`
    bot.send("/job 7", chat=42)
    assert bot.replies(42) == [bot.bot.error_text]
    assert upstream.bodies == []
    assert bot.state(42) is None


def test_a_failing_on_callback_answers_with_the_error_text(tmp_path, upstream):
    bot = job_bot(tmp_path, upstream)
    bot.bot.pipeline.callback_base = "http://127.0.0.1:1"
    bot.send("/job 1", chat=42)
    bot.replies(42)
    token = upstream.bodies[0]["callback"].rsplit("/", 1)[1]
    callbacks.deliver(bot.store, token, {"no_result": True})
    bot.run(42)
    assert bot.replies(42) == [bot.bot.error_text]


def test_log_lines_never_carry_a_callback_token():
    from chatdaemon.logs import redact
    token = "Qw3rTy_-" * 5
    line = redact(f"POST http://127.0.0.1:8787/callbacks/{token} failed; /callbacks/{token}?x=1")
    assert token not in line
    assert line.count("/callbacks/<redacted>") == 2


@pytest.mark.parametrize("hooks, warned", [
    ({"bind": "0.0.0.0", "port": 8799}, True),
    ({"bind": "::", "port": 8799}, True),
    ({"bind": "0.0.0.0", "port": 8799, "public_url": "https://pi.example.net/bot"}, False),
    ({"bind": "127.0.0.1", "port": 8799}, False),
])
def test_check_warns_when_callback_urls_would_name_no_reachable_host(tmp_path, capsys, hooks, warned):
    from pathlib import Path

    import yaml

    from chatdaemon import cli
    longjob = Path(__file__).resolve().parent.parent / "handlers" / "longjob"
    config = tmp_path / "chatdaemon.yaml"
    config.write_text(yaml.safe_dump({"handlers": str(longjob), "database": str(tmp_path / "db"),
                                      "hooks": hooks}))
    assert cli.main(["check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert ("warning: callback URLs would name" in out) is warned, out
    if warned:
        assert "set hooks.public_url" in out, out
