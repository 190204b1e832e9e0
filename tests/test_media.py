"""Photos and documents in memory: where a response's file may come from, its size bound,
the multipart body as the Bot API double reads it, and what happens to a long caption."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chatdaemon.bots import load_bot
from chatdaemon.errors import ConfigErrors, RetryAfter
from chatdaemon.media import MAX_BYTES, MediaError, media_value, read_file, source_of
from chatdaemon.ratelimit import Limits, RateLimiter
from chatdaemon.sender import MAX_CAPTION, Sender, caption_units
from chatdaemon.telegram import WRITE_PIECE, TelegramClient, _pieces
from chatdaemon.testing import TestBot
from chatdaemon.transfer import FileAPI, Upload

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
CHAT = 42


@pytest.fixture
def bot_dir(tmp_path: Path) -> Path:
    """A bot directory holding pics/chart.png, with a secret file beside it."""
    directory = tmp_path / "bot"
    (directory / "pics").mkdir(parents=True)
    (directory / "pics" / "chart.png").write_bytes(PNG)
    (tmp_path / "secret.txt").write_text("the operator's password\n")
    return directory


def write_bot(directory: Path, yaml: str) -> Path:
    (directory / "bot.yaml").write_text(yaml)
    return directory


# -- what a value names ------------------------------------------------------------------------

@pytest.mark.parametrize("value, source", [
    ("https://example.com/cat.png", "url"),
    ("http://192.168.1.5/snap.jpg", "url"),
    ("AgACAgIAAxkBAAIBZ2Y-file_id_x", "file_id"),
    ("chart.png", "path"),
    ("pics/chart.png", "path"),
    ("../secret.txt", "path"),
    ("/etc/passwd", "path"),
    ("ftp://example.com/x", "path"),   # no other scheme: it can only be a (missing) file
    ("README", "file_id"),             # a file without a dot or a slash: write ./README
    ("./README", "path"),
])
def test_a_value_is_a_url_a_file_id_or_a_path(value, source):
    assert source_of(value) == source


def test_a_path_inside_the_directory_is_read_once_as_an_upload(bot_dir):
    upload = read_file(str(bot_dir), "photo", "pics/chart.png", "bot.yaml:3")
    assert upload == Upload("chart.png", PNG)
    assert media_value(str(bot_dir), "photo", " https://example.com/x.png ", "w") \
        == "https://example.com/x.png"
    assert media_value(str(bot_dir), "document", "BQACAgIAAx", "w") == "BQACAgIAAx"


@pytest.mark.parametrize("value", ["../secret.txt", "pics/../../secret.txt", "/etc/passwd",
                                   "./escape", "pics/escape.png", "a\0b"])
def test_no_path_leads_out_of_the_directory(bot_dir, value):
    (bot_dir / "escape").symlink_to(bot_dir.parent / "secret.txt")
    (bot_dir / "pics" / "escape.png").symlink_to("../../secret.txt")
    with pytest.raises(MediaError) as caught:
        media_value(str(bot_dir), "document", value, "bot.yaml:7")
    assert caught.value.reason in ("the path leads outside the bot's directory", "not a file name")
    assert caught.value.kind == "document" and caught.value.where == "bot.yaml:7"


@pytest.mark.parametrize("value", ["bot.yaml", "other.YML", "handler.py", "lib/util.py",
                                   "__pycache__/handler.cpython-311.pyc", ".env", "data/.keys",
                                   "innocent.txt"])
def test_the_bots_own_files_are_never_sent(bot_dir, value):
    for name in ("bot.yaml", "other.YML", "handler.py", "lib/util.py",
                 "__pycache__/handler.cpython-311.pyc", ".env", "data/.keys"):
        (bot_dir / name).parent.mkdir(exist_ok=True)
        (bot_dir / name).write_text("key: hook-secret\n")
    (bot_dir / "innocent.txt").symlink_to("bot.yaml")   # judged by where it leads
    with pytest.raises(MediaError) as caught:
        media_value(str(bot_dir), "document", value, "w")
    assert caught.value.reason == "the bot's own files (definitions, code, hidden files) are not sent"


def test_a_yaml_document_in_a_subdirectory_may_be_sent(bot_dir):
    (bot_dir / "docs").mkdir()
    (bot_dir / "docs" / "compose.yaml").write_text("services: {}\n")
    assert read_file(str(bot_dir), "document", "docs/compose.yaml", "w").data == b"services: {}\n"


def test_a_symlink_that_stays_inside_is_followed(bot_dir):
    (bot_dir / "latest.png").symlink_to("pics/chart.png")
    assert read_file(str(bot_dir), "photo", "latest.png", "w").data == PNG


def test_the_size_bound_is_the_bot_apis_for_the_kind(bot_dir):
    big = bot_dir / "big.bin"
    with open(big, "wb") as handle:   # sparse: no 10 MB written to the disk
        handle.truncate(MAX_BYTES["photo"] + 1)
    with pytest.raises(MediaError) as caught:
        read_file(str(bot_dir), "photo", "big.bin", "w")
    assert caught.value.reason == "the file is larger than the Bot API's 10 MB for a photo"
    assert MAX_BYTES == {"photo": 10 * 1024 * 1024, "document": 50 * 1024 * 1024}
    assert len(read_file(str(bot_dir), "document", "big.bin", "w").data) == MAX_BYTES["photo"] + 1
    with open(big, "wb") as handle:
        handle.truncate(MAX_BYTES["document"] + 1)
    with pytest.raises(MediaError, match="50 MB for a document"):
        read_file(str(bot_dir), "document", "big.bin", "w")


@pytest.mark.parametrize("make, reason", [
    (lambda path: path.write_bytes(b""), "the file is empty"),
    (lambda path: path.mkdir(), "not a regular file"),
    (lambda path: os.mkfifo(path), "not a regular file"),   # never opened: no read blocks
    (lambda path: None, "no such file in the bot's directory"),
])
def test_only_a_regular_non_empty_file_is_sent(bot_dir, make, reason):
    make(bot_dir / "thing")
    with pytest.raises(MediaError) as caught:
        read_file(str(bot_dir), "document", "thing", "w")
    assert caught.value.reason == reason


# -- check: literal values at load, templated ones when they render ----------------------------

def test_check_refuses_a_literal_path_out_of_the_directory_or_missing(bot_dir):
    write_bot(bot_dir, """\
