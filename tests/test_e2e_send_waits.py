"""Waiting for Telegram is no handler's time: an update whose answer waits out an outage, a
429 or the flood limits' pace is neither given up nor quarantined nor sent twice."""

from __future__ import annotations

import sqlite3

from conftest import HANDLERS, TEST_HANDLERS, wait_until

QUICK = {"delegates": {"update_timeout": 1, "idle_timeout": 30}}


def test_an_outage_longer_than_three_deadlines_still_gets_the_answer(telegram, start_daemon, tmp_path):
    daemon = start_daemon(HANDLERS / "counter", config=QUICK)
    telegram.push_message(5, "a")
    assert wait_until(lambda: telegram.sent_to(5) == ["1"], timeout=20)
    # 500s for 0.5 + 1 + 2 + 4 = 7.5 s of back-off: over three 1 s deadlines, and then some
    telegram.fail_next("sendMessage", "500", count=4)
    telegram.push_message(5, "b")
    assert wait_until(lambda: len(telegram.sent_to(5)) >= 2, timeout=30), daemon.log()
    telegram.push_message(5, "c")
    assert wait_until(lambda: len(telegram.sent_to(5)) >= 3, timeout=20), daemon.log()
    assert telegram.sent_to(5) == ["1", "2", "3"]
    assert "giving it up" not in daemon.log()
    assert "quarantined" not in daemon.log()
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM inbox WHERE attempts > 0").fetchone() == (0,)


def test_a_429_longer_than_the_deadline_is_waited_out_once(telegram, start_daemon):
    daemon = start_daemon(HANDLERS / "counter", config=QUICK)
    telegram.fail_next("sendMessage", "429", retry_after=3)
    telegram.push_message(6, "a")
    assert wait_until(lambda: telegram.sent_to(6) == ["1"], timeout=20), daemon.log()
    telegram.push_message(6, "b")
    assert wait_until(lambda: len(telegram.sent_to(6)) >= 2, timeout=20), daemon.log()
    assert telegram.sent_to(6) == ["1", "2"]
    assert "giving it up" not in daemon.log()


def test_a_long_answer_paced_past_the_deadline_goes_out_once(telegram, start_daemon):
    # at one message a second (a private chat's pace, after a burst of 3), 6 parts take
    # about 3 s: three times the deadline
    daemon = start_daemon(TEST_HANDLERS / "echo", config=QUICK, rate_limits="on")
    telegram.push_message(7, "long 24000")
    telegram.push_message(7, "after")
    assert wait_until(lambda: telegram.sent_to(7)[-1:] == ["after"], timeout=30), daemon.log()
    parts = telegram.sent_to(7)[:-1]
    assert len(parts) == 6, [len(part) for part in parts]
    assert " ".join(parts).split() == ["word"] * 4800   # each word once: nothing sent twice
    assert "giving it up" not in daemon.log()
