"""End-to-end: photos and documents from the real daemon to the Bot API double.

A YAML bot answers with a photo by URL and by path (uploaded: the double keeps the bytes),
refuses a path out of its directory with the error text and goes on, and retries an
upload answered 429 until it goes out once; pimonitor's /chart sends a PNG.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import HANDLERS

ANSWER = 15     # seconds to wait for an answer
CHAT = 4242
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PHOTO = PNG_SIGNATURE + bytes(range(256)) * 64      # 16 KB of every byte value
ERROR_TEXT = "Sorry, something went wrong on my side. Please try again later."

BOT = """\
handlers:
  - name: url
    pattern: ^/url$
    response:
      photo: https://example.com/cat.png
      caption: "A cat for {{ user.first_name }}"
  - name: pic
    pattern: ^/pic(?P<note>.*)$
    response:
      photo: pics/chart.png
      caption: "<b>Today</b>{{ pattern.note }}"
      parse_mode: HTML
      buttons: [Again]
  - name: file
    pattern: ^/file (?P<name>.+)$
    response:
      document: "{{ pattern.name }}"
  - name: long
    pattern: ^/long$
    response:
      photo: pics/chart.png
      caption: "{% for n in range(300) %}line {{ n }}\\n{% endfor %}"
      buttons: [More]