handlers:
  - name: out
    pattern: ^out$
    response:
      photo: ../secret.txt
  - name: missing
    pattern: ^missing$
    response:
      document: reports/none.pdf
  - name: fine
    pattern: ^fine$
    response:
      photo: pics/chart.png
  - name: later
    pattern: ^(?P<name>\\w+)$
    response:
      document: "pics/{{ pattern.name }}"
""")
    with pytest.raises(ConfigErrors) as caught:
        load_bot(str(bot_dir))
    messages = sorted(str(error) for error in caught.value.errors)
    assert messages == [
        f"{bot_dir}/bot.yaml:5: photo '../secret.txt': the path leads outside the bot's directory",
        f"{bot_dir}/bot.yaml:9: document 'reports/none.pdf': no such file in the bot's directory",
    ]


@pytest.mark.parametrize("response, message", [
    ("{photo: pics/chart.png, text: hi}", "a photo response has a caption, not text"),
    ("{photo: pics/chart.png, document: pics/chart.png}",
     "a response sends a photo or a document, not both"),
    ("{text: hi, caption: there}", "caption goes with a photo or document; a text response has text"),
])
def test_check_explains_a_media_response_written_wrong(bot_dir, response, message):
    write_bot(bot_dir, f"handlers:\n  - name: a\n    response: {response}\n")
    with pytest.raises(Exception) as caught:
        load_bot(str(bot_dir))
    assert message in str(caught.value)


def test_a_hook_sends_text_only(bot_dir):
    write_bot(bot_dir, """\
handlers: [{name: a, response: hi}]
hooks:
  - name: alert
    key: 0123456789abcdef-key
    recipients: [1]
    response: {photo: pics/chart.png}
""")
    with pytest.raises(Exception) as caught:
        load_bot(str(bot_dir))
    assert "hook alert: a hook sends text" in str(caught.value)


# -- a YAML bot answering with media, in memory ------------------------------------------------

MEDIA_BOT = """\
handlers:
  - name: chart
    pattern: ^/chart$
    response:
      photo: pics/chart.png
      caption: "Load <b>{{ pattern.0 }}</b>"
      parse_mode: HTML
      buttons: [Again]
  - name: get
    pattern: ^/get (?P<name>.+)$
    response:
      document: "{{ pattern.name }}"
  - name: bare
    pattern: ^/bare$
    response:
      photo: https://example.com/cat.png
      caption: "{{ '' }}"
      parse_mode: HTML
