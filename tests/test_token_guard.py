"""The bot's token leaves only in the request path: a message or a file carrying it is refused
before anything is sent (a template that found it, a token file a `document:` path reached)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TOKEN

from chatdaemon.errors import TelegramError
from chatdaemon.telegram import TOKEN_IN_BODY, TelegramClient

ERROR_TEXT = "Sorry, something went wrong on my side. Please try again later."


@pytest.fixture
def client(telegram):
    api = TelegramClient(TOKEN, telegram.url, read_timeout=5)
    yield api
    api.close()


def test_a_message_carrying_the_token_is_refused_before_it_is_sent(telegram, client):
    with pytest.raises(TelegramError) as refused:
        client.call("sendMessage", {"chat_id": 5, "text": f"the key is {TOKEN}!"})
    assert refused.value.status == 400 and refused.value.description == TOKEN_IN_BODY
    assert TOKEN not in str(refused.value)
    assert telegram.calls_to("sendMessage") == []
    # a text near it goes out: only the token itself is refused
    client.call("sendMessage", {"chat_id": 5, "text": TOKEN[:-1]})
    assert telegram.sent_to(5) == [TOKEN[:-1]]


def test_a_file_carrying_the_token_is_refused_before_it_is_uploaded(telegram, client):
    content = b"CHATDAEMON_TOKEN=" + TOKEN.encode() + b"\n"
    with pytest.raises(TelegramError) as refused:
        client.call_multipart("sendDocument", {"chat_id": "5"}, {"document": ("env", content)})
    assert refused.value.description == TOKEN_IN_BODY
    assert telegram.uploads == [] and telegram.calls_to("sendDocument") == []
    client.call_multipart("sendDocument", {"chat_id": "5"}, {"document": ("ok", b"hello\n")})
    assert [upload["data"] for upload in telegram.uploads] == [b"hello\n"]


BOT = """\
handlers:
  - name: file
    pattern: ^/file (?P<name>.+)$
    response:
      document: "{{ pattern.name }}"
fallback: "echo: {{ message.text }}"
"""


def test_a_token_file_in_the_bots_directory_never_reaches_a_chat(telegram, start_daemon,
                                                                 tmp_path: Path):
    directory = tmp_path / "bot"
    directory.mkdir()
    (directory / "bot.yaml").write_text(BOT)
    (directory / "token.txt").write_text(TOKEN + "\n")
    (directory / "notes.txt").write_text("fine\n")
    start_daemon(directory)
    telegram.push_message(77, "/file token.txt")
    telegram.push_message(77, "/file notes.txt")
    assert telegram.wait_for(lambda: len(telegram.sent) >= 2, timeout=15)
    first, second = telegram.sent[:2]
    assert first["method"] == "sendMessage" and first["text"] == ERROR_TEXT
    assert second["method"] == "sendDocument"
    everything = json.dumps([call.get("params") for call in telegram.calls], default=str)
    assert TOKEN not in everything
    assert all(TOKEN.encode() not in upload["data"] for upload in telegram.uploads)
