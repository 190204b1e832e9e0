"""Group commit: finishes queued while another thread holds the store commit together, and
each one is still all or nothing on its own."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from chatdaemon.inbox import to_row
from chatdaemon.store import Store

WAIT = 10.0   # seconds any wait in these tests may take at most


def message(update_id: int, chat_id: int) -> dict:
    return {"update_id": update_id, "message": {"message_id": update_id, "date": 0,
                                                "chat": {"id": chat_id, "type": "private"},
                                                "text": "hi"}}


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def begins(store: Store) -> list[str]:
    """Every BEGIN the store's connection runs from now on."""
    seen: list[str] = []
    store._connection.set_trace_callback(
        lambda sql: seen.append(sql) if sql.startswith("BEGIN") else None)
    return seen


def finish_together(store: Store, finishes: list[Callable[[], None]],
                    in_order: bool = False) -> dict[int, BaseException]:
    """Run the finishes on threads of their own while this thread holds the store's lock, so
    they all queue, then let them go; return each one's error by its index. `in_order`:
    each is queued before the next starts, so the queue holds them in the list's order."""
    errors: dict[int, BaseException] = {}

    def run(index: int, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(finishes)]
    with store._lock:
        for index, thread in enumerate(threads):
            thread.start()
            if in_order:
                wait_until(lambda n=index + 1: len(store._finishing) == n)
        wait_until(lambda: len(store._finishing) == len(finishes))
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    return errors


def chats_with_updates(store: Store, count: int) -> list[int]:
    chats = list(range(100, 100 + count))
    store.add_updates([to_row(message(i + 1, chat)) for i, chat in enumerate(chats)])
    return chats


def finishing(store: Store, update_id: int, chat: int, state: str, **kwargs) -> Callable[[], None]:
    def call() -> None:
        conversation = store.load_conversation(chat)
        conversation.state = state
        store.finish(update_id, conversation, **kwargs)
    return call


def test_finishes_queued_behind_the_lock_commit_in_one_transaction(fresh_db):
    chats = chats_with_updates(fresh_db, 8)
    seen = begins(fresh_db)
    # loaded before the lock is held: only the finishes queue
    conversations = [fresh_db.load_conversation(chat) for chat in chats]
    for conversation in conversations:
        conversation.state = "answered"
    errors = finish_together(fresh_db, [
        lambda i=i, c=c: fresh_db.finish(i + 1, c) for i, c in enumerate(conversations)])
    assert errors == {}
    assert seen == ["BEGIN IMMEDIATE"]
    assert fresh_db.backlog() == 0
    assert all(fresh_db.load_conversation(chat).state == "answered" for chat in chats)
    assert not any(conversation.is_new for conversation in conversations)


def test_a_lone_finish_commits_at_once_in_its_own_transaction(fresh_db):
    chats = chats_with_updates(fresh_db, 2)
    seen = begins(fresh_db)
    for update_id, chat in enumerate(chats, start=1):
        conversation = fresh_db.load_conversation(chat)
        conversation.state = "answered"
        fresh_db.finish(update_id, conversation)
        assert fresh_db.is_done(update_id)
    assert seen == ["BEGIN IMMEDIATE"] * 2


def test_a_refused_finish_in_a_group_is_rolled_back_alone(fresh_db):
    chats = chats_with_updates(fresh_db, 5)
    conversations = [fresh_db.load_conversation(chat) for chat in chats]
    for conversation in conversations:
        conversation.state = "answered"

    class GivenUp(Exception):
        pass

    def refuse() -> None:
        raise GivenUp()

    errors = finish_together(fresh_db, [
        lambda i=i, c=c: fresh_db.finish(i + 1, c, guard=refuse if i == 2 else None)
        for i, c in enumerate(conversations)])
    assert list(errors) == [2] and isinstance(errors[2], GivenUp)
    assert [fresh_db.is_done(i + 1) for i in range(5)] == [True, True, False, True, True]
    assert fresh_db.load_conversation(chats[2]).is_new       # nothing of it was saved
    assert conversations[2].is_new and not conversations[1].is_new
    assert fresh_db.load_conversation(chats[4]).state == "answered"


def test_a_write_that_fails_in_a_group_fails_only_its_own_finish(fresh_db):
    chats = chats_with_updates(fresh_db, 3)
    conversations = [fresh_db.load_conversation(chat) for chat in chats]

    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    errors = finish_together(fresh_db, [
        lambda i=i, c=c: fresh_db.finish(i + 1, c, writes=[broken] if i == 0 else [])
        for i, c in enumerate(conversations)])
    assert list(errors) == [0] and isinstance(errors[0], sqlite3.OperationalError)
    assert [fresh_db.is_done(i + 1) for i in range(3)] == [False, True, True]
    # the store goes on: the failed one commits once its write is mended
    fresh_db.finish(1, conversations[0])
    assert fresh_db.backlog() == 0


def test_a_group_commits_in_the_order_its_finishes_came(fresh_db):
    chats = chats_with_updates(fresh_db, 3)
    order: list[int] = []

    def noting(n: int) -> Callable[[sqlite3.Connection], None]:
        return lambda db: order.append(n)

    conversations = [fresh_db.load_conversation(chat) for chat in chats]
    calls = [lambda i=i, c=c: fresh_db.finish(i + 1, c, writes=[noting(i)])
             for i, c in enumerate(conversations)]
    errors = finish_together(fresh_db, calls, in_order=True)
    assert errors == {} and order == [0, 1, 2]


