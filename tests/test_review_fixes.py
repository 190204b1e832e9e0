"""Callback URLs in groups and after /forget, schedule names, one-time keyboards.

In-process: the compiler, the store in memory, and bots through chatdaemon.testing with a
loopback upstream that records the callback URL it is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT

from chatdaemon import callbacks, conversations
from chatdaemon.app import build_daemon
from chatdaemon.bots import load_bot
from chatdaemon.config import Config
from chatdaemon.conversations import Conversation
from chatdaemon.errors import ConfigError
from chatdaemon.media import MediaError, media_value
from chatdaemon.privacy import export_chat, forget_chat
from chatdaemon.store import Store
from chatdaemon.testing import TestBot

GROUP, ANN, BOB = -300, 11, 12


# -- a callback URL handed out in a group keeping a conversation per member ------------------

MEMBER_JOBS = """
conversation: {mode}
handlers:
  - name: name
    pattern: '^/name (?P<n>\\w+)$'
    response: "hello {{{{ pattern.n }}}}"
    save: {{who: "{{{{ pattern.n }}}}"}}
  - name: job
    pattern: '^/job$'
    request:
      method: POST
      url: "http://127.0.0.1:{port}/jobs"
      json: {{callback: "{{{{ conversation.callback_url }}}}"}}
    response: "started"
    on_callback: "done for {{{{ vars.who }}}}: {{{{ callback.data.n }}}}"
"""


def write_member_jobs(directory: Path, port: int, mode: str = "per_user") -> Path:
    """A bot whose /job hands its upstream (on `port`) a callback URL; each member of a group
    is /name'd in their own conversation (per_user), and the result says whose it is."""
    directory.mkdir()
    (directory / "bot.yaml").write_text(MEMBER_JOBS.format(mode=mode, port=port))
    return directory


def member_job_bot(tmp_path, upstream, mode: str = "per_user") -> TestBot:
    bot = TestBot(str(write_member_jobs(tmp_path / "bot", upstream.server_port, mode)))
    bot.bot.pipeline.callback_base = "https://pi.example.org/bot"
    return bot


def two_members_jobs(bot: TestBot, upstream) -> tuple[str, str]:
    """Ann and Bob name themselves and each start a job: their callback tokens."""
    bot.send("/name ann", chat=GROUP, user=ANN)
    bot.send("/name bob", chat=GROUP, user=BOB)
    bot.send("/job", chat=GROUP, user=ANN)
    ann = last_token(upstream)
    bot.send("/job", chat=GROUP, user=BOB)
    bob = last_token(upstream)
    bot.replies(GROUP)
    return ann, bob


def last_token(upstream) -> str:
    return upstream.bodies[-1]["callback"].rsplit("/", 1)[1]


def test_a_members_result_meets_that_members_conversation(tmp_path, upstream):
    with member_job_bot(tmp_path, upstream) as bot:
        ann, bob = two_members_jobs(bot, upstream)
        callbacks.deliver(bot.store, bob, {"n": 2})
        callbacks.deliver(bot.store, ann, {"n": 1})
        bot.run(GROUP)
        assert bot.replies(GROUP) == ["done for bob: 2", "done for ann: 1"]
        assert callbacks.find(bot.store, ann).member == ANN


def test_a_per_chat_groups_result_meets_the_groups_conversation(tmp_path, upstream):
    with member_job_bot(tmp_path, upstream, mode="per_chat") as bot:
        bot.send("/name team", chat=GROUP, user=ANN)
        bot.send("/job", chat=GROUP, user=BOB)
        found = callbacks.find(bot.store, last_token(upstream))
        assert (found.chat_id, found.handler, found.member) == (GROUP, "job", None)
        callbacks.deliver(bot.store, last_token(upstream), {"n": 3})
        bot.run(GROUP)
        assert bot.replies(GROUP)[-1] == "done for team: 3"


def test_a_handler_name_that_looks_like_a_member_mark_is_kept_as_written(fresh_db):
    token = callbacks.create(fresh_db, 5, "job@12", 60)
    found = callbacks.find(fresh_db, token)
    assert (found.handler, found.member) == ("job@12", None)
    token = callbacks.create(fresh_db, GROUP, '{"handler": "x", "member": 1}', 60)
    assert callbacks.find(fresh_db, token).handler == '{"handler": "x", "member": 1}'