fallback: "echo: {{ message.text }}"
"""


@pytest.fixture
def media_bot(tmp_path: Path) -> Path:
    directory = tmp_path / "bot"
    (directory / "pics").mkdir(parents=True)
    (directory / "pics" / "chart.png").write_bytes(PHOTO)
    (directory / "report.csv").write_bytes(b"day,load\nmon,0.5\n")
    (directory / "bot.yaml").write_text(BOT)
    (tmp_path / "secret.txt").write_text("not for the chat\n")
    return directory


def ask(telegram, daemon, text: str) -> dict:
    """Push `text`; the next thing the bot sends to the chat (any method)."""
    before = len(telegram.sent)
    telegram.push_message(CHAT, text)
    assert telegram.wait_for(lambda: len(telegram.sent) > before, timeout=ANSWER), daemon.log()
    return telegram.sent[before]


def test_a_photo_by_url_and_by_path_reach_telegram_as_send_photo(telegram, start_daemon,
                                                                 media_bot):
    daemon = start_daemon(media_bot)
    by_url = ask(telegram, daemon, "/url")
    assert by_url["method"] == "sendPhoto"
    assert by_url["params"]["photo"] == "https://example.com/cat.png"
    assert by_url["text"] == "A cat for Ann"      # the caption, rendered
    assert telegram.uploads == []                  # a URL is Telegram's to fetch

    by_path = ask(telegram, daemon, "/pic <&>")
    assert by_path["method"] == "sendPhoto"
    params = by_path["params"]
    assert params["caption"] == "<b>Today</b> &lt;&amp;&gt;"   # the user's text escaped
    assert params["parse_mode"] == "HTML" and str(params["chat_id"]) == str(CHAT)
    assert params["reply_markup"] == {"inline_keyboard": [[{"text": "Again",
                                                            "callback_data": "Again"}]]}
    [upload] = telegram.uploads_to("sendPhoto")
    assert upload["field"] == "photo" and upload["filename"] == "chart.png"
    assert upload["content_type"] == "image/png"
    assert upload["data"] == (media_bot / "pics" / "chart.png").read_bytes()

    document = ask(telegram, daemon, "/file report.csv")
    assert document["method"] == "sendDocument"
    assert telegram.uploads_to("sendDocument")[0]["data"] == b"day,load\nmon,0.5\n"
    assert daemon.stop() == 0


def test_a_path_out_of_the_bot_directory_answers_the_error_text_and_the_daemon_goes_on(
        telegram, start_daemon, media_bot):
    (media_bot / "link.txt").symlink_to(media_bot.parent / "secret.txt")
    daemon = start_daemon(media_bot)
    for escape in ("/file ../secret.txt", "/file ./link.txt", f"/file {media_bot.parent}/secret.txt",
                   "/file bot.yaml"):
        answer = ask(telegram, daemon, escape)
        assert (answer["method"], answer["text"]) == ("sendMessage", ERROR_TEXT), escape
    assert ask(telegram, daemon, "hello")["text"] == "echo: hello"   # still answering
    assert telegram.uploads == [] and telegram.calls_to("sendDocument") == []
    log = daemon.log()
    assert "the path leads outside the bot's directory" in log
    assert "the bot's own files (definitions, code, hidden files) are not sent" in log
    assert "not for the chat" not in log
    assert daemon.stop() == 0


def test_an_upload_answered_429_is_retried_and_the_photo_sent_once(telegram, start_daemon,
                                                                   media_bot):
    telegram.fail_next("sendPhoto", "429", retry_after=1)
    daemon = start_daemon(media_bot)
    sent = ask(telegram, daemon, "/pic")
    assert sent["method"] == "sendPhoto"
    assert len(telegram.calls_to("sendPhoto")) == 2         # refused once, then accepted
    assert [s["method"] for s in telegram.sent] == ["sendPhoto"]
    uploads = telegram.uploads_to("sendPhoto")
    assert [u["data"] for u in uploads] == [PHOTO, PHOTO]   # the same bytes both times
    assert ask(telegram, daemon, "after")["text"] == "echo: after"   # a sentinel: nothing else
    assert [s["method"] for s in telegram.sent] == ["sendPhoto", "sendMessage"]
    assert "Telegram asks to wait" in daemon.log()
    assert daemon.stop() == 0


def schedules(db: Path, chat: int) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [name for (name,) in connection.execute(
            "SELECT name FROM schedules WHERE chat_id = ? ORDER BY name", (chat,))]


def test_pimonitor_chart_sends_a_png_of_the_last_hour(telegram, start_daemon, tmp_path):
    pytest.importorskip("matplotlib")
    thermal = tmp_path / "temp"
    thermal.write_text("51234\n")
    daemon = start_daemon(HANDLERS / "pimonitor", env={"PIMONITOR_THERMAL": str(thermal)})
    chart = ask(telegram, daemon, "/chart")
    assert chart["method"] == "sendPhoto", daemon.log()
    assert chart["text"] == ("1 sample(s) of the last hour, one a minute. "
                             "Sampling from now on; /cancel stops it.")
    [upload] = telegram.uploads_to("sendPhoto")
    assert upload["data"].startswith(PNG_SIGNATURE) and upload["filename"] == "chart.png"
    assert ask(telegram, daemon, "/chart")["text"].startswith("2 sample(s) of the last hour")
    assert schedules(tmp_path / "bot.sqlite3", CHAT) == ["sample"]
    assert ask(telegram, daemon, "/cancel")["text"] == "Stopped."
    assert daemon.stop() == 0
    assert schedules(tmp_path / "bot.sqlite3", CHAT) == []


def test_a_caption_too_long_follows_the_photo_as_a_text_message(telegram, start_daemon,
                                                                media_bot):
    daemon = start_daemon(media_bot)
    telegram.push_message(CHAT, "/long")
    assert telegram.wait_for(lambda: len(telegram.sent) >= 2, timeout=ANSWER), daemon.log()
    photo, text = telegram.sent
    assert photo["method"] == "sendPhoto" and "caption" not in photo["params"]
    assert "reply_markup" not in photo["params"]
    assert telegram.uploads_to("sendPhoto")[0]["data"] == PHOTO
    assert text["method"] == "sendMessage"
    assert text["text"].splitlines() == [f"line {n}" for n in range(300)]   # all of it, whole
    assert text["params"]["reply_markup"] == {"inline_keyboard": [[{"text": "More",
                                                                    "callback_data": "More"}]]}
    assert daemon.stop() == 0
