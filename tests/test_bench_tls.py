"""The Bot API test double over TLS, the daemon verifying it, and bench.py's TLS mode."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TOKEN, TOKEN_SECRET, wait_until
from fake_telegram import FakeTelegram, TLSUnavailable

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="openssl is not installed: the TLS double cannot "
                                          "make its certificate")


@pytest.fixture
def telegram():
    """This module's double serves https:// (start_daemon points the daemon at it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the TLS double cannot make its certificate")
    with FakeTelegram(TOKEN, tls=True) as fake:
        yield fake


@pytest.fixture
def bench(monkeypatch):
    """bench/bench.py as a module (it finds the test double and procstat beside it)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench as module
    return module


def get_me(fake: FakeTelegram, context: ssl.SSLContext) -> tuple[int, dict]:
    connection = http.client.HTTPSConnection(fake.host, fake.port, context=context, timeout=5)
    try:
        connection.request("POST", f"/bot{fake.token}/getMe", body=b"{}",
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_the_double_stays_plain_http_by_default():
    with FakeTelegram(TOKEN) as fake:
        assert fake.url.startswith("http://")
        assert fake.cert_file is None


def test_tls_double_answers_get_me_to_a_client_that_trusts_its_certificate(telegram):
    assert telegram.url == f"https://127.0.0.1:{telegram.port}"
    status, body = get_me(telegram, ssl.create_default_context(cafile=telegram.cert_file))
    assert status == 200
    assert body["result"]["id"] == telegram.bot_id
    assert [call["method"] for call in telegram.calls] == ["getMe"]


def test_tls_double_refuses_a_client_that_does_not_trust_it(telegram):
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # verifies, and trusts no one
    with pytest.raises(ssl.SSLCertVerificationError):
        get_me(telegram, untrusting)
    assert telegram.calls == []
    assert telegram.errors == []   # a failed handshake is the client's fault, not the double's
    # and the double goes on serving clients that do trust it
    assert get_me(telegram, ssl.create_default_context(cafile=telegram.cert_file))[0] == 200


def test_tls_double_keeps_its_certificate_across_a_restart(telegram):
    trusting = ssl.create_default_context(cafile=telegram.cert_file)
    telegram.stop()
    telegram.start()
    assert get_me(telegram, trusting)[0] == 200


def test_tls_double_without_openssl_says_why_and_binds_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))   # no openssl to be found
    fake = FakeTelegram(TOKEN, tls=True)
    with pytest.raises(TLSUnavailable) as caught:
        fake.start()
    assert "openssl is not installed" in caught.value.reason
    assert repr(fake) == f"<FakeTelegram bot {fake.bot_id} at stopped>"   # no socket bound


def test_daemon_answers_over_https_verifying_the_certificate(start_daemon, telegram):
    daemon = start_daemon(env={"SSL_CERT_FILE": telegram.cert_file})
    telegram.push_message(42, "hello")
    assert telegram.wait_for_sent(1, timeout=30), daemon.log()
    assert telegram.sent_to(42) == ["1"]
    assert daemon.stop() == 0
    output = daemon.log()
    assert TOKEN_SECRET not in output and TOKEN not in output


def test_daemon_that_does_not_trust_the_certificate_never_reaches_the_api(start_daemon, telegram):
    daemon = start_daemon()   # the system's trust store, which lacks the double's certificate
    assert wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in daemon.log(), 20), daemon.log()
    assert telegram.calls == []


@needs_openssl
def test_bench_measures_cpu_per_message_over_tls(bench):
    figures = bench.cpu_single(messages=20, chats=2, tls=True)
    assert figures["cpu_ms_per_msg"] > 0


def test_bench_reads_back_the_figures_of_a_tls_line(bench):
    line = "throughput  TLS msgs_per_s=3311.51, seconds=6.04, cpu_ms_per_msg=0.267\n"
    assert bench.parsed(bench.figures_text(line)) == {
        "msgs_per_s": 3311.51, "seconds": 6.04, "cpu_ms_per_msg": 0.267}


def run_bench(*args: str, env: dict | None = None) -> str:
    done = subprocess.run([sys.executable, str(BENCH / "bench.py"), *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_openssl
def test_bench_skips_a_plain_http_only_workload_with_tls_and_says_why():
    assert run_bench("--tls", "--only", "help").split() == [
        "help", "TLS", "skipped:", "this", "workload", "runs", "over", "plain", "HTTP", "only"]


def test_bench_skips_tls_rows_without_openssl_and_says_why(tmp_path):
    out = run_bench("--tls", "--only", "cpu_single", env={"PATH": str(tmp_path)})
    assert out.startswith("cpu_single  TLS skipped: openssl is not installed")
