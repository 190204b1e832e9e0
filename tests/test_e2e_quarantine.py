"""End to end: updates that kill or freeze the daemon are set aside; a revoked token marks nothing done."""

from __future__ import annotations

import signal
import sqlite3

from conftest import TEST_HANDLERS

POISON = TEST_HANDLERS / "poison"
ERROR_TEXT = "That one could not be handled."


def inbox_rows(db) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT update_id, chat_id, done, attempts, quarantined FROM inbox ORDER BY update_id"
        ).fetchall()


def test_an_update_that_kills_the_daemon_three_times_is_set_aside(telegram, start_daemon):
    telegram.push_message(300, "die")
    for _ in range(3):  # handled, killed; replayed, killed; replayed, killed
        daemon = start_daemon(POISON)
        assert daemon.wait(timeout=30) == -signal.SIGKILL, daemon.log()
    assert inbox_rows(daemon.db)[0][2:4] == (0, 2)
    daemon = start_daemon(POISON)
    assert telegram.wait_for(lambda: telegram.sent_to(300) == [ERROR_TEXT], timeout=15), daemon.log()
    telegram.push_message(300, "still there?")
    assert telegram.wait_for(lambda: len(telegram.sent_to(300)) == 2, timeout=15), daemon.log()
    assert telegram.sent_to(300) == [ERROR_TEXT, "echo: still there?"]
    first = inbox_rows(daemon.db)[0]
    assert first[2] == 1 and first[3] == 3 and "cut short 3 times" in first[4]
    assert f"chat 300: update {first[0]} (message) quarantined" in daemon.log()
    assert daemon.stop() == 0


def clean_stop_noted(db) -> bool:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT 1 FROM meta WHERE key = 'clean_stop'").fetchone() is not None


def test_a_clean_stop_is_noted_so_the_next_start_counts_no_attempt(telegram, start_daemon):
    daemon = start_daemon(POISON)
    telegram.push_message(310, "a")
    assert telegram.wait_for(lambda: telegram.sent_to(310) == ["echo: a"], timeout=15)
    assert daemon.stop() == 0
    assert clean_stop_noted(daemon.db)
    daemon = start_daemon(POISON)
    telegram.push_message(310, "b")  # a sentinel: the new process is up and past start-up
    assert telegram.wait_for(lambda: len(telegram.sent_to(310)) == 2, timeout=15)
    assert not clean_stop_noted(daemon.db)  # taken at start-up, so a crash now would count
    daemon.kill()
    assert not clean_stop_noted(daemon.db)


def test_a_frozen_handler_is_given_up_its_chat_served_again_and_other_chats_go_on(
        telegram, start_daemon):
    daemon = start_daemon(POISON, config={"delegates": {"max": 1, "update_timeout": 1}})
    telegram.push_message(400, "hang")
    telegram.push_message(400, "after")
    telegram.push_message(401, "other chat")
    # the only slot is freed when the frozen update is given up: the other chat is answered
    assert telegram.wait_for(lambda: telegram.sent_to(401) == ["echo: other chat"], timeout=15), \
        daemon.log()
    # tried three times, then set aside with the error text; the chat moves on
    assert telegram.wait_for(lambda: telegram.sent_to(400) == [ERROR_TEXT, "echo: after"],
                             timeout=30), daemon.log()
    log = daemon.log()
    assert log.count("still not done after 1 s") == 3
    assert "chat 400: update" in log and "quarantined" in log
    assert daemon.stop() == 0


def test_a_revoked_token_stops_the_daemon_and_marks_no_update_done(telegram, start_daemon):
    for chat_id in (501, 502, 503):
        telegram.push_message(chat_id, "hello")
    telegram.set_next_response("sendMessage", 401,
                               {"ok": False, "error_code": 401, "description": "Unauthorized"})
    daemon = start_daemon(POISON)
    assert daemon.wait(timeout=30) == 78, daemon.log()
    assert "rejected the bot token" in daemon.log()
    rows = inbox_rows(daemon.db)
    assert len(rows) == 3
    # a chat whose reply went out before the 401 is done; no other update is
    assert [bool(row[2]) for row in rows] == [telegram.sent_to(row[1]) == ["echo: hello"]
                                              for row in rows]
    assert sum(row[2] for row in rows) < 3
