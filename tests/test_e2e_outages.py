"""End-to-end: the daemon against a Bot API that goes away or answers errors for a while.

The real `chatdaemon run` process polls the test double on 127.0.0.1 with a real SQLite
file; every wait is bounded.
"""

from __future__ import annotations

import itertools
import time

from conftest import wait_until


def counts(telegram, chat_id) -> list[int]:
    return [int(t) for t in telegram.sent_to(chat_id)]


def record_requests(telegram) -> list[tuple[float, str, bool]]:
    """Every HTTP request that reaches the double, answered or not: (time, method, down).

    `telegram.calls` holds only the requests it answers; `attempts` also has those it hung
    up on while down, so the attempts made during an outage are counted.
    """
    return telegram.attempts


def get_updates_times(telegram, since: float, until: float = float("inf")) -> list[float]:
    return [c["time"] for c in telegram.calls_to("getUpdates") if since < c["time"] < until]


# -- 4. the Bot API goes silent for a dozen poll periods --------------------------------------

SILENCE = 12  # seconds: 12 periods of the tests' 1 s long poll, past the 5 s network back-off cap


def test_silence_no_exit_no_hot_loop_no_thread_growth(telegram, start_daemon):
    chat = 801
    requests = record_requests(telegram)
    # the chat's delegate stays alive across the outage, so thread counts compare like with like
    daemon = start_daemon(config={"delegates": {"idle_timeout": 120}})
    telegram.push_message(chat, "before")
    assert telegram.wait_for(lambda: counts(telegram, chat) == [1], timeout=15), daemon.log()
    # the sleep is the behaviour measured: the thread count once the answer's work is over
    time.sleep(0.5)
    threads_before = daemon.threads()
    peak = threads_before

    telegram.go_silent(SILENCE)
    went_down = time.monotonic()
    pushed_during = False
    while telegram.down and time.monotonic() < went_down + SILENCE + 5:
        assert daemon.process.poll() is None, daemon.log()
        if not pushed_during and time.monotonic() > went_down + SILENCE / 2:
            telegram.push_message(chat, "during")  # waits at "Telegram" until it is back
            pushed_during = True
        peak = max(peak, daemon.threads())
        time.sleep(0.2)  # the sampling period of the thread count, not a synchronisation
    assert not telegram.down, "the double did not come back"
    back = time.monotonic()
    assert pushed_during

    telegram.push_message(chat, "after")
    assert telegram.wait_for(lambda: len(counts(telegram, chat)) >= 3, timeout=12), daemon.log()
    answered = telegram.sent_times(chat)[2]
    assert answered - back < 10, answered - back
    telegram.push_message(chat, "sentinel")  # per-chat order: once it is answered, nothing more is due
    assert telegram.wait_for(lambda: len(counts(telegram, chat)) >= 4, timeout=10), daemon.log()
    assert counts(telegram, chat) == [1, 2, 3, 4]

    attempts = [t for t, method, down in requests if down and method == "getUpdates"]
    # backing off (1, 2, 4, then every 5 s) makes about 5; a hot loop would make thousands
    assert 3 <= len(attempts) < SILENCE, f"{len(attempts)} getUpdates attempts in {SILENCE} s of outage"
    assert all(method == "getUpdates" for _, method, down in requests if down), requests
    assert daemon.process.poll() is None, daemon.log()
    assert peak <= threads_before + 1, (threads_before, peak)
    assert daemon.threads() <= threads_before + 1, (threads_before, daemon.threads())
    assert daemon.stop() == 0


# -- 5. getUpdates answers 500, then 429 with retry_after ------------------------------------

def test_500_storm_then_429_backs_off_obeys_retry_after_and_recovers(telegram, start_daemon):
    chats = (901, 902, 903)
    retry_after = 3
    daemon = start_daemon()
    telegram.push_message(900, "warm-up")
    assert telegram.wait_for(lambda: counts(telegram, 900) == [1], timeout=15), daemon.log()

    with telegram.cond:  # a call either sees no fault or sees the storm
        telegram.set_faults("getUpdates", p500=1.0)
        storm = time.monotonic()
    expected = {chat: 0 for chat in chats}

    def push(round_: int) -> None:
        for chat in chats:
            telegram.push_message(chat, f"m{round_}")
            expected[chat] += 1

    # the long poll open before the storm could still hand out updates: push after it
    assert wait_until(lambda: len(get_updates_times(telegram, storm)) >= 1, timeout=5)
    push(0)
    time.sleep(3)  # the storm's length is the behaviour tested: pushes at 0 s and 3 s, 10 s in all
    push(1)
    time.sleep(max(0.0, storm + 10 - time.monotonic()))
    assert daemon.process.poll() is None, daemon.log()
    with telegram.cond:  # from now on: two 429s, then normal answers
        telegram.clear_faults()
        telegram.fail_next("getUpdates", "429", count=2, retry_after=retry_after)
        switch = time.monotonic()
    failing = get_updates_times(telegram, storm, switch)
    assert telegram.sent_to(901) == [], "answered during the storm: no storm happened"
    assert wait_until(lambda: len(get_updates_times(telegram, switch)) >= 1, timeout=35), \
        daemon.log()
    push(2)  # between the two 429s

    assert wait_until(lambda: len(get_updates_times(telegram, switch)) >= 3, timeout=40), \
        daemon.log()
    throttled = get_updates_times(telegram, switch)[:3]
    push(3)
    assert telegram.wait_for(lambda: all(len(telegram.sent_to(c)) >= expected[c] for c in chats),
                             timeout=15), (telegram.sent, daemon.log())
    # a sentinel per chat: answered after anything still due there (per-chat order)
    push(4)
    assert telegram.wait_for(lambda: all(counts(telegram, c)[-1:] == [expected[c]] for c in chats),
                             timeout=15), (telegram.sent, daemon.log())

    # backed off during the 500s: a few attempts, spaced at least a second apart
    assert 3 <= len(failing) <= 8, failing
    gaps = [b - a for a, b in itertools.pairwise(failing)]
    assert all(gap >= 0.9 for gap in gaps), gaps
    # obeyed retry_after: nothing before it elapsed, after each 429
    assert telegram.faults_injected["429"] == 2
    for answered_429, following in itertools.pairwise(throttled):
        assert following - answered_429 >= retry_after - 0.05, throttled
    assert throttled[2] - throttled[1] < retry_after + 3, throttled  # and then went on
    # recovered: every message answered once, in order per chat
    for chat in chats:
        assert counts(telegram, chat) == list(range(1, expected[chat] + 1)), (chat, telegram.sent)
    assert counts(telegram, 900) == [1]
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
    assert "429" in daemon.log() and "500" in daemon.log()
