"""End-to-end: the shipped example bots (counter, guess, pimonitor) as a user meets them.

`chatdaemon chat` runs as a subprocess with piped stdin, exactly as the README scripts it;
`chatdaemon run` runs against the Bot API test double on 127.0.0.1 with a real SQLite file.
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import HANDLERS, wait_until

ANSWER = 15.0  # seconds a single answer may take on a busy 2-core box
DEFAULT_THERMAL = "/sys/class/thermal/thermal_zone0/temp"
NOT_AVAILABLE = "CPU temperature: not available on this machine"
TEMPERATURE = re.compile(r"CPU temperature: -?\d+\.\d °C")
LOAD = re.compile(r"Load: \d+\.\d\d \d+\.\d\d \d+\.\d\d")
UPTIME = re.compile(r"Uptime: (\d+)d (\d+)h (\d+)m")
GUESS_ANSWERS = ("higher", "lower")


# -- helpers ---------------------------------------------------------------------------------

def chat_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHATDAEMON_TOKEN", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET",
                        "PIMONITOR_THERMAL")}
    env.update(extra)
    return env


def run_chat(handlers: Path, lines: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`chatdaemon chat --handlers DIR` with the lines piped to its stdin."""
    return subprocess.run([sys.executable, "-m", "chatdaemon", "chat", "--handlers", str(handlers)],
                          input="".join(f"{line}\n" for line in lines), capture_output=True,
                          text=True, timeout=60, cwd=str(cwd), env=chat_env(**env))


