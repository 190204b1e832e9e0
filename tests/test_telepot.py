"""The telepot API on chatdaemon, in-process: glance, arguments, keyboards, seeders, handlers'
life cycle, the import of `telepot`, and Bot calls against the Bot API double."""

from __future__ import annotations

import importlib
import io
import sys
import urllib.request

import pytest
from conftest import TOKEN, TOKEN_SECRET

from chatdaemon import errors
from chatdaemon.telepot_compat import build_modules, install
from chatdaemon.telepot_compat import delegate as tdelegate
from chatdaemon.telepot_compat import exception as texception
from chatdaemon.telepot_compat import helper as thelper
from chatdaemon.telepot_compat.chat import Delegation, DelegationRoute, FunctionRoute, route_for
from chatdaemon.telepot_compat.namedtuple import (
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    to_api,
)
from chatdaemon.telepot_compat.runtime import Runtime
from chatdaemon.telepot_compat.telepot import bind_arguments, flavor, glance, glance2, message_identifier
from chatdaemon.telepot_compat.transport import Upload

CHAT_MSG = {"message_id": 5, "from": {"id": 7, "first_name": "Ann"}, "date": 100,
            "chat": {"id": 7, "type": "private"}, "text": "hi"}
GROUP_MSG = {"message_id": 6, "from": {"id": 9, "first_name": "Bo"}, "date": 101,
             "chat": {"id": -40, "type": "group"}, "text": "yo"}
QUERY = {"id": "q1", "from": {"id": 7}, "chat_instance": "ci", "data": "red",
         "message": {"message_id": 3, "chat": {"id": 7, "type": "private"}, "date": 99}}


# -- looking at messages ---------------------------------------------------------------------

def test_flavor_and_glance_by_flavor():
    assert flavor(CHAT_MSG) == "chat"
    assert flavor(QUERY) == "callback_query"
    assert flavor({"id": "i", "from": {"id": 1}, "query": "x", "offset": ""}) == "inline_query"
    assert flavor({"_idle": {"seconds": 3}}) == "_idle"
    with pytest.raises(texception.BadFlavor):
        flavor({"a": 1, "b": 2})
    assert glance(CHAT_MSG) == ("text", "private", 7)
    assert glance(CHAT_MSG, long=True) == ("text", "private", 7, 100, 5)
    assert glance(QUERY, flavor="callback_query") == ("q1", 7, "red")
    assert glance2(GROUP_MSG) == ("text", "group", -40)  # telepot 3's name, 'normal' flavor
    assert message_identifier(CHAT_MSG) == (7, 5)


# -- arguments and keyboards -----------------------------------------------------------------

def test_positional_signatures_map_to_bot_api_parameters():
    assert bind_arguments("sendMessage", (7, "hi", "HTML"), {}) == {
        "chat_id": 7, "text": "hi", "parse_mode": "HTML"}
    assert bind_arguments("sendMessage", (7, 42), {"reply_to_message_id": None}) == {
        "chat_id": 7, "text": "42"}  # an int is sent as its digits; None is left out
    assert bind_arguments("answerCallbackQuery", ("q1", "done"), {}) == {
        "callback_query_id": "q1", "text": "done"}
    assert bind_arguments("editMessageText", ((7, 5), "new"), {}) == {
        "chat_id": 7, "message_id": 5, "text": "new"}
    assert bind_arguments("editMessageText", ("inline-1", "new"), {}) == {
        "inline_message_id": "inline-1", "text": "new"}
    assert bind_arguments("sendPhoto", (7, "AgADfileid"), {"caption": "c"}) == {
        "chat_id": 7, "photo": "AgADfileid", "caption": "c"}  # a file id or URL is a string


def test_wrong_arguments_are_clear_type_errors():
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3"):
        bind_arguments("sendChatAction", (7, "typing", "extra"), {})
    with pytest.raises(TypeError, match="multiple values for argument 'text'"):
        bind_arguments("sendMessage", (7, "a"), {"text": "b"})
    with pytest.raises(TypeError, match="binary mode"):
        bind_arguments("sendPhoto", (7, io.StringIO("not bytes")), {})


