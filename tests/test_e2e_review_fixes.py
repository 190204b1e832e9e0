"""End-to-end: callback URLs handed out by members of a group that keeps a conversation each.

The real `chatdaemon run` process against the Bot API test double, a real SQLite file, the
daemon's own hook server taking the results, and a loopback upstream that records the
callback URL it is given. All waits are bounded conditions.
"""

from __future__ import annotations

from conftest import wait_until
from test_e2e_callbacks import free_port, pending, post, start_with_hooks
from test_review_fixes import write_member_jobs

GROUP, ANN, BOB = -4001, 11, 12
FORGOTTEN = "Done: I deleted our conversation in this group."


def say(telegram, user: int, text: str, expected: list[str]) -> None:
    """A member's message in the group, and what the group has been sent once it is answered."""
    telegram.push_message(GROUP, text, user_id=user, chat_type="group", first_name=f"U{user}")
    assert telegram.wait_for(lambda: telegram.sent_to(GROUP) == expected, timeout=15), \
        telegram.sent_to(GROUP)


def test_each_members_result_meets_their_conversation_and_forget_ends_their_urls(
        telegram, start_daemon, tmp_path, upstream):
    port = free_port()
    bot = write_member_jobs(tmp_path / "jobs", upstream.server_port)
    daemon = start_with_hooks(start_daemon, bot, port)
    sent = ["hello ann"]
    say(telegram, ANN, "/name ann", sent)
    sent.append("hello bob")
    say(telegram, BOB, "/name bob", sent)
    sent.append("started")
    say(telegram, ANN, "/job", sent)
    sent.append("started")
    say(telegram, BOB, "/job", sent)
    with upstream.lock:
        ann, bob = (urlpath(body["callback"], port) for body in upstream.bodies)

    assert post(port, bob, b'{"n": 2}') == (202, {"ok": True})
    sent.append("done for bob: 2")
    assert telegram.wait_for(lambda: telegram.sent_to(GROUP) == sent, timeout=15), \
        telegram.sent_to(GROUP)
    assert post(port, ann, b'{"n": 1}') == (202, {"ok": True})
    sent.append("done for ann: 1")
    assert telegram.wait_for(lambda: telegram.sent_to(GROUP) == sent, timeout=15), \
        telegram.sent_to(GROUP)

    sent.append(FORGOTTEN)
    say(telegram, ANN, "/forget", sent)
    # the answer goes out before the update commits: wait for the commit
    assert wait_until(lambda: pending(daemon.db) == 0, timeout=15), daemon.log()
    assert post(port, ann, b'{"n": 5}')[0] == 404
    assert post(port, bob, b'{"n": 3}')[0] == 202
    sent.append("done for bob: 3")   # also the sentinel: a result for Ann would come first
    assert telegram.wait_for(lambda: telegram.sent_to(GROUP) == sent, timeout=15), \
        telegram.sent_to(GROUP)
    for url in (ann, bob):
        assert url.rsplit("/", 1)[1] not in daemon.log()


def urlpath(url: str, port: int) -> str:
    prefix = f"http://127.0.0.1:{port}"
    assert url.startswith(prefix + "/callbacks/"), url
    return url[len(prefix):]
