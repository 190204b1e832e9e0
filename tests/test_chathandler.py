"""A bot's own ChatHandler keeps telepot's promises, in-process: open, close, on_close's
reasons, the telepot constructor, telepot's positional Bot API calls, uploads, downloads,
and `chatdaemon check` refusing a handler class the daemon could never call."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, TEST_HANDLERS

from chatdaemon import ChatHandler
from chatdaemon.bots import load_bot
from chatdaemon.chathandler import BotSender, ChatSender, SeedTuple
from chatdaemon.errors import (
    ConfigError,
    Evicted,
    IdleTerminate,
    Reloaded,
    StopListening,
    TelegramError,
    WaitTooLong,
)
from chatdaemon.store import Conversation
from chatdaemon.testing import TestBot
from chatdaemon.transfer import Upload

PORTED = TEST_HANDLERS / "ported"
CHAT = 142   # the ported game's answer is the chat id modulo 100: 42


def python_bot(tmp_path, source: str):
    """A bot directory whose handler is the class `Bot` in `source`."""
    directory = tmp_path / "bot"
    directory.mkdir(exist_ok=True)
    (directory / "bot.yaml").write_text("python: mod:Bot\n")
    (directory / "mod.py").write_text("from chatdaemon import ChatHandler, WaitTooLong\n\n"
                                      + textwrap.dedent(source))
    return directory


@pytest.fixture
def ported():
    with TestBot(str(PORTED)) as bot:
        yield bot


# -- open ------------------------------------------------------------------------------------

def test_open_greets_before_the_first_message_and_true_keeps_it_from_on_chat_message(ported):
    ported.send("hi", chat=CHAT)
    assert ported.replies() == ["Guess my number"]  # not also "Give me a number, please."
    ported.send("hi", chat=CHAT)
    assert ported.replies() == ["Give me a number, please."]  # open ran once


def test_open_with_one_argument_that_returns_nothing_lets_on_chat_message_see_the_update(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def open(self, initial_msg):
                self.sender.sendMessage("opened on " + initial_msg["text"])

            def on_chat_message(self, msg):
                self.sender.sendMessage("got " + msg["text"])
    """)
    with TestBot(str(directory)) as bot:
        bot.send("a")
        bot.send("b")
        assert bot.replies() == ["opened on a", "got a", "got b"]


def test_a_schedule_tick_does_not_open_the_handler_the_next_message_does(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def open(self, initial_msg):
                self.sender.sendMessage("open")

            def on_chat_message(self, msg):
                self.start_schedule("t", 60)

            def on_schedule(self, tick):
                self.sender.sendMessage("tick")
    """)
    with TestBot(str(directory)) as bot:
        bot.send("start")
        bot.idle()          # the next update meets a new handler
        bot.tick("t")
        bot.send("again")
        assert bot.replies() == ["open", "tick", "open"]


# -- close and on_close ------------------------------------------------------------------------

def test_close_commits_the_update_then_on_close_gets_stop_listening_and_a_new_handler_opens(ported):
    for text in ("hi", "10", "42"):
        ported.send(text, chat=CHAT)
    # "Correct!" and the try count went out; code after close() did not run, as in telepot
    assert ported.replies() == ["Guess my number", "larger", "Correct!", "2"]
    assert ported.vars(CHAT) == {"ends": ["closed"]}   # on_close's change was saved
    ported.send("hi", chat=CHAT)
    assert ported.replies() == ["Guess my number"]     # a new instance, opened again
    ported.send("42", chat=CHAT)
    assert ported.replies() == ["Correct!", "1"]       # its own try count: a fresh handler


def test_idle_gives_on_close_an_idle_terminate_that_is_a_wait_too_long_named_idle(ported):
    ported.send("hi", chat=CHAT)
    ported.idle(chat=CHAT)
    assert ported.replies() == ["Guess my number", "Game expired. The answer is 42"]
    assert ported.vars(CHAT) == {"ends": ["idle"]}


def test_close_reasons_are_exceptions_that_compare_to_their_old_names():
    idle = IdleTerminate(300)
    assert isinstance(idle, WaitTooLong) and idle.seconds == 300
    for reason, name in ((idle, "idle"), (Evicted(), "evicted"), (Reloaded(), "reload"),
                         (StopListening(), "closed")):
        assert str(reason) == name and reason == name and reason != "other"
        assert {name: True}[reason]  # usable where the plain string was a key
        assert isinstance(reason, Exception)


def test_the_delegates_words_become_reasons_and_on_close_sees_each(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def on_chat_message(self, msg):
                pass

            def on_close(self, reason):
                self.vars["why"] = [type(reason).__name__, str(reason), reason == str(reason)]
    """)
    with TestBot(str(directory)) as bot:
        for word, cls in (("evicted", "Evicted"), ("reload", "Reloaded"), ("idle", "IdleTerminate")):
            bot.send("x")
            bot.end(reason=word)
            assert bot.vars() == {"why": [cls, word, True]}