class ChatSession:
    """`chatdaemon chat` with a pipe for stdin, driven one line at a time (a scripted user
    who reads each answer before typing the next line)."""

    def __init__(self, handlers: Path, cwd: Path):
        self.stderr_path = cwd / "chat-stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatdaemon", "chat", "--handlers", str(handlers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
            cwd=str(cwd), env=chat_env())
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.transcript: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _next_line(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no output in time; so far: {self.transcript}") from None
        if line is None:
            raise AssertionError(f"chat ended early; so far: {self.transcript}; "
                                 f"stderr: {self.stderr_path.read_text(errors='replace')}")
        self.transcript.append(line)
        return line

    def say(self, text: str) -> str:
        """Type one line; return the bot's one-line answer to it."""
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + ANSWER
        assert self._next_line(deadline) == f"you: {text}", self.transcript
        line = self._next_line(deadline)
        assert line.startswith("bot: "), self.transcript
        return line[len("bot: "):]

    def close(self) -> int:
        """End of input: the bot stops; its exit status."""
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            return self.process.wait(timeout=30)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass
        self._reader.join(5)
        self.process.stdout.close()
        self._stderr.close()


def narrow(low: int, high: int, guess: int, answer: str) -> tuple[int, int]:
    """The interval left after `answer` to `guess`; asserts the answer fits what went before."""
    assert low <= guess <= high, (low, guess, high)
    assert answer in GUESS_ANSWERS, answer
    low, high = (guess + 1, high) if answer == "higher" else (low, guess - 1)
    assert low <= high, f"{answer!r} to {guess} contradicts the earlier answers"
    return low, high


def conversation_vars(db: Path, chat_id: int) -> dict | None:
    database = sqlite3.connect(db)
    try:
        row = database.execute("SELECT vars FROM conversations WHERE chat_id = ?", (chat_id,)).fetchone()
    finally:
        database.close()
    return json.loads(row[0]) if row else None


def schedules(db: Path, chat_id: int) -> list[tuple]:
    database = sqlite3.connect(db)
    try:
        return database.execute("SELECT name, every, next_at FROM schedules WHERE chat_id = ?",
                                (chat_id,)).fetchall()
    finally:
        database.close()


def check_report(report: str, thermal: str | None) -> None:
    """A /now report: three lines; the temperature as the thermal file says (or can't)."""
    lines = report.split("\n")
    assert len(lines) == 3, report
    temperature, load, uptime = lines
    if thermal is None or not os.path.exists(thermal):
        assert temperature == NOT_AVAILABLE, report
    else:
        assert TEMPERATURE.fullmatch(temperature), report
    assert LOAD.fullmatch(load), report
    match = UPTIME.fullmatch(uptime)
    assert match, report
    days, hours, minutes = map(int, match.groups())
    with open("/proc/uptime") as handle:
        actual = float(handle.read().split()[0])
    assert hours < 24 and minutes < 60, report
    assert abs(days * 86400 + hours * 3600 + minutes * 60 - actual) < 180, (report, actual)


# -- 1. chatdaemon chat with piped input -----------------------------------------------------

def test_chat_counter_prints_each_answer_after_its_line(tmp_path):
    done = run_chat(HANDLERS / "counter", ["hello", "/start", "", "three", "4"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "you: hello", "bot: 1", "you: /start", "bot: 2", "you: three", "bot: 3", "you: 4", "bot: 4",
    ], done.stdout
    assert "Traceback" not in done.stderr, done.stderr


def test_chat_guess_readme_script_with_printf(tmp_path):
    command = (f"printf '/start\\n50\\n25\\nnope\\n' | {shlex.quote(sys.executable)} -m chatdaemon "
               f"chat --handlers {shlex.quote(str(HANDLERS / 'guess'))}")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                          cwd=str(tmp_path), env=chat_env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0::2] == ["you: /start", "you: 50", "you: 25", "you: nope"], done.stdout
    answers = [line.removeprefix("bot: ") for line in lines[1::2]]
    assert len(answers) == 4 and all(line.startswith("bot: ") for line in lines[1::2]), done.stdout
    assert answers[0] == "I'm thinking of a number from 0 to 100. Guess!"
    assert answers[3] == "That's not a number. Guess one from 0 to 100."
    first, second = answers[1], answers[2]
    assert first in GUESS_ANSWERS or first.startswith("correct! (1 try)"), first
    assert second in GUESS_ANSWERS or second.startswith("correct!"), second
    if first == "higher":  # the secret is above 50, so above 25 too
        assert second == "higher", answers


def test_chat_guess_binary_search_is_correct_within_8_guesses(tmp_path):
    session = ChatSession(HANDLERS / "guess", tmp_path)
    try:
        assert session.say("/start") == "I'm thinking of a number from 0 to 100. Guess!"
        low, high, guesses = 0, 100, 0
        answer = ""
        while guesses < 8:
            guess = (low + high) // 2
            answer = session.say(str(guess))
            guesses += 1
            if answer.startswith("correct!"):
                break
            low, high = narrow(low, high, guess, answer)
        assert answer.startswith("correct!"), session.transcript
        tries = f"{guesses} {'try' if guesses == 1 else 'tries'}"
        assert answer == f"correct! ({tries}) I'm thinking of a new number.", answer
        assert guesses <= 7, guesses  # 101 numbers: a binary search needs at most 7
        # a new game has begun: the next guess gets an answer again
        assert session.say("50") in (*GUESS_ANSWERS, "correct! (1 try) I'm thinking of a new number.")
        assert session.close() == 0
    finally:
        session.kill()


# -- 2. guess: the secret survives a restart of `chatdaemon run` ------------------------------

def search(ask, low: int, high: int, guesses: int, until: int):
    """Binary search by asking; stops at "correct!" or after `until` guesses in all."""
    guess, answer = None, ""
    while guesses < until:
        guess = (low + high) // 2
        answer = ask(str(guess))
        guesses += 1
        if answer.startswith("correct!"):
            break
        low, high = narrow(low, high, guess, answer)
    return low, high, guesses, guess, answer


def test_guess_secret_survives_a_restart(telegram, start_daemon, tmp_path):
    chat = 4242
    db = tmp_path / "bot.sqlite3"

    def ask(text: str) -> str:
        before = len(telegram.sent_to(chat))
        telegram.push_message(chat, text)
        assert telegram.wait_for(lambda: len(telegram.sent_to(chat)) > before, timeout=ANSWER), \
            daemon.log()
        replies = telegram.sent_to(chat)
        assert len(replies) == before + 1, replies
        return replies[-1]

    daemon = start_daemon(HANDLERS / "guess", db=db)
    # Three answers before the restart; if a guess happens to hit the secret, start over.
    for _round in range(5):
        assert ask("/start" if _round == 0 else "/new") == "I'm thinking of a number from 0 to 100. Guess!"
        low, high, guesses, guess, answer = search(ask, 0, 100, 0, 3)
        if guesses == 3 and not answer.startswith("correct!"):
            break
    else:
        raise AssertionError("could not get three answers without hitting the secret")
    assert high - low < 100 // 4, (low, high)  # three halvings

    assert wait_until(lambda: (conversation_vars(db, chat) or {}).get("tries") == 3, timeout=5)
    secret = conversation_vars(db, chat)["secret"]
    assert low <= secret <= high, (secret, low, high)

    assert daemon.stop() == 0
    assert conversation_vars(db, chat) == {"secret": secret, "tries": 3}

    daemon = start_daemon(HANDLERS / "guess", db=db)
    # The search carries on inside the interval the earlier answers left: a secret picked
    # anew would contradict them (narrow() asserts), land elsewhere, or restart the count.
    low, high, guesses, guess, answer = search(ask, low, high, guesses, 8)
    assert answer == f"correct! ({guesses} tries) I'm thinking of a new number.", \
        (answer, telegram.sent_to(chat))
    assert guess == secret
    assert wait_until(lambda: (conversation_vars(db, chat) or {}).get("tries") == 0, timeout=5)
    assert daemon.stop() == 0


# -- 3. pimonitor ----------------------------------------------------------------------------

def test_pimonitor_now_in_chat_with_and_without_a_thermal_zone(tmp_path):
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n")
    present = run_chat(HANDLERS / "pimonitor", ["/now"], tmp_path, PIMONITOR_THERMAL=str(thermal))
    assert present.returncode == 0, present.stderr
    report = present.stdout.removeprefix("you: /now\nbot: ").rstrip("\n")
    check_report(report, str(thermal))
    assert report.startswith("CPU temperature: 48.3 °C\n"), report

    missing = tmp_path / "no-such-zone" / "temp"
    absent = run_chat(HANDLERS / "pimonitor", ["/now"], tmp_path, PIMONITOR_THERMAL=str(missing))
    assert absent.returncode == 0, absent.stderr
    report = absent.stdout.removeprefix("you: /now\nbot: ").rstrip("\n")
    check_report(report, None)

    # the real path, whatever this machine has there
    real = run_chat(HANDLERS / "pimonitor", ["/now", "/cancel", "hello"], tmp_path)
    assert real.returncode == 0, real.stderr
    out = real.stdout
    assert out.startswith("you: /now\nbot: CPU temperature: "), out
    report, rest = out.removeprefix("you: /now\nbot: ").split("\nyou: /cancel\n", 1)
    check_report(report, DEFAULT_THERMAL)
    assert rest.splitlines() == [
        "bot: Nothing was scheduled.", "you: hello",
        "bot: /now for a report, /1m or /1h for one every minute or hour, /chart for the last "
        "hour, /cancel to stop."], out


def test_pimonitor_schedule_starts_is_stored_and_cancels(telegram, start_daemon, tmp_path):
    chat = 777
    db = tmp_path / "bot.sqlite3"
    daemon = start_daemon(HANDLERS / "pimonitor", db=db,
                          env={"PIMONITOR_THERMAL": str(tmp_path / "missing")})

    def ask(text: str) -> str:
        before = len(telegram.sent_to(chat))
        telegram.push_message(chat, text)
        assert telegram.wait_for(lambda: len(telegram.sent_to(chat)) > before, timeout=ANSWER), \
            daemon.log()
        return telegram.sent_to(chat)[-1]

    check_report(ask("/now"), None)

    began = time.time()
    assert ask("/1m") == "I'll report every minute. /cancel stops it."
    assert wait_until(lambda: len(schedules(db, chat)) == 1, timeout=5)
    [(name, every, next_at)] = schedules(db, chat)
    assert name == "report" and every == 60
    assert began + 55 <= next_at <= time.time() + 61, (began, next_at)

    assert ask("/cancel") == "Stopped."
    assert wait_until(lambda: schedules(db, chat) == [], timeout=5)
    assert ask("/cancel") == "Nothing was scheduled."
    assert ask("/1h") == "I'll report every hour. /cancel stops it."
    assert wait_until(lambda: [r[:2] for r in schedules(db, chat)] == [("report", 3600)], timeout=5)
    assert ask("/cancel") == "Stopped."
    # a sentinel question: anything still due to this chat goes out before its answer
    assert ask("/cancel") == "Nothing was scheduled."
    # nothing but the answers: no report ticked in between
    assert len(telegram.sent_to(chat)) == 7, telegram.sent_to(chat)
    assert daemon.stop() == 0
    assert schedules(db, chat) == []
