"""`chatdaemon chat`: talk to a bot in the terminal through the real daemon, no token, no network.

Each line typed (or piped in) becomes a Telegram message, sent as typed: a number is text,
and the bot picks the option of its latest keyboard as it does on Telegram. Several people
may type (/as NAME), /tap N presses an inline button, and a message the bot leaves
unanswered is marked as such.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

from .app import App, Events
from .bots import Bot
from .config import Config
from .dbfile import TERMINAL
from .local import LocalTelegram

log = logging.getLogger(__name__)

FIRST_USER_ID = 1001
MAX_CHAT_ID = 2 ** 63 - 1   # a chat id is a signed 64-bit number; the inbox refuses others
ANSWER_TIMEOUT = 60.0
SETTLE_SECONDS = 2.0   # after an answer, how long messages it set off (to operators) may take
SILENCE = "(no answer: the bot sent nothing)"
BANNER = """chatdaemon chat: you are {name} (chat {chat_id}), talking to the bot as on Telegram.
  Type a message and press Enter. A number picks an option of the bot's latest keyboard.
  /tap N     press inline button N of the bot's latest message
  /as NAME   type as someone else (a new user; a number is taken as that chat's id)
  Ctrl-D     end"""


class Users:
    """The people typing, each in a private chat of their own; one of them types now."""

    def __init__(self) -> None:
        self.by_name: dict[str, dict] = {}
        self.current = self.switch("You")

    def switch(self, name: str) -> dict:
        """Type as `name` from now on; ValueError for a number no chat id can be."""
        if name.lstrip("-").isdigit() and not -MAX_CHAT_ID <= int(name) <= MAX_CHAT_ID:
            raise ValueError(f"{name} cannot be a chat id (at most {MAX_CHAT_ID} either side of 0)")
        if name not in self.by_name:
            user_id = int(name) if name.lstrip("-").isdigit() else \
                FIRST_USER_ID + sum(not n.lstrip("-").isdigit() for n in self.by_name)
            self.by_name[name] = {"id": user_id, "is_bot": False, "first_name": name,
                                  "username": name.lower() if name.isidentifier() else None}
        self.current = self.by_name[name]
        return self.current

    def name_of(self, chat_id: object) -> str:
        for name, user in self.by_name.items():
            if user["id"] == chat_id:
                return name
        return f"chat {chat_id}"


class Terminal:
    """Prints what the bot sends and turns typed lines into updates."""

    def __init__(self, out: TextIO):
        self.out = out
        self.lock = threading.Lock()
        self.users = Users()
        self.buttons: dict[object, list[str]] = {}  # chat id -> the latest message's button data
        self.shown = 0                               # messages the bot sent so far

    def show(self, method: str, params: dict) -> None:
        with self.lock:
            chat_id = params.get("chat_id")
            to = "" if chat_id == self.users.current["id"] else f" → {self.users.name_of(chat_id)}"
            if method in ("sendMessage", "editMessageText"):
                self.shown += 1
                edited = " (edited)" if method == "editMessageText" else ""
                self._print(f"bot{to}{edited}: " + params.get("text", ""))
                self._show_markup(chat_id, params.get("reply_markup"))
            elif method == "answerCallbackQuery":
                if params.get("text"):
                    self.shown += 1
                    self._print(f"bot (notice): {params['text']}")
            elif method.startswith("send") and method != "sendChatAction":
                self.shown += 1
                what = method[4:].lower()
                self._print(f"bot{to} sends a {what}: {params.get('caption', '')}".rstrip(": "))

    def _show_markup(self, chat_id: object, markup: object) -> None:
        if not isinstance(markup, dict):
            return
        inline = "inline_keyboard" in markup
        rows = markup.get("inline_keyboard") if inline else markup.get("keyboard")
        if inline:
            self.buttons[chat_id] = []
        for number, button in enumerate((b for row in rows or () for b in row), start=1):
            label = button if isinstance(button, str) else button.get("text", "")
            if inline and "url" in button:
                self._print(f"  [{number}] {label} → {button['url']}")
            else:
                self._print(f"  [{number}] {label}")
            if inline:
                self.buttons[chat_id].append(button.get("callback_data") or "")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def command(self, line: str) -> bool:
        """/as NAME: switch who types; True when the line was that command."""
        if not line.startswith("/as "):
            return False
        try:
            with self.lock:
                user = self.users.switch(line[4:].strip() or "You")
        except ValueError as exc:
            self._print(f"(not switched: {exc})")
            return True
        self._print(f"(you are {user['first_name']} now, chat {user['id']})")
        return True

    def to_update(self, line: str) -> tuple[str, dict] | None:
        """A typed line as an update, sent as typed (a number is text, as on Telegram); /tap N
        presses a button. None for a /tap that names no button."""
        with self.lock:
            user = dict(self.users.current)
            buttons = list(self.buttons.get(user["id"], ()))
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        if line.startswith("/tap"):
            number = line[4:].strip()
            if not number.isdecimal() or not 1 <= int(number) <= len(buttons) \
                    or not buttons[int(number) - 1]:
                self._print("(no such button: /tap N presses button N of the bot's latest "
                            "message with buttons)")
                return None
            message = {"message_id": 0, "chat": chat, "date": int(time.time())}
            return "callback_query", {"id": f"cq{time.monotonic_ns()}", "from": user,
                                      "chat_instance": "local", "message": message,
                                      "data": buttons[int(number) - 1]}
        return "message", {"from": user, "chat": chat, "text": line}


def chat(config: Config, bot: Bot, stdin: TextIO, out: TextIO, err: TextIO | None = None) -> None:
    """Run the bot with a LocalTelegram and feed it stdin, one line at a time, until EOF.

    The banner goes to `out` in a terminal, to `err` when lines are piped in (so that the
    output of a script is the conversation alone)."""
    terminal = Terminal(out)
    api = LocalTelegram(terminal.show)
    settled = threading.Event()  # set when the daemon is ready, or has failed to start
    app = App(config, bot, api, Events(ready=lambda app: settled.set()), owner=TERMINAL)
    runner = threading.Thread(target=_run, args=(app, settled), name="daemon", daemon=True)
    runner.start()
    if not settled.wait(30) or app.failure:
        raise app.failure or RuntimeError("the bot did not start")
    api.continue_after(app.store.last_update_id())
    interactive = stdin.isatty()
    user = terminal.users.current
    print(BANNER.format(name=user["first_name"], chat_id=user["id"]),
          file=out if interactive else (err or sys.stderr), flush=True)
    try:
        while True:
            if interactive:
                print("you: ", end="", file=out, flush=True)
            line = stdin.readline()
            if not line:
                break
            line = readable(line.rstrip("\n"))
            if not line.strip():
                continue
            if not interactive:
                print(f"you: {line}", file=out, flush=True)
            if terminal.command(line):
                continue
            update = terminal.to_update(line)
            if update is None:
                continue
            shown = terminal.shown
            _wait_until_handled(app, api.push(*update))
            if terminal.shown == shown:
                print(SILENCE, file=out, flush=True)
    finally:
        app.stop()
        runner.join(config.stop_timeout + 5)
    if app.failure:
        raise app.failure


def readable(line: str) -> str:
    """`line` as text Telegram could have sent: bytes that were not UTF-8 (read from a pipe,
    they arrive as lone surrogates) become U+FFFD, as the inbox cannot store them."""
    if line.isascii():
        return line
    try:
        raw = line.encode("utf-8", "surrogateescape")   # the bytes as read
    except UnicodeEncodeError:
        raw = line.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def _run(app: App, settled: threading.Event) -> None:
    try:
        app.run(install_signals=False)
    except BaseException as exc:  # reported by chat() in the main thread
        app.failure = exc
        app.stop()
    finally:
        settled.set()


def _wait_until_handled(app: App, update_id: int) -> None:
    """Until the update is done and what it set off (rows for other chats) too, bounded."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while not app.store.is_done(update_id):
        if time.monotonic() > deadline or app.stop_event.is_set():
            log.warning("no answer within %.0f s", ANSWER_TIMEOUT)
            return
        time.sleep(0.01)
    settle = time.monotonic() + SETTLE_SECONDS
    while app.store.backlog() and time.monotonic() < settle and not app.stop_event.is_set():
        time.sleep(0.01)
