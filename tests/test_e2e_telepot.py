"""End-to-end: telepot programs run unchanged under `chatdaemon telepot SCRIPT`.

Each test starts the daemon as a process on one of the programs in handlers/telepot/,
against the Bot API test double on 127.0.0.1, with a real SQLite file. Every wait is
bounded; per-chat order is the only sequencing used.
"""

from __future__ import annotations

import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml
from conftest import HANDLERS, TOKEN, TOKEN_SECRET, DaemonProcess, clean_environment, wait_until

PROGRAMS = HANDLERS / "telepot"
ROOT = HANDLERS.parent
ANSWER = 20.0  # seconds a run of answers may take on a busy 2-core box


class TelepotDaemon(DaemonProcess):
    """`chatdaemon telepot SCRIPT TOKEN ARGS...` as a subprocess, its output kept in a file."""

    def __init__(self, tmp_path: Path, api_url: str, script: Path, args: list[str], db: Path):
        n = len(list(tmp_path.glob("telepot-*.log")))
        config = tmp_path / f"telepot-{n}.yaml"
        config.write_text(yaml.safe_dump({"polling": {"timeout": 1}, "stop_timeout": 10,
                                          "hooks": {"port": 0}}))
        command = [sys.executable, "-m", "chatdaemon", "telepot", "--api-url", api_url,
                   "--rate-limits", "off", "--db", str(db), "--config", str(config),
                   str(script), *args]
        super().__init__(tmp_path / f"telepot-{n}.log", command, clean_environment(), tmp_path)


@pytest.fixture
def run_program(tmp_path, telegram):
    """Start a telepot program; at the end, every run's output is checked for the token."""
    started: list[TelepotDaemon] = []

    def start(script: str | Path, *args: str, db: Path | None = None) -> TelepotDaemon:
        path = script if isinstance(script, Path) else PROGRAMS / script
        daemon = TelepotDaemon(tmp_path, telegram.url, path, [TOKEN, *args],
                               db or tmp_path / "bot.sqlite3")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
    for daemon in started:
        assert TOKEN_SECRET not in daemon.log(), f"the token leaked into {daemon.log_path}"


def undone(db: Path) -> int:
    database = sqlite3.connect(db)
    try:
        return database.execute("SELECT COUNT(*) FROM inbox WHERE done = 0").fetchone()[0]
    finally:
        database.close()


def done_ids(db: Path) -> set[int]:
    database = sqlite3.connect(db)
    try:
        return {row[0] for row in database.execute("SELECT update_id FROM inbox WHERE done = 1")}
    finally:
        database.close()


def png(width: int = 2, height: int = 2) -> bytes:
    """A small valid PNG (red pixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# -- the counter (DelegatorBot + ChatHandler, as telepot's README) -------------------------------

def test_counter_counts_each_chat_separately_and_in_order(telegram, run_program):
    run_program("counter.py")
    telegram.push_many([(7, "a"), (8, "x"), (7, "b"), (7, "c"), (8, "y")])
    assert telegram.wait_for_sent(5, timeout=ANSWER)
    # sendMessage(self._count) sends an int: it arrives as its digits
    assert telegram.sent_to(7) == ["1", "2", "3"]
    assert telegram.sent_to(8) == ["1", "2"]


def test_counter_killed_mid_stream_answers_everything_pending_after_restart(
        telegram, run_program, tmp_path):
    db = tmp_path / "bot.sqlite3"
    telegram.fail_next("sendMessage", "latency", count=40, seconds=0.2)  # replies go out slowly
    ids = telegram.push_many([(7, f"m{i}") for i in range(10)])
    first = run_program("counter.py", db=db)
    assert telegram.wait_for_sent(3, timeout=ANSWER)
    first.kill()  # kill -9 while most of the chat's messages wait
    handled = len(done_ids(db))
    assert handled < 10, "the stream finished before the kill; the test proves nothing"
    ids += telegram.push_many([(7, f"later{i}") for i in range(5)])  # arrive while it is down
    before = len(telegram.sent_to(7))
    run_program("counter.py", db=db)
    pending = len(ids) - handled
    expected = [str(n) for n in range(1, pending + 1)]
    # the new process's handler starts from 0 and answers exactly what was not done
    assert telegram.wait_for(lambda: telegram.sent_to(7)[-pending:] == expected, timeout=60)
    # besides: at most the one reply the killed process had in flight, accepted after its
    # death (Telegram has no idempotency key; its update was not done, so it is answered again)
    assert len(telegram.sent_to(7)[before:]) - pending <= 1
    assert wait_until(lambda: done_ids(db) >= set(ids), timeout=10)
    assert telegram.confirmed <= done_ids(db)  # nothing acknowledged that is not handled


# -- guess a number (ChatHandler with open, close and on_close) ---------------------------------

def play(telegram, chat: int, low: int = 0, high: int = 99) -> int:
    """Binary search with the bot's hints; returns the number of guesses."""
    for guesses in range(1, 9):
        guess = (low + high) // 2
        seen = len(telegram.sent_to(chat))
        telegram.push_message(chat, str(guess))
        assert telegram.wait_for(lambda n=seen: len(telegram.sent_to(chat)) > n, timeout=ANSWER)
        hint = telegram.sent_to(chat)[seen]
        if hint == "Correct!":
            return guesses
        assert hint in ("larger", "smaller"), hint
        low, high = (guess + 1, high) if hint == "larger" else (low, guess - 1)
        assert low <= high, f"{hint!r} to {guess} contradicts the earlier hints"
    raise AssertionError("no number left to guess")


