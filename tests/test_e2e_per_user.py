"""E2E: a group whose members each walk the sign-up flow, with the daemon as a process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

from conftest import HANDLERS, ROOT

GROUP, ANN, BOB = -4001, 21, 22


def signup_bot(tmp_path, mode: str):
    """The shipped sign-up bot with its `conversation:` key set to `mode`."""
    directory = tmp_path / f"signup-{mode}"
    directory.mkdir()
    text = (HANDLERS / "signup" / "bot.yaml").read_text()
    (directory / "bot.yaml").write_text(f"conversation: {mode}\n{text}")
    return directory


def say(telegram, user: int, text: str, name: str) -> None:
    telegram.push_message(GROUP, text, user_id=user, chat_type="group", first_name=name)


def wait_texts(telegram, count: int) -> list[str]:
    assert telegram.wait_for(lambda: len(telegram.sent_to(GROUP)) >= count, 20), \
        telegram.sent_to(GROUP)
    return telegram.sent_to(GROUP)


def test_two_members_at_different_steps_each_get_their_own_next_question(
        telegram, start_daemon, tmp_path):
    daemon = start_daemon(signup_bot(tmp_path, "per_user"))
    say(telegram, ANN, "/start", "Ann")
    say(telegram, ANN, "Ann", "Ann")            # Ann is asked for her e-mail
    say(telegram, BOB, "/start", "Bob")         # Bob is asked for his name
    say(telegram, BOB, "Bob", "Bob")            # his name, not an e-mail for Ann
    say(telegram, ANN, "ann@example.org", "Ann")
    texts = wait_texts(telegram, 5)
    assert texts == [
        "Welcome! Let's sign you up. What's your name?",
        "Nice to meet you, Ann. What's your e-mail address?",
        "Welcome! Let's sign you up. What's your name?",
        "Nice to meet you, Bob. What's your e-mail address?",
        "Thank you, Ann! We'll write to ann@example.org. 🎉",
    ]
    # a restart in between: each member's step is in the database, not in memory
    assert daemon.stop() == 0
    start_daemon(tmp_path / "signup-per_user")
    say(telegram, BOB, "bob@example.org", "Bob")
    say(telegram, ANN, "anything", "Ann")
    texts = wait_texts(telegram, 7)
    assert texts[5:] == ["Thank you, Bob! We'll write to bob@example.org. 🎉",
                         "You're signed up as Ann <ann@example.org>. Send /start to begin again."]
    db = sqlite3.connect(tmp_path / "bot.sqlite3")
    try:
        rows = db.execute("SELECT user_id, state FROM member_conversations WHERE chat_id = ?"
                          " ORDER BY user_id", (GROUP,)).fetchall()
    finally:
        db.close()
    assert rows == [(ANN, "signed_up"), (BOB, "signed_up")]


def test_per_chat_the_group_keeps_one_conversation(telegram, start_daemon, tmp_path):
    start_daemon(signup_bot(tmp_path, "per_chat"))
    say(telegram, ANN, "/start", "Ann")
    say(telegram, BOB, "Bob", "Bob")            # answers the group's one question
    say(telegram, ANN, "ann@example.org", "Ann")
    texts = wait_texts(telegram, 3)
    assert texts == [
        "Welcome! Let's sign you up. What's your name?",
        "Nice to meet you, Bob. What's your e-mail address?",
        "Thank you, Bob! We'll write to ann@example.org. 🎉",
    ]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "chatdaemon", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_chats_export_and_forget_find_a_members_rows(telegram, start_daemon, tmp_path):
    daemon = start_daemon(signup_bot(tmp_path, "per_user"))
    say(telegram, ANN, "/start", "Ann")
    say(telegram, BOB, "/start", "Bob")
    say(telegram, ANN, "Ann", "Ann")
    wait_texts(telegram, 3)
    assert daemon.stop() == 0
    database = str(tmp_path / "bot.sqlite3")

    listed = cli("chats", "--db", database)
    assert listed.returncode == 0, listed.stderr
    assert str(GROUP) in listed.stdout
    exported = cli("export", "--db", database, str(ANN))   # Ann, by her user id
    assert exported.returncode == 0, exported.stderr
    rows = json.loads(exported.stdout)["member_conversations"]
    assert [(r["chat_id"], r["state"], r["vars"]) for r in rows] == \
        [(GROUP, "asked_email", {"name": "Ann"})]

    forgot = cli("forget", "--db", database, str(ANN))
    assert forgot.returncode == 0, forgot.stderr
    assert "1 row(s) deleted" in forgot.stdout
    assert json.loads(cli("export", "--db", database, str(ANN)).stdout)["member_conversations"] == []
    group = json.loads(cli("export", "--db", database, str(GROUP)).stdout)
    assert [r["user_id"] for r in group["member_conversations"]] == [BOB]