def test_open_files_become_uploads_read_once():
    upload = bind_arguments("sendDocument", (7, ("report.csv", io.BytesIO(b"a,b\n"))), {})["document"]
    assert upload == Upload("report.csv", b"a,b\n")
    photo = io.BytesIO(b"\x89PNG")
    photo.name = "/tmp/x/cat.png"
    assert bind_arguments("sendPhoto", (7, photo), {})["photo"] == Upload("cat.png", b"\x89PNG")


def test_namedtuple_keyboards_serialise_as_the_bot_api_expects():
    reply = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Yes"), "No"]], resize_keyboard=True)
    assert to_api(reply) == {"keyboard": [[{"text": "Yes"}, "No"]], "resize_keyboard": True}
    inline = InlineKeyboardMarkup(inline_keyboard=[[
        InlineKeyboardButton(text="Go", url="https://example.org"),
        InlineKeyboardButton(text="Pick", callback_data="p")]])
    assert to_api(inline) == {"inline_keyboard": [[{"text": "Go", "url": "https://example.org"},
                                                   {"text": "Pick", "callback_data": "p"}]]}
    assert to_api(ReplyKeyboardRemove()) == {"remove_keyboard": True}
    assert to_api(ForceReply(selective=True)) == {"force_reply": True, "selective": True}
    assert bind_arguments("sendMessage", (7, "?"), {"reply_markup": inline})["reply_markup"] == \
        to_api(inline)


# -- seeders and patterns ----------------------------------------------------------------------

def test_seeders_pick_seeds_like_telepot():
    assert tdelegate.per_chat_id()(CHAT_MSG) == 7
    assert tdelegate.per_chat_id(types=["group"])(CHAT_MSG) is None
    assert tdelegate.per_chat_id(types=["group"])(GROUP_MSG) == -40
    assert tdelegate.per_chat_id()(QUERY) is None  # a button press has no chat of its own
    assert tdelegate.per_chat_id_in([7])(CHAT_MSG) == 7
    assert tdelegate.per_chat_id_in([8])(CHAT_MSG) is None
    assert tdelegate.per_chat_id_except([7])(CHAT_MSG) is None
    assert tdelegate.per_chat_id_except([7])(GROUP_MSG) == -40
    assert tdelegate.per_from_id()(GROUP_MSG) == 9
    assert tdelegate.per_from_id()(QUERY) is None
    assert tdelegate.per_callback_query_chat_id()(QUERY) == 7


def test_pave_event_space_and_include_callback_query_compose_a_pattern():
    class Handler:
        pass

    seeder, factory = tdelegate.include_callback_query_chat_id(tdelegate.pave_event_space())(
        tdelegate.per_chat_id(types=["private"]), tdelegate.create_open, Handler, timeout=10)
    assert seeder(CHAT_MSG) == 7 and seeder(QUERY) == 7 and seeder(GROUP_MSG) is None
    assert factory.cls is Handler and factory.timeout == 10
    assert factory.kwargs["include_callback_query"] is True and "event_space" in factory.kwargs


# -- handlers inside a chat ------------------------------------------------------------------------

class FakeChat:
    """Stands in for the chat's native handler: vars, and the next message for listener.wait()."""

    chat_id = 7

    def __init__(self, queued=()):
        self.vars: dict = {}
        self.queued = list(queued)

    def next_message(self, listener, timeout):
        while self.queued:
            msg = self.queued.pop(0)
            if listener.captures(msg):
                return msg
        raise texception.WaitTooLong(timeout or 0)


@pytest.fixture
def runtime():
    return Runtime("http://127.0.0.1:9")  # never called in these tests


def delegation_for(runtime, handler_class, chat=None, **kwargs):
    modules = build_modules(runtime)
    bot = modules["telepot"].DelegatorBot(TOKEN, [tdelegate.pave_event_space()(
        tdelegate.per_chat_id(), tdelegate.create_open, handler_class, timeout=3, **kwargs)])
    route = route_for(bot, None)
    assert isinstance(route, DelegationRoute) and route.idle_timeout == 3
    return Delegation(route, chat or FakeChat())


