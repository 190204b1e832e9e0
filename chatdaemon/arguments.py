"""Bot API parameters from Python call arguments, telepot 12's way.

`self.bot.sendMessage(chat_id, text)` and `sender.sendPhoto(open('snap.jpg', 'rb'))` read as
they did in telepot: positional arguments follow telepot 12's order (`SIGNATURES`), None
arguments are left out, namedtuples become JSON objects, an open binary file (or a
`(filename, file)` pair) becomes an `Upload` that the sender posts as multipart, and a
number given as text is sent as its digits. Both a bot's own ChatHandler and a telepot
program under `chatdaemon telepot` build their calls here.
"""

from __future__ import annotations

from typing import Any

from .transfer import Upload

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

FILE_PARAMS = frozenset({"photo", "audio", "document", "video", "voice", "video_note",
                         "sticker", "thumb", "certificate", "png_sticker"})
TEXT_PARAMS = ("text", "caption")


def message_identifier(msg: dict) -> tuple:
    """(chat_id, message_id) of a message, or (inline_message_id,) of an inline one."""
    if "chat" in msg and "message_id" in msg:
        return msg["chat"]["id"], msg["message_id"]
    if "inline_message_id" in msg:
        return (msg["inline_message_id"],)
    raise ValueError("the message has neither chat and message_id nor inline_message_id")


def to_api(value: Any) -> Any:
    """A value as the Bot API's JSON expects it: namedtuples become objects without Nones."""
    if isinstance(value, tuple) and hasattr(value, "_asdict"):
        return {key: to_api(item) for key, item in value._asdict().items() if item is not None}
    if isinstance(value, dict):
        return {key: to_api(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [to_api(item) for item in value]
    return value


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
    """Python values → Bot API parameters: None left out, files as uploads, numbers as text."""
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
