"""An update whose strings hold a lone surrogate ("\\ud800" escaped in Telegram's JSON: half
of an emoji, no Unicode text) cannot be stored as UTF-8. It is stored with U+FFFD in its
place and answered; the daemon never stops on it (it used to fail on every restart, as the
unacknowledged update came back each time)."""

from __future__ import annotations

from conftest import TEST_HANDLERS, wait_until
from test_intake import fresh_db, make_poller, message, quick, settle

from chatdaemon.inbox import decode_payload, without_lone_surrogates

__all__ = ["fresh_db", "quick"]   # fixtures, used by name


def test_lone_surrogates_become_replacement_characters_and_pairs_stay():
    update = {"update_id": 1, "message": {"text": "a\ud800b\udfff", "chat": {"id": 7},
                                          "entities": [{"type": "bold", "x\udc00": ["\ud83d"]}],
                                          "ok": "\U0001F600", "n": 5, "f": 1.5, "none": None}}
    repaired = without_lone_surrogates(update)
    assert repaired["message"]["text"] == "a\ufffdb\ufffd"
    assert repaired["message"]["entities"] == [{"type": "bold", "x\ufffd": ["\ufffd"]}]
    assert repaired["message"]["ok"] == "\U0001F600"
    assert (repaired["message"]["n"], repaired["message"]["f"], repaired["message"]["none"]) \
        == (5, 1.5, None)
    assert update["message"]["text"] == "a\ud800b\udfff"   # a copy: the given one is left as it was


def test_a_deep_update_is_repaired_without_recursion():
    deep: dict = {"text": "\ud800"}
    for _ in range(5000):
        deep = {"x": [deep]}
    repaired = without_lone_surrogates(deep)
    for _ in range(5000):
        repaired = repaired["x"][0]
    assert repaired == {"text": "\ufffd"}


def test_a_batch_with_a_lone_surrogate_is_stored_repaired_and_acknowledged(fresh_db, quick):
    batch = [message(10), message(11, chat_id=8, text="half \ud83d of an emoji"), message(12)]
    poller, api, notified = make_poller(fresh_db, settle() + [batch])
    poller.run()
    assert poller.offset == 13
    stored = dict(fresh_db._db.execute("SELECT update_id, payload FROM inbox"))
    assert sorted(stored) == [10, 11, 12]
    assert decode_payload(stored[11])["message"]["text"] == "half \ufffd of an emoji"
    assert notified == [[7, 8]]


def test_the_daemon_answers_a_message_with_a_lone_surrogate_and_goes_on(telegram, start_daemon):
    telegram.push_message(5, "half \ud83d of an emoji")
    telegram.push_message(5, "after")
    daemon = start_daemon(TEST_HANDLERS / "echo")
    assert wait_until(lambda: len(telegram.sent_to(5)) >= 2, timeout=30), daemon.log()
    assert telegram.sent_to(5) == ["half \ufffd of an emoji", "after"]
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.log()
