"""Unit tests of the pieces the daemon is built from: store, inbox rows, limits, config, logs."""

from __future__ import annotations

import os
import stat

import pytest

from chatdaemon import glance
from chatdaemon.config import load_config
from chatdaemon.errors import ConfigError
from chatdaemon.inbox import chat_of, to_row
from chatdaemon.logs import redact
from chatdaemon.ratelimit import Limits, RateLimiter
from chatdaemon.store import Conversation, Store


@pytest.fixture
def fresh_db(tmp_path):
    store = Store(str(tmp_path / "t.sqlite3"))
    yield store
    store.close()


def message_update(update_id, chat_id, text="hi"):
    return {"update_id": update_id,
            "message": {"message_id": 1, "chat": {"id": chat_id, "type": "private"}, "text": text}}


def test_inbox_ignores_exact_duplicates_only(fresh_db):
    rows = [to_row(message_update(i, 1)) for i in (10, 11)]
    assert [r.update_id for r in fresh_db.add_updates(rows)] == [10, 11]
    again = [to_row(message_update(i, 1)) for i in (11, 5)]
    assert [r.update_id for r in fresh_db.add_updates(again)] == [5]  # 5 < 11 is still new
    assert [r.update_id for r in fresh_db.pending(1)] == [5, 10, 11]


def test_finish_commits_state_and_done_together(fresh_db):
    fresh_db.add_updates([to_row(message_update(1, 42))])
    fresh_db.finish(1, Conversation(42, "menu", {"count": 3}))
    assert fresh_db.pending(42) == []
    loaded = fresh_db.load_conversation(42)
    assert (loaded.state, loaded.vars) == ("menu", {"count": 3})
    assert fresh_db.is_done(1)


def test_database_file_is_created_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        Store(str(tmp_path / "open.sqlite3")).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "open.sqlite3").st_mode) == 0o600


def test_pending_chats_oldest_first_and_copy_chat_on_migration(fresh_db):
    fresh_db.add_updates([to_row(message_update(1, -5)), to_row(message_update(2, 7))])
    assert fresh_db.pending_chats() == [-5, 7]
    fresh_db.add_updates([to_row(message_update(3, -5))])
    fresh_db.finish(3, Conversation(-5, "menu", {"n": 1}))
    fresh_db.copy_chat(-5, -1005)
    copied = fresh_db.load_conversation(-1005)
    assert (copied.state, copied.vars) == ("menu", {"n": 1})
    # the group's pending update stays with its delegate; the sender redirects its replies
    assert [r.update_id for r in fresh_db.pending(-5)] == [1]


def test_store_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Store(str(tmp_path / "nope" / "x.sqlite3"))


def test_chat_of_each_kind():
    assert chat_of(message_update(1, 3)) == 3
    assert chat_of({"update_id": 1, "callback_query": {"id": "q", "from": {"id": 4},
                                                       "message": {"chat": {"id": 5}}}}) == 5
    assert chat_of({"update_id": 1, "callback_query": {"id": "q", "from": {"id": 4}}}) == 4
    assert chat_of({"update_id": 1, "inline_query": {"id": "q", "from": {"id": 4}}}) is None
    assert chat_of({"update_id": 1, "message": "garbage"}) is None
    assert to_row({"message": {}}) is None
    assert to_row({"update_id": True}) is None


