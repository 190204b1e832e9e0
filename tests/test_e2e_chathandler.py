"""telepot's guess-a-number, ported to a chatdaemon ChatHandler, on the real daemon: open
greets, close() ends the game after its commit, the idle timeout reaches on_close as a
WaitTooLong, and files go up as multipart and come down with download_file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

from conftest import ROOT, TEST_HANDLERS

ANSWER = 15     # seconds to wait for an answer
CHAT = 142      # the game's answer is the chat id modulo 100: 42


def conversation_vars(db) -> str:
    with sqlite3.connect(db) as connection:
        (found,) = connection.execute("SELECT vars FROM conversations WHERE chat_id = ?",
                                      (CHAT,)).fetchone()
    return found


def test_the_ported_game_opens_closes_and_opens_again(telegram, start_daemon, tmp_path):
    daemon = start_daemon(TEST_HANDLERS / "ported")
    for text in ("hi", "10", "99", "42"):
        telegram.push_message(CHAT, text)
    assert telegram.wait_for(lambda: len(telegram.sent_to(CHAT)) >= 5, timeout=ANSWER), daemon.log()
    # open's greeting, telepot-ordered self.bot.sendMessage(chat_id, hint), an int as digits
    assert telegram.sent_to(CHAT) == ["Guess my number", "larger", "smaller", "Correct!", "3"]
    telegram.push_message(CHAT, "again")
    assert telegram.wait_for(lambda: telegram.sent_to(CHAT)[5:] == ["Guess my number"],
                             timeout=ANSWER), daemon.log()
    assert daemon.stop() == 0
    assert '"ends": ["closed"]' in conversation_vars(tmp_path / "bot.sqlite3")
    assert "not sent" not in " ".join(telegram.sent_to(CHAT))
    assert "Traceback" not in daemon.log()


def test_the_idle_timeout_reaches_on_close_as_wait_too_long(telegram, start_daemon, tmp_path):
    daemon = start_daemon(TEST_HANDLERS / "ported", config={"delegates": {"idle_timeout": 0.5}})
    telegram.push_message(CHAT, "hi")
    assert telegram.wait_for(
        lambda: telegram.sent_to(CHAT) == ["Guess my number", "Game expired. The answer is 42"],
        timeout=ANSWER), daemon.log()
    telegram.push_message(CHAT, "hi")  # after the idle ending: a new game
    assert telegram.wait_for(lambda: telegram.sent_to(CHAT)[2:] == ["Guess my number"],
                             timeout=ANSWER), daemon.log()
    assert daemon.stop() == 0
    assert '"ends": ["idle"' in conversation_vars(tmp_path / "bot.sqlite3")


def test_an_open_file_goes_up_as_multipart_and_download_file_brings_one_down(
        telegram, start_daemon, tmp_path):
    (tmp_path / "snap.jpg").write_bytes(b"\xff\xd8JPEG")
    saves = tmp_path / "saves"
    saves.mkdir()
    daemon = start_daemon(TEST_HANDLERS / "ported",
                          env={"PHOTO": str(tmp_path / "snap.jpg"), "SAVE_DIR": str(saves)})
    telegram.push_message(CHAT, "/photo")
    assert telegram.wait_for(lambda: telegram.calls_to("sendPhoto"), timeout=ANSWER), daemon.log()
    upload = telegram.calls_to("sendPhoto")[0]["params"]
    assert upload["photo"] == {"filename": "snap.jpg", "size": 6}   # a multipart file part
    assert upload["caption"] == "from disk" and str(upload["chat_id"]) == str(CHAT)

    telegram.add_file("F1", b"0123456789", "photos/file_1.jpg")
    telegram.push_update({"message": {
        "message_id": 900, "date": 1, "from": {"id": CHAT, "is_bot": False, "first_name": "Ann"},
        "chat": {"id": CHAT, "type": "private"},
        "photo": [{"file_id": "F1", "file_unique_id": "u1", "width": 3, "height": 3}]}})
    assert telegram.wait_for(lambda: telegram.sent_to(CHAT)[-1:] == ["10"], timeout=ANSWER), \
        daemon.log()
    assert (saves / "saved.bin").read_bytes() == b"0123456789"
    assert telegram.downloads == ["photos/file_1.jpg"]
    assert daemon.stop() == 0


def test_check_refuses_a_telepot_constructor_with_a_required_option(tmp_path):
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: game:Player\n")
    (directory / "game.py").write_text(textwrap.dedent("""\
        from chatdaemon import ChatHandler

        class Player(ChatHandler):
            def __init__(self, seed_tuple, timeout):
                super().__init__(seed_tuple, timeout=timeout)
    """))
    result = subprocess.run([sys.executable, "-m", "chatdaemon", "check", "--handlers",
                             str(directory)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 78
    assert f"{directory / 'game.py'}:4: game:Player: its constructor takes neither" in result.stderr
