"""End-to-end: the daemon as a process, the Bot API test double, a real SQLite file."""

from __future__ import annotations

import os
import sqlite3
import stat
import time

from conftest import HANDLERS, TEST_HANDLERS, TOKEN_SECRET, wait_until


def counts(telegram, chat_id):
    return [int(t) for t in telegram.sent_to(chat_id)]


def test_counter_answers_each_chat_in_order(telegram, start_daemon):
    start_daemon()
    for i in range(5):
        for chat in (11, 12, 13):
            telegram.push_message(chat, f"m{i}")
    assert telegram.wait_for_sent(15, timeout=20)
    for chat in (11, 12, 13):
        assert counts(telegram, chat) == [1, 2, 3, 4, 5]


def test_200_chats_times_20_messages_counted_exactly(telegram, start_daemon):
    chats = range(1000, 1200)
    telegram.push_many([(chat, f"n{i}") for i in range(20) for chat in chats])
    start_daemon()
    assert telegram.wait_for_sent(4000, timeout=120), len(telegram.sent)
    # one sentinel per chat: per-chat order means every reply due before it is out once it is
    telegram.push_many([(chat, "sentinel") for chat in chats])
    assert telegram.wait_for(lambda: all(telegram.sent_to(c)[-1:] == ["21"] for c in chats),
                             timeout=60), len(telegram.sent)
    assert len(telegram.sent) == 4200
    for chat in chats:
        assert counts(telegram, chat) == list(range(1, 22)), chat


def test_kill_9_during_load_loses_nothing_and_state_changes_once(telegram, start_daemon, tmp_path):
    chats = range(2000, 2100)
    telegram.push_many([(chat, f"n{i}") for i in range(10) for chat in chats])
    first = start_daemon()
    assert wait_until(lambda: len(telegram.sent) >= 300, timeout=60)
    first.kill()
    sent_before = len(telegram.sent)
    assert sent_before < 1000, "the load finished before the kill; the test proves nothing"
    telegram.push_many([(chat, "after") for chat in chats])
    start_daemon()
    assert wait_until(lambda: all(telegram.sent_to(c)[-1:] == ["11"] for c in chats), timeout=90)
    for chat in chats:
        replies = counts(telegram, chat)
        # every count appears, in order; a count may repeat only when the kill fell between
        # Telegram accepting the reply and the commit recording it
        assert sorted(set(replies)) == list(range(1, 12)), (chat, replies)
        assert replies == sorted(replies), (chat, replies)
        assert len(replies) - len(set(replies)) <= 1, (chat, replies)
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    assert wait_until(lambda: db.execute("SELECT COUNT(*) FROM inbox WHERE done = 0").fetchone()
                      == (0,), timeout=10)
    stored = dict(db.execute("SELECT chat_id, json_extract(vars, '$.count') FROM conversations"))
    assert stored == {chat: 11 for chat in chats}


def test_pending_updates_replay_after_restart(telegram, start_daemon):
    daemon = start_daemon()
    telegram.push_message(7, "a")
    assert telegram.wait_for_sent(1, timeout=10)
    assert daemon.stop() == 0
    telegram.push_message(7, "b")
    telegram.push_message(7, "c")
    start_daemon()
    assert telegram.wait_for_sent(3, timeout=15)
    assert counts(telegram, 7) == [1, 2, 3]


def test_update_ids_jumping_backwards_are_new_updates(telegram, start_daemon):
    start_daemon()
    telegram.push_message(5, "x")
    telegram.push_message(5, "y")
    assert telegram.wait_for_sent(2, timeout=10)
    telegram.set_next_update_id(10)  # Telegram picks a random, lower id after a quiet week
    # An id below the offset is confirmed by the next getUpdates that carries that offset,
    # so (as at Telegram, where the jump follows a week of silence) it arrives mid-poll.
    assert telegram.wait_for(lambda: telegram.polling, timeout=5)
    telegram.push_message(5, "z")
    assert telegram.wait_for_sent(3, timeout=10)
    assert counts(telegram, 5) == [1, 2, 3]


