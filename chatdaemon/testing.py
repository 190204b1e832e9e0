"""A bot in memory for its author's tests: no token, no network, no process, no threads.

    from chatdaemon.testing import TestBot

    bot = TestBot("handlers/counter")
    bot.send("hello", chat=1)
    assert bot.pop() == "1"

`TestBot` loads a bot directory as the daemon does (YAML or a Python ChatHandler) and runs
each update through the real update transaction, pipeline and sender, against an SQLite
store in memory and the in-process stand-in for Telegram that `chatdaemon chat` uses. An
update is handled, committed and answered before `send` returns.

One difference from the daemon: nothing runs between two calls, so a handler waiting in
`listener.wait()` gets the updates already queued (`queue`), then WaitTooLong.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from .bots import load_bot
from .errors import IdleTerminate, TelegramError
from .inbox import to_row
from .local import LocalTelegram
from .ratelimit import Limits, RateLimiter
from .sender import Sender
from .store import Store
from .transaction import UpdateTransaction

MAX_ROUNDS = 1000   # updates one call may handle: a handler that keeps queueing work stops here
TEXT_METHODS = ("sendMessage", "editMessageText")


class NoReply(AssertionError):
    """`pop()` found no message the bot sent that was not read yet."""


@dataclass(frozen=True)
class Call:
    """One Bot API call the bot made: its method and parameters (an upload as an Upload)."""

    method: str
    params: dict
    result: Any = None   # what the stand-in answered (a sent message, True, …)

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")


class _Telegram(LocalTelegram):
    """The local stand-in, recording every call and serving the files a test put there."""

    def __init__(self) -> None:
        super().__init__(lambda method, params: None)
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}

    def call(self, method: str, params: dict | None = None, timeout: float | None = None) -> Any:
        params = dict(params or {})
        if method == "getFile":
            result = self._get_file(params.get("file_id"))
        else:
            result = super().call(method, params, timeout)  # refuses what Telegram would (400)
        self.calls.append(Call(method, params, result))
        return result

    def _get_file(self, file_id: Any) -> dict:
        if file_id not in self.files:
            raise TelegramError("getFile", 400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_size": len(self.files[file_id]), "file_path": file_id}

    def download(self, file_path: str, dest: IO[bytes]) -> int:
        data = self.files[file_path]
        dest.write(data)
        return len(data)


class _Slot:
    """The thread side of a transaction, for one call at a time: nothing else is running."""

    abandoned = False

    def __init__(self) -> None:
        self.woken: list[int] = []   # chats that committed rows for other chats woke

    def handling(self, update_id: int | None) -> None:
        pass

    def handled(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def wait_for_work(self, timeout: float | None) -> str | None:
        return "idle"  # listener.wait(): no update will come while the handler waits

    def hold_chat(self, chat_id: int) -> None:
        pass

    def release_chat(self, chat_id: int) -> None:
        pass

    def count(self, name: str) -> None:
        pass

    def wake(self, chat_ids: list[int]) -> None:
        self.woken.extend(chat_ids)   # served by TestBot.run once the waking update is done


class TestBot:
    """The bot in `directory`, answering in memory; one conversation per chat id."""

    __test__ = False  # a tool for tests, not a test class for pytest to collect

    def __init__(self, directory: str, environ: dict[str, str] | None = None):
        self.bot = load_bot(directory, environ=environ)
        self.store = Store(":memory:")
        self.telegram = _Telegram()
        stop = threading.Event()
        self.sender = Sender(self.telegram, RateLimiter(Limits(enabled=False)), stop)
        self._slot = _Slot()
        self._chats: dict[int, UpdateTransaction] = {}
        self._update_ids = itertools.count(1)
        self._read = 0   # calls already looked at by pop()/replies()
        self._unread: deque[Call] = deque()

    # -- what a user does ----------------------------------------------------------------------

    def send(self, text: str | None, chat: int = 1, user: dict | int | None = None,
             **fields: Any) -> None:
        """A message from `user` (an id or a User object; by default the chat's own user).

        `fields` go into the message as they are (photo=[…], reply_to_message={…}, …);
        text None sends a message without text (a photo, a location, …)."""
        self.queue(text, chat=chat, user=user, **fields)
        self.run(chat)

    def queue(self, text: str | None, chat: int = 1, user: dict | int | None = None,
              **fields: Any) -> None:
        """Like `send`, but only into the inbox: `run` (or the next `send`) handles it."""
        update_id = next(self._update_ids)
        message = {"message_id": update_id, "date": int(time.time()), "chat": self._chat(chat),
                   "from": self._user(user, chat), **fields}
        if text is not None:
            message["text"] = text
        self._add({"update_id": update_id, "message": message})

    def press(self, data: str, chat: int = 1, user: dict | int | None = None,
              message: dict | None = None) -> None:
        """An inline button with callback_data `data` pressed, on `message` (by default the
        last message the bot sent to the chat)."""
        update_id = next(self._update_ids)
        query = {"id": f"query-{update_id}", "from": self._user(user, chat), "chat_instance": str(chat),
                 "data": data, "message": message or self._last_message(chat)}
        self._add({"update_id": update_id, "callback_query": query})
        self.run(chat)

    def tick(self, schedule: str, chat: int = 1) -> None:
        """A tick of the chat's schedule `schedule` (dropped unless the chat started it)."""
        self.store.add_local([(chat, "schedule", {"name": schedule, "at": time.time()})])
        self.run(chat)

    def idle(self, chat: int = 1, seconds: float | None = None) -> None:
        """The chat's idle timeout passes: its handler's on_close gets IdleTerminate."""
        self.end(chat, IdleTerminate(seconds))

    def end(self, chat: int = 1, reason: str | BaseException = "idle") -> None:
        """The daemon closes the chat's handler: "idle", "evicted", "reload" (or an exception
        for on_close); the chat's next update meets a new handler."""
        transaction = self._chats.pop(chat, None)
        if transaction is not None:
            transaction.close(reason)

    def run(self, chat: int = 1) -> None:
        """Handle the chat's queued updates, each committed before the next, as a delegate does;
        then those of the chats they woke (a handoff's operators), as the daemon does."""
        self._serve(chat)
        for _ in range(MAX_ROUNDS):
            if not self._slot.woken:
                return
            woken, self._slot.woken = list(dict.fromkeys(self._slot.woken)), []
            for other in woken:
                self._serve(other)
        raise RuntimeError(f"chats still woke each other after {MAX_ROUNDS} rounds")

    def _serve(self, chat: int) -> None:
        transaction = self._transaction(chat)
        for _ in range(MAX_ROUNDS):
            rows = self.store.pending(chat)
            if not rows:
                return
            for row in rows:
                transaction.handle(row)
                if transaction.moved_on:
                    break
        raise RuntimeError(f"chat {chat}: still updates after {MAX_ROUNDS} rounds")

    # -- what the bot did ---------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every Bot API call the bot made, oldest first."""
        return list(self.telegram.calls)

    @property
    def files(self) -> dict[str, bytes]:
        """file_id → bytes: the files `bot.download_file` finds."""
        return self.telegram.files

    def pop(self) -> str:
        """The oldest message text the bot sent (to any chat) that was not read yet."""
        self._collect()
        if not self._unread:
            raise NoReply("the bot sent no message that was not read yet")
        return self._unread.popleft().params.get("text", "")

    def replies(self, chat: int | None = None) -> list[str]:
        """The texts the bot sent to `chat` (every chat: None) not read yet; they are read now."""
        self._collect()
        mine: list[Call] = []
        others: deque[Call] = deque()
        for call in self._unread:
            (mine if chat is None or call.chat_id == chat else others).append(call)
        self._unread = others
        return [call.params.get("text", "") for call in mine]

    def state(self, chat: int = 1) -> str | None:
        """The conversation state the chat's last update committed."""
        return self.store.load_conversation(chat).state

    def vars(self, chat: int = 1) -> dict:
        """The variables the chat's last update committed."""
        return self.store.load_conversation(chat).vars

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TestBot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inside ----------------------------------------------------------------------------

    def _transaction(self, chat: int) -> UpdateTransaction:
        transaction = self._chats.get(chat)
        if transaction is None:
            transaction = UpdateTransaction(chat, self.store, self.sender, self.bot, self._slot,
                                            sleep=lambda seconds: False)
            self._chats[chat] = transaction
        return transaction

    def _add(self, update: dict) -> None:
        row = to_row(update)
        assert row is not None
        self.store.add_updates([row])

    def _collect(self) -> None:
        calls = self.telegram.calls
        for call in calls[self._read:]:
            if call.method in TEXT_METHODS:
                self._unread.append(call)
        self._read = len(calls)

    def _last_message(self, chat: int) -> dict:
        for call in reversed(self.telegram.calls):
            if call.method == "sendMessage" and call.chat_id == chat and isinstance(call.result, dict):
                message = {**call.result, "chat": self._chat(chat)}
                if "reply_markup" in call.params:
                    message["reply_markup"] = call.params["reply_markup"]
                return message
        return {"message_id": 0, "date": int(time.time()), "chat": self._chat(chat)}

    @staticmethod
    def _chat(chat: int) -> dict:
        return {"id": chat, "type": "private" if chat > 0 else "group"}

    @staticmethod
    def _user(user: dict | int | None, chat: int) -> dict:
        if isinstance(user, dict):
            return user
        user_id = user if user is not None else abs(chat)
        return {"id": user_id, "is_bot": False, "first_name": f"User {user_id}"}
