"""The update transaction in-process: commit or rollback whole, migration, quarantine, sends."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from chatdaemon import ChatHandler
from chatdaemon.bots import load_bot
from chatdaemon.errors import Abandoned, BadToken, TelegramError
from chatdaemon.inbox import to_row
from chatdaemon.store import Conversation, Store
from chatdaemon.templates import EMOJI
from chatdaemon.transaction import Careful, UpdateTransaction

CHAT = 42


class FakeSender:
    """Records sends; can fail the next one or find the chat moved to a supergroup."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []
        self.token_rejected = False
        self.fail_next: Exception | None = None
        self.migrate_to: int | None = None

    def call(self, method, params=None, *, on_migrate=None, check=None, waiting=None):
        if check is not None:
            check()
        params = dict(params or {})
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            self.token_rejected = isinstance(error, BadToken)
            raise error
        if self.migrate_to is not None and params.get("chat_id") == CHAT:
            on_migrate(CHAT, self.migrate_to)
            params["chat_id"] = self.migrate_to
        self.sent.append((method, params))
        return {"message_id": len(self.sent)}

    def texts(self) -> list[str]:
        return [params["text"] for method, params in self.sent if method == "sendMessage"]


class FakeSlot:
    """The thread side of a transaction, as a transaction sees it."""

    def __init__(self, store=None):
        self.abandoned = False
        self.counts: dict[str, int] = {}
        self.held: list[int] = []
        self.released: list[tuple[int, dict]] = []
        self.busy: list[int | None] = []
        self._store = store

    def handling(self, update_id):
        self.busy.append(update_id)

    def handled(self):
        pass

    def wait_for_work(self, timeout):
        return "idle"

    def hold_chat(self, chat_id):
        self.held.append(chat_id)

    def release_chat(self, chat_id):
        # what a delegate started for the new chat right now would load
        self.released.append((chat_id, self._store.load_conversation(chat_id).vars))

    def count(self, name):
        self.counts[name] = self.counts.get(name, 0) + 1


class PythonBot:
    error_text = "Sorry, that failed."

    def __init__(self, handler_class):
        self.handler_class = handler_class

    def create_handler(self, context, conversation, sender):
        return self.handler_class(context, conversation, sender)


