"""Schedules in-process: one table, written only in the commit that changed them."""

from __future__ import annotations

import json

import pytest

from chatdaemon import ChatHandler
from chatdaemon.conversations import Conversation
from chatdaemon.inbox import to_row
from chatdaemon.store import Store

CHAT = 42


def message(update_id: int, chat_id: int = CHAT) -> dict:
    return {"update_id": update_id, "message": {"message_id": update_id, "date": 0,
                                                "chat": {"id": chat_id, "type": "private"},
                                                "text": "hi"}}


@pytest.fixture
def statements(fresh_db):
    """Every SQL statement the store runs from now on."""
    seen: list[str] = []
    fresh_db._connection.set_trace_callback(seen.append)
    yield seen
    fresh_db._connection.set_trace_callback(None)


def rows(store: Store) -> list[tuple]:
    return store._connection.execute(
        "SELECT chat_id, name, every, next_at FROM schedules ORDER BY chat_id, name").fetchall()


def handle(store: Store, update_id: int, change=None, chat_id: int = CHAT) -> Conversation:
    """Load the chat's conversation, let `change` act on it, commit it with the update."""
    store.add_updates([to_row(message(update_id, chat_id))])
    conversation = store.load_conversation(chat_id)
    if change is not None:
        change(conversation)
    store.finish(update_id, conversation)
    return conversation


def start(name: str, every: float):
    return lambda conversation: conversation.schedules.__setitem__(name, {"every": every})


def test_a_chat_without_schedules_commits_without_touching_the_table(fresh_db, statements):
    fresh_db.add_updates([to_row(message(1)), to_row(message(2))])
    conversation = fresh_db.load_conversation(CHAT)   # a delegate loads it once, then commits
    for update_id in (1, 2):
        conversation.vars["n"] = update_id
        fresh_db.finish(update_id, conversation)
    assert "COMMIT" in statements, "the trace saw the commits"
    assert not [sql for sql in statements if "schedules" in sql]
    assert fresh_db.load_conversation(CHAT).vars == {"n": 2}


def test_a_commit_that_keeps_a_schedule_leaves_its_row_alone(fresh_db, statements):
    handle(fresh_db, 1, start("report", 60))
    before = rows(fresh_db)
    statements.clear()
    handle(fresh_db, 2, lambda c: c.vars.__setitem__("seen", True))
    assert not [sql for sql in statements if "schedules" in sql and "SELECT" not in sql]
    assert rows(fresh_db) == before


def test_starting_a_schedule_writes_its_row_in_the_updates_own_commit(fresh_db):
    handle(fresh_db, 1, start("report", 60))
    [(chat_id, name, every, next_at)] = rows(fresh_db)
    assert (chat_id, name, every) == (CHAT, "report", 60.0)
    assert fresh_db.is_done(1)
    reloaded = fresh_db.load_conversation(CHAT)
    assert reloaded.schedules == {"report": {"every": 60.0}}
    # the conversation row carries none: the table is the one truth
    (column,) = fresh_db._connection.execute(
        "SELECT schedules FROM conversations WHERE chat_id = ?", (CHAT,)).fetchone()
    assert column == "{}"
    assert next_at > 0


def test_a_new_interval_rearms_from_now_and_stopping_deletes_the_row(fresh_db):
    handle(fresh_db, 1, lambda c: c.schedules.update(a={"every": 60.0}, b={"every": 30.0}))
    [(_, _, _, a_next), (_, _, _, b_next)] = rows(fresh_db)
    handle(fresh_db, 2, start("a", 120))
    [(_, a, a_every, a_later), (_, b, b_every, b_same)] = rows(fresh_db)
    assert (a, a_every, b, b_every) == ("a", 120.0, "b", 30.0)
    assert a_later > a_next and b_same == b_next   # only the changed one was re-armed
    handle(fresh_db, 3, lambda c: c.schedules.pop("a"))
    assert [name for _, name, _, _ in rows(fresh_db)] == ["b"]
    handle(fresh_db, 4, lambda c: c.schedules.clear())
    assert rows(fresh_db) == []


def test_a_refused_commit_writes_no_schedule_and_the_next_commit_still_does(fresh_db):
    fresh_db.add_updates([to_row(message(1))])
    conversation = fresh_db.load_conversation(CHAT)
    conversation.schedules["report"] = {"every": 60.0}

    def refuse():
        raise RuntimeError("given up")

    with pytest.raises(RuntimeError):
        fresh_db.finish(1, conversation, guard=refuse)
    assert rows(fresh_db) == [] and not fresh_db.is_done(1)
    fresh_db.finish(1, conversation)
    assert [name for _, name, _, _ in rows(fresh_db)] == ["report"]


