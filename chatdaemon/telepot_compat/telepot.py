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

from ..chathandler import CONTENT_TYPES
from . import exception
from .exception import BadFlavor, Unsupported
from .namedtuple import to_api
from .transport import Upload

if TYPE_CHECKING:
    from .runtime import Runtime

__version__ = "12.7"

# Parameter names of each method in telepot 12's positional order.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "getMe": (),
    "sendMessage": ("chat_id", "text", "parse_mode", "disable_web_page_preview",
                    "disable_notification", "reply_to_message_id", "reply_markup"),
    "forwardMessage": ("chat_id", "from_chat_id", "message_id", "disable_notification"),
    "sendPhoto": ("chat_id", "photo", "caption", "parse_mode", "disable_notification",
                  "reply_to_message_id", "reply_markup"),
    "sendAudio": ("chat_id", "audio", "caption", "parse_mode", "duration", "performer", "title",
                  "disable_notification", "reply_to_message_id", "reply_markup"),
    "sendDocument": ("chat_id", "document", "caption", "parse_mode", "disable_notification",
                     "reply_to_message_id", "reply_markup"),
    "sendVideo": ("chat_id", "video", "duration", "width", "height", "caption", "parse_mode",
                  "supports_streaming", "disable_notification", "reply_to_message_id",
                  "reply_markup"),
    "sendVoice": ("chat_id", "voice", "caption", "parse_mode", "duration", "disable_notification",
                  "reply_to_message_id", "reply_markup"),
    "sendVideoNote": ("chat_id", "video_note", "duration", "length", "disable_notification",
                      "reply_to_message_id", "reply_markup"),
    "sendSticker": ("chat_id", "sticker", "disable_notification", "reply_to_message_id",
                    "reply_markup"),
    "sendMediaGroup": ("chat_id", "media", "disable_notification", "reply_to_message_id"),
    "sendLocation": ("chat_id", "latitude", "longitude", "live_period", "disable_notification",
                     "reply_to_message_id", "reply_markup"),
    "sendVenue": ("chat_id", "latitude", "longitude", "title", "address", "foursquare_id",
                  "disable_notification", "reply_to_message_id", "reply_markup"),
    "sendContact": ("chat_id", "phone_number", "first_name", "last_name",
                    "disable_notification", "reply_to_message_id", "reply_markup"),
    "sendGame": ("chat_id", "game_short_name", "disable_notification", "reply_to_message_id",
                 "reply_markup"),
    "sendChatAction": ("chat_id", "action"),
    "getUserProfilePhotos": ("user_id", "offset", "limit"),
    "getFile": ("file_id",),
    "kickChatMember": ("chat_id", "user_id", "until_date"),
    "unbanChatMember": ("chat_id", "user_id"),
    "restrictChatMember": ("chat_id", "user_id", "until_date", "can_send_messages",
                           "can_send_media_messages", "can_send_other_messages",
                           "can_add_web_page_previews"),
    "exportChatInviteLink": ("chat_id",),
    "setChatPhoto": ("chat_id", "photo"),
    "deleteChatPhoto": ("chat_id",),
    "setChatTitle": ("chat_id", "title"),
    "setChatDescription": ("chat_id", "description"),
    "pinChatMessage": ("chat_id", "message_id", "disable_notification"),
    "unpinChatMessage": ("chat_id",),
    "leaveChat": ("chat_id",),
    "getChat": ("chat_id",),
    "getChatAdministrators": ("chat_id",),
    "getChatMembersCount": ("chat_id",),
    "getChatMember": ("chat_id", "user_id"),
    "answerCallbackQuery": ("callback_query_id", "text", "show_alert", "url", "cache_time"),
    "editMessageText": ("msg_identifier", "text", "parse_mode", "disable_web_page_preview",
                        "reply_markup"),
    "editMessageCaption": ("msg_identifier", "caption", "parse_mode", "reply_markup"),
    "editMessageReplyMarkup": ("msg_identifier", "reply_markup"),
    "deleteMessage": ("msg_identifier",),
    "editMessageLiveLocation": ("msg_identifier", "latitude", "longitude", "reply_markup"),
    "stopMessageLiveLocation": ("msg_identifier", "reply_markup"),
    "getStickerSet": ("name",),
    "answerInlineQuery": ("inline_query_id", "results", "cache_time", "is_personal",
                          "next_offset", "switch_pm_text", "switch_pm_parameter"),
    "setGameScore": ("user_id", "score", "game_message_identifier", "force",
                     "disable_edit_message"),
    "getGameHighScores": ("user_id", "game_message_identifier"),
}

# The daemon owns the long poll: a program polling or setting a webhook itself would take
# updates past the durable inbox.
OWNED_BY_DAEMON = frozenset({"getUpdates", "setWebhook", "deleteWebhook"})
FILE_PARAMS = frozenset({"photo", "audio", "document", "video", "voice", "video_note",
                         "sticker", "thumb", "certificate", "png_sticker"})
TEXT_PARAMS = ("text", "caption")
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


def message_identifier(msg: dict) -> tuple:
    """(chat_id, message_id) of a message, or (inline_message_id,) of an inline one."""
    if "chat" in msg and "message_id" in msg:
        return msg["chat"]["id"], msg["message_id"]
    if "inline_message_id" in msg:
        return (msg["inline_message_id"],)
    raise ValueError("the message has neither chat and message_id nor inline_message_id")


def origin_identifier(msg: dict) -> tuple:
    """The message a callback query came from."""
    if "message" in msg:
        return msg["message"]["chat"]["id"], msg["message"]["message_id"]
    if "inline_message_id" in msg:
        return (msg["inline_message_id"],)
    raise ValueError("the callback query has no origin")


# -- turning telepot arguments into Bot API parameters ---------------------------------------

def bind_arguments(method: str, args: tuple, kwargs: dict) -> dict:
    """Positional and keyword arguments → the method's Bot API parameters."""
    if args and method not in SIGNATURES:
        raise TypeError(f"{method}(): pass its parameters by name (chat_id=..., ...)")
    names = SIGNATURES.get(method, ())
    if len(args) > len(names):
        raise TypeError(f"{method}() takes {len(names)} positional arguments "
                        f"but {len(args)} were given")
    params = dict(zip(names, args, strict=False))
    for key in kwargs:
        if key in params:
            raise TypeError(f"{method}() got multiple values for argument {key!r}")
    params.update(kwargs)
    return to_parameters(params)


def to_parameters(params: dict) -> dict:
    result: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if key in ("msg_identifier", "game_message_identifier"):
            result.update(_identifier(value))
        elif key in FILE_PARAMS and not isinstance(value, str):
            result[key] = Upload.of(value, key)
        elif key in TEXT_PARAMS and isinstance(value, int | float) and not isinstance(value, bool):
            result[key] = str(value)  # telepot sent form fields, so a number went as its digits
        else:
            result[key] = to_api(value)
    return result


def _identifier(value: Any) -> dict:
    if isinstance(value, dict):
        value = message_identifier(value)
    if isinstance(value, tuple | list):
        if len(value) == 2:
            return {"chat_id": value[0], "message_id": value[1]}
        if len(value) == 1:
            return {"inline_message_id": value[0]}
        raise ValueError("a message identifier is (chat_id, message_id) or (inline_message_id,)")
    return {"inline_message_id": value}


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