def test_guess_opens_a_game_plays_it_and_opens_a_new_one_after_close(telegram, run_program):
    run_program("guess.py", "60")
    telegram.push_message(5, "hello")
    assert telegram.wait_for(lambda: telegram.sent_to(5) == ["Guess my number (0 to 99)"],
                             timeout=ANSWER)
    assert play(telegram, 5) <= 7
    telegram.push_message(5, "again")  # close() ended the game: this message opens a new one
    assert telegram.wait_for(lambda: telegram.sent_to(5)[-1:] == ["Guess my number (0 to 99)"],
                             timeout=ANSWER)
    telegram.push_message(5, "a word")
    assert telegram.wait_for(lambda: telegram.sent_to(5)[-1:] == ["Give me a number, please."],
                             timeout=ANSWER)


def test_guess_left_idle_expires_through_on_close_with_wait_too_long(telegram, run_program):
    run_program("guess.py", "1.5")
    telegram.push_message(6, "hi")
    telegram.push_message(6, "50")
    assert telegram.wait_for(lambda: len(telegram.sent_to(6)) >= 2, timeout=ANSWER)
    hint = telegram.sent_to(6)[1]
    if hint == "Correct!":  # one game in a hundred: open another one to let expire
        telegram.push_message(6, "hi")
    expiry = lambda: [t for t in telegram.sent_to(6) if t.startswith("Game expired")]  # noqa: E731
    assert telegram.wait_for(expiry, timeout=ANSWER)
    answer = int(expiry()[0].rsplit(" ", 1)[1])
    if hint == "larger":
        assert 50 < answer <= 99
    elif hint == "smaller":
        assert 0 <= answer < 50
    telegram.push_message(6, "back")
    assert telegram.wait_for(lambda: telegram.sent_to(6)[-1:] == ["Guess my number (0 to 99)"],
                             timeout=ANSWER)


# -- the chatbox (patterns per role: owner, newcomers, everyone else) ---------------------------

def test_chatbox_greets_newcomers_saves_messages_and_the_owner_reads_them(telegram, run_program):
    owner = 100
    daemon = run_program("chatbox.py", str(owner))
    telegram.push_many([(201, "a1"), (202, "b1"), (201, "a2")])
    hello = "Hello! Leave a message, the owner reads them all."
    saved = "Saved. The owner will read it soon."
    assert telegram.wait_for(lambda: telegram.sent_to(201) == [hello, saved, saved]
                             and telegram.sent_to(202) == [hello, saved], timeout=ANSWER)
    telegram.push_message(owner, "/unread")
    assert telegram.wait_for(lambda: len(telegram.sent_to(owner)) == 1, timeout=ANSWER)
    listed = telegram.sent_to(owner)[0].split("\n")
    assert sorted(zip(listed[::2], listed[1::2], strict=True)) == [
        ("ID: 201", "2 unread"), ("ID: 202", "1 unread")]
    for _ in range(3):
        telegram.push_message(owner, "/next")
    assert telegram.wait_for(lambda: telegram.sent_to(owner)[-1:] == ["No unread messages"],
                             timeout=ANSWER)
    read = telegram.sent_to(owner)[1:-1]
    first = read[0]
    expected = {"From ID: 201": ["From ID: 201", "a1", "a2"], "From ID: 202": ["From ID: 202", "b1"]}
    assert first in expected
    other = "From ID: 202" if first == "From ID: 201" else "From ID: 201"
    assert read == expected[first] + expected[other]
    telegram.push_message(201, "a3")  # not a newcomer any more: no second greeting
    assert telegram.wait_for(lambda: telegram.sent_to(201) == [hello, saved, saved, saved],
                             timeout=ANSWER)
    assert daemon.stop() == 0  # message_loop(run_forever=...) held only the program's thread
    assert "Listening ..." in daemon.log()


# -- a plain message_loop(handle) program: keyboards, a photo upload, a download -----------------