def test_a_closed_store_refuses_every_queued_finish(tmp_path):
    store = Store(str(tmp_path / "db.sqlite3"))
    chats = chats_with_updates(store, 3)
    conversations = [store.load_conversation(chat) for chat in chats]
    calls = [lambda i=i, c=c: store.finish(i + 1, c) for i, c in enumerate(conversations)]
    errors: dict[int, BaseException] = {}

    def run(index: int) -> None:
        try:
            calls[index]()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    with store._lock:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(store._finishing) == 3)
        store._closed = True   # as close() leaves it, without waiting for the lock
    for thread in threads:
        thread.join(WAIT)
    from chatdaemon.errors import ShuttingDown
    assert sorted(errors) == [0, 1, 2]
    assert all(isinstance(error, ShuttingDown) for error in errors.values())
    store._closed = False
    store.close()
    reopened = Store(str(tmp_path / "db.sqlite3"))
    try:
        assert reopened.backlog() == 3   # nothing was marked done
    finally:
        reopened.close()


def test_many_threads_finishing_at_once_lose_nothing(fresh_db):
    chats = chats_with_updates(fresh_db, 64)
    conversations = {chat: fresh_db.load_conversation(chat) for chat in chats}

    def serve(update_id: int, chat: int) -> None:
        conversation = conversations[chat]
        conversation.vars = {"n": update_id}
        fresh_db.finish(update_id, conversation)

    threads = [threading.Thread(target=serve, args=(i + 1, chat)) for i, chat in enumerate(chats)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert fresh_db.backlog() == 0
    assert all(fresh_db.load_conversation(chat).vars == {"n": i + 1} for i, chat in enumerate(chats))
    assert not fresh_db._finishing


@pytest.mark.parametrize("count", [1, 2])
def test_the_lock_is_free_after_a_group(fresh_db, count):
    chats_with_updates(fresh_db, count)
    conversations = [fresh_db.load_conversation(100 + i) for i in range(count)]
    finish_together(fresh_db, [lambda i=i, c=c: fresh_db.finish(i + 1, c)
                               for i, c in enumerate(conversations)])
    assert fresh_db._lock.acquire(timeout=WAIT)
    fresh_db._lock.release()


def test_rows_written_together_are_the_rows_written_alone(tmp_path):
    """Big and negative chat ids, a null state, quotes and emoji in vars, the update time: a
    group writes exactly what lone commits write."""
    chats = [-1001234567890123, 7, 2 ** 52 + 1]
    values = [(None, {"q": "\"'\\", "e": "😀"}), ("s", {}), ("ñ", {"n": [1, 2.5, None]})]

    def stored(path) -> list[tuple]:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT chat_id, state, vars, state_context, typeof(updated)"
                              " FROM conversations ORDER BY chat_id").fetchall()
        finally:
            db.close()

    results = []
    for together in (False, True):
        path = str(tmp_path / f"{together}.sqlite3")
        store = Store(path)
        store.add_updates([to_row(message(i + 1, chat)) for i, chat in enumerate(chats)])
        conversations = [store.load_conversation(chat) for chat in chats]
        for conversation, (state, vars_) in zip(conversations, values, strict=True):
            conversation.state, conversation.vars = state, vars_
        calls = [lambda i=i, c=c, s=store: s.finish(i + 1, c) for i, c in enumerate(conversations)]
        if together:
            assert finish_together(store, calls) == {}
        else:
            for call in calls:
                call()
        assert store.backlog() == 0
        assert [(c.state, c.vars) for c in map(store.load_conversation, chats)] == values
        store.close()
        results.append(stored(path))
    assert results[0] == results[1]
    assert {row[4] for row in results[1]} == {"real"}


def test_a_finish_in_a_group_sees_what_the_ones_before_it_wrote(fresh_db):
    chats = chats_with_updates(fresh_db, 3)
    conversations = [fresh_db.load_conversation(chat) for chat in chats]
    for conversation in conversations:
        conversation.state = "answered"
    seen: list[object] = []

    def look(db: sqlite3.Connection) -> None:   # the middle finish reads the others' rows
        seen.extend(row[0] for row in db.execute(
            "SELECT chat_id FROM conversations WHERE state = 'answered' ORDER BY chat_id"))

    calls = [lambda i=i, c=c: fresh_db.finish(i + 1, c, writes=[look] if i == 1 else [])
             for i, c in enumerate(conversations)]
    assert finish_together(fresh_db, calls, in_order=True) == {}
    # the first was written before the middle one ran, the last after it
    assert seen == [chats[0], chats[1]]
    assert fresh_db.backlog() == 0


def test_readers_and_finishers_at_once_leave_nothing_queued(fresh_db):
    """Reads take the lock between commits; every finish is still committed, none left queued."""
    chats = chats_with_updates(fresh_db, 48)
    conversations = {chat: fresh_db.load_conversation(chat) for chat in chats}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            fresh_db.pending(chats[0], 5)
            fresh_db.load_conversation(chats[1])

    def serve(update_id: int, chat: int) -> None:
        conversations[chat].vars = {"n": update_id}
        fresh_db.finish(update_id, conversations[chat])

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    finishers = [threading.Thread(target=serve, args=(i + 1, chat)) for i, chat in enumerate(chats)]
    for thread in finishers:
        thread.start()
    for thread in finishers:
        thread.join(WAIT)
    stop.set()
    for reader in readers:
        reader.join(WAIT)
    assert not any(thread.is_alive() for thread in finishers + readers)
    assert fresh_db.backlog() == 0 and not fresh_db._finishing
    assert all(fresh_db.load_conversation(chat).vars == {"n": i + 1} for i, chat in enumerate(chats))
