"""The `telepot` module a telepot program imports: Bot, DelegatorBot, glance, flavor.

Bot methods keep telepot 12's positional signatures (`sendMessage(chat_id, text, ...)`);
None arguments are left out, namedtuples become JSON objects, an open file (or a
`(filename, file)` pair) becomes a multipart upload, and a number sent as text is sent as
its digits. Calls go through chatdaemon's sender once the daemon runs (rate limits, 429
waits, retries), and straight to the Bot API before that.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any

from ..arguments import SIGNATURES, bind_arguments, message_identifier  # noqa: F401 - telepot.message_identifier
from ..chathandler import CONTENT_TYPES
from . import exception
from .exception import BadFlavor, Unsupported

if TYPE_CHECKING:
    from .runtime import Runtime

__version__ = "12.7"

# The daemon owns the long poll: a program polling or setting a webhook itself would take
# updates past the durable inbox.
OWNED_BY_DAEMON = frozenset({"getUpdates", "setWebhook", "deleteWebhook"})
_API_METHOD = re.compile(r"[a-z]+[A-Z][A-Za-z]*")
CONTENT_TYPE_ORDER = CONTENT_TYPES + ("new_chat_member",)


# -- looking at a message --------------------------------------------------------------------

def flavor(msg: dict) -> str:
    """telepot's flavor: 'chat', 'callback_query', 'inline_query', 'chosen_inline_result', …"""
    if "message_id" in msg:
        return "chat"
    if "id" in msg and "chat_instance" in msg:
        return "callback_query"
    if "id" in msg and "query" in msg:
        return "inline_query"
    if "result_id" in msg:
        return "chosen_inline_result"
    if "id" in msg and "shipping_address" in msg:
        return "shipping_query"
    if "id" in msg and "total_amount" in msg:
        return "pre_checkout_query"
    if len(msg) == 1:
        return next(iter(msg))  # an event such as {'_idle': {...}}
    raise BadFlavor(msg)


def _content_type(msg: dict) -> str:
    for content_type in CONTENT_TYPE_ORDER:
        if content_type in msg:
            return content_type
    raise KeyError(f"no known content type in message {msg.get('message_id')}")


def glance(msg: dict, flavor: str = "chat", long: bool = False) -> tuple:
    """telepot 12's glance: the few fields a handler looks at first, by flavor."""
    if flavor in ("chat", "normal", "message"):
        head = (_content_type(msg), msg["chat"]["type"], msg["chat"]["id"])
        return head + (msg["date"], msg["message_id"]) if long else head
    if flavor == "callback_query":
        head = (msg["id"], msg["from"]["id"], msg["data"])
        return head + (msg["chat_instance"],) if long else head
    if flavor == "inline_query":
        head = (msg["id"], msg["from"]["id"], msg["query"])
        return head + (msg["offset"],) if long else head
    if flavor == "chosen_inline_result":
        return msg["result_id"], msg["from"]["id"], msg["query"]
    if flavor in ("shipping_query", "pre_checkout_query"):
        return msg["id"], msg["from"]["id"], msg["invoice_payload"]
    raise BadFlavor(flavor)


def glance2(msg: dict, flavor: str = "normal", long: bool = False) -> tuple:
    """telepot 3/4's name for glance; its chat flavor was called 'normal'."""
    return glance(msg, flavor, long)


def is_event(msg: dict) -> bool:
    """An internal event such as {'_idle': {...}}, not a Telegram object."""
    return len(msg) == 1 and next(iter(msg)).startswith("_")


def origin_identifier(msg: dict) -> tuple:
    """The message a callback query came from."""
    if "message" in msg:
        return msg["message"]["chat"]["id"], msg["message"]["message_id"]
    if "inline_message_id" in msg:
        return (msg["inline_message_id"],)
    raise ValueError("the callback query has no origin")


# -- the bots --------------------------------------------------------------------------------

class Bot:
    """telepot.Bot: the Bot API methods, and the message loop that starts the daemon."""

    runtime: Runtime | None = None  # set on the classes bound to one program (see bind())

    def __init__(self, token: str):
        if self.runtime is None:
            raise Unsupported("this telepot runs under `chatdaemon telepot SCRIPT` only")
        self._runtime: Runtime = self.runtime   # an instance exists only of a bound class
        self._token = token
        self._runtime.saw_token(token)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (token redacted)>"

    def __getattr__(self, name: str):
        if name in SIGNATURES or _API_METHOD.fullmatch(name):
            return lambda *args, **kwargs: self.call(name, *args, **kwargs)
        raise AttributeError(name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a Bot API method with telepot's arguments; TelegramError on a refusal."""
        if method in OWNED_BY_DAEMON:
            raise Unsupported(f"{method}: chatdaemon's poller owns getUpdates and the webhook "
                              "under `chatdaemon telepot`")
        return self._runtime.call(method, bind_arguments(method, args, kwargs))

    def download_file(self, file_id: str, dest: Any) -> None:
        """Save the file `file_id` to `dest`, a path or a file opened for binary writing."""
        found = self.getFile(file_id)
        if not isinstance(found, dict) or "file_path" not in found:
            # Telegram answered, with no error code: the answer just lacks the path
            raise exception.TelegramError("No file_path returned", 0, method="getFile")
        if isinstance(dest, io.IOBase):
            self._runtime.download(found["file_path"], dest)
            return
        with open(dest, "wb") as handle:
            self._runtime.download(found["file_path"], handle)

    def message_loop(self, callback: Any = None, relax: float = 0.1, timeout: int = 20,
                     allowed_updates: Any = None, source: Any = None, ordered: bool = True,
                     maxhold: float = 3, run_forever: Any = False) -> None:
        """Hand every update to `callback` (a function or a {flavor: function} table)."""
        if source is not None:
            raise Unsupported("message_loop(source=...): a webhook queue is not supported; "
                              "chatdaemon polls Telegram itself")
        if isinstance(run_forever, str):
            print(run_forever, flush=True)
        self._runtime.start_loop(self, callback, allowed_updates, block=bool(run_forever))

    def notifyOnMessage(self, callback: Any = None, relax: float = 0.1, timeout: int = 20,
                        source: Any = None, ordered: bool = True, maxhold: float = 3,
                        run_forever: bool = False) -> None:
        """telepot 3's message_loop."""
        self.message_loop(callback, relax, timeout, None, source, ordered, maxhold, run_forever)


class DelegatorBot(Bot):
    """A Bot whose updates go to per-seed delegates made by its delegation patterns."""

    def __init__(self, token: str, delegation_patterns: list):
        super().__init__(token)
        self.delegation_patterns = [tuple(pattern) for pattern in delegation_patterns]
        for pattern in self.delegation_patterns:
            if len(pattern) != 2 or not all(callable(part) for part in pattern):
                raise TypeError("a delegation pattern is (seeder, delegator factory)")

    @property
    def idle_timeout(self) -> float | None:
        """The shortest `timeout=` among the patterns' handlers, if any."""
        timeouts = [getattr(factory, "timeout", None) for _, factory in self.delegation_patterns]
        known = [float(t) for t in timeouts if t is not None]
        return min(known) if known else None


def bind(runtime: Runtime) -> tuple[type[Bot], type[DelegatorBot]]:
    """Bot and DelegatorBot classes whose instances talk through `runtime`."""
    bound_bot = type("Bot", (Bot,), {"runtime": runtime, "__module__": "telepot"})
    bound_delegator = type("DelegatorBot", (DelegatorBot, bound_bot),
                           {"runtime": runtime, "__module__": "telepot"})
    return bound_bot, bound_delegator