def test_an_update_that_fails_ends_the_handler_and_on_close_gets_the_exception(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def open(self, initial_msg):
                self.sender.sendMessage("open")

            def on_chat_message(self, msg):
                if msg["text"] == "boom":
                    raise KeyError("boom")
                self.sender.sendMessage("ok")

            def on_close(self, reason):
                self.vars["closed"] = repr(reason)
    """)
    with TestBot(str(directory)) as bot:
        bot.send("a")
        bot.send("boom")
        bot.send("b")
        assert bot.replies() == ["open", "ok", bot.bot.error_text, "open", "ok"]
        assert bot.vars() == {"closed": "KeyError('boom')"}


def test_a_listener_wait_that_times_out_ends_the_handler_with_wait_too_long(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def on_chat_message(self, msg):
                self.sender.sendMessage("waiting")
                self.sender.sendMessage("then " + self.listener.wait(timeout=1)["text"])
                self.listener.wait(timeout=1)

            def on_close(self, reason):
                self.sender.sendMessage(f"closed: {isinstance(reason, WaitTooLong)}")
    """)
    with TestBot(str(directory)) as bot:
        bot.queue("a")
        bot.queue("b")
        bot.run()
        assert bot.replies() == ["waiting", "then b", "closed: True"]


# -- the constructor ---------------------------------------------------------------------------

def test_a_telepot_constructor_gets_the_seed_tuple_bot_initial_message_and_chat_id(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def __init__(self, seed_tuple, **kwargs):
                super().__init__(seed_tuple, timeout=10, **kwargs)
                bot, initial_msg, seed = seed_tuple
                self.seen = [type(bot).__name__, initial_msg["text"], seed, self.id, self.chat_id]

            def on_chat_message(self, msg):
                self.sender.sendMessage(repr(self.seen))
    """)
    with TestBot(str(directory)) as bot:
        bot.send("first", chat=77)
        bot.send("second", chat=77)
        assert bot.replies() == ["['BotSender', 'first', 77, 77, 77]"] * 2


def test_chatdaemons_own_constructor_still_works_and_has_an_id(ported, tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def on_chat_message(self, msg):
                self.sender.sendMessage(self.id)
    """)
    with TestBot(str(directory)) as bot:
        bot.send("x", chat=-5)
        assert bot.pop() == "-5"


def test_chat_handler_refuses_options_it_does_not_know():
    with pytest.raises(TypeError, match="colour"):
        ChatHandler(SeedTuple((None, None, 1)), colour="red")


# -- Bot API calls as telepot made them ----------------------------------------------------------

class RecordingSender:
    api = None

    def __init__(self):
        self.calls = []

    def call(self, method, params, **options):
        self.calls.append((method, params))
        return {"message_id": 9}


def test_bot_methods_take_telepot_12s_positional_order():
    sender = RecordingSender()
    bot = BotSender(sender)
    bot.sendMessage(7, "hi", "HTML", None, True)
    bot.editMessageText((7, 5), "new")
    bot.answerCallbackQuery("q1", "done")
    bot.getChat(chat_id=7)
    assert sender.calls == [
        ("sendMessage", {"chat_id": 7, "text": "hi", "parse_mode": "HTML",
                         "disable_notification": True}),
        ("editMessageText", {"chat_id": 7, "message_id": 5, "text": "new"}),
        ("answerCallbackQuery", {"callback_query_id": "q1", "text": "done"}),
        ("getChat", {"chat_id": 7}),
    ]
    with pytest.raises(TypeError, match="by name"):
        bot.sendDice(7)  # not one of telepot's methods: its parameters go by name