class Recorder(thelper.ChatHandler):
    events: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = 0  # a plain attribute: lives while the handler lives

    def open(self, initial_msg, seed):
        self.events.append(("open", seed, initial_msg["text"]))
        return initial_msg["text"] == "/start"  # /start only opens

    def on_chat_message(self, msg):
        self.seen += 1
        self.events.append(("message", msg["text"], self.seen))
        if msg["text"] == "bye":
            self.close()
        if msg["text"] == "boom":
            raise RuntimeError("boom")

    def on_close(self, ex):
        self.events.append(("close", type(ex).__name__))


def text(message: str) -> dict:
    return {**CHAT_MSG, "text": message}


def test_open_messages_close_and_reopen(runtime):
    Recorder.events = []
    chat = delegation_for(runtime, Recorder)
    for message in ("/start", "a", "b", "bye", "again"):
        chat.deliver(text(message))
    assert Recorder.events == [
        ("open", 7, "/start"), ("message", "a", 1), ("message", "b", 2), ("message", "bye", 3),
        ("close", "StopListening"),
        ("open", 7, "again"), ("message", "again", 1)]  # a new handler: attributes start afresh


def test_a_failing_handler_is_closed_and_the_error_reaches_the_delegate(runtime):
    Recorder.events = []
    chat = delegation_for(runtime, Recorder)
    with pytest.raises(RuntimeError, match="boom"):
        chat.deliver(text("boom"))
    assert Recorder.events[-1] == ("close", "RuntimeError")
    assert chat.jobs == {}


def test_idle_ends_with_on_close_wait_too_long(runtime):
    Recorder.events = []
    chat = delegation_for(runtime, Recorder)
    chat.deliver(text("a"))
    chat.close(3.0)
    assert Recorder.events[-1] == ("close", "IdleTerminate")
    assert issubclass(texception.IdleTerminate, texception.WaitTooLong)
    assert issubclass(texception.WaitTooLong, errors.WaitTooLong)  # the delegate's own, too


def test_on_idle_may_speak_before_closing(runtime):
    class Expiring(Recorder):
        def on__idle(self, event):
            self.events.append(("idle", event["_idle"]["seconds"]))
            self.close()

    Recorder.events = []
    chat = delegation_for(runtime, Expiring)
    chat.deliver(text("a"))
    chat.close(3.0)
    assert Recorder.events[-2:] == [("idle", 3.0), ("close", "StopListening")]


def test_listener_waits_for_captured_messages_and_vars_are_the_chats(runtime):
    class Asker(thelper.ChatHandler):
        answers: list = []

        def on_chat_message(self, msg):
            self.vars["asked"] = True
            reply = self.listener.wait()
            self.answers.append(reply["text"])

    other_chat = {**CHAT_MSG, "chat": {"id": 8, "type": "private"}, "text": "not mine"}
    chat = FakeChat(queued=[other_chat, text("42")])
    delegation = delegation_for(runtime, Asker, chat=chat)
    delegation.deliver(text("question"))
    assert Asker.answers == ["42"] and chat.vars == {"asked": True}


def test_function_route_takes_a_flavor_table(runtime):
    got = []
    route = FunctionRoute({"chat": lambda m: got.append(("chat", m["text"])),
                           "callback_query": lambda m: got.append(("button", m["data"]))})
    route.deliver(CHAT_MSG)
    route.deliver(QUERY)
    route.deliver({"id": "i", "from": {"id": 1}, "query": "x"})  # no entry: ignored
    assert got == [("chat", "hi"), ("button", "red")]


# -- the import of telepot -------------------------------------------------------------------------

