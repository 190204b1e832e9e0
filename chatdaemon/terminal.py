"""`chatdaemon chat`: talk to a bot in the terminal through the real daemon, no token, no network.

Each line typed (or piped in) becomes a Telegram message from one user; the bot's answers
are printed, keyboards and inline buttons as numbered choices that a number picks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, TextIO

from .app import App, Events
from .bots import Bot
from .config import Config
from .dbfile import TERMINAL
from .local import LocalTelegram

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger(__name__)

USER = {"id": 1001, "is_bot": False, "first_name": "You", "username": "you"}
ANSWER_TIMEOUT = 60.0


class Terminal:
    """Prints what the bot sends and turns typed lines into updates."""

    def __init__(self, out: TextIO):
        self.out = out
        self.lock = threading.Lock()
        self.choices: list[tuple[str, str]] = []  # (kind, value): ("text", …) or ("callback", data)

    def show(self, method: str, params: dict) -> None:
        with self.lock:
            if method in ("sendMessage", "editMessageText"):
                prefix = "bot (edited): " if method == "editMessageText" else "bot: "
                self._print(prefix + params.get("text", ""))
                self._show_markup(params.get("reply_markup"))
            elif method == "answerCallbackQuery":
                if params.get("text"):
                    self._print(f"bot (notice): {params['text']}")
            elif method.startswith("send"):
                what = method[4:].lower()
                self._print(f"bot sends a {what}: {params.get('caption', '')}".rstrip(": "))

    def _show_markup(self, markup) -> None:
        if not isinstance(markup, dict):
            return
        if markup.get("remove_keyboard"):
            self.choices = []
            return
        rows = markup.get("keyboard") or markup.get("inline_keyboard")
        if not rows:
            return
        inline = "inline_keyboard" in markup
        self.choices = []
        for row in rows:
            for button in row:
                label = button if isinstance(button, str) else button.get("text", "")
                if inline:
                    self.choices.append(("callback", button.get("callback_data", label)))
                else:
                    self.choices.append(("text", label))
                self._print(f"  [{len(self.choices)}] {label}")

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def to_update(self, line: str) -> tuple[str, dict]:
        """A typed line as an update: a number picks a shown choice, anything else is text."""
        with self.lock:
            choices = list(self.choices)
        if line.strip().isdigit() and 1 <= int(line) <= len(choices):
            kind, value = choices[int(line) - 1]
            if kind == "callback":
                message = {"message_id": 0, "chat": _chat(), "date": int(time.time())}
                return "callback_query", {"id": f"cq{time.monotonic_ns()}", "from": USER,
                                          "chat_instance": "local", "message": message,
                                          "data": value}
            line = value
        return "message", {"from": USER, "chat": _chat(), "text": line}


def _chat() -> dict:
    return {"id": USER["id"], "type": "private", "first_name": USER["first_name"]}


def chat(config: Config, bot: Bot, stdin: TextIO, out: TextIO) -> None:
    """Run the bot with a LocalTelegram and feed it stdin, one line at a time, until EOF."""
    terminal = Terminal(out)
    api = LocalTelegram(terminal.show)
    settled = threading.Event()  # set when the daemon is ready, or has failed to start
    app = App(config, bot, api, Events(ready=lambda app: settled.set()), owner=TERMINAL)
    runner = threading.Thread(target=_run, args=(app, settled), name="daemon", daemon=True)
    runner.start()
    if not settled.wait(30) or app.failure:
        raise app.failure or RuntimeError("the bot did not start")
    store = app.store
    assert store is not None   # the app started, so its store is open until it stops
    api.continue_after(store.last_update_id())
    interactive = stdin.isatty()
    try:
        while True:
            if interactive:
                print("you: ", end="", file=out, flush=True)
            line = stdin.readline()
            if not line:
                break
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if not interactive:
                print(f"you: {line}", file=out, flush=True)
            update_id = api.push(*terminal.to_update(line))
            _wait_until_handled(app, store, update_id)
    finally:
        app.stop()
        runner.join(config.stop_timeout + 5)
    if app.failure:
        raise app.failure


def _run(app: App, settled: threading.Event) -> None:
    try:
        app.run(install_signals=False)
    except BaseException as exc:  # reported by chat() in the main thread
        app.failure = exc
        app.stop()
    finally:
        settled.set()


def _wait_until_handled(app: App, store: Store, update_id: int) -> None:
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while time.monotonic() < deadline and not app.stop_event.is_set():
        if store.is_done(update_id):
            return
        time.sleep(0.01)
    log.warning("no answer within %.0f s", ANSWER_TIMEOUT)