def test_the_chat_sender_sends_numbers_as_digits_and_files_as_uploads():
    sender = RecordingSender()
    chat = ChatSender(sender, 7)
    chat.sendMessage(5)
    chat.sendMessage(2.5, "HTML")
    chat.sendPhoto(io.BufferedReader(io.BytesIO(b"\x89PNG")), caption=3)
    chat.sendDocument(("report.csv", io.BytesIO(b"a,b\n")))
    chat.sendPhoto("AgADfileid")
    chat.sendVoice(PORTED / "bot.yaml")  # a pathlib.Path is read and uploaded
    assert sender.calls[:2] == [("sendMessage", {"chat_id": 7, "text": "5"}),
                                ("sendMessage", {"chat_id": 7, "text": "2.5", "parse_mode": "HTML"})]
    photo = sender.calls[2][1]
    assert photo["photo"].data == b"\x89PNG" and photo["caption"] == "3"
    assert sender.calls[3][1]["document"] == Upload("report.csv", b"a,b\n")
    assert sender.calls[4][1] == {"chat_id": 7, "photo": "AgADfileid"}
    assert sender.calls[5][1]["voice"] == Upload("bot.yaml", (PORTED / "bot.yaml").read_bytes())
    with pytest.raises(TypeError, match="binary"):
        chat.sendPhoto(io.StringIO("not bytes"))
    with pytest.raises(TypeError, match="multiple values"):
        chat.sendMessage("a", text="b")


def test_a_handler_uploads_an_open_file_and_downloads_one(tmp_path, monkeypatch):
    (tmp_path / "snap.jpg").write_bytes(b"JPEG")
    monkeypatch.setenv("PHOTO", str(tmp_path / "snap.jpg"))
    monkeypatch.setenv("SAVE_DIR", str(tmp_path))
    with TestBot(str(PORTED)) as bot:
        bot.send("/photo", chat=CHAT)
        upload = bot.calls[-1]
        assert upload.method == "sendPhoto"
        assert upload.params["photo"] == Upload("snap.jpg", b"JPEG")
        bot.files["F1"] = b"downloaded"
        bot.send(None, chat=CHAT, photo=[{"file_id": "F1", "width": 1, "height": 1}])
        assert (tmp_path / "saved.bin").read_bytes() == b"downloaded"
        assert bot.pop() == "10"


def test_a_download_that_fails_leaves_no_file_behind(tmp_path):
    class Api:
        def download(self, path, dest):
            dest.write(b"half")
            raise OSError("connection reset")

    sender = RecordingSender()
    sender.call = lambda method, params, **options: {"file_path": "photos/1.jpg"}
    sender.api = Api()
    with pytest.raises(OSError):
        BotSender(sender).download_file("F1", tmp_path / "x.jpg")
    assert not (tmp_path / "x.jpg").exists()
    sender.call = lambda method, params, **options: {}
    with pytest.raises(TelegramError, match="no file_path"):
        BotSender(sender).download_file("F1", tmp_path / "x.jpg")


# -- check ---------------------------------------------------------------------------------------

def load_error(directory) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_bot(str(directory))
    return info.value


def test_a_constructor_the_daemon_cannot_call_is_refused_with_its_line(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def __init__(self, seed_tuple, timeout):
                super().__init__(seed_tuple)
    """)
    error = load_error(directory)
    assert error.where == f"{directory / 'mod.py'}:5"
    assert "constructor takes neither" in error.message


def test_a_constructor_that_fails_is_refused_with_the_failing_line(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def __init__(self, seed_tuple, **kwargs):
                super().__init__(seed_tuple, **kwargs)
                self.answer = int(kwargs["answer"])
    """)
    error = load_error(directory)
    assert error.where == f"{directory / 'mod.py'}:7"
    assert "making a handler failed: KeyError" in error.message