def test_install_makes_telepot_importable_and_remove_undoes_it(runtime):
    assert "telepot" not in sys.modules
    installed = install(runtime)
    try:
        telepot = importlib.import_module("telepot")
        helper = importlib.import_module("telepot.helper")
        assert telepot.helper is helper and telepot.Bot.runtime is runtime
        assert importlib.import_module("telepot.namedtuple").KeyboardButton(text="x").text == "x"
        assert issubclass(telepot.DelegatorBot, telepot.Bot)
        with pytest.raises(ModuleNotFoundError, match="not the asyncio API telepot.aio"):
            importlib.import_module("telepot.aio")
    finally:
        installed.remove()
    assert "telepot" not in sys.modules and "telepot.helper" not in sys.modules


# -- Bot calls against the Bot API double (before the daemon runs: straight to the API) -----------

@pytest.fixture
def bot(telegram):
    runtime = Runtime(telegram.url)
    yield build_modules(runtime)["telepot"].Bot(TOKEN)
    runtime.close()


def test_bot_sends_with_positional_arguments(bot, telegram):
    assert bot.getMe()["username"] == "test_bot"
    sent = bot.sendMessage(7, 42, reply_markup=ReplyKeyboardRemove())
    assert sent["text"] == "42"
    assert telegram.calls_to("sendMessage")[0]["params"] == {
        "chat_id": 7, "text": "42", "reply_markup": {"remove_keyboard": True}}
    assert TOKEN_SECRET not in repr(bot)


def test_send_photo_uploads_an_open_file_as_multipart(bot, telegram, tmp_path):
    picture = tmp_path / "dot.png"
    picture.write_bytes(b"\x89PNG-not-really")
    with open(picture, "rb") as handle:
        bot.sendPhoto(7, handle, caption="dot", reply_markup=InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="ok", callback_data="ok")]]))
    params = telegram.calls_to("sendPhoto")[0]["params"]
    assert params["photo"] == {"filename": "dot.png", "size": len(b"\x89PNG-not-really")}
    assert params["caption"] == "dot" and params["chat_id"] == "7"
    assert params["reply_markup"] == {"inline_keyboard": [[{"text": "ok", "callback_data": "ok"}]]}


def test_download_file_to_a_path_or_an_open_file(bot, telegram, tmp_path):
    telegram.add_file("F9", b"file content", "documents/f9.txt")
    bot.download_file("F9", str(tmp_path / "f9.txt"))
    assert (tmp_path / "f9.txt").read_bytes() == b"file content"
    buffer = io.BytesIO()
    bot.download_file("F9", buffer)
    assert buffer.getvalue() == b"file content"


def test_telegram_refusals_are_telepot_errors_with_code_and_description(bot, telegram):
    with pytest.raises(texception.TelegramError) as caught:
        bot.sendMessage(7, "")
    assert caught.value.error_code == 400 and "text is empty" in caught.value.description
    assert caught.value.json["error_code"] == 400
    assert isinstance(caught.value, errors.TelegramError)  # the delegate knows it too
    telegram.set_next_response("sendMessage", 400, {
        "ok": False, "error_code": 400, "description": "Bad Request: group chat was upgraded",
        "parameters": {"migrate_to_chat_id": -1007}})
    runtime = Runtime(telegram.url)  # no sender: the migration reaches the program as telepot's
    direct = build_modules(runtime)["telepot"].Bot(TOKEN)
    try:
        with pytest.raises(texception.MigratedToSupergroupChatError):
            direct.sendMessage(-7, "hi")
    finally:
        runtime.close()


def test_polling_and_webhooks_stay_with_the_daemon(bot):
    for method in ("getUpdates", "setWebhook", "deleteWebhook"):
        with pytest.raises(texception.Unsupported, match="poller owns"):
            getattr(bot, method)()
    with pytest.raises(AttributeError):
        bot.handle  # noqa: B018 - a plain Bot has no handle(); message_loop() needs one


# -- the Bot API double's files ------------------------------------------------------------------