"""


def test_a_yaml_response_sends_a_photo_with_caption_and_buttons(bot_dir):
    with TestBot(str(write_bot(bot_dir, MEDIA_BOT))) as bot:
        bot.send("/chart", chat=CHAT)
        [call] = bot.calls
        assert call.method == "sendPhoto"
        assert call.params == {"chat_id": CHAT, "photo": Upload("chart.png", PNG),
                               "caption": "Load <b>/chart</b>", "parse_mode": "HTML",
                               "reply_markup": {"inline_keyboard": [[
                                   {"text": "Again", "callback_data": "Again"}]]}}
        bot.send("/bare", chat=CHAT)
        assert bot.calls[-1].params == {"chat_id": CHAT, "photo": "https://example.com/cat.png"}


def test_a_templated_path_is_confined_when_it_renders(bot_dir):
    with TestBot(str(write_bot(bot_dir, MEDIA_BOT))) as bot:
        bot.send("/get pics/chart.png", chat=CHAT)
        assert bot.calls[-1].method == "sendDocument"
        assert bot.calls[-1].params["document"] == Upload("chart.png", PNG)
        bot.send("/get ../secret.txt", chat=CHAT)
        assert bot.calls[-1].method == "sendMessage"
        assert bot.pop() == "Sorry, something went wrong on my side. Please try again later."
        assert not any(call.params.get("document") == Upload("secret.txt", b"the operator's "
                                                             b"password\n") for call in bot.calls)


# -- the multipart body, as the Bot API double parses it ---------------------------------------

def test_an_upload_is_one_multipart_post_on_the_pooled_client(telegram):
    client = TelegramClient(telegram.token, telegram.url)
    try:
        api = FileAPI(client, telegram.token, telegram.url)
        result = api.call("sendPhoto", {"chat_id": CHAT, "caption": "é & <b>", "photo":
                                        Upload("chart.png", PNG),
                                        "reply_markup": {"inline_keyboard": [[{"text": "x",
                                                                               "callback_data": "y"}]]}})
    finally:
        client.close()
    assert result["caption"] == "é & <b>" and result["chat"]["id"] == CHAT
    [upload] = telegram.uploads_to("sendPhoto")
    assert upload == {"method": "sendPhoto", "field": "photo", "filename": "chart.png",
                      "content_type": "image/png", "data": PNG}
    params = telegram.calls_to("sendPhoto")[0]["params"]
    assert params["chat_id"] == str(CHAT) and params["caption"] == "é & <b>"
    assert params["reply_markup"] == {"inline_keyboard": [[{"text": "x", "callback_data": "y"}]]}
    assert params["photo"] == {"filename": "chart.png", "size": len(PNG)}


def test_a_large_upload_is_written_in_pieces_and_arrives_whole(telegram):
    content = os.urandom(3 * WRITE_PIECE + 123)
    pieces = list(_pieces((b"head", content, b"tail")))
    assert [len(piece) for piece in pieces] == [4] + [WRITE_PIECE] * 3 + [123, 4]
    assert b"".join(pieces) == b"head" + content + b"tail"
    assert _pieces((b"small",)) == b"small"
    client = TelegramClient(telegram.token, telegram.url)
    try:
        client.call_multipart("sendDocument", {"chat_id": "7", "caption": "two files"},
                              {"document": ("x.bin", content), "thumbnail": ("t.jpg", b"\xff\xd8")})
    finally:
        client.close()
    document, thumbnail = telegram.uploads_to("sendDocument")
    assert document["data"] == content and document["content_type"] == "application/octet-stream"
    assert (thumbnail["field"], thumbnail["data"], thumbnail["content_type"]) == \
        ("thumbnail", b"\xff\xd8", "image/jpeg")
    assert telegram.calls_to("sendDocument")[0]["params"]["caption"] == "two files"


def test_an_upload_answered_429_raises_retry_after_like_any_call(telegram):
    telegram.fail_next("sendDocument", "429", retry_after=3)
    client = TelegramClient(telegram.token, telegram.url)
    try:
        with pytest.raises(RetryAfter) as caught:
            client.call_multipart("sendDocument", {"chat_id": "7"},
                                  {"document": ("a.csv", b"a,b\n")})
    finally:
        client.close()
    assert caught.value.retry_after == 3
    assert telegram.sent == []


# -- a caption too long for its media ----------------------------------------------------------

class RecordingAPI:
    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def call(self, method, params=None, timeout=None):
        self.calls.append((method, dict(params or {})))
        return {"message_id": len(self.calls)}


def make_sender(api) -> Sender:
    return Sender(api, RateLimiter(Limits(enabled=False)), threading.Event(),
                  sleep=lambda seconds: False)


def test_a_caption_that_fits_goes_with_the_photo():
    api = RecordingAPI()
    caption = "x" * MAX_CAPTION
    make_sender(api).call("sendPhoto", {"chat_id": CHAT, "photo": "id", "caption": caption})
    assert api.calls == [("sendPhoto", {"chat_id": CHAT, "photo": "id", "caption": caption})]


def test_a_caption_too_long_follows_the_photo_as_text_with_the_keyboard():
    api = RecordingAPI()
    caption = "word " * 1000   # 5,000 characters: past a caption, and past one message too
    markup = {"inline_keyboard": [[{"text": "More", "callback_data": "more"}]]}
    result = make_sender(api).call("sendDocument", {
        "chat_id": CHAT, "document": Upload("r.csv", b"1"), "caption": caption,
        "parse_mode": "HTML", "reply_markup": markup, "disable_notification": True})
    methods = [method for method, _ in api.calls]
    assert methods == ["sendDocument", "sendMessage", "sendMessage"]
    assert api.calls[0][1] == {"chat_id": CHAT, "document": Upload("r.csv", b"1"),
                               "disable_notification": True}
    texts = [params["text"] for _, params in api.calls[1:]]
    assert " ".join(texts).split() == caption.split()   # the whole text, nothing cut away
    assert [params.get("reply_markup") for _, params in api.calls[1:]] == [None, markup]
    assert all(params["parse_mode"] == "HTML" and params["disable_notification"] is True
               for _, params in api.calls[1:])
    assert result == {"message_id": 3}


def test_a_caption_is_measured_after_its_html_markup():
    visible = "é" * 1000
    caption = f'<a href="https://example.com/{"x" * 200}">{visible}</a> &amp; more'
    assert caption_units(caption, "HTML") == 1000 + len(" & more")
    assert caption_units(caption, None) == len(caption)
    api = RecordingAPI()
    make_sender(api).call("sendPhoto", {"chat_id": CHAT, "photo": "id", "caption": caption,
                                        "parse_mode": "HTML"})
    assert [method for method, _ in api.calls] == ["sendPhoto"]
    assert caption_units("😀" * 600, None) == 1200   # UTF-16 units: an emoji counts two


# -- pimonitor's /chart --------------------------------------------------------------------------

PIMONITOR = Path(__file__).resolve().parent.parent / "handlers" / "pimonitor"


def pimonitor_module():
    bot = load_bot(str(PIMONITOR))
    return sys.modules[bot.handler_class.__module__]


def test_loading_pimonitor_and_answering_does_not_import_matplotlib():
    probe = ("import sys\n"
             "from chatdaemon.testing import TestBot\n"
             f"bot = TestBot({str(PIMONITOR)!r})\n"
             "bot.send('/now')\n"
             "assert bot.pop().startswith('CPU temperature:')\n"
             "print(sorted(name for name in sys.modules if name.split('.')[0] in "
             "('matplotlib', 'numpy', 'PIL')))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class NotInstalled:
    """A finder that makes `import matplotlib` fail as it does where it is not installed."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_without_matplotlib_chart_says_how_to_install_it(monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NotInstalled, *sys.meta_path])
    with TestBot(str(PIMONITOR)) as bot:
        bot.send("/chart", chat=CHAT)
        assert bot.pop() == ("/chart needs matplotlib, which is not installed here. Install it "
                             "with:\npip install 'chatdaemon[chart]'")
        assert [call.method for call in bot.calls] == ["sendMessage"]


