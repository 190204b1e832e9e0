"""End-to-end: the daemon as a process against the Bot API test double, at the intake edge.

Malformed updates, answers too big to read, a 404 blip, a revoked token, a second daemon on
the same token, and how soon READY=1 reaches systemd. Every wait is bounded.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from conftest import wait_until
from test_e2e_service import NotifySocket


def counts(telegram, chat_id) -> list[int]:
    return [int(t) for t in telegram.sent_to(chat_id)]


def settled(telegram, poll_timeout):
    """True once the daemon stores what it polls: after its probes (timeout 0 but for one
    long poll), its second long poll."""
    return sum(str(c["params"].get("timeout")) == str(poll_timeout)
               for c in telegram.calls_to("getUpdates")) >= 2


def rejected_reasons(db) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [reason for (reason,) in conn.execute("SELECT reason FROM rejected ORDER BY id")]


def vm_kib(pid, field) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def test_malformed_updates_are_kept_apart_and_the_daemon_goes_on(telegram, start_daemon, tmp_path):
    daemon = start_daemon()
    assert telegram.wait_for(lambda: settled(telegram, 1), timeout=15), daemon.log()
    telegram.push_update({"callback_query": {"id": "1", "data": "x", "message": "a string"}})
    telegram.push_update({"callback_query": {"id": "2", "data": "x", "message": [1, 2]}})
    telegram.push_update({"message": {"message_id": 1, "chat": {"id": 2 ** 70}, "text": "big"}})
    telegram.push_message(5, "after")
    assert telegram.wait_for(lambda: counts(telegram, 5) == [1], timeout=15), daemon.log()
    # ids the inbox cannot hold, mixed with one it can (the offset moves past all of them)
    telegram.set_next_response("getUpdates", 200, {"ok": True, "result": [
        {"update_id": 2 ** 63, "message": {"chat": {"id": 5}, "text": "x"}},
        {"update_id": "7", "message": {"chat": {"id": 5}, "text": "x"}},
        {"update_id": 900, "poll": {"id": "p", "question": "?"}},
    ]})
    assert telegram.wait_for(lambda: not telegram._responses.get("getUpdates"), timeout=10)
    telegram.push_message(5, "still here")
    assert telegram.wait_for(lambda: counts(telegram, 5) == [1, 2], timeout=15), daemon.log()
    assert 901 in telegram.offsets
    assert rejected_reasons(tmp_path / "bot.sqlite3") == [
        "callback_query.message is a str, not an object",
        "callback_query.message is a list, not an object",
        "message.chat.id (a 71-bit int) is not a chat id",
        "update_id 9223372036854775808 is not an id",
        "update_id '7' is not an id",
    ]
    assert "rejected update" in daemon.log()
    assert daemon.stop() == 0
    # and after a restart nothing of it comes back to haunt the poller
    again = start_daemon()
    telegram.push_message(5, "after restart")
    assert telegram.wait_for(lambda: counts(telegram, 5) == [1, 2, 3], timeout=15), again.log()
    assert again.stop() == 0


def test_an_update_nested_too_deep_is_rejected_before_the_store(telegram, start_daemon, tmp_path):
    daemon = start_daemon()
    deep: dict = {}
    inner = deep
    for _ in range(500):
        inner["x"] = {}
        inner = inner["x"]
    telegram.push_update({"message": {"message_id": 1, "chat": {"id": 6, "type": "private"},
                                      "text": "deep", "extra": deep}})
    telegram.push_message(6, "plain")
    assert telegram.wait_for(lambda: counts(telegram, 6) == [1], timeout=15), daemon.log()
    assert rejected_reasons(tmp_path / "bot.sqlite3") == ["the update is nested deeper than 64 levels"]
    assert daemon.stop() == 0


def test_an_answer_over_8_mib_is_refused_in_bounded_memory_and_polling_goes_on(
        telegram, start_daemon):
    daemon = start_daemon()
    assert telegram.wait_for(lambda: settled(telegram, 1), timeout=15), daemon.log()
    before = vm_kib(daemon.pid, "VmRSS")
    text = "x" * (60 * 1024 * 1024)
    telegram.set_next_response("getUpdates", 200, {"ok": True, "result": [
        {"update_id": 950, "message": {"message_id": 1, "chat": {"id": 7}, "text": text}}]})
    del text
    assert telegram.wait_for(lambda: not telegram._responses.get("getUpdates"), timeout=20)
    telegram.push_message(7, "small")
    assert telegram.wait_for(lambda: counts(telegram, 7) == [1], timeout=20), daemon.log()
    grew = vm_kib(daemon.pid, "VmHWM") - before
    assert grew < 30 * 1024, f"peak RSS grew by {grew} KiB for a 60 MiB answer"
    assert "over 8 MiB" in daemon.log()
    limits = [c["params"].get("limit") for c in telegram.calls_to("getUpdates")]
    assert 10 in limits  # it asked for fewer updates at a time after the refused answer
    assert daemon.process.poll() is None


def test_a_404_blip_on_getupdates_is_confirmed_with_getme_and_does_not_exit(telegram, start_daemon):
    daemon = start_daemon()
    assert telegram.wait_for(lambda: settled(telegram, 1), timeout=15), daemon.log()
    telegram.set_next_response("getUpdates", 404, {"ok": False, "error_code": 404,
                                                   "description": "Not Found"})
    assert telegram.wait_for(lambda: len(telegram.calls_to("getMe")) >= 2, timeout=15), daemon.log()
    telegram.push_message(8, "after the blip")
    assert telegram.wait_for(lambda: counts(telegram, 8) == [1], timeout=15), daemon.log()
    assert daemon.process.poll() is None
    assert "getMe accepts the token" in daemon.log()


def test_a_token_revoked_mid_run_exits_78_after_getme_confirms(telegram, start_daemon):
    daemon = start_daemon()
    assert telegram.wait_for(lambda: settled(telegram, 1), timeout=15), daemon.log()
    telegram.token = "654321:OTHER-token_abcdefghijklmnopqrstuvwxyz"  # every call now answers 401
    assert daemon.wait(30) == 78
    assert "rejected the bot token (401 Unauthorized)" in daemon.log()
    assert "asking getMe whether the token is still good" in daemon.log()


def test_an_unreachable_api_is_named_in_the_log(telegram, start_daemon):
    telegram.set_down(True)
    daemon = start_daemon()
    assert wait_until(lambda: "getMe: connection closed without an answer (http://127.0.0.1:"
                      in daemon.log(), timeout=15), daemon.log()
    telegram.set_down(False)
    telegram.push_message(9, "up")
    assert telegram.wait_for(lambda: counts(telegram, 9) == [1], timeout=20), daemon.log()


def test_ready_comes_within_a_second_on_an_idle_bot(telegram, start_daemon, tmp_path):
    with NotifySocket(tmp_path / "notify.sock") as notify:
        daemon = start_daemon(config={"polling": {"timeout": 20}},
                              env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "3000000"})
        assert wait_until(lambda: notify.values("READY"), timeout=15), daemon.log()
        ready_at = notify.values("READY")[0][0]
        started = telegram.calls_to("getMe")[0]["time"]
        assert ready_at - started < 1.0, f"READY=1 {ready_at - started:.2f} s after getMe"
        # an idle bot's 20 s long poll cannot have answered yet: READY did not wait for it
        assert not telegram.sent and not telegram.pending
        # and the watchdog is fed while the long poll stays open
        assert wait_until(lambda: notify.values("WATCHDOG"), timeout=5), notify.values("STATUS")
        assert daemon.stop() == 0


def push_traffic(telegram, chats, stop: threading.Event, pushed: dict[int, int], pause: float,
                 burst: int):
    """`burst` messages round-robin over `chats` every `pause` s until `stop` (at most 60 s)."""
    deadline = time.monotonic() + 60
    i = 0
    while not stop.is_set() and time.monotonic() < deadline:
        batch = [chats[(i + k) % len(chats)] for k in range(burst)]
        telegram.push_many([(chat, "m") for chat in batch])
        for chat in batch:
            pushed[chat] = pushed.get(chat, 0) + 1
        i += burst
        stop.wait(pause)


@pytest.mark.parametrize("pause, burst", [(0.03, 1), (0.1, 40)], ids=["steady", "bursts"])
def test_a_second_daemon_exits_75_within_two_poll_periods_and_the_first_answers_all(
        telegram, start_daemon, tmp_path, pause, burst):
    poll = 2
    config = {"polling": {"timeout": poll, "conflict_grace": 2 * poll}}
    first = start_daemon(config=config)
    assert telegram.wait_for(lambda: settled(telegram, poll), timeout=15), first.log()
    chats = [3001, 3002, 3003, 3004]
    pushed: dict[int, int] = {}
    stop = threading.Event()
    traffic = threading.Thread(target=push_traffic,
                               args=(telegram, chats, stop, pushed, pause, burst))
    traffic.start()
    try:
        began = time.monotonic()
        second = start_daemon(config=config, db=tmp_path / "second.sqlite3")
        assert second.wait(30) == 75, second.log()
        took = time.monotonic() - began
        assert "another process is polling getUpdates" in second.log()
        # process start-up (about a second here) plus two poll periods
        assert took < 2 * poll + 2.5, f"the second daemon took {took:.1f} s to exit"
        time.sleep(0.5)  # behaviour: traffic keeps flowing for a while after the second one left
    finally:
        stop.set()
        traffic.join(10)
    assert first.process.poll() is None, first.log()
    total = sum(pushed.values())
    assert telegram.wait_for_sent(total, timeout=30), (len(telegram.sent), total)
    for chat in chats:
        assert counts(telegram, chat) == list(range(1, pushed[chat] + 1)), chat
    # the second stored nothing: a refused start removes its new database only when it is empty
    assert not (tmp_path / "second.sqlite3").exists(), second.log()


def test_a_send_told_to_wait_soon_waits_a_sane_time_and_delivers(telegram, start_daemon):
    daemon = start_daemon()
    telegram.set_next_response("sendMessage", 429, {
        "ok": False, "error_code": 429, "description": "Too Many Requests",
        "parameters": {"retry_after": "soon"}})
    telegram.push_message(10, "hello")
    assert telegram.wait_for(lambda: counts(telegram, 10) == [1], timeout=20), daemon.log()
    tries = [c["time"] for c in telegram.calls_to("sendMessage")]
    assert len(tries) == 2 and 1.0 < tries[1] - tries[0] < 15.0
    assert daemon.process.poll() is None
