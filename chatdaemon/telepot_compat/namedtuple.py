"""telepot.namedtuple: the keyboard and inline types a program builds to send.

Each is a namedtuple whose fields default to None (a few to telepot's fixed values); the
Bot turns it into the Bot API's JSON object, leaving out the fields that are None.
"""

from __future__ import annotations

import collections
from typing import Any

from ..arguments import to_api  # noqa: F401 - telepot.namedtuple's users import it here


def _create(name: str, fields: str, **defaults: Any) -> type:
    names = fields.split()
    values = tuple(defaults.get(field) for field in names)
    return collections.namedtuple(name, names, defaults=values)


KeyboardButton = _create("KeyboardButton", "text request_contact request_location")
ReplyKeyboardMarkup = _create(
    "ReplyKeyboardMarkup", "keyboard resize_keyboard one_time_keyboard selective")
ReplyKeyboardRemove = _create("ReplyKeyboardRemove", "remove_keyboard selective",
                              remove_keyboard=True)
ForceReply = _create("ForceReply", "force_reply selective", force_reply=True)
InlineKeyboardButton = _create(
    "InlineKeyboardButton",
    "text url callback_data switch_inline_query switch_inline_query_current_chat "
    "callback_game pay")
InlineKeyboardMarkup = _create("InlineKeyboardMarkup", "inline_keyboard")
InputTextMessageContent = _create(
    "InputTextMessageContent", "message_text parse_mode disable_web_page_preview")
InlineQueryResultArticle = _create(
    "InlineQueryResultArticle",
    "type id title input_message_content reply_markup url hide_url description thumb_url "
    "thumb_width thumb_height", type="article")
InputMediaPhoto = _create("InputMediaPhoto", "type media caption parse_mode", type="photo")
InputMediaVideo = _create(
    "InputMediaVideo", "type media caption parse_mode width height duration supports_streaming",
    type="video")
LabeledPrice = _create("LabeledPrice", "label amount")