class Counter(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["count"] = self.vars.get("count", 0) + 1
        self.sender.sendMessage(str(self.vars["count"]))

    def on_close(self, reason):
        self.vars["closed"] = str(reason)  # an exception whose str() is its name


@pytest.fixture
def store(tmp_path):
    db = Store(str(tmp_path / "t.sqlite3"))
    yield db
    db.close()


@pytest.fixture
def sender():
    return FakeSender()


@pytest.fixture
def slot(store):
    return FakeSlot(store)


def message(update_id, text="hi", chat_id=CHAT, **chat):
    return to_row({"update_id": update_id, "message": {
        "message_id": update_id, "text": text,
        "chat": {"id": chat_id, "type": "private", **chat}, "from": {"id": chat_id}}})


def queued(store, *rows):
    store.add_updates(list(rows))
    return store.pending(CHAT)


def transaction(store, sender, slot, bot):
    return UpdateTransaction(CHAT, store, sender, bot, slot, sleep=lambda seconds: False)


# -- templates get read-only data --------------------------------------------------------

TEMPLATE_BOT = """
error_text: "Sorry, that failed."
handlers:
  - name: emoji
    pattern: '^e$'
    # through a name of its own: `emoji.update` written out is refused at load already
    response: {text: "{% set e = emoji %}{% set _ = e.update({'x': '1'}) %}ok"}
  - name: vars
    pattern: '^v$'
    response: {text: "{% set _ = vars.update({'count': 99}) %}ok"}
  - name: nested
    pattern: '^n$'
    response: {text: "{% set _ = vars.tags.append('x') %}ok"}
  - name: context
    pattern: '^s$'
    response: {text: "{% set _ = state_context.clear() %}ok"}
  - name: env
    pattern: '^env$'
    response: {text: "{% set _ = env.update({'TOKEN': 'mine'}) %}ok"}
  - name: read
    pattern: '^r$'
    response:
      text: "{{ emoji.wave }} {{ vars.count }} {{ vars.tags | length }} {{ state_context.menu.pattern }}"
"""


def test_no_template_can_change_emoji_vars_state_context_or_env(store, sender, slot, tmp_path):
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot" / "bot.yaml").write_text(TEMPLATE_BOT)
    bot = load_bot(str(tmp_path / "bot"))
    before = Conversation(CHAT, "menu", {"count": 3, "tags": ["a"]}, {"menu": {"pattern": {"0": "m"}}})
    store.finish(None, before)
    env_before = dict(bot.pipeline.env)
    rows = queued(store, *(message(i, text) for i, text in enumerate(["e", "v", "n", "s", "env", "r"], 1)))
    txn = transaction(store, sender, slot, bot)
    for row in rows:
        txn.handle(row)
    assert sender.texts() == ["Sorry, that failed."] * 5 + ["👋 3 1 {'0': 'm'}"]
    assert "x" not in EMOJI
    assert dict(bot.pipeline.env) == env_before
    saved = store.load_conversation(CHAT)
    assert (saved.state, saved.vars, saved.state_context) == (before.state, before.vars,
                                                              before.state_context)
    assert store.backlog() == 0


class ChangesThenFails(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["count"] = 1
        self.state = "changed"
        self.start_schedule("tick", 60)
        raise ValueError("on purpose")


def test_a_failing_handler_rolls_back_everything_and_gets_the_error_text(store, sender, slot):
    rows = queued(store, message(1))
    transaction(store, sender, slot, PythonBot(ChangesThenFails)).handle(rows[0])
    saved = store.load_conversation(CHAT)
    assert (saved.state, saved.vars, saved.schedules) == (None, {}, {})
    assert sender.texts() == ["Sorry, that failed."]
    assert store.is_done(1) and slot.counts == {"failed": 1}


# -- on_close -------------------------------------------------------------------------------

def test_on_close_runs_in_a_transaction_and_its_changes_are_saved(store, sender, slot):
    rows = queued(store, message(1))
    txn = transaction(store, sender, slot, PythonBot(Counter))
    txn.handle(rows[0])
    txn.close("idle")
    assert store.load_conversation(CHAT).vars == {"count": 1, "closed": "idle"}


# -- migration --------------------------------------------------------------------------------

def test_a_migration_copies_the_conversation_in_the_commit_of_the_update_that_found_it(
        store, sender, slot):
    rows = queued(store, message(1), message(2))
    txn = transaction(store, sender, slot, PythonBot(Counter))
    txn.handle(rows[0])
    sender.migrate_to = -1009
    txn.handle(rows[1])
    assert sender.sent[-1] == ("sendMessage", {"chat_id": -1009, "text": "2"})
    assert store.load_conversation(-1009).vars == {"count": 2}
    # the new chat was held from the send until the commit, and held no longer than that
    assert slot.held == [-1009]
    assert slot.released == [(-1009, {"count": 2})]


# -- quarantine ------------------------------------------------------------------------------

def test_an_update_cut_short_three_times_is_quarantined_and_answered(store, sender, slot, caplog):
    queued(store, message(7, "poison"), message(8, "next"))
    for _ in range(3):
        store.add_attempt(7)
    rows = store.pending(CHAT)
    assert rows[0].attempts == 3
    txn = transaction(store, sender, slot, PythonBot(Counter))
    with caplog.at_level(logging.WARNING, logger="chatdaemon.transaction"):
        for row in rows:
            txn.handle(row)
    assert sender.texts() == ["Sorry, that failed.", "1"]  # the handler never saw the poison
    assert store.quarantined_count() == 1 and store.backlog() == 0
    warning = next(r.getMessage() for r in caplog.records if "quarantined" in r.getMessage())
    assert "chat 42" in warning and "update 7" in warning and "cut short 3 times" in warning


def test_start_up_counts_only_each_chats_first_pending_row_and_nothing_after_a_clean_stop(store):
    store.add_updates([message(1), message(2), message(3, chat_id=5)])
    assert store.count_interrupted() == 2
    assert [r.attempts for r in store.pending(CHAT)] == [1, 0]
    assert [r.attempts for r in store.pending(5)] == [1]
    store.note_clean_stop()
    assert store.count_interrupted() == 0
    assert [r.attempts for r in store.pending(CHAT)] == [1, 0]
    # the clean mark counts for one start only; the next unclean end finds rows counted
    # before, a crash loop: nothing is counted for all, the suspects start one at a time
    assert store.count_interrupted() == 0
    assert store.repeat_suspects() == [1, 3]


def test_in_a_crash_loop_only_the_update_that_ends_the_daemon_is_set_aside(store, sender, slot):
    innocent, poison = message(1, "hi", chat_id=5), message(2, "die")
    store.add_updates([innocent, poison])
    assert store.count_interrupted() == 2                  # the first unclean end: both counted
    # the second start: a crash loop; each suspect is counted only as it starts, alone
    careful = Careful(store.repeat_suspects(), wait=1.0)
    assert careful.covers(1) and careful.covers(2)
    UpdateTransaction(5, store, sender, PythonBot(Counter), slot, sleep=lambda s: False,
                      careful=careful).handle(store.pending(5)[0])
    assert store.is_done(1) and sender.texts() == ["1"]
    with careful.alone(store, 2):
        pass                                               # the poison ends the daemon here
    # the third start: only the poison is a suspect; its third end sets it aside unhandled
    assert store.count_interrupted() == 0 and store.repeat_suspects() == [2]
    UpdateTransaction(CHAT, store, sender, PythonBot(Counter), slot, sleep=lambda s: False,
                      careful=Careful(store.repeat_suspects(), wait=1.0)).handle(store.pending(CHAT)[0])
    assert store.quarantined_count() == 1 and store.is_done(2)
    assert sender.texts() == ["1", "Sorry, that failed."]  # the poison's handler never ran
    with store.reading() as db:                           # the innocent one was never set aside
        assert db.execute("SELECT quarantined FROM inbox WHERE update_id = 1").fetchone() == (None,)


# -- sends that fail ---------------------------------------------------------------------------

def test_a_revoked_token_leaves_the_update_pending_and_unchanged(store, sender, slot):
    rows = queued(store, message(1))
    sender.fail_next = BadToken("Telegram rejected the bot token")
    with pytest.raises(BadToken):
        transaction(store, sender, slot, PythonBot(Counter)).handle(rows[0])
    assert not store.is_done(1)
    assert store.load_conversation(CHAT).vars == {}
    assert sender.sent == []  # no error text either: nothing can be sent


class SwallowsErrors(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["count"] = 1
        try:
            self.sender.sendMessage("hello")
        except Exception:
            pass


def test_a_handler_swallowing_the_401_still_commits_nothing(store, sender, slot):
    rows = queued(store, message(1))
    sender.fail_next = BadToken("Telegram rejected the bot token")
    with pytest.raises(BadToken):
        transaction(store, sender, slot, PythonBot(SwallowsErrors)).handle(rows[0])
    assert not store.is_done(1) and store.load_conversation(CHAT).vars == {}


def test_a_blocked_bot_marks_the_update_done_without_an_error_text(store, sender, slot, caplog):
    rows = queued(store, message(1))
    sender.fail_next = TelegramError("sendMessage", 403, "Forbidden: bot was blocked by the user")
    with caplog.at_level(logging.INFO, logger="chatdaemon.transaction"):
        transaction(store, sender, slot, PythonBot(Counter)).handle(rows[0])
    assert store.is_done(1)
    assert sender.sent == []
    assert store.load_conversation(CHAT).vars == {}
    assert any("blocked by the user" in r.getMessage() for r in caplog.records)


def test_an_abandoned_transaction_can_neither_send_nor_commit(store, sender, slot):
    rows = queued(store, message(1))

    class GivenUpMidway(ChatHandler):
        def on_chat_message(self, msg):
            self.vars["count"] = 1
            slot.abandoned = True  # the deadline passed while the handler was busy
            self.sender.sendMessage("late")

    with pytest.raises(Abandoned):
        transaction(store, sender, slot, PythonBot(GivenUpMidway)).handle(rows[0])
    assert sender.sent == [] and not store.is_done(1)


def test_the_commit_guard_refuses_once_the_transaction_is_abandoned(store, sender, slot):
    rows = queued(store, message(1))

    class Quiet(ChatHandler):
        def on_chat_message(self, msg):
            self.vars["count"] = 1
            slot.abandoned = True

    with pytest.raises(Abandoned):
        transaction(store, sender, slot, PythonBot(Quiet)).handle(rows[0])
    assert not store.is_done(1) and store.load_conversation(CHAT).vars == {}


# -- the first word of a chat ------------------------------------------------------------------

def test_a_chat_talking_first_is_logged_once_with_its_name(store, sender, slot, caplog):
    rows = queued(store, message(1, first_name="Ann", last_name="Lee", username="annlee"),
                  message(2))
    with caplog.at_level(logging.INFO, logger="chatdaemon.transaction"):
        txn = transaction(store, sender, slot, PythonBot(Counter))
        txn.handle(rows[0])
        transaction(store, sender, slot, PythonBot(Counter)).handle(rows[1])
    lines = [r.getMessage() for r in caplog.records if "first talked" in r.getMessage()]
    assert lines == ["chat 42 first talked to the bot: 'Ann Lee' (@annlee)"]


class Silent(ChatHandler):
    def on_chat_message(self, msg):
        pass


def test_a_silent_bot_still_creates_the_conversation_once(store, sender, slot, caplog):
    rows = queued(store, message(1), message(2))
    with caplog.at_level(logging.INFO, logger="chatdaemon.transaction"):
        for row in rows:
            transaction(store, sender, slot, PythonBot(Silent)).handle(row)
    assert store.conversation_count() == 1
    assert sum("first talked" in r.getMessage() for r in caplog.records) == 1


# -- the sender's part ------------------------------------------------------------------------

class ScriptedAPI:
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls: list[tuple[str, dict]] = []

    def call(self, method, params):
        self.calls.append((method, dict(params)))
        answer = self.answers.pop(0) if self.answers else {"message_id": 1}
        if isinstance(answer, Exception):
            raise answer
        return answer


def real_sender(api):
    import threading

    from chatdaemon.ratelimit import Limits, RateLimiter
    from chatdaemon.sender import Sender
    return Sender(api, RateLimiter(Limits(enabled=False)), threading.Event())


def test_after_a_401_the_sender_refuses_every_call_without_asking_telegram():
    api = ScriptedAPI(TelegramError("sendMessage", 401, "Unauthorized"))
    out = real_sender(api)
    for _ in range(2):
        with pytest.raises(BadToken):
            out.call("sendMessage", {"chat_id": 1, "text": "x"})
    assert len(api.calls) == 1 and out.token_rejected


def test_a_migration_is_told_to_the_caller_of_that_send():
    api = ScriptedAPI(TelegramError("sendMessage", 400, "Bad Request: group chat was upgraded",
                                    {"migrate_to_chat_id": -1007}))
    moved = []
    real_sender(api).call("sendMessage", {"chat_id": -7, "text": "x"},
                          on_migrate=lambda old, new: moved.append((old, new)))
    assert moved == [(-7, -1007)]
    assert [params["chat_id"] for _, params in api.calls] == [-7, -1007]


def service_message(update_id, chat_id, **fields):
    return to_row({"update_id": update_id, "message": {
        "message_id": update_id, "chat": {"id": chat_id, "type": "group"}, **fields}})


def test_the_old_groups_service_message_moves_the_conversation_in_its_commit(store, sender, slot):
    store.finish(None, Conversation(CHAT, "menu", {"count": 2}))
    rows = queued(store, service_message(5, CHAT, migrate_to_chat_id=-1042))
    transaction(store, sender, slot, PythonBot(Silent)).handle(rows[0])
    moved = store.load_conversation(-1042)
    assert (moved.state, moved.vars) == ("menu", {"count": 2})
    assert slot.held == [-1042] and slot.released == [(-1042, {"count": 2})]


def test_the_supergroups_first_message_starts_from_the_groups_conversation(store, sender, slot):
    store.finish(None, Conversation(CHAT, "menu", {"count": 2}))
    store.add_updates([service_message(6, -1042, migrate_from_chat_id=CHAT)])
    row = store.pending(-1042)[0]
    txn = UpdateTransaction(-1042, store, sender, PythonBot(Counter), slot, sleep=lambda s: False)
    txn.handle(row)
    moved = store.load_conversation(-1042)
    assert (moved.state, moved.vars) == ("menu", {"count": 3})


class DiskFull(Store):
    """A store whose next `failures` commits fail as on a full SD card."""

    failures = 0

    def finish(self, *args, **options):
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().finish(*args, **options)


def test_a_full_disk_after_the_reply_retries_only_the_commit_with_back_off(tmp_path, sender, caplog):
    store = DiskFull(str(tmp_path / "full.sqlite3"))
    store.failures = 3
    waits: list[float] = []
    rows = queued(store, message(1))
    txn = UpdateTransaction(CHAT, store, sender, PythonBot(Counter), FakeSlot(store),
                            sleep=lambda seconds: waits.append(seconds) or False)
    txn.handle(rows[0])
    assert sender.texts() == ["1"]  # sent once: the handler did not run again
    assert waits == [0.5, 1.0, 2.0]
    assert store.is_done(1) and store.load_conversation(CHAT).vars == {"count": 1}
    store.close()


def test_stopping_while_the_commit_waits_leaves_the_update_pending(tmp_path, sender):
    from chatdaemon.errors import ShuttingDown
    store = DiskFull(str(tmp_path / "full.sqlite3"))
    store.failures = 1
    rows = queued(store, message(1))
    txn = UpdateTransaction(CHAT, store, sender, PythonBot(Counter), FakeSlot(store),
                            sleep=lambda seconds: True)
    with pytest.raises(ShuttingDown):
        txn.handle(rows[0])
    assert not store.is_done(1)  # replayed on the next start (its reply may repeat)
    store.close()