def test_chart_sends_a_png_and_samples_once_a_minute_from_then_on(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    thermal = tmp_path / "temp"
    thermal.write_text("47500\n")
    monkeypatch.setenv("PIMONITOR_THERMAL", str(thermal))
    with TestBot(str(PIMONITOR)) as bot:
        bot.send("/chart", chat=CHAT)
        [call] = bot.calls
        assert call.method == "sendPhoto"
        assert call.params["photo"].filename == "chart.png"
        assert call.params["photo"].data.startswith(b"\x89PNG\r\n\x1a\n")
        bot.tick("sample", chat=CHAT)
        samples = bot.vars(CHAT)["samples"]
        assert len(samples) == 2 and [sample[1] for sample in samples] == [47.5, 47.5]
        assert len(bot.calls) == 1   # a sample tick sends nothing


def test_the_samples_are_the_last_hour_and_bounded():
    module = pimonitor_module()
    now = 1_000_000.0
    old = [[now - 3600 - 1, 40.0, 0.1], [now - 3000, 41.0, 0.2], "junk", [now, None]]
    kept = module.with_sample(old, now)
    assert [sample[0] for sample in kept] == [now - 3000, now]   # too old and junk dropped
    crowded = [[now - i, 50.0, 1.0] for i in range(500, 0, -1)]  # a clock that jumped
    assert len(module.with_sample(crowded, now)) == module.MAX_SAMPLES == 61


# -- an operator's photo or document, on to the person in a handoff ---------------------------

def test_an_operators_photo_and_document_reach_the_person_by_file_id(tmp_path):
    from test_handoff import BOT, OPERATOR, PERSON, Chats

    from chatdaemon.handoff import People

    chats = Chats(tmp_path, BOT, People(operators=(OPERATOR,), handoff_timeout=60))
    try:
        chats.say(PERSON, "human")
        notice = chats.message_about(OPERATOR, "asks for a human")
        reply_to = {"message_id": notice["message_id"]}
        sizes = [{"file_id": "small", "width": 90}, {"file_id": "large", "width": 1280}]
        assert chats.say(OPERATOR, "", photo=sizes, caption="the form, filled in",
                         reply_to_message=reply_to) == ["✓ Sent to P111 (@p111, chat 111)."]
        chats.say(OPERATOR, "", document={"file_id": "doc1", "file_name": "a.pdf"},
                  reply_to_message=reply_to)
        to_person = [record for record in chats.sender.sent if record.get("chat_id") == PERSON]
        assert [(r["method"], r.get("photo") or r.get("document"), r.get("caption"))
                for r in to_person[-2:]] == [("sendPhoto", "large", "the form, filled in"),
                                             ("sendDocument", "doc1", None)]
    finally:
        chats.close()


def test_a_python_handlers_photo_is_bounded_at_10_mb_and_a_document_at_50(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:   # sparse: nothing written to the disk
        handle.truncate(MAX_BYTES["photo"] + 1)
    with pytest.raises(ValueError, match="photo: the file is larger than the Bot API's 10 MB"):
        Upload.of(big, "photo")
    assert len(Upload.of(big, "document").data) == MAX_BYTES["photo"] + 1


def test_at_most_two_uploads_hold_connections_and_replies_still_go_out():
    """Uploads share the client's connections with every chat's replies: a third upload
    waits for one of the two in flight, and a text reply never waits for uploads."""
    import threading

    from chatdaemon import telegram as telegram_module
    from chatdaemon.telegram import TelegramClient

    client = TelegramClient("123456:UPLOAD-cap_abcdefghijklmnop", "http://127.0.0.1:9")
    lock, release = threading.Lock(), threading.Event()
    inside = {"uploads": 0, "most": 0}
    two_inside = threading.Event()

    def post(method, body, content_type, read):
        if not content_type.startswith("multipart/"):
            return {"message_id": 1}                       # a reply: answered at once
        with lock:
            inside["uploads"] += 1
            inside["most"] = max(inside["most"], inside["uploads"])
            if inside["uploads"] >= telegram_module.MAX_UPLOADS:
                two_inside.set()
        release.wait(10)
        with lock:
            inside["uploads"] -= 1
        return {"message_id": 2}

    client._post = post
    results: list = []
    uploads = [threading.Thread(target=lambda: results.append(client.call_multipart(
        "sendPhoto", {"chat_id": "1"}, {"photo": ("a.png", b"\x89PNG")}))) for _ in range(4)]
    for thread in uploads:
        thread.start()
    try:
        assert two_inside.wait(10)
        assert client.call("sendMessage", {"chat_id": 1, "text": "hi"}) == {"message_id": 1}
        with lock:
            assert inside["uploads"] == telegram_module.MAX_UPLOADS
    finally:
        release.set()
        for thread in uploads:
            thread.join(10)
    assert len(results) == 4 and inside["most"] == telegram_module.MAX_UPLOADS == 2
    client.close()
