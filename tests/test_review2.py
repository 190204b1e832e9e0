"""What production does to group commit and the Bot API client's sockets: failures in the
middle of a group, answers cut or stalled half way, a proxy, signals during a read."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import struct
import threading
from collections.abc import Callable

import pytest
from conftest import CLIENT_READ_TIMEOUT
from test_group_commit import finish_together, message, wait_until
from test_sockets import Step, servers, timed_failure

from chatdaemon.errors import Abandoned, BadAnswer
from chatdaemon.handoffs import queue_rows
from chatdaemon.inbox import LOCAL_BASE, to_row
from chatdaemon.privacy import forget_chat
from chatdaemon.store import Store
from chatdaemon.telegram import MAX_ANSWER_BYTES, TelegramClient

ANSWER = json.dumps({"ok": True, "result": {"message_id": 1}}).encode()
READ_TIMEOUT = CLIENT_READ_TIMEOUT   # the `clients` fixture's
SLACK = 2.5    # what a loaded machine may add to a timeout before the call returns
WAIT = 10.0    # seconds any wait in these tests may take at most

__all__ = ["servers"]   # a fixture, used by name


# -- what the server (test_sockets.ScriptedServer) does with a request ---------------------------

def answer(conn: socket.socket) -> bool:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
    return True


def reset(conn: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashing server or a middlebox does."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def head_then(body_part: bytes, then: str, stopped: threading.Event,
              chunked: bool = False) -> Step:
    """The status line, the headers and part of the body; then a stall or a reset."""
    def step(conn: socket.socket) -> bool:
        framing = b"Transfer-Encoding: chunked" if chunked \
            else b"Content-Length: %d" % (len(ANSWER) + 100)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s\r\n\r\n%s"
                     % (framing, body_part))
        if then == "reset":
            reset(conn)
        else:
            stopped.wait(30)
        return False
    return step


def send(client: TelegramClient) -> object:
    return client.call("sendMessage", {"chat_id": 1, "text": "hi"})


# -- answers that stop half way ------------------------------------------------------------------

@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "keep-alive"])
def test_an_answer_stalling_in_its_body_is_no_answer_in_time_and_is_not_resent(
        servers, clients, chunked, warm):
    part = b"5\r\n{\"ok\"\r\n" if chunked else ANSWER[:5]
    server = servers([answer] * warm)
    server.steps.append(head_then(part, "stall", server.stopped, chunked=chunked))
    client = clients(server.url())
    if warm:
        send(client)
    error, took = timed_failure(send, client)
    assert error.reason == "no answer in time"
    assert error.maybe_delivered is True
    assert took < READ_TIMEOUT + SLACK
    assert len(server.requests) == 1 + warm   # never sent again


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "keep-alive"])
def test_a_connection_reset_in_the_answers_body_is_maybe_delivered_and_never_resent(
        servers, clients, chunked, warm):
    """The server had the request (it was answering): sending it again on a fresh connection
    would send the message twice; the sender must see a possibly delivered failure."""
    part = b"5\r\n{\"ok\"\r\n" if chunked else ANSWER[:5]
    server = servers([answer] * warm)
    server.steps.append(head_then(part, "reset", server.stopped, chunked=chunked))
    client = clients(server.url())
    if warm:
        send(client)
    error, _ = timed_failure(send, client)
    assert error.maybe_delivered is True
    assert len(server.requests) == 1 + warm


def test_a_keep_alive_connection_reset_before_any_answer_is_still_tried_again_once(
        servers, clients):
    """What the retry is for: the server dropped the idle connection (a reset, not a FIN)."""
    def drop(conn: socket.socket) -> bool:
        reset(conn)
        return False
    server = servers([answer, drop, answer])
    client = clients(server.url())
    send(client)
    assert send(client) == {"message_id": 1}
    assert len(server.requests) == 3


def test_an_answer_over_the_cap_without_a_length_is_refused_after_the_cap(servers, clients):
    def flood(conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 65536
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        with pytest.raises(OSError):   # the client hangs up once it has read past the cap
            for _ in range(2 * MAX_ANSWER_BYTES // len(piece) + 10):
                conn.sendall(chunk)
        return False
    server = servers([flood])
    client = clients(server.url(), read_timeout=5)
    with pytest.raises(BadAnswer) as info:
        send(client)
    assert info.value.problem == BadAnswer.TOO_BIG
    assert len(server.requests) == 1


# -- through an HTTP proxy -----------------------------------------------------------------------

def test_plain_http_through_a_proxy_sends_the_absolute_url_and_times_out(
        servers, clients, monkeypatch):
    proxy = servers([answer])
    proxy.steps.append(head_then(b"", "stall", proxy.stopped))
    for name in ("no_proxy", "NO_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    client = clients("http://bot-api.invalid:8081")
    assert send(client) == {"message_id": 1}
    assert proxy.requests[0].startswith(b"POST http://bot-api.invalid:8081/bot")
    error, took = timed_failure(send, client)
    assert (error.reason, error.maybe_delivered) == ("no answer in time", True)
    assert took < READ_TIMEOUT + SLACK


# -- signals during a read -----------------------------------------------------------------------

@pytest.mark.xfail(strict=True, reason="SO_RCVTIMEO starts over when Python retries a recv "
                   "after EINTR: each handled signal during a plain-HTTP read stretches it")
def test_signals_arriving_during_a_read_do_not_stretch_its_timeout(servers, clients):
    """A handled signal interrupts the main thread's recv (EINTR) and Python calls it again; a
    kernel timeout (SO_RCVTIMEO) then starts over with each signal. Known and kept: the main
    thread calls the Bot API only at start-up (getMe), where a signal stops the daemon."""
    server = servers([])
    server.steps.append(head_then(b"", "stall", server.stopped))
    client = clients(server.url())
    fired = []

    def tick(signum, frame) -> None:
        fired.append(signum)
        if len(fired) >= 40:   # bounded: 40 signals 0.1 s apart
            signal.setitimer(signal.ITIMER_REAL, 0)

    previous = signal.signal(signal.SIGALRM, tick)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
        error, took = timed_failure(send, client)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert error.reason == "no answer in time"
    assert took < READ_TIMEOUT + SLACK


# -- group commit: a failure in the middle of a group --------------------------------------------

def failing_once(error: BaseException) -> Callable[[sqlite3.Connection], None]:
    calls: list[int] = []

    def write(db: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise error
    return write


def local_rows(store: Store) -> list[tuple[int, int]]:
    with store.reading() as db:
        return db.execute("SELECT chat_id, done FROM inbox WHERE update_id >= ? ORDER BY"
                          " update_id", (LOCAL_BASE,)).fetchall()


def done_ids(store: Store) -> list[int]:
    with store.reading() as db:
        return [row[0] for row in db.execute(
            "SELECT update_id FROM inbox WHERE done = 1 AND update_id < ? ORDER BY update_id",
            (LOCAL_BASE,))]


def test_a_disk_full_once_in_a_group_commits_every_finish_exactly_once(fresh_db):
    """Each finish queues a row for another chat: committed twice, there would be two."""
    fresh_db.add_updates([to_row(message(n, 100 + n)) for n in (1, 2, 3)])
    full = sqlite3.OperationalError("database or disk is full")

    def finishing(update_id: int, fails: bool) -> Callable[[], None]:
        writes = [queue_rows([(900 + update_id, "hook", {"n": update_id})])]
        if fails:
            writes.append(failing_once(full))
        return lambda: fresh_db.finish(update_id, None, writes=writes)

    errors = finish_together(fresh_db, [finishing(1, False), finishing(2, True),
                                        finishing(3, False)])
    assert errors == {}
    assert done_ids(fresh_db) == [1, 2, 3]
    assert sorted(local_rows(fresh_db)) == [(901, 0), (902, 0), (903, 0)]


def test_a_finish_refused_in_a_group_does_not_carry_another_finishs_error(fresh_db):
    """An error raised to a finish's thread is its own: not chained to the error of another
    chat's finish that failed the group first (its traceback would show the other chat)."""
    fresh_db.add_updates([to_row(message(n, 100 + n)) for n in (1, 2)])

    def refusing(update_id: int) -> Callable[[], None]:
        def guard() -> None:
            raise ValueError(f"refused {update_id}")
        return lambda: fresh_db.finish(update_id, None, guard=guard)

    errors = finish_together(fresh_db, [refusing(1), refusing(2)])
    assert [str(errors[i]) for i in (0, 1)] == ["refused 1", "refused 2"]
    for error in errors.values():
        assert error.__context__ is None
    assert done_ids(fresh_db) == []