def test_a_result_for_a_group_that_became_a_supergroup_answers_in_the_supergroup(
        tmp_path, upstream):
    supergroup = -1000000000300
    with member_job_bot(tmp_path, upstream, mode="per_chat") as bot:
        bot.send("/name team", chat=GROUP, user=ANN)
        bot.send("/job", chat=GROUP, user=ANN)
        token = last_token(upstream)
        bot.send(None, chat=GROUP, user=ANN, migrate_to_chat_id=supergroup)
        bot.send("/name crew", chat=supergroup, user=ANN)
        bot.replies()
        assert callbacks.find(bot.store, token).chat_id == supergroup
        callbacks.deliver(bot.store, token, {"n": 4})
        bot.run(supergroup)
        assert bot.replies(supergroup) == ["done for crew: 4"]


# -- forgetting a chat or a member forgets the callback URLs it handed out --------------------

def test_forgetting_a_chat_makes_its_callback_urls_unknown(fresh_db):
    mine = callbacks.create(fresh_db, 42, "job", 3600)
    other = callbacks.create(fresh_db, 43, "job", 3600)
    with fresh_db.writing() as db:
        forget_chat(42)(db)
    assert callbacks.deliver(fresh_db, mine, {"late": True}) is None
    assert callbacks.find(fresh_db, other) is not None
    assert fresh_db.pending(42) == []


def test_a_members_forget_in_a_group_ends_only_their_callback_urls(tmp_path, upstream):
    with member_job_bot(tmp_path, upstream) as bot:
        bot.send("/job", chat=GROUP, user=ANN)
        ann = last_token(upstream)
        bot.send("/job", chat=GROUP, user=BOB)
        bob = last_token(upstream)
        bot.send("/forget", chat=GROUP, user=ANN)
        assert callbacks.find(bot.store, ann) is None
        assert callbacks.find(bot.store, bob) is not None


def test_a_members_result_waiting_in_the_inbox_goes_with_their_forget(tmp_path, upstream):
    with member_job_bot(tmp_path, upstream) as bot:
        ann, bob = two_members_jobs(bot, upstream)
        callbacks.deliver(bot.store, ann, {"n": 1})
        callbacks.deliver(bot.store, bob, {"n": 2})
        bot.send("/forget", chat=GROUP, user=ANN)   # handled before the results (update order)
        assert bot.replies(GROUP) == ["Done: I deleted our conversation in this group.",
                                      "done for bob: 2"]
        assert bot.store.pending(GROUP) == []


def test_forgetting_a_person_ends_their_callback_urls_in_groups(tmp_path, upstream):
    with member_job_bot(tmp_path, upstream) as bot:
        bot.send("/job", chat=GROUP, user=ANN)
        in_group = last_token(upstream)
        with bot.store.writing() as db:
            forget_chat(ANN)(db)
        assert callbacks.find(bot.store, in_group) is None


def test_forgetting_a_person_skips_handler_names_that_only_look_like_json(fresh_db):
    names = ("{oops", "{}", "[1]", f'{{"member": {ANN}}}')
    kept = [callbacks.create(fresh_db, 42, name, 3600) for name in names]
    with fresh_db.writing() as db:
        forget_chat(ANN)(db)
    assert all(callbacks.find(fresh_db, token) is not None for token in kept)


def test_export_lists_a_chats_callback_urls_without_their_digest(fresh_db):
    callbacks.create(fresh_db, 42, "job", 3600, now=1000.0)
    with fresh_db.reading() as db:
        rows = export_chat(db, 42)["callback_tokens"]
    assert rows == [{"chat_id": 42, "handler": "job", "member": None, "created": 1000.0,
                     "expires": 4600.0}]


def test_the_forget_command_counts_and_deletes_the_chats_callback_urls(tmp_path):
    database = tmp_path / "bot.sqlite3"
    store = Store(str(database))
    token = callbacks.create(store, 42, "job", 3600)
    store.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    forgot = subprocess.run([sys.executable, "-m", "chatdaemon", "forget", "--db", str(database),
                             "42"], capture_output=True, text=True, timeout=60, env=env)
    assert forgot.returncode == 0, forgot.stderr
    assert "(1 row(s) deleted" in forgot.stdout
    store = Store(str(database))
    try:
        assert callbacks.find(store, token) is None
    finally:
        store.close()


# -- schedule names: '@' is how a member's schedule is stored ---------------------------------

