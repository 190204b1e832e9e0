"""End-to-end: what the hook server refuses before the 202, against the real daemon process,
the Bot API test double and a real SQLite file. Waits are bounded conditions; per-chat order
makes a sentinel POST show that nothing refused was queued ahead of it."""

from __future__ import annotations

import socket

from test_e2e_callbacks import (
    KEY,
    NOTIFY_BOT,
    callback_url_of_first_job,
    free_port,
    post,
    start_job_bot,
    start_with_hooks,
    write_bot,
)

AUTH = {"Authorization": f"Bearer {KEY}"}


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes; everything the daemon answers until it closes (bounded by a timeout)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        for _ in range(100):   # bounded: each recv returns data, EOF or times out
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_lone_surrogate_or_nan_is_a_400_and_the_next_notice_is_the_first_sent(
        telegram, start_daemon, tmp_path):
    port = free_port()
    daemon = start_with_hooks(start_daemon, write_bot(tmp_path, NOTIFY_BOT), port)
    for body in (b'{"chat_ids": [111], "msg": "\\ud800"}', b'{"chat_ids": [111], "msg": NaN}'):
        status, answer = post(port, "/hooks/notify", body, AUTH)
        assert status == 400 and "not JSON" in answer["error"], (body, answer)
    assert post(port, "/hooks/notify", b'{"chat_ids": [111], "msg": "sentinel"}', AUTH)[0] == 202
    assert telegram.wait_for(lambda: telegram.sent_to(111), timeout=15), daemon.log()
    assert telegram.sent_to(111) == ["Notice: sentinel"]


def test_a_smuggled_second_request_never_runs(telegram, start_daemon, tmp_path):
    port = free_port()
    daemon = start_with_hooks(start_daemon, write_bot(tmp_path, NOTIFY_BOT), port)
    inner = b'{"chat_ids": [222], "msg": "smuggled"}'
    smuggled = (b"POST /hooks/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nContent-Length: " + str(len(inner)).encode()
                + b"\r\n\r\n" + inner)
    outer = b'{"chat_ids": [111], "msg": "outer"}'
    answer = raw_exchange(port, b"POST /hooks/notify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                          + KEY.encode() + b"\r\nContent-Length: " + str(len(outer)).encode()
                          + b"\r\nContent-Length: " + str(len(outer) + len(smuggled)).encode()
                          + b"\r\n\r\n" + outer + smuggled)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1, answer
    # sentinels for both chats: anything queued before them would be sent first
    assert post(port, "/hooks/notify", b'{"chat_ids": [111, 222], "msg": "sentinel"}', AUTH)[0] \
        == 202
    assert telegram.wait_for(lambda: telegram.sent_to(111) and telegram.sent_to(222),
                             timeout=15), daemon.log()
    assert telegram.sent_to(111) == ["Notice: sentinel"]
    assert telegram.sent_to(222) == ["Notice: sentinel"]


def test_a_callback_result_holding_nan_is_a_400_and_the_token_still_works(
        telegram, start_daemon, tmp_path, upstream):
    port = free_port()
    start_job_bot(start_daemon, upstream, port)
    url = callback_url_of_first_job(telegram, upstream, 42)
    path = "/callbacks/" + url.rsplit("/", 1)[1]
    status, answer = post(port, path, b'{"summary": NaN}')
    assert status == 400 and "not JSON" in answer["error"]
    assert post(port, path, b'{"summary": "3 sales"}') == (202, {"ok": True})
    assert telegram.wait_for(lambda: len(telegram.sent_to(42)) >= 2, timeout=15), telegram.sent
    assert telegram.sent_to(42)[1] == "✅ Your report is ready: 3 sales"
