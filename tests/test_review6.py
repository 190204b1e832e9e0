"""Hostile handlers, telepot programs and answers, in-process.

Each test shows one behaviour that a bot author, a user or Telegram could trip over: a long
HTML answer whose single tag cannot fit in a message, a handler that raises SystemExit or
KeyboardInterrupt, and the like.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_media import RecordingAPI, make_sender
from test_telepot import Recorder, delegation_for, text

from chatdaemon.ratelimit import Limits, RateLimiter
from chatdaemon.sender import Sender
from chatdaemon.telepot_compat.runtime import Runtime
from chatdaemon.testing import TestBot
from chatdaemon.textsplit import split_text, utf16_len

HUGE_URL = "https://example.com/?q=" + "x" * 5000
ERROR_TEXT = "That did not work."


# -- a long HTML answer with markup no part can hold ----------------------------------------------

def test_a_link_longer_than_a_message_goes_out_as_its_text():
    text = "Intro. " * 600 + f'<a href="{HUGE_URL}">the report</a>, then <b>bold</b> words.'
    parts = split_text(text, "HTML")
    assert all(utf16_len(part) <= 4096 for part in parts)
    joined = "".join(parts)
    assert HUGE_URL not in joined and "</a>" not in joined
    assert "the report" in joined
    assert "<b>bold</b>" in joined   # the markup that fits is kept


def test_an_overlong_tag_inside_others_leaves_them_balanced():
    text = ("<b>bold <i>" + f'<a href="{HUGE_URL}">link</a>' + " still italic</i></b> "
            + "word " * 900)
    parts = split_text(text, "HTML")
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert parts[0].startswith("<b>bold <i>link still italic</i></b> word")


def test_two_overlong_links_of_the_same_name_each_drop_their_own_closing_tag():
    text = (f'<a href="{HUGE_URL}">one</a> and <a href="https://example.com/">two</a> and '
            f'<a href="{HUGE_URL}">three</a> ' + "word " * 900)
    joined = "".join(split_text(text, "HTML"))
    assert joined.startswith('one and <a href="https://example.com/">two</a> and three word')


def test_nesting_too_deep_keeps_the_outer_tags_that_fit():
    text = "<b>" + '<i class="x">' * 400 + "y" * 6000 + "</i>" * 400 + "</b>"
    parts = split_text(text, "HTML")
    assert len(parts) > 1 and all(utf16_len(part) <= 4096 for part in parts)
    assert all(part.startswith("<b>") and part.endswith("</b>") for part in parts)
    assert sum(part.count("y") for part in parts) == 6000


def test_the_sender_sends_a_long_answer_with_an_overlong_link():
    sent: list[dict] = []

    class API:
        def call(self, method, params=None, timeout=None):
            sent.append(dict(params))
            return {"message_id": len(sent)}

    clock = lambda: 0.0  # noqa: E731 - the limiter is off; time never matters
    sender = Sender(API(), RateLimiter(Limits(enabled=False), clock), threading.Event())
    text = "Intro. " * 600 + f'<a href="{HUGE_URL}">the report</a>'
    sender.call("sendMessage", {"chat_id": 1, "text": text, "parse_mode": "HTML"})
    assert len(sent) == 2
    assert all(call["parse_mode"] == "HTML" and utf16_len(call["text"]) <= 4096 for call in sent)
    assert sent[-1]["text"].endswith("the report")


# -- handlers that raise what is not an Exception -------------------------------------------------

EXITING_HANDLER = '''
import sys
from chatdaemon.chathandler import ChatHandler


class Custom(BaseException):
    pass


class Exiting(ChatHandler):
    refuse_once = False   # the next handler made refuses to start

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = 0
        if Exiting.refuse_once:
            Exiting.refuse_once = False
            raise SystemExit("not today")

    def on_chat_message(self, msg):
        text = msg["text"]
        if text == "exit":
            sys.exit(2)
        if text == "interrupt":
            raise KeyboardInterrupt
        if text == "generator":
            raise GeneratorExit
        if text == "custom":
            raise Custom("mine")
        if text == "refuse":
            Exiting.refuse_once = True
            self.close()
        self.seen += 1
        self.sender.sendMessage(f"echo {text} ({self.seen} seen)")

    def on_close(self, reason):
        if reason == "idle":
            raise SystemExit(3)
'''


@pytest.fixture
def exiting_bot(tmp_path):
    (tmp_path / "bot.yaml").write_text(f"python: exiting:Exiting\nerror_text: {ERROR_TEXT}\n")
    (tmp_path / "exiting.py").write_text(EXITING_HANDLER)
    return TestBot(str(tmp_path))


@pytest.mark.parametrize("word", ["exit", "interrupt", "generator", "custom"])
def test_a_handler_raising_a_base_exception_answers_the_error_text_and_goes_on(exiting_bot, word):
    exiting_bot.send(word)
    assert exiting_bot.pop() == ERROR_TEXT
    exiting_bot.send("next")
    assert exiting_bot.pop() == "echo next (1 seen)"   # the failed handler ended, as on any error


def test_a_constructor_raising_system_exit_fails_the_update_only(exiting_bot):
    exiting_bot.send("refuse")   # closes; the next handler's constructor raises SystemExit
    exiting_bot.send("one")
    assert exiting_bot.pop() == ERROR_TEXT
    exiting_bot.send("two")
    assert exiting_bot.pop().startswith("echo two")


def test_on_close_raising_system_exit_is_logged_not_fatal(exiting_bot, caplog):
    exiting_bot.send("hello")
    exiting_bot.pop()
    exiting_bot.idle()
    assert "SystemExit(3)" in caplog.text
    exiting_bot.send("again")
    assert exiting_bot.pop().startswith("echo again")


# -- telepot programs -----------------------------------------------------------------------------

@pytest.fixture
def runtime():
    return Runtime("http://127.0.0.1:9")  # never called in these tests


def test_a_telepot_handler_failing_mid_conversation_is_replaced_by_a_new_one(runtime):
    Recorder.events = []
    chat = delegation_for(runtime, Recorder)
    chat.deliver(text("a"))
    with pytest.raises(RuntimeError, match="boom"):
        chat.deliver(text("boom"))
    chat.deliver(text("b"))
    assert Recorder.events == [
        ("open", 7, "a"), ("message", "a", 1), ("message", "boom", 2), ("close", "RuntimeError"),
        ("open", 7, "b"), ("message", "b", 1)]   # not the closed handler's third message


# -- handlers that change the update they were given ----------------------------------------------

MUTATING_HANDLER = '''
from chatdaemon.chathandler import ChatHandler


class Mutating(ChatHandler):
    def on_chat_message(self, msg):
        msg.clear()
        raise ValueError("failed after clearing its message")

    def on_callback_query(self, query):
        query["id"] = "not-the-query"
        raise ValueError("failed after changing its query")
'''


def test_a_handler_changing_its_update_still_gets_the_press_answered(tmp_path):
    (tmp_path / "bot.yaml").write_text(f"python: mutating:Mutating\nerror_text: {ERROR_TEXT}\n")
    (tmp_path / "mutating.py").write_text(MUTATING_HANDLER)
    bot = TestBot(str(tmp_path))
    bot.send("hello")
    assert bot.pop() == ERROR_TEXT
    bot.press("choice")
    assert bot.pop() == ERROR_TEXT
    answers = [call.params for call in bot.calls if call.method == "answerCallbackQuery"]
    assert answers == [{"callback_query_id": "query-2"}]   # the press as Telegram sent it


# -- long answers formatted with entities ---------------------------------------------------------

def recording_sender() -> tuple[Sender, RecordingAPI]:
    api = RecordingAPI()
    return make_sender(api), api


def entity_text(text: str, entity: dict) -> str:
    """The text an entity covers, counted in UTF-16 units as Telegram counts it."""
    units = text.encode("utf-16-le")
    start, end = 2 * entity["offset"], 2 * (entity["offset"] + entity["length"])
    return units[start:end].decode("utf-16-le")


def test_a_long_text_with_entities_gives_each_part_its_own_entities():
    first = "😀 " + "a" * 2990 + " BOLD1"                  # 😀 counts 2 UTF-16 units
    second = "BOLD2 " + "b" * 3000 + " end"
    text = first + "\n\n" + second
    bold_start = utf16_len(first) - 5
    entities = [{"type": "bold", "offset": bold_start, "length": 5 + 2 + 5},   # spans the cut
                {"type": "italic", "offset": utf16_len(text) - 3, "length": 3}]
    sender, api = recording_sender()
    sender.call("sendMessage", {"chat_id": 1, "text": text, "entities": entities})
    (_, one), (_, two) = api.calls
    assert one["text"] == first and two["text"] == second
    assert [entity_text(one["text"], e) for e in one["entities"]] == ["BOLD1"]
    assert [entity_text(two["text"], e) for e in two["entities"]] == ["BOLD2", "end"]
    assert entities[0]["offset"] == bold_start   # the caller's list is left as it was


def test_a_long_caption_with_entities_keeps_them_on_the_text_sent_after():
    caption = "Look: " + "c" * 1100
    sender, api = recording_sender()
    sender.call("sendPhoto", {"chat_id": 1, "photo": "file-id", "caption": caption,
                              "caption_entities": [{"type": "bold", "offset": 0, "length": 4}]})
    (photo_method, photo), (text_method, text) = api.calls
    assert photo_method == "sendPhoto" and "caption_entities" not in photo
    assert text_method == "sendMessage" and text["text"] == caption
    assert text["entities"] == [{"type": "bold", "offset": 0, "length": 4}]


def test_tags_too_heavy_to_reopen_in_every_part_are_dropped_not_repeated():
    block = "".join(f'<span class="{c * 1300}">' for c in "wxy") + "word " * 900 + "</span>" * 3
    text = block * 10   # each part would reopen 3,900 units of tags around ~150 of text
    parts = split_text(text, "HTML")
    assert len(parts) <= 50   # 40 here, the words alone take 11; with every tag reopened, 350
    assert sum(part.count("word") for part in parts) == 9000


def test_deep_nesting_splits_in_linear_time():
    text = "<b>" * 20000 + "x" * 5000 + "</b>" * 20000
    started = time.perf_counter()
    parts = split_text(text, "HTML")   # dropped tags are paired in one pass, not one scan each
    assert time.perf_counter() - started < 3.0   # 0.05 s here; a scan per dropped tag took 14 s
    assert all(utf16_len(part) <= 4096 for part in parts)
    assert sum(part.count("x") for part in parts) == 5000


# -- long Markdown answers with links -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["MarkdownV2", "Markdown"])
def test_a_markdown_link_longer_than_a_message_goes_out_as_its_text(mode):
    text = "word " * 700 + f"[the report]({HUGE_URL}) tail " + "more " * 200
    parts = split_text(text, mode)
    assert all(utf16_len(part) <= 4096 for part in parts)
    joined = " ".join(parts)
    assert "the report tail" in joined and HUGE_URL not in joined


def test_a_markdown_cut_never_falls_inside_a_link():
    text = "a" * 4088 + " [x y z](https://example.com/page) tail " + "b " * 100
    parts = split_text(text, "MarkdownV2")
    assert parts[0] == "a" * 4088
    assert parts[1].startswith("[x y z](https://example.com/page) tail")