def test_glance_like_telepot():
    msg = message_update(1, 3)["message"]
    assert glance(msg) == ("text", "private", 3)
    query = {"id": "q1", "from": {"id": 9}, "chat_instance": "c", "data": "yes"}
    assert glance(query) == ("q1", 9, "yes")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_per_chat_limit_allows_a_burst_then_one_per_second():
    clock = FakeClock()
    limiter = RateLimiter(Limits(per_chat_per_second=1, per_chat_burst=3), clock)
    waits = [limiter.reserve(1) for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(1.0)
    assert waits[4] == pytest.approx(2.0)


def test_global_and_group_limits():
    clock = FakeClock()
    limiter = RateLimiter(Limits(per_second=30), clock)
    waits = [limiter.reserve(chat) for chat in range(1, 62)]
    assert max(waits) == pytest.approx(1.0, abs=0.05)  # 61 sends: 30 now, 30 in a second
    group = RateLimiter(Limits(per_group_per_minute=20), clock)
    assert [round(group.reserve(-100), 2) for _ in range(3)] == [0, 3.0, 6.0]


def test_pause_after_429_applies_even_with_limits_off():
    clock = FakeClock()
    limiter = RateLimiter(Limits(enabled=False), clock)
    assert limiter.reserve(5) == 0
    limiter.pause(5, 7)
    assert limiter.reserve(5) == pytest.approx(7)
    assert limiter.reserve(6) == 0


def test_config_errors_name_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("database: x.sqlite3\ndelegates:\n  max: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert f"{path}:3" in str(info.value)
    path.write_text("databse: x\n")
    with pytest.raises(ConfigError, match=r"unknown key 'databse'") as info:
        load_config(str(path))
    assert info.value.where == f"{path}:1"
    path.write_text("delegates: [\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(str(path))


def test_config_values_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rate_limits: {enabled: false}\ndelegates: {max: 8, idle_timeout: 2}\n")
    config = load_config(str(path))
    assert (config.limits.enabled, config.max_delegates, config.idle_timeout) == (False, 8, 2.0)
    assert config.poll_timeout == 25


def test_shipped_config_loads():
    config = load_config(os.path.join(os.path.dirname(__file__), "..", "config", "chatdaemon.yaml"))
    assert config.limits.enabled and config.max_delegates == 64


def test_redact_removes_tokens_everywhere():
    token = "123456789:AAEabcdefghijklmnopqrstuvwxyz012345"
    line = f"GET https://api.telegram.org/bot{token}/getMe failed; token={token}"
    assert token not in redact(line)
    assert "bot<redacted>" in redact(line)
    assert redact("short", ("short",)) == "<redacted>"


def test_schedule_ticks_coalesce_and_survive_clock_jumps(fresh_db):
    fresh_db.add_updates([to_row(message_update(1, 42))])
    fresh_db.finish(1, Conversation(42, None, {}, {}, {"report": {"every": 60.0}}))
    (created,) = fresh_db._db.execute("SELECT next_at FROM schedules").fetchone()
    assert fresh_db.queue_due_ticks(created - 1) == []
    assert fresh_db.queue_due_ticks(created) == [42]
    # one tick waits, however many intervals pass
    assert fresh_db.queue_due_ticks(created + 600) == [42]
    assert fresh_db._db.execute("SELECT COUNT(*) FROM inbox WHERE kind = 'schedule'"
                                " AND done = 0").fetchone() == (1,)
    # the clock jumps back a year (a Pi without RTC before NTP): re-armed from the new now
    earlier = created - 365 * 86400
    assert fresh_db.queue_due_ticks(earlier) == []
    (next_at,) = fresh_db._db.execute("SELECT next_at FROM schedules").fetchone()
    assert next_at == earlier + 60
    assert fresh_db.queue_due_ticks(earlier + 60) == [42]
    assert fresh_db._db.execute("SELECT received FROM inbox WHERE kind = 'schedule'"
                                " AND done = 0").fetchall() == [(earlier + 60,)]


def test_stopping_a_schedule_removes_it_from_the_index(fresh_db):
    fresh_db.add_updates([to_row(message_update(1, 7)), to_row(message_update(2, 7))])
    fresh_db.finish(1, Conversation(7, None, {}, {}, {"a": {"every": 5.0}}))
    fresh_db.finish(2, Conversation(7, None, {}, {}, {}))
    assert fresh_db._db.execute("SELECT COUNT(*) FROM schedules").fetchone() == (0,)


def test_local_rows_sort_after_telegram_updates_in_order(fresh_db):
    fresh_db.add_updates([to_row(message_update(5, 9))])
    ids = fresh_db.add_local([(9, "hook", {"message": {"text": "a"}}),
                              (9, "hook", {"message": {"text": "b"}})])
    assert ids[1] == ids[0] + 1 and ids[0] > 5
    assert [r.kind for r in fresh_db.pending(9)] == ["message", "hook", "hook"]
    assert [r.payload["hook"]["message"]["text"] for r in fresh_db.pending(9)[1:]] == ["a", "b"]


def test_templates_escape_for_their_parse_mode():
    from chatdaemon.templates import TemplateError, Templates
    templates = Templates()
    context = {"pattern": {"x": "a_b*c [d](e) <i>&"}}
    markdown = templates.compile("*{{ pattern.x }}*", "f:1", "MarkdownV2")
    assert markdown.render(context) == r"*a\_b\*c \[d\]\(e\) <i\>&*"
    html = templates.compile("<b>{{ pattern.x }}</b>", "f:1", "HTML")
    assert html.render(context) == "<b>a_b*c [d](e) &lt;i&gt;&amp;</b>"
    plain = templates.compile("{{ pattern.x }}", "f:1")
    assert plain.render(context) == "a_b*c [d](e) <i>&"
    sneaky = templates.compile("{{ pattern.__class__.__mro__ }}", "f:7")
    with pytest.raises(TemplateError, match="f:7"):
        sneaky.render(context)
    with pytest.raises(ConfigError, match="Markdown is legacy"):
        templates.compile("x", "f:1", "Markdown")
    with pytest.raises(ConfigError, match="safe"):  # `| safe` would undo the escaping
        templates.compile("{{ pattern.x | safe }}", "f:1", "HTML")
    with pytest.raises(ConfigError, match="put it in quotes"):
        templates.compile(True, "f:2")


def test_request_urls_encode_user_values_and_keep_the_authored_host():
    from chatdaemon.httpcall import RequestFailed, Trusted, render_url
    from chatdaemon.templates import Templates
    url = Templates().compile("{{ env.api }}/items/{{ pattern.id }}", "f:1", url=True)
    context = {"env": {"api": Trusted("http://10.0.0.5:8080/v1")}, "pattern": {"id": "a/../b?c"}}
    assert render_url(url, context) == "http://10.0.0.5:8080/v1/items/a%2F..%2Fb%3Fc"
    for climb in ("..", "."):  # a whole ".." segment would reach /v1/ instead
        with pytest.raises(RequestFailed, match="path segment"):
            render_url(url, {"env": context["env"], "pattern": {"id": climb}})
    host = Templates().compile("http://{{ pattern.id }}.example.org/", "f:1", url=True)
    with pytest.raises(RequestFailed, match="changed the request's host"):
        render_url(host, {"env": {}, "pattern": {"id": "evil"}})
    with pytest.raises(RequestFailed, match="changed the request's host"):  # even this word
        render_url(host, {"env": {}, "pattern": {"id": "placeholder"}})


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


def test_a_wedged_poll_loop_starves_the_watchdog_and_an_outage_does_not(monkeypatch, tmp_path):
    import socket
    import threading

    from chatdaemon import poller as poller_module
    from chatdaemon.daemon import Notifier
    from chatdaemon.errors import NetworkError
    from chatdaemon.poller import Poller

    clock = _Clock()
    monkeypatch.setattr(poller_module, "time", clock)
    entered, release, stop = threading.Event(), threading.Event(), threading.Event()
    outcomes = ["outage", "hang"]

    class Api:
        def call(self, method, params, timeout=None):
            outcome = outcomes.pop(0) if outcomes else "idle"
            if outcome == "outage":
                raise NetworkError(method, "connection refused")
            entered.set()
            release.wait(10)
            return []

    store = Store(str(tmp_path / "w.sqlite3"))
    poller = Poller(Api(), store, lambda chats: None, stop, poll_timeout=25)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "n.sock"))
    listener.settimeout(0.5)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock"), "WATCHDOG_USEC": "3000000"})
    notifier._ready_sent = True
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    try:
        assert entered.wait(10)  # the outage's back-off passed; now a call that never returns
        assert poller.alive()
        notifier._feed_watchdog(poller.alive())
        assert listener.recv(100) == b"WATCHDOG=1"
        clock.now += 25 + 15 + 30  # far past the call's own timeout: the loop is wedged
        assert not poller.alive()
        notifier._last_watchdog = 0.0
        notifier._feed_watchdog(poller.alive())
        with pytest.raises(TimeoutError):
            listener.recv(100)
    finally:
        stop.set()
        release.set()
        thread.join(10)
        listener.close()
        store.close()


def test_a_reload_keeps_the_429_pauses_running():
    clock = _Clock()
    limiter = RateLimiter(Limits(), clock=clock.monotonic)
    limiter.pause(None, 30)
    reloaded = limiter.with_limits(Limits(enabled=False))
    assert reloaded.reserve(7) == pytest.approx(30)
    clock.now += 31
    assert reloaded.reserve(7) == 0


def test_a_store_failure_does_not_strand_the_chat(tmp_path):
    """A commit that fails (disk full, I/O error) is retried alone: the handler does not run again."""
    import sqlite3
    import threading

    from chatdaemon import ChatHandler
    from chatdaemon.delegator import Delegator

    class FlakyStore(Store):
        failures = 1

        def finish(self, update_id, conversation, **options):
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")
            return super().finish(update_id, conversation, **options)

    sent = []

    class Counter(ChatHandler):
        def on_chat_message(self, msg):
            self.vars["n"] = self.vars.get("n", 0) + 1
            self.sender.sendMessage(str(self.vars["n"]))

    class Bot:
        error_text = "oops"

        def create_handler(self, delegate, conversation, sender):
            return Counter(delegate, conversation, sender)

    class Sender:
        token_rejected = False

        def call(self, method, params, **options):
            sent.append(params["text"])

    store = FlakyStore(str(tmp_path / "f.sqlite3"))
    delegator = Delegator(store, Bot(), Sender(), max_delegates=2, idle_timeout=30)
    try:
        store.add_updates([to_row(message_update(1, 9)), to_row(message_update(2, 9))])
        delegator.notify([9])
        deadline = threading.Event()
        for _ in range(100):  # bounded: the retry comes after a 0.5 s pause
            if store.backlog() == 0:
                break
            deadline.wait(0.1)
        assert store.backlog() == 0
        # the reply went out before the failed commit: only the commit is tried again
        assert sent == ["1", "2"]
        assert store.load_conversation(9).vars == {"n": 2}
    finally:
        delegator.stop(5)
        store.close()


def test_a_tree_answer_picks_by_label_number_or_one_fitting_piece():
    from chatdaemon.templates import Templates
    from chatdaemon.tree import compile_tree, pick
    tree = compile_tree({"say": "?", "answers": [
        {"answer": "Tea", "say": "a"}, {"answer": "Tea with milk", "say": "b"},
        {"answer": "Coffee", "say": "c"}, {"answer": "7 Up", "say": "d"}]},
        "t.yaml:1", Templates(), lambda data, key: data.get(key))
    node = tree.root
    assert pick(node, "tea") == 0            # the exact label, though "Tea with milk" has it too
    assert pick(node, "  MILK ") == 1        # a piece that fits exactly one label
    assert pick(node, "3") == 2              # by number
    assert pick(node, "7 up") == 3
    assert pick(node, "e") is None           # fits several
    assert pick(node, "5") is None and pick(node, "0") is None and pick(node, "") is None
    assert pick(node, "juice") is None


def test_a_reload_that_changes_the_tree_starts_it_over():
    from chatdaemon.templates import Templates
    from chatdaemon.tree import compile_tree

    def tree(*labels, target=None):
        return compile_tree({"say": "?", "target_state": target,
                             "answers": [{"answer": label, "say": label} for label in labels]},
                            "t.yaml:1", Templates(), lambda data, key: data.get(key))
    before, same, reordered = tree("A", "B"), tree("A", "B"), tree("B", "A")
    place = before.state_of("1").split(":", 1)[1]
    assert same.node_at(place).label == "B"      # a reload that changed nothing keeps the place
    assert reordered.node_at(place) is None      # the place would now mean another answer
    assert tree("A", target="menu").states() == {"menu"}  # "no" to "start again?" goes there


def test_only_a_stale_button_press_is_forgiven():
    from chatdaemon.chathandler import ChatSender
    from chatdaemon.errors import TelegramError

    class Sender:
        def __init__(self, description):
            self.description = description

        def call(self, method, params):
            raise TelegramError(method, 400, self.description)

    stale = ChatSender(Sender("Bad Request: query is too old and response timeout expired or "
                              "query ID is invalid"), 5)
    assert stale.answerCallbackQuery(callback_query_id="q") is False
    mistake = ChatSender(Sender("Bad Request: MESSAGE_TOO_LONG"), 5)
    with pytest.raises(TelegramError, match="MESSAGE_TOO_LONG"):
        mistake.answerCallbackQuery(callback_query_id="q", text="x" * 300)


def test_start_up_asks_systemd_for_longer_than_its_next_wait(tmp_path):
    import socket
    from types import SimpleNamespace

    from chatdaemon.daemon import Notifier
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "n.sock"))
    listener.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        notifier.starting(SimpleNamespace(start_wait=300.0, start_error="getMe: retrying"))
        fields = dict(line.split("=", 1) for line in listener.recv(200).decode().splitlines())
    finally:
        listener.close()
    assert int(fields["EXTEND_TIMEOUT_USEC"]) >= 360_000_000  # a 429 retry_after of 300 s
    assert fields["STATUS"] == "starting; getMe: retrying"