def test_fake_serves_get_file_and_downloads(telegram):
    path = telegram.add_file("F1", b"\x00\x01", "photos/a.png")
    base = f"{telegram.url}/bot{TOKEN}"
    request = urllib.request.Request(f"{base}/getFile?file_id=F1", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert b'"file_path": "photos/a.png"' in answer.read()
    with urllib.request.urlopen(f"{telegram.url}/file/bot{TOKEN}/{path}", timeout=10) as answer:
        assert answer.read() == b"\x00\x01"
    for wrong in (f"/file/bot{TOKEN}/photos/none.png", "/file/bot123:other/photos/a.png"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(telegram.url + wrong, timeout=10)
        assert caught.value.code in (401, 404)
        caught.value.close()
    assert telegram.downloads == ["photos/a.png", "photos/none.png"]  # another token: refused


def test_methods_without_a_known_signature_take_named_parameters_only():
    assert bind_arguments("sendDice", (), {"chat_id": 7, "emoji": "🎲"}) == {"chat_id": 7, "emoji": "🎲"}
    with pytest.raises(TypeError, match="pass its parameters by name"):
        bind_arguments("sendDice", (7,), {})


def test_unhashable_seeds_make_a_handler_per_message(runtime):
    calls = []
    modules = build_modules(runtime)
    bot = modules["telepot"].DelegatorBot(TOKEN, [
        (tdelegate.per_message(), tdelegate.call(lambda seed_tuple: calls.append(seed_tuple[2]))),
        (tdelegate.per_application(), tdelegate.call(lambda seed_tuple: calls.append(seed_tuple[2]))),
    ])
    delegation = Delegation(route_for(bot, None), FakeChat())
    delegation.deliver(text("a"))
    delegation.deliver(text("b"))
    assert calls == [[text("a")], 1, [text("b")], 1]
    assert modules["telepot"].is_event({"_idle": {}}) and not modules["telepot"].is_event(CHAT_MSG)


def test_one_pattern_failing_does_not_starve_the_others(runtime):
    got = []

    def broken_seeder(msg):
        raise KeyError("chat")

    def failing(seed_tuple):
        raise RuntimeError("first pattern failed")

    modules = build_modules(runtime)
    bot = modules["telepot"].DelegatorBot(TOKEN, [
        (broken_seeder, tdelegate.call(lambda seed_tuple: got.append("never"))),
        (tdelegate.per_chat_id(), tdelegate.call(failing)),
        (tdelegate.per_chat_id(), tdelegate.call(lambda seed_tuple: got.append(seed_tuple[1]["text"]))),
    ])
    delegation = Delegation(route_for(bot, None), FakeChat())
    with pytest.raises(RuntimeError, match="first pattern failed"):
        delegation.deliver(text("a"))
    assert got == ["a"]


def test_the_programs_timeout_and_allowed_updates_become_the_daemons(runtime):
    from chatdaemon.config import Config
    from chatdaemon.telepot_compat.runner import program_config

    modules = build_modules(runtime)
    bot = modules["telepot"].DelegatorBot(TOKEN, [
        tdelegate.pave_event_space()(tdelegate.per_chat_id(), tdelegate.create_open, Recorder,
                                     timeout=12),
        tdelegate.pave_event_space()(tdelegate.per_from_id(), tdelegate.create_open, Recorder,
                                     timeout=4)])
    runtime.start_loop(bot, None, ["message", "callback_query"], block=False)
    config = program_config(Config(), runtime)
    assert config.idle_timeout == 4.0  # the shortest handler timeout
    assert config.allowed_updates == ("message", "callback_query")
    with pytest.raises(texception.Unsupported, match="already running"):
        runtime.start_loop(bot, None, None, block=False)


def test_a_factory_returning_a_thread_runs_its_work_in_the_chats_delegate(runtime):
    import threading

    ran_in = []
    modules = build_modules(runtime)
    bot = modules["telepot"].DelegatorBot(TOKEN, [(
        tdelegate.per_chat_id(),
        lambda seed_tuple: threading.Thread(target=lambda: ran_in.append(threading.current_thread())))])
    Delegation(route_for(bot, None), FakeChat()).deliver(text("a"))
    assert ran_in == [threading.current_thread()]
