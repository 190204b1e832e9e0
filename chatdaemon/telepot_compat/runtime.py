"""One telepot program's link to the daemon: its token, its message loop, its Bot API calls.

The program's top level runs in its own thread. It makes a Bot (the runtime learns the
token) and starts a message loop (the runtime learns where updates go); that is the
moment the daemon starts, in the main thread. From then on the program's Bot API calls go
through chatdaemon's sender; before it, straight to the Bot API.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .. import errors
from ..telegram import MAX_CONNECTIONS, TelegramClient
from . import exception
from .chat import refuse_chatless, route_for
from .transport import FileAPI

if TYPE_CHECKING:
    from .chat import TelepotChat

log = logging.getLogger(__name__)


class Runtime:
    """What the program registered, and the way its calls leave the process."""

    def __init__(self, api_url: str, pool_size: int = MAX_CONNECTIONS):
        self.api_url = api_url
        self.pool_size = pool_size
        self.token: str | None = None
        self.api: FileAPI | None = None
        self.route: Any = None             # where updates go (see chat.route_for)
        self.allowed_updates: tuple[str, ...] | None = None
        self.idle_timeout: float | None = None
        self._sender: Any = None
        self._lock = threading.Lock()
        self._settled = threading.Event()   # the loop started, or the program ended
        self._local = threading.local()     # the chat whose update this thread is handling

    # -- what the program does -------------------------------------------------------------

    def saw_token(self, token: str) -> None:
        """A Bot was made; the first token is the program's (one bot per process)."""
        with self._lock:
            if self.token is None:
                self.token = token
                self.api = FileAPI(TelegramClient(token, self.api_url, pool_size=self.pool_size),
                                   token, self.api_url)
            elif token != self.token:
                raise exception.Unsupported("one bot per process: this program already made a Bot "
                                            "with another token")

    def start_loop(self, bot: Any, callback: Any, allowed_updates: Any, block: bool) -> None:
        """The program's message loop starts: remember where updates go, wake the daemon."""
        route = route_for(bot, callback)
        if allowed_updates is not None:
            refuse_chatless(allowed_updates, "allowed_updates")
        with self._lock:
            if self.route is not None:
                raise exception.Unsupported("the message loop is already running")
            self.route = route
            self.idle_timeout = route.idle_timeout
            if allowed_updates is not None:
                self.allowed_updates = tuple(allowed_updates)
        self._settled.set()
        if block:  # run_forever: the program's thread stays here for the life of the process
            threading.Event().wait()

    def program_ended(self) -> None:
        self._settled.set()

    def wait_settled(self, timeout: float | None = None) -> bool:
        return self._settled.wait(timeout)

    # -- the daemon's side ---------------------------------------------------------------------

    def use_sender(self, sender: Any) -> None:
        """From now on calls go through chatdaemon's sender (flood limits, 429, retries)."""
        self._sender = sender

    def attach(self, app: Any) -> None:
        """Events.ready: the daemon is up."""
        self.use_sender(app.sender)

    @contextlib.contextmanager
    def handling(self, chat: TelepotChat) -> Iterator[None]:
        """This thread is handling an update of `chat` until the block ends."""
        previous = getattr(self._local, "chat", None)
        self._local.chat = chat
        try:
            yield
        finally:
            self._local.chat = previous

    # -- the program's calls -------------------------------------------------------------------

    def call(self, method: str, params: dict) -> Any:
        """One Bot API call; chatdaemon's TelegramError comes out as telepot's."""
        chat = getattr(self._local, "chat", None)
        try:
            if method == "answerCallbackQuery" and chat is not None:
                return chat.answer_callback(params)  # the delegate then does not answer it again
            if self._sender is not None:
                return self._sender.call(method, params)
            return self._require_api().call(method, params)
        except errors.TelegramError as exc:
            raise exception.from_native(exc) from None

    def close(self) -> None:
        if self.api is not None:
            self.api.close()

    def download(self, file_path: str, dest: Any) -> int:
        try:
            return self._require_api().download(file_path, dest)
        except errors.TelegramError as exc:  # the file server's refusal, as telepot raised it
            raise exception.BadHTTPResponse(exc.status, exc.description) from None

    def _require_api(self) -> FileAPI:
        if self.api is None:
            raise exception.Unsupported("make a telepot.Bot(TOKEN) first")
        return self.api
