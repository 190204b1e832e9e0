"""`conversation: per_user`: in a group, each member's state, vars, keyboard and session."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from chatdaemon import conversations
from chatdaemon.bots import load_bot
from chatdaemon.errors import ConfigError
from chatdaemon.privacy import export_chat, forget_chat
from chatdaemon.testing import TestBot

GROUP, ANN, BOB = -300, 11, 12

QUIZ = """
conversation: {mode}
session_timeout: 1h
handlers:
  - name: start
    pattern: '^/quiz$'
    response: {{text: "Q1: capital of France?", keyboard: [["Paris", "Rome"]]}}
    target_state: q1
  - name: q1
    source_states: [q1]
    pattern: '^(?P<a>[A-Za-z]+)$'
    response: {{text: "Q2 for {{{{ user.first_name }}}}: two plus two?", keyboard: [["Three", "Four"]]}}
    save: {{first: "{{{{ pattern.a }}}}"}}
    target_state: q2
  - name: q2
    source_states: [q2]
    pattern: '^(?P<a>[A-Za-z]+)$'
    response: "done: {{{{ vars.first }}}} then {{{{ pattern.a }}}}"
    target_state: finished
  - name: press
    pattern: '^/press$'
    response:
      text: "pick"
      buttons: [[{{text: "Go", data: "/quiz"}}]]