def test_forget_in_a_group_never_lets_another_rows_id_take_a_notice_in_flight(fresh_db):
    """An operator's delegate is sending a handoff notice about a person (the newest local
    row) when the person's /forget commits in the same group as an update queuing a hook row
    for a third chat. Deleting the notice would free its id for that hook row, and the
    operator's finish, marking its notice done by id, would then mark the hook row done
    unhandled: the hook would never be answered."""
    person, operator, third = 501, 9001, 777
    fresh_db.add_updates([to_row(message(1, person)), to_row(message(2, 600))])
    [notice] = fresh_db.add_local([(operator, "handoff_notice", {"about": person, "text": "hi"})])
    errors = finish_together(fresh_db, [
        lambda: fresh_db.finish(1, None, writes=[forget_chat(person, handling=True)]),
        lambda: fresh_db.finish(2, None, writes=[queue_rows([(third, "hook", {"n": 1})])]),
        lambda: fresh_db.finish(notice, None),   # the operator's delegate, done sending it
    ])
    assert errors == {}
    assert [row.kind for row in fresh_db.pending(third)] == ["hook"]
    assert fresh_db.pending(operator) == []


def test_a_delegate_given_up_while_its_finish_is_queued_commits_nothing(fresh_db):
    """abandon_overdue flips the slot while the finish waits behind the lock: its guard, run
    in the group under the lock, refuses it; the others in the group commit."""
    fresh_db.add_updates([to_row(message(n, 100 + n)) for n in (1, 2, 3)])
    abandoned = threading.Event()

    def guard() -> None:
        if abandoned.is_set():
            raise Abandoned(102)

    def finish(update_id: int) -> Callable[[], None]:
        return lambda: fresh_db.finish(update_id, None, guard=guard if update_id == 2 else None)

    errors: dict[int, BaseException] = {}

    def run(index: int, call: Callable[[], None]) -> None:
        try:
            call()
        except Abandoned as exc:
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i, finish(i + 1))) for i in range(3)]
    with fresh_db._lock:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(fresh_db._finishing) == 3)
        abandoned.set()   # given up while queued
    for thread in threads:
        thread.join(WAIT)
    assert list(errors) == [1]
    assert done_ids(fresh_db) == [1, 3]
    assert [row.update_id for row in fresh_db.pending(102)] == [2]


def test_a_finish_failing_again_alone_is_committed_once_by_its_retry(fresh_db):
    """The disk stays full for one finish through its group and its lone commit: its thread
    gets the error and retries the commit (as _retry_commit does); it commits once."""
    fresh_db.add_updates([to_row(message(n, 100 + n)) for n in (1, 2)])
    full = sqlite3.OperationalError("database or disk is full")
    calls: list[int] = []

    def full_twice(db: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise full

    writes = {n: [queue_rows([(900 + n, "hook", {"n": n})])] for n in (1, 2)}
    writes[2].append(full_twice)
    errors = finish_together(fresh_db, [
        lambda: fresh_db.finish(1, None, writes=writes[1]),
        lambda: fresh_db.finish(2, None, writes=writes[2])])
    assert list(errors) == [1] and errors[1] is full
    assert done_ids(fresh_db) == [1]
    fresh_db.finish(2, None, writes=writes[2])   # the retry
    assert done_ids(fresh_db) == [1, 2]
    assert sorted(local_rows(fresh_db)) == [(901, 0), (902, 0)]