def test_unknown_and_malformed_updates_are_stored_and_skipped(telegram, start_daemon, tmp_path):
    daemon = start_daemon()
    telegram.push_update({"poll": {"id": "1", "question": "?", "options": []}})
    telegram.push_update({"message": "not an object"})
    telegram.push_update({"my_chat_member": {"chat": {"id": 9, "type": "private"},
                                             "from": {"id": 9}, "date": 0}})
    telegram.push_message(9, "hello")
    assert telegram.wait_for_sent(1, timeout=10)
    assert counts(telegram, 9) == [1]
    assert wait_until(lambda: sqlite3.connect(tmp_path / "bot.sqlite3").execute(
        "SELECT COUNT(*), SUM(done) FROM inbox").fetchone() == (3, 3), timeout=5)
    # a message that is not an object cannot be a row: it is kept in `rejected`, with why
    reasons = sqlite3.connect(tmp_path / "bot.sqlite3").execute(
        "SELECT reason FROM rejected").fetchall()
    assert reasons == [("message is a str, not an object",)]
    assert daemon.stop() == 0
    assert "belongs to no chat" in daemon.log()


def test_database_is_private_and_in_wal_mode(telegram, start_daemon, tmp_path):
    daemon = start_daemon(env={"UMASK_IGNORED": "1"})
    telegram.push_message(1, "x")
    assert telegram.wait_for_sent(1, timeout=10)
    path = tmp_path / "bot.sqlite3"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert daemon.stop() == 0


def test_429_retry_after_is_obeyed(telegram, start_daemon):
    start_daemon()
    telegram.fail_next("sendMessage", "429", retry_after=2)
    began = time.monotonic()
    telegram.push_message(3, "x")
    assert telegram.wait_for_sent(1, timeout=15)
    throttled = [c for c in telegram.calls if c["method"] == "sendMessage"]
    assert len(throttled) == 2
    assert telegram.sent[0]["time"] - throttled[0]["time"] >= 1.9
    assert telegram.sent[0]["time"] - began < 6


def test_server_errors_and_dropped_connections_are_retried(telegram, start_daemon):
    start_daemon()
    telegram.fail_next("sendMessage", "500", count=3)
    telegram.push_message(4, "x")
    assert telegram.wait_for_sent(1, timeout=20)
    telegram.fail_next("sendMessage", "drop_before")
    telegram.push_message(4, "y")
    assert telegram.wait_for_sent(2, timeout=20)
    assert counts(telegram, 4) == [1, 2]


def test_bad_token_exits_78_without_showing_it(telegram, start_daemon):
    daemon = start_daemon(token="999999:WRONG-token_abcdefghijklmnopqrstuvwxyz")
    assert daemon.wait(20) == 78
    output = daemon.log()
    assert "rejected the bot token" in output
    assert "WRONG-token" not in output


def test_malformed_token_is_refused_before_any_call(telegram, start_daemon):
    daemon = start_daemon(token="not a token")
    assert daemon.wait(20) == 78
    assert "does not look like a bot token" in daemon.log()
    assert telegram.calls == []


def test_webhook_set_exits_76_and_names_the_fix(telegram, start_daemon):
    telegram.set_webhook("https://example.invalid/hook")
    daemon = start_daemon()
    assert daemon.wait(20) == 76
    assert "--delete-webhook" in daemon.log()


def test_delete_webhook_option_removes_it_and_keeps_pending(telegram, start_daemon):
    telegram.set_webhook("https://example.invalid/hook")
    telegram.push_message(8, "kept")
    start_daemon(args=["--delete-webhook"])
    assert telegram.wait_for_sent(1, timeout=15)
    deletes = [c for c in telegram.calls if c["method"] == "deleteWebhook"]
    assert deletes and not deletes[0]["params"].get("drop_pending_updates")