fallback: "send /quiz"
"""


def make_bot(tmp_path, mode: str = "per_user") -> TestBot:
    (tmp_path / "bot.yaml").write_text(QUIZ.format(mode=mode))
    return TestBot(str(tmp_path))


def member_row(bot: TestBot, user: int, chat: int = GROUP) -> tuple | None:
    with bot.store.reading() as db:
        return db.execute("SELECT state, vars FROM member_conversations WHERE chat_id = ? AND "
                          "user_id = ?", (chat, user)).fetchone()


@pytest.fixture
def quiz(tmp_path):
    with make_bot(tmp_path) as bot:
        yield bot


def test_two_members_of_a_group_are_each_at_their_own_step(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    assert quiz.pop().startswith("Q1")
    quiz.send("Paris", chat=GROUP, user=ANN)
    assert quiz.pop() == "Q2 for User 11: two plus two?"
    quiz.send("/quiz", chat=GROUP, user=BOB)   # Bob starts while Ann is at Q2
    assert quiz.pop().startswith("Q1")
    quiz.send("Four", chat=GROUP, user=ANN)
    assert quiz.pop() == "done: Paris then Four"
    quiz.send("Rome", chat=GROUP, user=BOB)
    assert quiz.pop() == "Q2 for User 12: two plus two?"
    assert member_row(quiz, ANN)[0] == "finished"
    assert member_row(quiz, BOB)[0] == "q2"
    assert json.loads(member_row(quiz, BOB)[1]) == {"first": "Rome"}
    assert quiz.state(GROUP) is None   # the group's own conversation is untouched


def test_a_typed_number_picks_from_the_members_own_latest_keyboard(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    quiz.send("1", chat=GROUP, user=ANN)        # Paris, from Ann's keyboard
    quiz.send("/quiz", chat=GROUP, user=BOB)
    quiz.send("2", chat=GROUP, user=ANN)        # "Four", from Ann's second keyboard
    quiz.send("2", chat=GROUP, user=BOB)        # "Rome", from Bob's first one
    assert quiz.replies()[-2:] == ["done: Paris then Four", "Q2 for User 12: two plus two?"]
    assert json.loads(member_row(quiz, BOB)[1]) == {"first": "Rome"}


def test_a_button_press_is_keyed_by_who_pressed_it(quiz):
    quiz.send("/press", chat=GROUP, user=ANN)
    quiz.pop()
    quiz.press("/quiz", chat=GROUP, user=BOB)   # Bob presses the button sent after Ann's message
    assert quiz.pop().startswith("Q1")
    assert member_row(quiz, BOB)[0] == "q1"
    assert member_row(quiz, ANN)[0] is None


def test_per_chat_keeps_one_conversation_for_the_group(tmp_path):
    with make_bot(tmp_path, "per_chat") as bot:
        bot.send("/quiz", chat=GROUP, user=ANN)
        bot.send("Paris", chat=GROUP, user=BOB)   # Bob answers Ann's question: one conversation
        assert bot.replies()[-1] == "Q2 for User 12: two plus two?"
        assert bot.state(GROUP) == "q2"
        with bot.store.reading() as db:
            assert db.execute("SELECT COUNT(*) FROM member_conversations").fetchone() == (0,)


def test_private_chats_are_unaffected(quiz):
    quiz.send("/quiz", chat=ANN)
    quiz.send("Paris", chat=ANN)
    assert quiz.state(ANN) == "q2"
    assert member_row(quiz, ANN, chat=ANN) is None


def test_session_timeout_runs_per_member(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    quiz.send("/quiz", chat=GROUP, user=BOB)
    with quiz.store.reading() as db:
        names = sorted(name for (name,) in db.execute(
            "SELECT name FROM schedules WHERE chat_id = ?", (GROUP,)))
    assert names == [f"chatdaemon.session@{ANN}", f"chatdaemon.session@{BOB}"]
    # Ann's session is idle past the timeout: her tick sends her back; Bob is not touched
    with quiz.store.writing() as db:
        stale = json.dumps({"chatdaemon:seen": time.time() - 7200})
        db.execute("UPDATE member_conversations SET state_context = ? WHERE user_id = ?",
                   (stale, ANN))
    quiz.end(GROUP)   # the chat's next update meets its conversations as stored
    quiz.tick(f"chatdaemon.session@{ANN}", chat=GROUP)
    assert member_row(quiz, ANN)[0] is None
    assert member_row(quiz, BOB)[0] == "q1"
    with quiz.store.reading() as db:
        names = [name for (name,) in db.execute("SELECT name FROM schedules WHERE chat_id = ?",
                                                 (GROUP,))]
    assert names == [f"chatdaemon.session@{BOB}"]


def test_forget_command_in_a_group_deletes_only_that_members_conversation(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    quiz.send("/quiz", chat=GROUP, user=BOB)
    quiz.send("/forget", chat=GROUP, user=ANN)
    assert quiz.replies()[-1] == "Done: I deleted our conversation in this group."
    assert member_row(quiz, ANN) in (None, (None, "{}"))
    assert member_row(quiz, BOB)[0] == "q1"
    with quiz.store.reading() as db:
        names = [name for (name,) in db.execute("SELECT name FROM schedules")]
    assert names == [f"chatdaemon.session@{BOB}"]


def test_export_and_forget_find_a_members_rows_by_group_and_by_person(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    quiz.send("/quiz", chat=GROUP - 1, user=ANN)
    quiz.send("/quiz", chat=GROUP, user=BOB)
    with quiz.store.reading() as db:
        by_group = export_chat(db, GROUP)["member_conversations"]
        by_person = export_chat(db, ANN)["member_conversations"]
    assert sorted(row["user_id"] for row in by_group) == [ANN, BOB]
    assert sorted(row["chat_id"] for row in by_person) == [GROUP - 1, GROUP]
    assert by_person[0]["state"] == "q1" and isinstance(by_person[0]["state_context"], dict)

    with quiz.store.writing() as db:
        forget_chat(ANN)(db)   # the person: their conversations in every group go
    assert member_row(quiz, ANN) is None and member_row(quiz, ANN, GROUP - 1) is None
    assert member_row(quiz, BOB)[0] == "q1"
    with quiz.store.reading() as db:
        names = [name for (name,) in db.execute("SELECT name FROM schedules")]
    assert names == [f"chatdaemon.session@{BOB}"]
    with quiz.store.writing() as db:
        forget_chat(GROUP)(db)  # the group: every member's conversation in it goes
    assert member_row(quiz, BOB) is None


def test_a_group_moving_to_a_supergroup_takes_its_members_along(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    quiz.send("Paris", chat=GROUP, user=ANN)
    quiz.send("/quiz", chat=GROUP, user=BOB)
    supergroup = -1000000000300
    quiz.send(None, chat=GROUP, user=ANN, migrate_to_chat_id=supergroup)
    quiz.send("Four", chat=supergroup, user=ANN)
    quiz.send("Rome", chat=supergroup, user=BOB)
    assert quiz.replies()[-2:] == ["done: Paris then Four", "Q2 for User 12: two plus two?"]


def test_the_supergroups_first_message_copies_the_members_too(quiz):
    quiz.send("/quiz", chat=GROUP, user=ANN)
    supergroup = -1000000000301
    quiz.send(None, chat=supergroup, user=ANN, migrate_from_chat_id=GROUP)
    quiz.send("Paris", chat=supergroup, user=ANN)
    assert quiz.replies()[-1] == "Q2 for User 11: two plus two?"


def test_retention_forgets_idle_members_like_idle_chats(fresh_db):
    with fresh_db.writing() as db:
        for user, updated in ((ANN, 100.0), (BOB, time.time())):
            db.execute("INSERT INTO member_conversations(chat_id, user_id, state, updated)"
                       " VALUES (?, ?, 'x', ?)", (GROUP, user, updated))
        assert conversations.prune_idle(db, time.time() - 60) == 1
        assert db.execute("SELECT user_id FROM member_conversations").fetchall() == [(BOB,)]


def test_a_member_with_a_running_schedule_is_kept_by_retention(fresh_db):
    with fresh_db.writing() as db:
        db.execute("INSERT INTO member_conversations(chat_id, user_id, state, updated)"
                   " VALUES (?, ?, 'x', 100)", (GROUP, ANN))
        db.execute("INSERT INTO schedules(chat_id, name, every, next_at) VALUES (?, ?, 60, 0)",
                   (GROUP, f"nag@{ANN}"))
        assert conversations.prune_idle(db, time.time()) == 0


def test_stored_schedule_names_say_whose_they_are():
    assert conversations.member_schedule("nag@12") == ("nag", 12)
    assert conversations.member_schedule("nag@-5") == ("nag", -5)
    assert conversations.member_schedule("nag") == ("nag", None)
    assert conversations.member_schedule("nag@x") == ("nag@x", None)


def test_the_key_is_checked_and_python_handlers_can_ask_for_it(tmp_path):
    (tmp_path / "bot.yaml").write_text("conversation: per_member\nhandlers: [{name: a, "
                                       "response: hi}]\n")
    with pytest.raises(ConfigError, match="conversation must be one of per_chat, per_user"):
        load_bot(str(tmp_path))
    (tmp_path / "bot.yaml").write_text("python: quiz:Quiz\n")
    (tmp_path / "quiz.py").write_text(
        "from chatdaemon import ChatHandler\n\n"
        "class Quiz(ChatHandler):\n"
        "    per_user = True\n\n"
        "    def on_chat_message(self, msg):\n"
        "        self.vars['n'] = self.vars.get('n', 0) + 1\n"
        "        self.sender.sendMessage(f\"{self.member}: {self.vars['n']}\")\n")
    assert load_bot(str(tmp_path)).per_member
    with TestBot(str(tmp_path)) as bot:
        bot.send("a", chat=GROUP, user=ANN)
        bot.send("b", chat=GROUP, user=ANN)
        bot.send("c", chat=GROUP, user=BOB)
        assert bot.replies() == ["11: 1", "11: 2", "12: 1"]
    (tmp_path / "bot.yaml").write_text("python: quiz:Quiz\nconversation: per_chat\n")
    assert not load_bot(str(tmp_path)).per_member


def test_an_older_database_gets_the_member_table(tmp_path):
    path = tmp_path / "old.sqlite3"
    from chatdaemon.store import MIGRATIONS, Store
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:6]:
        db.executescript(script)
    db.execute("PRAGMA user_version=6")
    db.commit()
    db.close()
    store = Store(str(path))
    try:
        assert store.load_conversation(GROUP, ANN).is_new
    finally:
        store.close()


def test_a_python_schedule_name_with_an_at_sign_is_refused(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: nag:Nag\n")
    (tmp_path / "nag.py").write_text(
        "from chatdaemon import ChatHandler\n\n"
        "class Nag(ChatHandler):\n"
        "    def on_chat_message(self, msg):\n"
        "        try:\n"
        "            self.start_schedule(msg['text'], 60)\n"
        "        except ValueError as exc:\n"
        "            self.sender.sendMessage(str(exc))\n"
        "            return\n"
        "        self.sender.sendMessage('started')\n")
    with TestBot(str(tmp_path)) as bot:
        bot.send("nag@5", chat=ANN)
        bot.send("nag", chat=ANN)
        assert bot.replies() == ["a schedule name cannot contain '@': 'nag@5'", "started"]