def test_photo_program_uploads_from_disk_downloads_and_answers_buttons(telegram, run_program, tmp_path):
    picture = tmp_path / "pic.png"
    picture.write_bytes(png())
    saves = tmp_path / "saved"
    saves.mkdir()
    daemon = run_program("photo.py", str(picture), str(saves))

    telegram.push_message(3, "/start")
    assert telegram.wait_for_sent(1, timeout=ANSWER)
    assert telegram.sent[0]["params"]["reply_markup"] == {
        "keyboard": [[{"text": "/photo"}, {"text": "/menu"}]], "one_time_keyboard": True}

    telegram.push_message(3, "/photo")
    assert telegram.wait_for(lambda: telegram.calls_to("sendPhoto"), timeout=ANSWER)
    upload = telegram.calls_to("sendPhoto")[0]["params"]
    assert upload["photo"] == {"filename": "pic.png", "size": len(png())}  # a multipart file part
    assert upload["caption"] == "A picture from disk"
    assert str(upload["chat_id"]) == "3"

    telegram.push_message(3, "/menu")
    assert telegram.wait_for(lambda: telegram.sent_to(3)[-1:] == ["Pick a colour"], timeout=ANSWER)
    menu = telegram.sent[-1]
    assert menu["params"]["reply_markup"] == {"inline_keyboard": [[
        {"text": "Red", "callback_data": "red"}, {"text": "Blue", "callback_data": "blue"}]]}
    telegram.push_callback(3, "red", message_id=menu["message_id"])
    assert telegram.wait_for(lambda: telegram.sent_to(3)[-1:] == ["Colour: red"], timeout=ANSWER)
    edit = telegram.sent[-1]
    assert (edit["method"], edit["message_id"]) == ("editMessageText", menu["message_id"])
    answers = telegram.calls_to("answerCallbackQuery")
    assert [call["params"]["text"] for call in answers] == ["You chose red"]  # answered once

    telegram.add_file("F1", png(3, 3), "photos/file_1.png")
    telegram.push_update({"message": {
        "message_id": 900, "from": {"id": 3, "is_bot": False, "first_name": "Ann"},
        "chat": {"id": 3, "type": "private", "first_name": "Ann"}, "date": 1,
        "photo": [{"file_id": "F0", "file_unique_id": "u0", "width": 1, "height": 1},
                  {"file_id": "F1", "file_unique_id": "u1", "width": 3, "height": 3}]}})
    assert telegram.wait_for(lambda: telegram.sent_to(3)[-1:] == [f"Saved {len(png(3, 3))} bytes"],
                             timeout=ANSWER)
    assert (saves / "F1.png").read_bytes() == png(3, 3)
    assert telegram.downloads == ["photos/file_1.png"]

    telegram.push_message(3, "hello")  # sendMessage(chat_id, len(text)): an int, sent as text
    assert telegram.wait_for(lambda: telegram.sent_to(3)[-1:] == ["5"], timeout=ANSWER)
    assert daemon.stop() == 0
    assert "I am @test_bot" in daemon.log()  # getMe before the loop started


# -- telepot 3's notifyOnMessage; a ChatHandler with buttons, listener.wait() and vars -----------

TELEPOT3_ECHO = """\
import sys
import telepot

def handle(msg):
    content_type, chat_type, chat_id = telepot.glance2(msg)
    bot.sendMessage(chat_id, 'echo: ' + msg['text'])

bot = telepot.Bot(sys.argv[1])
bot.notifyOnMessage(handle, run_forever=True)
"""

QUIZ = """\
import sys
import time

import telepot
from telepot.delegate import create_open, include_callback_query_chat_id, pave_event_space, per_chat_id
from telepot.loop import MessageLoop
from telepot.namedtuple import InlineKeyboardButton, InlineKeyboardMarkup


class Quiz(telepot.helper.ChatHandler):
    def on_chat_message(self, msg):
        if msg['text'] == '/quiz':
            self.sender.sendMessage('2+2?', reply_markup=InlineKeyboardMarkup(inline_keyboard=[[
                InlineKeyboardButton(text='4', callback_data='4'),
                InlineKeyboardButton(text='5', callback_data='5')]]))
        elif msg['text'] == '/name':
            self.sender.sendMessage('Your name?')
            reply = self.listener.wait()
            self.vars['name'] = reply['text']
            self.sender.sendMessage('Hello %s (chat %d, seed %d)' % (reply['text'], self.chat_id, self.id))
        elif msg['text'] == '/who':
            self.sender.sendMessage(self.vars.get('name', 'nobody'))

    def on_callback_query(self, msg):
        query_id, from_id, data = telepot.glance(msg, flavor='callback_query')
        self.bot.answerCallbackQuery(query_id, text='right' if data == '4' else 'wrong')


bot = telepot.DelegatorBot(sys.argv[1], [
    include_callback_query_chat_id(pave_event_space())(
        per_chat_id(types=['private']), create_open, Quiz, timeout=10),
])
MessageLoop(bot).run_as_thread()
while 1:
    time.sleep(10)
"""