def test_a_second_poller_makes_one_daemon_exit_75(telegram, start_daemon, tmp_path):
    config = {"polling": {"timeout": 1, "conflict_grace": 3}}
    first = start_daemon(config=config)
    second = start_daemon(config=config, db=tmp_path / "other.sqlite3")
    assert wait_until(lambda: first.process.poll() is not None or second.process.poll() is not None,
                      timeout=30)
    exited = first if first.process.poll() is not None else second
    assert exited.wait() == 75
    assert "another process is polling" in exited.log()


def test_restart_right_after_kill_survives_the_old_long_poll(telegram, start_daemon):
    config = {"polling": {"timeout": 4}}
    first = start_daemon(config=config)
    # a long poll (the first getUpdates of a run asks with timeout 0) has reached the double
    assert wait_until(lambda: any(c["method"] == "getUpdates" and c["params"].get("timeout")
                                  for c in telegram.calls), timeout=10)
    first.kill()  # its getUpdates is still open at the test double, as at Telegram
    second = start_daemon(config=config)
    telegram.push_message(6, "after restart")
    assert telegram.wait_for_sent(1, timeout=30)
    assert second.process.poll() is None


def test_message_at_the_idle_timeout_boundary_is_answered(telegram, start_daemon):
    start_daemon(config={"delegates": {"idle_timeout": 0.5}})
    expected = 0
    for gap in (0.40, 0.45, 0.5, 0.55, 0.6, 0.48, 0.52, 0.5):
        telegram.push_message(21, "tick")
        expected += 1
        assert telegram.wait_for_sent(expected, timeout=10)
        time.sleep(gap)  # the gap around the idle timeout is the behaviour tested
    assert counts(telegram, 21) == list(range(1, expected + 1))


def test_delegate_cap_bounds_threads_and_waiting_chats_are_served(telegram, start_daemon):
    daemon = start_daemon(config={"delegates": {"max": 4}})
    telegram.set_latency(0.02)
    telegram.push_many([(chat, "x") for chat in range(3000, 3060) for _ in range(3)])
    peak = 0
    deadline = time.monotonic() + 60
    while len(telegram.sent) < 180 and time.monotonic() < deadline:
        peak = max(peak, daemon.threads())
        time.sleep(0.01)  # the thread count's sampling period, in a loop bounded by `deadline`
    assert len(telegram.sent) == 180
    assert peak <= 4 + 4, peak   # delegates + main, poller and the HTTP pool's helpers at most
    for chat in range(3000, 3060):
        assert counts(telegram, chat) == [1, 2, 3]


def thread_stacks(pid: int) -> list[int]:
    """Sizes of the process's anonymous read-write mappings that sit right above a guard page:
    thread stacks as glibc lays them out."""
    sizes, guard_below = [], False
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            anonymous = len(fields) < 6
            if guard_below and anonymous and fields[1].startswith("rw"):
                sizes.append(end - start)
            guard_below = anonymous and fields[1] == "---p" and end - start <= 64 * 1024
    return sizes


def test_delegate_threads_have_small_stacks(telegram, start_daemon):
    """512 KiB stacks, not the 8 MiB default: 10,000 chats must fit a 32-bit Pi's address space."""
    daemon = start_daemon(TEST_HANDLERS / "waiter", config={"delegates": {"max": 20}})
    telegram.push_many([(chat, "go") for chat in range(3100, 3120)])  # 20 delegates held in wait()
    assert telegram.wait_for(lambda: len(telegram.sent) >= 20, timeout=20), daemon.log()
    stacks = thread_stacks(daemon.pid)
    small = [size for size in stacks if size <= 512 * 1024]
    assert len(small) >= 20, sorted(stacks)
    assert not [size for size in stacks if size > 4 * 1024 * 1024], sorted(stacks)


