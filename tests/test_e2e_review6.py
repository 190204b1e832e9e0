"""End-to-end: hostile handlers and typical telepot programs, as a daemon process.

Each test runs the real daemon (`chatdaemon run`, or `chatdaemon telepot SCRIPT`) against
the Bot API double on 127.0.0.1 with a real SQLite file. Waits are bounded; per-chat order
is the only sequencing used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANDLERS, TOKEN, TOKEN_SECRET
from test_e2e_telepot import TelepotDaemon, run_to_end, undone

from chatdaemon.textsplit import utf16_len

ANSWER = 30.0   # seconds a run of answers may take on a busy 2-core box
ERROR_TEXT = "That did not work."


def write_bot(directory: Path, module: str) -> Path:
    directory.mkdir()
    (directory / "bot.yaml").write_text(f"python: hostile6:Hostile\nerror_text: {ERROR_TEXT}\n")
    (directory / "hostile6.py").write_text(module)
    return directory


HOSTILE = '''
import sys
from chatdaemon.chathandler import ChatHandler

LINK = "https://example.com/?q=" + "x" * 5000


class Hostile(ChatHandler):
    def on_chat_message(self, msg):
        text = msg["text"]
        if text == "exit":
            sys.exit(2)
        if text == "interrupt":
            raise KeyboardInterrupt
        if text == "report":
            self.sender.sendMessage("Intro. " * 700 + f'<a href="{LINK}">the report</a>',
                                    parse_mode="HTML")
            return
        self.sender.sendMessage("echo " + text)
'''


def test_a_handler_calling_sys_exit_answers_the_error_text_and_the_chat_goes_on(
        telegram, start_daemon, tmp_path):
    daemon = start_daemon(write_bot(tmp_path / "bot", HOSTILE))
    for text in ("exit", "one", "interrupt", "two"):
        telegram.push_message(5, text)
    expected = [ERROR_TEXT, "echo one", ERROR_TEXT, "echo two"]
    assert telegram.wait_for(lambda: telegram.sent_to(5) == expected, timeout=ANSWER), \
        telegram.sent_to(5)
    assert daemon.process.poll() is None
    assert "the handler raised SystemExit(2)" in daemon.log()
    assert daemon.stop() == 0
    assert undone(tmp_path / "bot.sqlite3") == 0


def test_a_long_html_answer_with_a_link_longer_than_a_message_goes_out(
        telegram, start_daemon, tmp_path):
    start_daemon(write_bot(tmp_path / "bot", HOSTILE))
    telegram.push_message(6, "report")
    telegram.push_message(6, "after")
    assert telegram.wait_for(lambda: telegram.sent_to(6)[-1:] == ["echo after"], timeout=ANSWER)
    parts = telegram.sent_to(6)[:-1]
    assert len(parts) == 2 and all(utf16_len(part) <= 4096 for part in parts)
    assert parts[-1].endswith("the report")
    assert ERROR_TEXT not in parts


# -- typical telepot programs ---------------------------------------------------------------------

@pytest.fixture
def run_program(tmp_path, telegram):
    """Start `chatdaemon telepot SCRIPT TOKEN`; at the end its output is checked for the token."""
    started: list[TelepotDaemon] = []

    def start(script: Path) -> TelepotDaemon:
        daemon = TelepotDaemon(tmp_path, telegram.url, script, [TOKEN], tmp_path / "bot.sqlite3")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()
        assert TOKEN_SECRET not in daemon.log()

VOTER = '''
import sys
import time

import telepot
from telepot.delegate import create_open, include_callback_query_chat_id, pave_event_space, per_chat_id
from telepot.loop import MessageLoop
from telepot.namedtuple import InlineKeyboardButton, InlineKeyboardMarkup


class Voter(telepot.helper.ChatHandler):
    def __init__(self, *args, **kwargs):
        super(Voter, self).__init__(*args, **kwargs)
        self._count = 0
        self._editor = None

    def open(self, initial_msg, seed):
        self.sender.sendMessage("opened")

    def on_chat_message(self, msg):
        content_type, chat_type, chat_id = telepot.glance(msg)
        if msg["text"] == "vote":
            sent = self.sender.sendMessage("Vote?", reply_markup=InlineKeyboardMarkup(
                inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data="yes")]]))
            self._editor = telepot.helper.Editor(self.bot, sent)
            return
        if msg["text"] == "boom":
            raise ValueError("boom")
        self._count += 1
        self.sender.sendMessage(str(self._count))

    def on_callback_query(self, msg):
        query_id, from_id, data = telepot.glance(msg, flavor="callback_query")
        self.bot.answerCallbackQuery(query_id, text="Voted " + data)
        self._editor.editMessageText("Thanks")


bot = telepot.DelegatorBot(sys.argv[1], [
    include_callback_query_chat_id(pave_event_space())(
        per_chat_id(types=["private"]), create_open, Voter, timeout=30),
])
MessageLoop(bot).run_as_thread()
while 1:
    time.sleep(10)
'''


def test_telepot_voter_reopens_after_an_error_and_edits_through_its_editor(
        telegram, run_program, tmp_path):
    script = tmp_path / "voter.py"
    script.write_text(VOTER)
    run_program(script)
    for text in ("a", "b", "vote"):
        telegram.push_message(5, text)
    assert telegram.wait_for(lambda: "Vote?" in telegram.sent_to(5), timeout=ANSWER)
    vote = next(sent for sent in telegram.sent if sent.get("text") == "Vote?")
    telegram.push_callback(5, "yes", message_id=vote["message_id"])
    for text in ("boom", "c"):
        telegram.push_message(5, text)
    assert telegram.wait_for(lambda: telegram.sent_to(5)[-1:] == ["1"], timeout=ANSWER), \
        telegram.sent_to(5)
    # the handler that failed on "boom" ended; "c" met a new one, counting from 1
    assert telegram.sent_to(5) == ["opened", "1", "2", "Vote?", "Thanks",
                                   "Sorry, something went wrong on my side. Please try again later.",
                                   "opened", "1"]
    answers = telegram.calls_to("answerCallbackQuery")
    assert [call["params"]["text"] for call in answers] == ["Voted yes"]


INLINE_BOT = '''import sys
import time

import telepot
from telepot.loop import MessageLoop
from telepot.namedtuple import InlineQueryResultArticle, InputTextMessageContent


def on_inline_query(msg):
    query_id, from_id, query = telepot.glance(msg, flavor="inline_query")
    bot.answerInlineQuery(query_id, [InlineQueryResultArticle(
        id="abc", title="ABC", input_message_content=InputTextMessageContent(message_text="Hi"))])


def on_chat_message(msg):
    bot.sendMessage(msg["chat"]["id"], "hello")


bot = telepot.Bot(sys.argv[1])
MessageLoop(bot, {"chat": on_chat_message, "inline_query": on_inline_query}).run_as_thread()
while 1:
    time.sleep(10)
'''


@pytest.mark.parametrize("source, line, named", [
    (INLINE_BOT, 20, "the message loop's handler table: inline_query belong to no chat"),
    ("import sys\nimport telepot\n\nbot = telepot.Bot(sys.argv[1])\n"
     "bot.message_loop(print, allowed_updates=['message', 'chosen_inline_result'])\n",
     5, "allowed_updates: chosen_inline_result belong to no chat"),
    ("import sys\nimport telepot\nfrom telepot.delegate import per_inline_from_id\n",
     3, "telepot.delegate.per_inline_from_id is not provided"),
    ("import sys\nimport telepot\n\nanswerer = telepot.helper.Answerer(None)\n",
     4, "telepot.helper.Answerer is not provided"),
    ("import sys\nfrom telepot.helper import Router\n", 2, "telepot.helper.Router is not provided"),
])
def test_programs_asking_for_updates_of_no_chat_are_refused_at_start_naming_the_call(
        telegram, tmp_path, source, line, named):
    result = run_to_end(tmp_path, telegram, source, TOKEN)
    assert result.returncode == 1, result.stderr
    assert f"failed before starting its message loop (line {line}): Unsupported: " in result.stderr
    assert named in result.stderr
    assert TOKEN_SECRET not in result.stderr + result.stdout


# -- chatdaemon chat with hostile input -----------------------------------------------------------

def test_chat_answers_bytes_that_are_not_utf8_and_refuses_a_chat_id_too_big(tmp_path):
    from test_e2e_examples import chat_env

    lines = b"hello\n\xff\xfe bad bytes\n/as 99999999999999999999999999\nafter\n"
    result = subprocess.run(
        [sys.executable, "-m", "chatdaemon", "chat", "--handlers", str(HANDLERS / "counter")],
        input=lines, capture_output=True, timeout=50, cwd=str(tmp_path), env=chat_env())
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert out.splitlines() == [
        "you: hello", "bot: 1",
        "you: \ufffd\ufffd bad bytes", "bot: 2",   # one U+FFFD for each byte that is not UTF-8
        "you: /as 99999999999999999999999999",
        "(not switched: 99999999999999999999999999 cannot be a chat id "
        "(at most 9223372036854775807 either side of 0))",
        "you: after", "bot: 3"]
    assert "poller failed" not in result.stderr.decode()


def test_a_program_whose_get_me_finds_the_token_rejected_exits_78(telegram, tmp_path):
    source = ("import sys\nimport telepot\n\nbot = telepot.Bot(sys.argv[1])\nprint(bot.getMe())\n"
              "bot.message_loop(print)\n")
    result = run_to_end(tmp_path, telegram, source, "123:" + "A" * 35)   # not the double's token
    assert result.returncode == 78, result.stderr   # systemd's RestartPreventExitStatus
    assert "Telegram rejected the bot token (401" in result.stderr
