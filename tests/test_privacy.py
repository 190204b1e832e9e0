"""Privacy: /forget, `chatdaemon export` and `chatdaemon forget`, and long button data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import HANDLERS, ROOT
from test_handoff import Chats

from chatdaemon.handoff import People
from chatdaemon.store import Store

PERSON, OPERATOR = 111, 900

BOT = """
handlers:
  - name: remember
    pattern: '^my name is (?P<name>\\w+)$'
    response: "hello {{ pattern.name }}"
    save: {name: "{{ pattern.name }}"}
    target_state: known
  - name: human
    pattern: '^human$'
    response: "getting a person"
    handoff: true
  - name: long
    pattern: '^/long$'
    response:
      text: "pick"
      buttons: [[{text: "Go", data: "{{ 'x' * 100 }}"}]]
  - name: pressed
    pattern: '^x{100}$'
    response: "pressed the long one"
fallback: "fallback"
"""


@pytest.fixture
def chats(tmp_path):
    bot = Chats(tmp_path, BOT, People(operators=(OPERATOR,)))
    yield bot
    bot.close()


def kept_about(store: Store, chat_id: int) -> dict[str, int]:
    with store.reading() as db:
        return {table: db.execute(f"SELECT COUNT(*) FROM {table} WHERE chat_id = ?",
                                  (chat_id,)).fetchone()[0]
                for table in ("conversations", "handoffs", "handoff_messages", "operator_messages")}


def payloads(store: Store, chat_id: int) -> list[str]:
    with store.reading() as db:
        return [row[0] for row in db.execute("SELECT payload FROM inbox WHERE chat_id = ?",
                                             (chat_id,))]


def test_forget_deletes_the_conversation_and_the_queued_handoff(chats):
    chats.say(PERSON, "my name is Ann")
    chats.say(PERSON, "human")
    chats.say(PERSON, "my secret question")
    assert all(kept_about(chats.store, PERSON).values())
    # a notice about the person still waiting for the operator's delegate
    chats.push(PERSON, "second secret")
    chats.push(PERSON, "/forget")
    for row in chats.store.pending(PERSON):  # the person's chat only: the operator's waits
        chats._transaction(PERSON).handle(row)
    assert chats.sender.to(PERSON)[-1] == \
        "Done: I deleted what I kept about this chat (conversation and messages)."
    chats.run()
    assert kept_about(chats.store, PERSON) == {"conversations": 0, "handoffs": 0,
                                               "handoff_messages": 0, "operator_messages": 0}
    assert not any("secret" in payload for payload in payloads(chats.store, PERSON))
    assert not any("second secret" in text for text in chats.sender.to(OPERATOR))
    # the bot answers afresh: no name, no handoff
    assert chats.say(PERSON, "what now") == ["fallback"]
    assert chats.store.load_conversation(PERSON).vars == {}


def test_forget_can_be_renamed_or_turned_off(tmp_path):
    renamed = Chats(tmp_path, BOT, People(forget_command="/vergessen"))
    try:
        renamed.say(PERSON, "my name is Ann")
        assert renamed.say(PERSON, "/forget") == ["fallback"]
        assert "Done" in renamed.say(PERSON, "/vergessen")[0]
    finally:
        renamed.close()
    (tmp_path / "off").mkdir()
    off = Chats(tmp_path / "off", BOT, People(forget_command=None))
    try:
        assert off.say(PERSON, "/forget") == ["fallback"]
    finally:
        off.close()


def test_long_button_data_goes_out_as_a_durable_token(chats, tmp_path):
    chats.say(PERSON, "/long")
    [[button]] = chats.sender.sent[-1]["reply_markup"]["inline_keyboard"]
    assert len(button["callback_data"].encode()) <= 64
    chats.close()
    again = Chats(tmp_path, BOT, db=chats.db)  # the token outlives a restart
    try:
        again.press(PERSON, button["callback_data"])
        assert again.sender.to(PERSON)[-1] == "pressed the long one"
        assert again.say(PERSON, "1") == ["pressed the long one"]  # by number, too
    finally:
        again.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "chatdaemon", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_export_and_forget_commands(chats):
    chats.say(PERSON, "my name is Ann")
    chats.say(PERSON, "human")
    chats.say(7, "my name is Bo")
    database = str(chats.db)
    exported = cli("export", "--db", database, str(PERSON))  # read-only: fine while open
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert data["conversations"][0]["vars"] == {"name": "Ann"}
    assert data["handoffs"][0]["name"] == "P111"
    assert [m["text"] for m in data["handoff_messages"]] == ["human"]
    assert data["inbox"][0]["payload"]["message"]["text"] == "my name is Ann"

    refused = cli("forget", "--db", database, str(PERSON))  # the Store holds the lock
    assert refused.returncode == 75
    assert "stop the daemon first, or have the person send /forget" in refused.stderr
    chats.close()
    forgot = cli("forget", "--db", database, str(PERSON))
    assert forgot.returncode == 0, forgot.stderr
    after = json.loads(cli("export", "--db", database, str(PERSON)).stdout)
    assert after["conversations"] == after["handoffs"] == after["handoff_messages"] == []
    assert all(row["payload"] == {} for row in after["inbox"])
    other = json.loads(cli("export", "--db", database, "7").stdout)
    assert other["conversations"][0]["vars"] == {"name": "Bo"}


def test_export_of_a_missing_database_is_a_clear_error(tmp_path):
    done = cli("export", "--db", str(tmp_path / "none.sqlite3"), "1")
    assert done.returncode != 0 and "no database at" in done.stderr
    assert not (tmp_path / "none.sqlite3").exists()
    done = cli("forget", "--db", str(tmp_path / "none.sqlite3"), "1")
    assert done.returncode != 0 and not (tmp_path / "none.sqlite3").exists()


def test_forget_on_telegram_with_the_daemon_running(telegram, start_daemon):
    start_daemon(HANDLERS / "orders")
    telegram.push_message(PERSON, "/start")
    telegram.push_message(PERSON, "/forget")
    assert telegram.wait_for(lambda: len(telegram.sent_to(PERSON)) == 2, 20)
    assert telegram.sent_to(PERSON)[1].startswith("Done: I deleted what I kept")
