"""Tests of the Bot API test double itself, over real HTTP on loopback."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from fake_telegram import CONFLICT_POLLING, CONFLICT_WEBHOOK, FakeTelegram

TOKEN = "123456:TEST-token_abc"


@pytest.fixture
def fake():
    with FakeTelegram(TOKEN) as server:
        yield server
        assert server.errors == []


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


@pytest.fixture
def api(fake, session):
    """Call a method with a JSON body; answers (status, body)."""

    def call(method: str, params: dict | None = None, *, http_timeout: float = 5):
        answer = session.post(f"{fake.url}/bot{TOKEN}/{method}", json=params or {},
                              timeout=http_timeout)
        return answer.status_code, answer.json()

    return call


def in_thread(target) -> tuple[threading.Thread, dict]:
    """Run `target` in a thread; its result or exception lands in the returned dict."""
    out: dict = {}

    def run():
        try:
            out["result"] = target()
        except Exception as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- basics ----------------------------------------------------------------------------------

def test_get_me_answers_the_bot_named_by_the_token(api):
    status, body = api("getMe")
    assert status == 200
    assert body == {"ok": True, "result": {"id": 123456, "is_bot": True, "first_name": "Test Bot",
                                           "username": "test_bot"}}


def test_another_token_is_401_and_other_paths_404(fake, session):
    answer = session.post(f"{fake.url}/bot123456:OTHER/getMe", timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    for path in ("/", "/getMe", f"/bot{TOKEN}/", f"/bot{TOKEN}/get/Me"):
        answer = session.get(fake.url + path, timeout=5)
        assert answer.status_code == 404, path
        assert answer.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
    assert fake.calls == []


def test_parameters_arrive_as_json_form_query_or_multipart(fake, session):
    base = f"{fake.url}/bot{TOKEN}"
    markup = {"inline_keyboard": [[{"text": "A", "callback_data": "a"}]]}
    form = session.post(f"{base}/sendMessage", timeout=5,
                        data={"chat_id": "5", "text": "[1]", "reply_markup": json.dumps(markup)})
    query = session.get(f"{base}/sendMessage", params={"chat_id": -6, "text": "q"}, timeout=5)
    multipart = session.post(f"{base}/sendPhoto", data={"chat_id": "7", "caption": "pic"},
                             files={"photo": ("p.png", b"\x89PNG")}, timeout=5)
    assert [form.status_code, query.status_code, multipart.status_code] == [200, 200, 200]
    assert fake.calls[0]["params"]["reply_markup"] == markup
    assert fake.sent_to(5) == ["[1]"]  # text that looks like JSON stays text
    assert fake.sent_to(-6) == ["q"]
    assert fake.sent_to(7) == ["pic"]
    assert fake.sent[2]["params"]["photo"] == {"filename": "p.png", "size": 4}


def test_send_message_answers_a_message_and_records_it(fake, api):
    first = api("sendMessage", {"chat_id": 42, "text": "hi"})[1]["result"]
    second = api("sendMessage", {"chat_id": "42", "text": "again"})[1]["result"]
    assert first["chat"] == {"id": 42, "type": "private"}
    assert first["text"] == "hi" and first["from"]["is_bot"] is True
    assert second["message_id"] > first["message_id"]
    assert fake.sent_to(42) == ["hi", "again"]
    assert [s["chat_id"] for s in fake.sent] == [42, 42]
    assert fake.sent_times(42) == sorted(fake.sent_times(42))
    assert fake.wait_for_sent(2, timeout=1)
    assert not fake.wait_for_sent(3, timeout=0.05)


def test_send_message_text_and_chat_checks(fake, api):
    bad = {
        "": "Bad Request: message text is empty",
        " \n\t": "Bad Request: message text is empty",
        "a" * 4097: "Bad Request: message is too long",
        "\U0001F600" * 2048 + "a": "Bad Request: message is too long",  # an emoji is 2 units
    }
    for text, description in bad.items():
        assert api("sendMessage", {"chat_id": 1, "text": text}) == (
            400, {"ok": False, "error_code": 400, "description": description})
    assert api("sendMessage", {"chat_id": 1})[0] == 400
    assert api("sendMessage", {"chat_id": "abc", "text": "x"})[1]["description"] == \
        "Bad Request: chat not found"
    assert api("sendMessage", {"text": "x"})[0] == 400
    for text in ("a" * 4096, "\U0001F600" * 2048, "\u00e9" * 4096):
        assert api("sendMessage", {"chat_id": 1, "text": text})[0] == 200
    assert api("sendMessage", {"chat_id": "@channel", "text": "x"})[0] == 200
    assert len(fake.sent) == 4
    assert len(fake.calls) == 11


def test_other_methods_are_recorded_and_answer_true(fake, api):
    assert api("answerCallbackQuery", {})[0] == 400
    for method, params in [("answerCallbackQuery", {"callback_query_id": "1"}),
                           ("sendChatAction", {"chat_id": 1, "action": "typing"}),
                           ("deleteMessage", {"chat_id": 1, "message_id": 3}),
                           ("setMyCommands", {"commands": "[]"})]:
        assert api(method, params) == (200, {"ok": True, "result": True}), method
    assert fake.calls_to("setMyCommands")[0]["params"]["commands"] == []
    edited = api("editMessageText", {"chat_id": 1, "message_id": 9, "text": "new"})[1]["result"]
    assert edited["message_id"] == 9 and edited["text"] == "new"
    assert fake.sent_to(1) == ["new"]


# -- getUpdates ------------------------------------------------------------------------------

def test_get_updates_delivers_in_order_and_an_offset_confirms(fake, api):
    ids = [fake.push_message(10, "a"), fake.push_message(11, "b", user_id=99),
           fake.push_message(-12, "c", chat_type="group")]
    assert ids == [1000, 1001, 1002]
    status, body = api("getUpdates", {"limit": 2, "allowed_updates": ["message"]})
    assert status == 200
    updates = body["result"]
    assert [u["update_id"] for u in updates] == ids[:2]
    message = updates[1]["message"]
    assert message["text"] == "b" and message["chat"]["id"] == 11 and message["from"]["id"] == 99
    assert message["from"]["is_bot"] is False and isinstance(message["date"], int)
    updates = api("getUpdates", {"offset": ids[1]})[1]["result"]
    assert [u["update_id"] for u in updates] == ids[1:]
    assert updates[1]["message"]["chat"]["type"] == "group"
    assert fake.confirmed == {ids[0]}
    assert api("getUpdates", {"offset": ids[2] + 1})[1]["result"] == []
    assert fake.confirmed == set(ids)
    assert fake.offsets == [ids[1], ids[2] + 1]
    assert fake.allowed_updates_seen == [["message"], None, None]


def test_allowed_updates_as_a_json_string_in_the_query(fake, session):
    session.get(f"{fake.url}/bot{TOKEN}/getUpdates", timeout=5,
                params={"allowed_updates": '["message", "callback_query"]', "offset": "5"})
    assert fake.allowed_updates_seen == [["message", "callback_query"]]
    assert fake.offsets == [5]


def test_negative_offset_keeps_only_the_last_updates(fake, api):
    ids = [fake.push_message(1, str(i)) for i in range(5)]
    updates = api("getUpdates", {"offset": -2})[1]["result"]
    assert [u["update_id"] for u in updates] == ids[-2:]
    assert fake.confirmed == set(ids[:3])


def test_callback_and_raw_updates(fake, api):
    fake.push_callback(20, "yes", message_id=77)
    fake.push_update({"poll": {"id": "p", "question": "?", "options": []}})
    first, second = api("getUpdates")[1]["result"]
    query = first["callback_query"]
    assert isinstance(query["id"], str) and query["data"] == "yes"
    assert query["from"]["id"] == 20 and query["message"]["chat"]["id"] == 20
    assert query["message"]["message_id"] == 77
    assert second["poll"]["question"] == "?" and second["update_id"] == first["update_id"] + 1


def test_long_poll_wakes_as_soon_as_an_update_is_pushed(fake, api):
    timer = threading.Timer(0.2, fake.push_message, args=(1, "wake"))
    began = time.monotonic()
    timer.start()
    try:
        updates = api("getUpdates", {"timeout": 5}, http_timeout=10)[1]["result"]
    finally:
        timer.cancel()
    assert [u["message"]["text"] for u in updates] == ["wake"]
    assert 0.15 < time.monotonic() - began < 3


def test_long_poll_without_updates_answers_empty_after_its_timeout(api):
    began = time.monotonic()
    assert api("getUpdates", {"timeout": 0.3}) == (200, {"ok": True, "result": []})
    assert 0.25 < time.monotonic() - began < 3


def test_a_second_concurrent_get_updates_gets_409(fake, api):
    thread, out = in_thread(lambda: requests.post(f"{fake.url}/bot{TOKEN}/getUpdates",
                                                  json={"timeout": 5}, timeout=10).json())
    assert fake.wait_for(lambda: fake.polling, timeout=5)
    assert api("getUpdates") == (409, {"ok": False, "error_code": 409,
                                       "description": CONFLICT_POLLING})
    fake.push_message(1, "for the first poller")
    thread.join(5)
    assert not thread.is_alive()
    assert [u["message"]["text"] for u in out["result"]["result"]] == ["for the first poller"]


def test_a_webhook_makes_get_updates_409(fake, api):
    assert api("setWebhook", {"url": "https://example.invalid/hook"})[0] == 200
    assert api("getWebhookInfo")[1]["result"]["url"] == "https://example.invalid/hook"
    assert api("getUpdates") == (409, {"ok": False, "error_code": 409,
                                       "description": CONFLICT_WEBHOOK})
    assert api("deleteWebhook")[0] == 200
    assert api("getUpdates")[0] == 200
    fake.set_webhook("https://example.invalid/other")
    assert api("getUpdates")[1]["description"] == CONFLICT_WEBHOOK


def test_ids_jumping_backwards_are_delivered_and_confirmed_by_the_exact_rule(fake, api):
    high = [fake.push_message(1, "a"), fake.push_message(1, "b")]
    fake.set_next_update_id(10)
    low = [fake.push_message(1, "c"), fake.push_message(1, "d")]
    updates = api("getUpdates")[1]["result"]
    assert [u["update_id"] for u in updates] == high + low  # arrival order, not sorted
    api("getUpdates", {"offset": 11})  # confirms every pending id below 11: just 10
    assert fake.confirmed == {10}
    assert [u["update_id"] for u in fake.pending] == [1000, 1001, 11]
    api("getUpdates", {"offset": 1002})
    assert fake.confirmed == {10, 11, 1000, 1001}
    assert fake.pending == []


def test_a_backwards_id_after_the_offset_was_applied_is_delivered(fake, api):
    fake.push_message(1, "a")
    fake.push_message(1, "b")
    api("getUpdates")
    fake.set_next_update_id(10)
    timer = threading.Timer(0.1, fake.push_message, args=(1, "after a quiet week"))
    timer.start()
    try:
        updates = api("getUpdates", {"offset": 1002, "timeout": 5}, http_timeout=10)[1]["result"]
    finally:
        timer.cancel()
    assert [(u["update_id"], u["message"]["text"]) for u in updates] == [(10, "after a quiet week")]
    api("getUpdates", {"offset": 11})
    assert fake.confirmed == {1000, 1001, 10}


def test_20000_pending_updates_confirmed_batch_by_batch_stay_fast(fake, api):
    ids = fake.push_many([(chat, "m") for chat in range(200) for _ in range(100)])
    assert ids == list(range(1000, 21000))
    began = time.monotonic()
    received: list[int] = []
    offset = None
    while len(received) < len(ids):
        updates = api("getUpdates", {"offset": offset} if offset else {})[1]["result"]
        received += [u["update_id"] for u in updates]
        offset = updates[-1]["update_id"] + 1
    api("getUpdates", {"offset": offset})
    assert received == ids
    assert fake.confirmed == set(ids)
    assert time.monotonic() - began < 5


# -- faults ----------------------------------------------------------------------------------

def test_injected_500_and_429(fake, api):
    fake.fail_next("sendMessage", "500")
    fake.fail_next("sendMessage", "429", retry_after=3)
    assert api("sendMessage", {"chat_id": 1, "text": "x"}) == (
        500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})
    assert api("sendMessage", {"chat_id": 1, "text": "x"}) == (
        429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 3",
              "parameters": {"retry_after": 3}})
    assert api("sendMessage", {"chat_id": 1, "text": "x"})[0] == 200
    assert fake.sent_to(1) == ["x"]
    assert fake.faults_injected == {"500": 1, "429": 1}
    assert len(fake.calls_to("sendMessage")) == 3


def test_drop_accepts_the_message_but_never_answers(fake, api):
    fake.fail_next("sendMessage", "drop")
    with pytest.raises(requests.ConnectionError):
        api("sendMessage", {"chat_id": 2, "text": "accepted"})
    assert fake.sent_to(2) == ["accepted"]
    fake.fail_next("sendMessage", "drop_before")
    with pytest.raises(requests.ConnectionError):
        api("sendMessage", {"chat_id": 2, "text": "lost"})
    assert fake.sent_to(2) == ["accepted"]
    assert api("sendMessage", {"chat_id": 2, "text": "fine"})[0] == 200
    assert fake.sent_to(2) == ["accepted", "fine"]
    assert fake.faults_injected == {"drop": 1, "drop_before": 1}


def test_migrate_latency_and_canned_answers(fake, api):
    fake.fail_next("sendMessage", "migrate")
    status, body = api("sendMessage", {"chat_id": -5, "text": "x"})
    assert status == 400 and body["parameters"] == {"migrate_to_chat_id": -1005}
    fake.fail_next("getMe", "latency", seconds=0.2)
    began = time.monotonic()
    assert api("getMe")[0] == 200
    assert time.monotonic() - began >= 0.2
    fake.set_next_response("getMe", 502, {"ok": False, "error_code": 502, "description": "Bad Gateway"})
    assert api("getMe") == (502, {"ok": False, "error_code": 502, "description": "Bad Gateway"})
    assert api("getMe")[0] == 200


def test_probabilistic_faults_are_reproducible_with_a_seed(fake, api):
    def run() -> list[int]:
        fake.set_faults("getMe", p500=0.3, p429=0.3, retry_after=1, seed=7)
        return [api("getMe")[0] for _ in range(30)]

    first, second = run(), run()
    assert first == second
    assert {500, 429, 200} <= set(first)
    assert fake.faults_injected == {"500": 2 * first.count(500), "429": 2 * first.count(429)}


def test_down_closes_every_connection_and_ends_an_open_poll(fake, api):
    thread, out = in_thread(lambda: api("getUpdates", {"timeout": 5}, http_timeout=10))
    assert fake.wait_for(lambda: fake.polling, timeout=5)
    fake.set_down(True)
    thread.join(5)
    assert not thread.is_alive() and isinstance(out.get("error"), requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        api("getMe")
    fake.set_down(False)
    assert api("getMe")[0] == 200
    fake.go_silent(0.2)
    with pytest.raises(requests.ConnectionError):
        api("getMe")
    assert fake.wait_for(lambda: not fake.down, timeout=3)
    assert api("getMe")[0] == 200


# -- concurrency and life cycle --------------------------------------------------------------

def test_concurrent_senders_are_all_recorded(fake):
    def send(chat: int) -> None:
        with requests.Session() as s:
            for i in range(50):
                s.post(f"{fake.url}/bot{TOKEN}/sendMessage", json={"chat_id": chat, "text": str(i)},
                       timeout=5).raise_for_status()

    threads = [in_thread(lambda chat=chat: send(chat))[0] for chat in range(8)]
    assert fake.wait_for_sent(400, timeout=8)
    for thread in threads:
        thread.join(5)
    for chat in range(8):
        assert fake.sent_to(chat) == [str(i) for i in range(50)]


def test_reset_clears_the_records_but_keeps_pending_updates(fake, api):
    fake.push_message(1, "a")
    api("sendMessage", {"chat_id": 1, "text": "x"})
    api("getUpdates", {"offset": 1})
    fake.reset()
    assert (fake.calls, fake.sent, fake.offsets, fake.confirmed) == ([], [], [], set())
    assert fake.sent_to(1) == [] and len(fake.pending) == 1


def test_stop_closes_kept_alive_connections(session):
    fake = FakeTelegram(TOKEN).start()
    url = fake.url
    assert session.post(f"{url}/bot{TOKEN}/getMe", timeout=5).status_code == 200
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        session.post(f"{url}/bot{TOKEN}/getMe", timeout=5)
    assert "123456" in repr(fake) and "TEST-token" not in repr(fake)
