"""Fixtures: the Bot API test double, and the real daemon run as a process against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from fake_telegram import FakeTelegram

from chatdaemon.store import Store
from chatdaemon.telegram import TelegramClient

ROOT = Path(__file__).resolve().parent.parent
HANDLERS = ROOT / "handlers"
TEST_HANDLERS = Path(__file__).resolve().parent / "handlers"
TOKEN = "123456:TEST-token_abcdefghijklmnopqrstuvwxyz"
TOKEN_SECRET = TOKEN.split(":")[1]


@pytest.fixture
def fresh_db():
    """A store in memory, closed after the test."""
    store = Store(":memory:")
    yield store
    store.close()


@pytest.fixture
def telegram():
    with FakeTelegram(TOKEN) as fake:
        yield fake


class DaemonProcess:
    """A chatdaemon command run as a subprocess, its output (stdout and stderr) kept in a file."""

    def __init__(self, log_path: Path, command: list[str], env: dict[str, str], cwd: Path):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=str(cwd))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def threads(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
        return 0

    def close(self) -> None:
        self.kill()
        self._log.close()


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what would point a daemon at a real token or systemd."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CREDENTIALS_DIRECTORY", "CHATDAEMON_TOKEN", "NOTIFY_SOCKET")}
    env.update(extra)
    return env


class Daemon(DaemonProcess):
    """`chatdaemon run` as a subprocess, its stderr kept in a file."""

    def __init__(self, tmp_path: Path, api_url: str, handlers: Path, db: Path,
                 config: dict, args: list[str], env: dict[str, str], token: str | None):
        self.tmp_path = tmp_path
        self.db = db
        n = len(list(tmp_path.glob("daemon-*.log")))
        config_path = tmp_path / f"config-{n}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(handlers),
                   "--db", str(db), "--api-url", api_url, "--config", str(config_path), *args]
        full_env = clean_environment(**env)
        if token is not None:
            full_env["CHATDAEMON_TOKEN"] = token
        super().__init__(tmp_path / f"daemon-{n}.log", command, full_env, tmp_path)


@pytest.fixture
def start_daemon(tmp_path, telegram):
    """Start the daemon; every daemon's whole output is checked for the token at the end."""
    daemons: list[Daemon] = []

    def start(handlers: Path | str = HANDLERS / "counter", *, db: Path | None = None,
              config: dict | None = None, args: list[str] = (), env: dict | None = None,
              token: str | None = TOKEN, rate_limits: str = "off") -> Daemon:
        settings = {"polling": {"timeout": 1}, "delegates": {"idle_timeout": 30},
                    "stop_timeout": 10, "hooks": {"port": 0}}
        for key, value in (config or {}).items():
            if isinstance(value, dict):
                settings.setdefault(key, {}).update(value)
            else:
                settings[key] = value
        daemon = Daemon(tmp_path, telegram.url, Path(handlers), db or tmp_path / "bot.sqlite3",
                        settings, ["--rate-limits", rate_limits, *args], env or {}, token)
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()
    for daemon in daemons:
        output = daemon.log()
        assert TOKEN_SECRET not in output, f"the token leaked into {daemon.log_path}"


def wait_until(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class _Recorder(BaseHTTPRequestHandler):
    """An upstream service: it records each JSON body POSTed to it and answers 200."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.bodies.append(body)
        data = b'{"accepted": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    """A job service on loopback: `bodies` holds each job POSTed (and its callback URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.bodies = []
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


CLIENT_READ_TIMEOUT = 0.5   # the read timeout of the clients the `clients` fixture makes


@pytest.fixture
def clients():
    """Makes Bot API clients (connect 2 s, read CLIENT_READ_TIMEOUT unless given), closed
    after the test."""
    made: list[TelegramClient] = []

    def make(url: str, **kwargs) -> TelegramClient:
        kwargs = {"connect_timeout": 2, "read_timeout": CLIENT_READ_TIMEOUT, **kwargs}
        made.append(TelegramClient(TOKEN, url, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()