@pytest.mark.parametrize("method, expected", [
    ("def open(self):", "Bot.open cannot be called as open(self, initial_msg)"),
    ("def open(self, a, b, c):", "Bot.open cannot be called"),
    ("def on_close(self):", "Bot.on_close cannot be called as on_close(self, reason)"),
])
def test_open_and_on_close_with_impossible_signatures_are_refused(tmp_path, method, expected):
    directory = python_bot(tmp_path, f"""
        class Bot(ChatHandler):
            {method}
                pass
    """)
    error = load_error(directory)
    assert expected in error.message and error.where == f"{directory / 'mod.py'}:5"


def test_chatdaemon_check_exits_78_naming_the_constructor(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def __init__(self):
                pass
    """)
    result = subprocess.run([sys.executable, "-m", "chatdaemon", "check", "--handlers", str(directory)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"{directory / 'mod.py'}:5" in result.stderr + result.stdout


# -- more of telepot's ChatHandler ----------------------------------------------------------------

def test_on__idle_runs_before_on_close_and_its_close_makes_the_reason_stop_listening(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def on_chat_message(self, msg):
                self.sender.sendMessage("guess")

            def on__idle(self, event):
                self.sender.sendMessage(f"expired after {event['_idle']['seconds']}")
                if self.vars.get("polite"):
                    self.close()

            def on_close(self, reason):
                self.sender.sendMessage(f"{type(reason).__name__} {reason}")
                self.vars["polite"] = True
    """)
    with TestBot(str(directory)) as bot:
        bot.send("a")
        bot.idle(seconds=30)
        bot.send("b")
        bot.idle()
        assert bot.replies() == ["guess", "expired after 30", "IdleTerminate idle",
                                 "guess", "expired after None", "StopListening closed"]


def test_a_class_that_says_so_outlives_its_failures(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            ends_on_error = False

            def on_chat_message(self, msg):
                self.seen = getattr(self, "seen", 0) + 1
                if msg["text"] == "boom":
                    raise RuntimeError("boom")
                self.sender.sendMessage(self.seen)

            def on_close(self, reason):
                self.sender.sendMessage("closed")
    """)
    with TestBot(str(directory)) as bot:
        for text in ("a", "boom", "b"):
            bot.send(text)
        assert bot.replies() == ["1", bot.bot.error_text, "3"]  # the same instance throughout


def test_the_administrator_fills_in_the_chat_id_in_telepots_order():
    sender = RecordingSender()
    handler = ChatHandler(None, Conversation(-40, None, {}), sender)
    handler.administrator.kickChatMember(9, 1700000000)
    handler.administrator.getChatAdministrators()
    assert sender.calls == [("kickChatMember", {"chat_id": -40, "user_id": 9, "until_date": 1700000000}),
                            ("getChatAdministrators", {"chat_id": -40})]
    assert handler.id == handler.chat_id == -40


def test_close_after_unsaveable_vars_fails_the_update_like_any_other_mistake(tmp_path):
    directory = python_bot(tmp_path, """
        class Bot(ChatHandler):
            def on_chat_message(self, msg):
                self.vars["n"] = self.vars.get("n", 0) + 1
                if msg["text"] == "set":
                    self.vars["bad"] = {1, 2}
                self.sender.sendMessage(self.vars["n"])
                self.close()
    """)
    with TestBot(str(directory)) as bot:
        for text in ("a", "set", "b"):
            bot.send(text)
        assert bot.replies() == ["1", "2", bot.bot.error_text, "2"]
        assert bot.vars() == {"n": 2}


def test_check_says_how_a_python_handler_is_made_and_which_life_cycle_methods_it_has():
    assert load_bot(str(PORTED)).describe()[2] == \
        "    made with telepot's (seed_tuple); defines open, on_close"
    counter = load_bot(str(ROOT / "handlers" / "counter")).describe()
    assert counter[2] == "    made with (context, conversation, sender); defines no open or on_close"