def test_long_text_is_split_to_fit_telegram(telegram, start_daemon):
    start_daemon(TEST_HANDLERS / "echo")
    telegram.push_message(30, "long 10000")
    telegram.push_message(30, "html 9000")
    assert wait_until(lambda: len(telegram.sent) >= 6, timeout=15)
    parts = telegram.sent_to(30)
    assert all(len(p.encode("utf-16-le")) // 2 <= 4096 for p in parts)
    plain = [p for p in parts if not p.startswith("<b>")]
    assert sum(len(p) for p in plain) >= 9990 - len(plain)
    html = [p for p in parts if p.startswith("<b>")]
    assert len(html) >= 3 and all(p.endswith("</b>") for p in html)


def test_failing_handler_answers_error_text_and_rolls_back(telegram, start_daemon):
    daemon = start_daemon(TEST_HANDLERS / "faulty")
    for text in ("a", "boom", "b"):
        telegram.push_message(40, text)
    assert telegram.wait_for_sent(3, timeout=15)
    assert telegram.sent_to(40) == ["1", "Oops, that broke.", "2"]
    assert daemon.stop() == 0
    assert "boom on purpose" in daemon.log()


def test_listener_wait_in_telepot_style(telegram, start_daemon):
    start_daemon(TEST_HANDLERS / "waiter")
    telegram.push_message(50, "go")
    assert telegram.wait_for_sent(1, timeout=10)
    telegram.push_message(50, "A")
    assert telegram.wait_for_sent(2, timeout=10)
    telegram.push_message(50, "B")
    assert telegram.wait_for_sent(3, timeout=10)
    assert telegram.sent_to(50) == ["first?", "second?", "A+B"]


def test_callback_queries_are_answered_even_if_the_handler_does_not(telegram, start_daemon):
    start_daemon(TEST_HANDLERS / "echo")
    telegram.push_callback(60, "yes")
    assert telegram.wait_for(lambda: any(c["method"] == "answerCallbackQuery"
                                         for c in telegram.calls), timeout=10)
    assert telegram.sent_to(60) == ["pressed yes"]


def test_rate_limits_space_out_one_chats_replies(telegram, start_daemon):
    start_daemon(rate_limits="on")
    for _ in range(6):
        telegram.push_message(70, "x")
    assert telegram.wait_for_sent(6, timeout=20)
    times = [s["time"] for s in telegram.sent]
    # a burst of 3, then one per second
    assert times[5] - times[0] >= 2.8
    assert times[2] - times[0] < 1.0


def test_sigterm_exits_0_and_keeps_state(telegram, start_daemon):
    daemon = start_daemon(HANDLERS / "guess")
    telegram.push_message(80, "/start")
    assert telegram.wait_for_sent(1, timeout=10)
    assert daemon.stop() == 0
    start_daemon(HANDLERS / "guess")
    low, high, answers = 0, 100, []
    for _ in range(8):
        guess = (low + high) // 2
        before = len(telegram.sent)
        telegram.push_message(80, str(guess))
        assert telegram.wait_for_sent(before + 1, timeout=10)
        answer = telegram.sent[-1]["text"]
        answers.append(answer)
        if answer.startswith("correct"):
            break
        low, high = (guess + 1, high) if answer == "higher" else (low, guess - 1)
    assert answers[-1].startswith("correct"), answers


def test_token_given_as_argument_is_not_logged(telegram, start_daemon):
    from conftest import TOKEN
    missing = start_daemon(token=None, args=["--log-level", "DEBUG"])
    assert missing.wait(20) == 78  # no token at all: a clear message
    assert "no bot token" in missing.log()
    daemon = start_daemon(token=None, args=["--log-level", "DEBUG", TOKEN])
    telegram.push_message(89, "x")
    assert telegram.wait_for_sent(1, timeout=10), daemon.log()
    assert daemon.stop() == 0
    assert "DEBUG chatdaemon.delegator: chat 89: update" in daemon.log()  # and still no token
    assert TOKEN_SECRET not in daemon.log()


def test_on_close_after_idle_and_edits_reach_their_handler(telegram, start_daemon):
    start_daemon(TEST_HANDLERS / "closer", config={"delegates": {"idle_timeout": 0.5}})
    telegram.push_message(90, "hello")
    assert telegram.wait_for(lambda: telegram.sent_to(90) == ["hi", "closed: idle"], timeout=10)
    telegram.push_update({"edited_message": {"message_id": 1, "date": 0, "text": "new",
                                             "chat": {"id": 90, "type": "private"}}})
    assert telegram.wait_for(lambda: len(telegram.sent_to(90)) >= 4, timeout=10)
    assert telegram.sent_to(90)[2] == "edited to new in state greeted"


def test_token_from_file_and_from_a_systemd_credential(telegram, start_daemon, tmp_path):
    from conftest import TOKEN
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "token").write_text(TOKEN + "\n")
    daemon = start_daemon(token=None, env={"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    telegram.push_message(91, "x")
    assert telegram.wait_for_sent(1, timeout=10)
    assert daemon.stop() == 0
    start_daemon(token=None, args=["--token-file", str(tmp_path / "creds" / "token")])
    telegram.push_message(91, "y")
    assert telegram.wait_for_sent(2, timeout=10)
    assert counts(telegram, 91) == [1, 2]


def test_allowed_updates_sent_on_the_first_poll_only(telegram, start_daemon):
    start_daemon()
    telegram.push_message(92, "x")
    assert telegram.wait_for_sent(1, timeout=10)
    polls = [c["params"] for c in telegram.calls if c["method"] == "getUpdates"]
    assert polls[0]["allowed_updates"] == ["message", "edited_message", "callback_query",
                                           "my_chat_member"]
    assert all("allowed_updates" not in p for p in polls[1:])


def test_vars_that_are_not_json_fail_that_update_only(telegram, start_daemon):
    start_daemon(TEST_HANDLERS / "faulty")
    for text in ("a", "set", "b"):
        telegram.push_message(41, text)
    assert telegram.wait_for_sent(4, timeout=15)
    # "set" replied before its vars turned out unsaveable: the reply stands, the count rolls back
    assert telegram.sent_to(41) == ["1", "2", "Oops, that broke.", "2"]


def test_a_handler_that_stops_waiting_keeps_what_it_committed(telegram, start_daemon):
    start_daemon(TEST_HANDLERS / "waithook")
    telegram.push_message(121, "x")
    assert telegram.wait_for_sent(1, timeout=10)
    time.sleep(0.6)  # listener.wait(timeout=0.3) gives up: no error text, no rollback
    telegram.push_message(121, "y")
    assert telegram.wait_for_sent(2, timeout=10)
    assert telegram.sent_to(121) == ["1", "2"]


def test_hook_notifications_reach_a_chat_whose_handler_is_waiting(telegram, start_daemon, tmp_path):
    import http.client
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start_daemon(TEST_HANDLERS / "waithook", config={"hooks": {"port": port}})
    telegram.push_message(120, "ask")
    assert telegram.wait_for_sent(1, timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/hooks/note", body=b'{"text": "meanwhile"}',
                 headers={"Authorization": "Bearer note-key-0123456789abcdef"})
    assert conn.getresponse().status == 202
    conn.close()
    assert telegram.wait_for_sent(2, timeout=10)
    telegram.push_message(120, "A")
    assert telegram.wait_for_sent(3, timeout=10)
    telegram.push_message(120, "B")
    assert telegram.wait_for_sent(4, timeout=10)
    assert telegram.sent_to(120) == ["first?", "Note: meanwhile", "second?", "A+B"]


def test_a_group_that_became_a_supergroup_keeps_its_conversation(telegram, start_daemon, tmp_path):
    start_daemon()
    telegram.push_message(-55, "a", chat_type="group", user_id=5)
    assert telegram.wait_for_sent(1, timeout=10)
    telegram.fail_next("sendMessage", "migrate", migrate_to_chat_id=-10055)
    telegram.push_message(-55, "b", chat_type="group", user_id=5)
    assert telegram.wait_for_sent(2, timeout=10)
    assert telegram.sent_to(-10055) == ["2"]  # the reply followed the group to its new id
    telegram.push_message(-10055, "c", chat_type="supergroup", user_id=5)
    assert telegram.wait_for_sent(3, timeout=10)
    assert telegram.sent_to(-10055) == ["2", "3"]  # and the count went with it