def test_telepot_3_notify_on_message_with_glance2(telegram, run_program, tmp_path):
    script = tmp_path / "echo.py"
    script.write_text(TELEPOT3_ECHO)
    run_program(script)
    telegram.push_message(4, "one")
    telegram.push_message(4, "two")
    assert telegram.wait_for(lambda: telegram.sent_to(4) == ["echo: one", "echo: two"], timeout=ANSWER)


def test_chat_handler_buttons_listener_wait_and_durable_vars(telegram, run_program, tmp_path):
    script = tmp_path / "quiz.py"
    script.write_text(QUIZ)
    first = run_program(script)
    telegram.push_message(9, "/quiz")
    assert telegram.wait_for(lambda: telegram.sent_to(9) == ["2+2?"], timeout=ANSWER)
    quiz = telegram.sent[-1]
    telegram.push_callback(9, "4", message_id=quiz["message_id"])
    assert telegram.wait_for(lambda: telegram.calls_to("answerCallbackQuery"), timeout=ANSWER)
    telegram.push_message(9, "/name")
    telegram.push_message(9, "Ann")
    assert telegram.wait_for(lambda: telegram.sent_to(9)[-1:] == ["Hello Ann (chat 9, seed 9)"],
                             timeout=ANSWER)
    assert telegram.sent_to(9) == ["2+2?", "Your name?", "Hello Ann (chat 9, seed 9)"]
    answers = telegram.calls_to("answerCallbackQuery")
    assert [call["params"]["text"] for call in answers] == ["right"]  # answered once, by the program
    telegram.push_message(-50, "/who", chat_type="group")  # per_chat_id(types=['private']): no handler
    assert first.stop() == 0
    run_program(script)
    telegram.push_message(9, "/who")  # a new process: self.vars came back from the database
    assert telegram.wait_for(lambda: telegram.sent_to(9)[-1:] == ["Ann"], timeout=ANSWER)
    assert wait_until(lambda: undone(tmp_path / "bot.sqlite3") == 0, timeout=ANSWER)
    assert telegram.sent_to(-50) == []  # handled, deliberately silent


# -- programs that cannot run say why -------------------------------------------------------------

def run_to_end(tmp_path: Path, telegram, source: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "program.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "chatdaemon", "telepot", "--api-url", telegram.url,
         "--db", str(tmp_path / "x.sqlite3"), str(script), *args],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path))


def test_program_failing_before_its_loop_exits_1_naming_file_and_line(telegram, tmp_path):
    result = run_to_end(tmp_path, telegram, "import sys\nimport telepot\n\nbot = telepot.Bot(sys.argv[1])\n"
                                            "raise ValueError('no config file')\n", TOKEN)
    assert result.returncode == 1
    assert "program.py: failed before starting its message loop (line 5): ValueError: " \
           "no config file" in result.stderr
    assert TOKEN_SECRET not in result.stderr + result.stdout


def test_program_without_a_message_loop_is_refused(telegram, tmp_path):
    result = run_to_end(tmp_path, telegram, "import telepot\nprint(telepot.glance)\n")
    assert result.returncode == 1
    assert "ended without starting a message loop" in result.stderr


def test_asyncio_telepot_is_refused_with_a_clear_message(telegram, tmp_path):
    result = run_to_end(tmp_path, telegram, "import telepot.aio\n")
    assert result.returncode == 1
    assert "telepot.aio" in result.stderr and "not the asyncio API" in result.stderr


def test_program_with_a_malformed_token_exits_78(telegram, tmp_path):
    source = "import telepot\nbot = telepot.Bot('nonsense')\nbot.message_loop(lambda msg: None)\n"
    result = run_to_end(tmp_path, telegram, source)
    assert result.returncode == 78
    assert "does not look like a bot token" in result.stderr


def test_usage_passes_arguments_to_the_program(telegram, tmp_path):
    source = "import sys\nprint('argv', sys.argv[1:])\nsys.exit(3)\n"
    result = run_to_end(tmp_path, telegram, source, "one", "--two")
    assert "argv ['one', '--two']" in result.stdout
    assert result.returncode == 1 and "exited before starting its message loop: 3" in result.stderr


def test_examples_are_plain_telepot_code():
    """The example programs import telepot only, never chatdaemon."""
    for program in PROGRAMS.glob("*.py"):
        source = program.read_text()
        assert "import telepot" in source, program
        assert "chatdaemon" not in source.replace("chatdaemon telepot", ""), program
    assert (ROOT / "chatdaemon" / "telepot_compat").is_dir()