@pytest.mark.parametrize("yaml_text", [
    """
    schedules:
      - {name: "tick@home", response: "tick"}
    handlers:
      - {name: go, response: "ok", schedule: {start: "tick@home", every: 60}}
    """,
    """
    handlers:
      - {name: go, response: "ok", schedule: {start: "tick@home", every: 60}}
    """,
])
def test_check_refuses_a_schedule_name_with_an_at_sign(tmp_path, yaml_text):
    (tmp_path / "bot.yaml").write_text(textwrap.dedent(yaml_text))
    with pytest.raises(ConfigError, match="'@'"):
        load_bot(str(tmp_path))


TICKER = '''
from chatdaemon import ChatHandler


class Ticker(ChatHandler):
    def on_schedule(self, tick):
        self.sender.sendMessage(f"tick {tick['name']}")
'''


def test_a_chat_schedule_named_with_an_at_sign_before_the_rule_still_ticks(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: ticker:Ticker\n")
    (tmp_path / "ticker.py").write_text(TICKER)
    with TestBot(str(tmp_path)) as bot:
        with bot.store.writing() as db:   # as an older version saved it
            conversations.save(db, Conversation(5, None, {}, schedules={
                "alarm@7": {"every": 60.0}}, saved_schedules={}), time.time())
        assert bot.store.load_conversation(5).schedules == {"alarm@7": {"every": 60.0}}
        bot.tick("alarm@7", chat=5)
        assert bot.replies(5) == ["tick alarm@7"]


def test_a_members_schedule_is_still_theirs_alone(fresh_db):
    with fresh_db.writing() as db:
        conversations.save(db, Conversation(GROUP, None, {}, schedules={}, saved_schedules={},
                                            member=ANN), time.time())
        member = Conversation(GROUP, None, {}, schedules={"tick": {"every": 60.0}},
                              saved_schedules={}, member=ANN)
        conversations.save(db, member, time.time())
    assert fresh_db.load_conversation(GROUP).schedules == {}
    assert fresh_db.load_conversation(GROUP, ANN).schedules == {"tick": {"every": 60.0}}


REMINDERS = """
conversation: {mode}
schedules:
  - name: remind
    response: "reminder for {{{{ vars.who }}}}"
handlers:
  - name: name
    pattern: '^/name (?P<n>\\w+)$'
    response: "hello {{{{ pattern.n }}}}"
    save: {{who: "{{{{ pattern.n }}}}"}}
    schedule: {{start: remind, every: 60}}
"""


def schedule_names(bot: TestBot) -> list[str]:
    with bot.store.reading() as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM schedules"))


def test_a_members_schedule_stops_once_the_bot_keeps_one_conversation_per_chat(tmp_path):
    (tmp_path / "bot.yaml").write_text(REMINDERS.format(mode="per_user"))
    with TestBot(str(tmp_path)) as bot:
        bot.send("/name ann", chat=GROUP, user=ANN)
        bot.tick(f"remind@{ANN}", chat=GROUP)
        assert bot.replies(GROUP) == ["hello ann", "reminder for ann"]

        (tmp_path / "bot.yaml").write_text(REMINDERS.format(mode="per_chat"))   # a reload
        bot.end(GROUP, "reload")
        bot.bot = load_bot(str(tmp_path))
        bot.tick(f"remind@{ANN}", chat=GROUP)   # no conversation runs it any more
        assert bot.replies(GROUP) == []
        assert schedule_names(bot) == []
        assert bot.store.load_conversation(GROUP, ANN).vars == {"who": "ann"}   # kept
        bot.send("/name team", chat=GROUP, user=BOB)
        bot.tick("remind", chat=GROUP)
        assert bot.replies(GROUP) == ["hello team", "reminder for team"]
        assert schedule_names(bot) == ["remind"]


# -- a one-time reply keyboard of a Python bot -----------------------------------------------

ONE_TIME = '''
from chatdaemon import ChatHandler


class Order(ChatHandler):
    def on_chat_message(self, msg):
        text = msg.get("text")
        if text == "/order":
            self.sender.sendMessage("size?", reply_markup={
                "keyboard": [["Small", "Large"]], "one_time_keyboard": True})
        elif text in ("Small", "Large"):
            self.sender.sendMessage("how many?")
        elif text == "/where":
            self.sender.sendMessage("where to?", reply_markup={"keyboard": [
                [{"text": "Send my location", "request_location": True}],
                [{"text": "Pick up", "request_location": False}]]})
        elif msg.get("location"):
            self.sender.sendMessage("got a location")
        else:
            self.sender.sendMessage(f"got {text}")
'''


@pytest.fixture
def order(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: order:Order\n")
    (tmp_path / "order.py").write_text(ONE_TIME)
    with TestBot(str(tmp_path)) as bot:
        yield bot


def test_a_one_time_keyboard_picks_once_then_numbers_are_text(order):
    order.send("/order", chat=7)
    order.send("2", chat=7)          # picks Large; Telegram hides the keyboard now
    order.send("2", chat=7)          # the answer to "how many?"
    assert order.replies(7) == ["size?", "how many?", "got 2"]


def test_a_one_time_keyboard_tapped_is_gone_too(order):
    order.send("/order", chat=7)
    order.send("Small", chat=7)
    order.send("1", chat=7)
    assert order.replies(7) == ["size?", "how many?", "got 1"]


# -- a reload that brings callback URLs while the hook server is not running ------------------

class _API:
    """getMe and nothing else: enough to build a daemon that never runs."""

    def call(self, method, params=None, timeout=None):
        return {"id": 1, "is_bot": True, "username": "testbot"} if method == "getMe" else True


def test_a_reload_to_callback_urls_without_a_running_hook_server_keeps_the_bot(
        tmp_path, upstream, caplog):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "bot.yaml").write_text('handlers:\n  - {name: any, response: "v1"}\n')
    config = Config(database=str(tmp_path / "bot.sqlite3"), handlers=str(plain))
    with member_job_bot(tmp_path, upstream) as job:
        daemon = build_daemon(config, load_bot(str(plain)), _API(),
                              loader=lambda: (config, job.bot))
    try:
        assert daemon.hook_server is None     # the bot it started with needs none
        old = daemon.bot
        daemon._reload()
        assert daemon.bot is old
        assert "reload failed" in caplog.text and "hook server" in caplog.text
    finally:
        daemon.store.close()


# -- a database in the bot's directory is never sent ------------------------------------------

DOWNLOADS = """
handlers:
  - name: get
    pattern: '^/get (?P<f>.+)$'
    response: {document: "{{ pattern.f }}", caption: "here"}
"""


@pytest.fixture
def bot_with_database(tmp_path):
    """A bot run from its own directory: the daemon's database (open, so with its WAL) is
    beside the definitions, and a copy of it under another name too."""
    directory = tmp_path / "bot"
    (directory / "backup").mkdir(parents=True)
    (directory / "bot.yaml").write_text(DOWNLOADS)
    (directory / "notes.txt").write_text("hello\n")
    store = Store(str(directory / "chatdaemon.sqlite3"))
    store.add_local([(5, "hook", {"message": {"text": "a private message"}})])
    (directory / "backup" / "old.bin").write_bytes((directory / "chatdaemon.sqlite3").read_bytes())
    yield directory
    store.close()


@pytest.mark.parametrize("value", ["chatdaemon.sqlite3", "chatdaemon.sqlite3-wal",
                                   "chatdaemon.sqlite3-shm", "backup/old.bin"])
def test_the_database_and_its_wal_are_never_sent(bot_with_database, value):
    assert (bot_with_database / value).exists()
    with pytest.raises(MediaError) as caught:
        media_value(str(bot_with_database), "document", value, "w")
    assert "database" in caught.value.reason


def test_a_user_asking_for_the_database_by_name_gets_the_error_text(bot_with_database):
    with TestBot(str(bot_with_database)) as bot:
        bot.send("/get notes.txt", chat=7)
        assert bot.calls[-1].method == "sendDocument"
        bot.send("/get chatdaemon.sqlite3", chat=7)
        assert [call.method for call in bot.calls[1:]] == ["sendMessage"]
        assert bot.replies(7)[-1] == bot.bot.error_text


# -- pimonitor's /chart where matplotlib is not installed --------------------------------------

def test_chart_without_matplotlib_starts_no_sampling(monkeypatch):
    from test_media import PIMONITOR, NotInstalled
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NotInstalled, *sys.meta_path])
    with TestBot(str(PIMONITOR)) as bot:
        bot.send("/chart", chat=7)
        assert bot.pop().startswith("/chart needs matplotlib")
        conversation = bot.store.load_conversation(7)
        assert conversation.schedules == {} and "samples" not in conversation.vars


def test_a_number_never_stands_for_a_button_that_shares_a_location(order):
    order.send("/where", chat=7)
    order.send("1", chat=7)          # a tap would send a location, not this label as text
    order.send("2", chat=7)
    order.send(None, chat=7, location={"latitude": 1.5, "longitude": 2.5})
    assert order.replies(7) == ["where to?", "got 1", "got Pick up", "got a location"]