def test_a_conversation_made_by_hand_replaces_the_chats_schedules(fresh_db):
    handle(fresh_db, 1, lambda c: c.schedules.update(a={"every": 60.0}, b={"every": 30.0}))
    fresh_db.add_updates([to_row(message(2))])
    fresh_db.finish(2, Conversation(CHAT, None, {}, {}, {"b": {"every": 30.0}}))
    assert [name for _, name, _, _ in rows(fresh_db)] == ["b"]


def test_schedules_stay_with_the_group_when_it_moves_to_a_supergroup(fresh_db):
    handle(fresh_db, 1, start("report", 60), chat_id=-5)
    fresh_db.add_updates([to_row(message(2, -5))])
    conversation = fresh_db.load_conversation(-5)
    conversation.vars["moved"] = True
    fresh_db.finish(2, conversation, moved_to=-1001)
    moved = fresh_db.load_conversation(-1001)
    assert moved.vars == {"moved": True} and moved.schedules == {}
    assert [chat for chat, _, _, _ in rows(fresh_db)] == [-5]


def waiting_ticks(store: Store) -> list[tuple]:
    return store._connection.execute(
        "SELECT update_id, received, payload FROM inbox WHERE kind = 'schedule' AND done = 0"
    ).fetchall()


def make_due(store: Store) -> None:
    """Move the waiting ticks' due time an hour into the past."""
    store._connection.execute("UPDATE inbox SET received = received - 3600 WHERE kind = 'schedule'")


def test_a_running_schedule_has_its_next_tick_waiting_that_names_it(fresh_db):
    handle(fresh_db, 1, start("report", 60))
    [(_, _, _, next_at)] = rows(fresh_db)
    [(_, due, payload)] = waiting_ticks(fresh_db)
    assert due == next_at and json.loads(payload) == {"schedule": {"name": "report", "at": next_at}}
    assert fresh_db.pending(CHAT) == [] and fresh_db.backlog() == 0   # not due yet
    assert fresh_db.queue_due_ticks(next_at - 1) == []
    assert fresh_db.queue_due_ticks(next_at) == [CHAT]
    make_due(fresh_db)
    [tick] = fresh_db.pending(CHAT)
    assert tick.kind == "schedule" and tick.payload["schedule"]["name"] == "report"


def test_idle_seconds_and_due_ticks_cost_reads_and_no_write(fresh_db, statements):
    handle(fresh_db, 1, start("report", 60))
    [(_, _, _, next_at)] = rows(fresh_db)
    statements.clear()
    assert fresh_db.queue_due_ticks(next_at - 30) == []
    assert fresh_db.queue_due_ticks(next_at + 1) == [CHAT]
    assert statements and all(sql.lstrip().startswith("SELECT") for sql in statements)


class Ticker(ChatHandler):
    def __init__(self, conversation):
        super().__init__(context=None, conversation=conversation, sender=object())  # never sends
        self.ticks: list[str] = []

    def on_schedule(self, tick):
        self.ticks.append(tick["name"])


def test_a_tick_queued_before_its_schedule_stopped_is_dropped(fresh_db):
    handle(fresh_db, 1, start("report", 60))
    make_due(fresh_db)
    [tick] = fresh_db.pending(CHAT)                      # a delegate holds it ...
    handle(fresh_db, 2, lambda c: c.schedules.clear())   # ... when a message stops it
    assert waiting_ticks(fresh_db) == []                 # nothing else of it waits
    handler = Ticker(fresh_db.load_conversation(CHAT))
    handler.on_update(tick.kind, tick.payload["schedule"])
    assert handler.ticks == []
    running = Ticker(Conversation(CHAT, None, {}, schedules={"report": {"every": 60.0}}))
    running.on_update(tick.kind, tick.payload["schedule"])
    assert running.ticks == ["report"]


def test_the_table_is_read_only_for_chats_that_have_a_conversation(fresh_db, statements):
    """A first-time chat has no schedules: loading it costs one read, not two."""
    fresh_db.load_conversation(7)
    assert [sql for sql in statements if "schedules" in sql] == []
    assert len(statements) == 1
