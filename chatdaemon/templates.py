"""The templates: Jinja2 in its sandbox, compiled once at load, escaped to fit the parse mode.

One sandboxed environment per escaping mode:
- none: values go out as they are;
- HTML: every value is HTML-escaped (autoescape), so user text cannot inject tags;
- MarkdownV2: every value has Telegram's reserved characters backslash-escaped.
Undefined names fail loudly (StrictUndefined). A render is bounded in time, memory and
output (sandbox.py); past a bound it fails like any template error, naming the bound.
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from typing import Any

import jinja2
from jinja2 import meta, nodes

from .errors import ConfigError, ConfigErrors
from .sandbox import BoundedEnvironment, BoundExceeded

MAX_OUTPUT = 64 * 1024
_MARKDOWN_V2_RESERVED = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")

# The names a template may use (`check` rejects any other top-level name).
CONTEXT_NAMES = frozenset({"message", "chat", "user", "pattern", "state", "state_context", "vars",
                           "env", "emoji", "response", "now", "data", "callback", "tick"})

EMOJI = {
    "wave": "👋", "smile": "😄", "grin": "😁", "wink": "😉", "thumbsup": "👍", "thumbsdown": "👎",
    "ok": "👌", "clap": "👏", "pray": "🙏", "heart": "❤️", "star": "⭐", "sparkles": "✨",
    "fire": "🔥", "tada": "🎉", "rocket": "🚀", "check": "✅", "cross": "❌", "warning": "⚠️",
    "info": "ℹ️", "question": "❓", "exclamation": "❗", "bell": "🔔", "clock": "🕒",
    "hourglass": "⏳", "calendar": "📅", "package": "📦", "truck": "🚚", "money": "💰",
    "cart": "🛒", "phone": "📱", "email": "📧", "mailbox": "📫", "lock": "🔒", "key": "🔑",
    "bulb": "💡", "gear": "⚙️", "wrench": "🔧", "thermometer": "🌡️", "sun": "☀️", "cloud": "☁️",
    "rain": "🌧️", "snowflake": "❄️", "zap": "⚡", "die": "🎲", "dice": "🎲", "robot": "🤖",
    "person": "🧑", "busts": "👥", "speech": "💬", "point_right": "👉", "point_left": "👈",
    "up": "⬆️", "down": "⬇️", "house": "🏠", "pizza": "🍕", "coffee": "☕", "beer": "🍺",
    "sad": "😢", "thinking": "🤔", "eyes": "👀", "100": "💯",
}

EMOJI_NAMES = tuple(sorted(EMOJI))  # what `{{ emoji.NAME }}` accepts, for the documentation

# The fields of the Bot API objects a template sees (message, user, chat, callback), so a typo
# like user.frist_name is a load error instead of a failure when a user first triggers it.
USER_FIELDS = frozenset({
    "id", "is_bot", "first_name", "last_name", "username", "language_code", "is_premium",
    "added_to_attachment_menu", "can_join_groups", "can_read_all_group_messages",
    "supports_inline_queries", "can_connect_to_business", "has_main_web_app"})
CHAT_FIELDS = frozenset({"id", "type", "title", "username", "first_name", "last_name", "is_forum"})
MESSAGE_FIELDS = frozenset({
    "message_id", "message_thread_id", "from", "sender_chat", "sender_boost_count",
    "sender_business_bot", "date", "business_connection_id", "chat", "forward_origin",
    "forward_from", "forward_from_chat", "forward_from_message_id", "forward_signature",
    "forward_sender_name", "forward_date", "is_topic_message", "is_automatic_forward",
    "reply_to_message", "external_reply", "quote", "reply_to_story", "via_bot", "edit_date",
    "has_protected_content", "is_from_offline", "media_group_id", "author_signature", "text",
    "entities", "link_preview_options", "effect_id", "animation", "audio", "document",
    "paid_media", "photo", "sticker", "story", "video", "video_note", "voice", "caption",
    "caption_entities", "show_caption_above_media", "has_media_spoiler", "contact", "dice",
    "game", "poll", "venue", "location", "new_chat_members", "left_chat_member",
    "new_chat_title", "new_chat_photo", "delete_chat_photo", "group_chat_created",
    "supergroup_chat_created", "channel_chat_created", "message_auto_delete_timer_changed",
    "migrate_to_chat_id", "migrate_from_chat_id", "pinned_message", "invoice",
    "successful_payment", "refunded_payment", "users_shared", "chat_shared",
    "connected_website", "write_access_allowed", "passport_data", "proximity_alert_triggered",
    "boost_added", "chat_background_set", "forum_topic_created", "forum_topic_edited",
    "forum_topic_closed", "forum_topic_reopened", "general_forum_topic_hidden",
    "general_forum_topic_unhidden", "giveaway_created", "giveaway", "giveaway_winners",
    "giveaway_completed", "video_chat_scheduled", "video_chat_started", "video_chat_ended",
    "video_chat_participants_invited", "web_app_data", "reply_markup"})
CALLBACK_FIELDS = frozenset({"id", "from", "message", "inline_message_id", "chat_instance", "data",
                             "game_short_name"})
_SHAPES = {"message": ("Message", MESSAGE_FIELDS), "user": ("User", USER_FIELDS),
           "chat": ("Chat", CHAT_FIELDS), "callback": ("CallbackQuery", CALLBACK_FIELDS)}
_NESTED = {("message", "chat"): "chat", ("message", "sender_chat"): "chat",
           ("message", "from"): "user", ("message", "reply_to_message"): "message",
           ("callback", "from"): "user", ("callback", "message"): "message"}
_DICT_METHODS = frozenset({"get", "items", "keys", "values"})
ANY_PATTERN = object()  # compile(pattern=ANY_PATTERN): the regex is unknown, check no pattern.NAME


def escape_markdown_v2(value: Any) -> str:
    return _MARKDOWN_V2_RESERVED.sub(r"\\\1", str(value))


def _finalize_markdown(value: Any) -> Any:
    return escape_markdown_v2(value) if value is not None else ""


class Trusted(str):
    """A value of the bot author's (an env value): inserted into URLs without encoding."""


def url_value(value: Any) -> str:
    """How a template value goes into a URL: trusted as is, everything else fully encoded."""
    if isinstance(value, Trusted):
        return str(value)
    return urllib.parse.quote(str(value), safe="")


def _finalize_url(value: Any) -> Any:
    return url_value(value) if value is not None else ""


def _build(mode: str) -> BoundedEnvironment:
    options: dict[str, Any] = {"undefined": jinja2.StrictUndefined, "keep_trailing_newline": False}
    if mode == "HTML":
        options["autoescape"] = True
    elif mode == "MarkdownV2":
        options["finalize"] = _finalize_markdown
    elif mode == "url":
        options["finalize"] = _finalize_url
    env = BoundedEnvironment(**options)
    env.globals["now"] = datetime.datetime.now
    env.filters.pop("safe", None)  # `| safe` would let user text past the escaping
    return env


class Templates:
    """Compiles template strings at load time and remembers where each was written."""

    MODES = ("none", "HTML", "MarkdownV2")

    def __init__(self) -> None:
        self._envs = {mode: _build(mode) for mode in (*self.MODES, "url")}

    def compile(self, source: Any, where: str, parse_mode: str | None = None,
                extra_names: frozenset[str] = frozenset(), url: bool = False,
                pattern: Any = ANY_PATTERN) -> Template:
        """A compiled template; a syntax error or an unknown name is a ConfigError at `where`.

        `url=True` compiles a request URL: every value is percent-encoded on the way in.
        `pattern` is the compiled regex whose groups fill `pattern` (None: no regex, so
        `pattern` is empty there; ANY_PATTERN, the default: unknown, not checked).
        """
        if isinstance(source, bool) or source is None:
            raise ConfigError(f"YAML read this value as {source!r}: put it in quotes", where)
        if not isinstance(source, str):
            source = str(source)
        env = self._envs["url" if url else self.mode_of(parse_mode, where)]
        try:
            tree = env.parse(source)
            unknown = meta.find_undeclared_variables(tree) - CONTEXT_NAMES - extra_names
            compiled = env.from_string(env.guard(tree))
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"template error: {exc.message}", _shift(where, exc.lineno)) from None
        if unknown:
            raise ConfigError(f"template uses unknown name(s): {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(CONTEXT_NAMES))})", where)
        check_fields(tree, where, pattern)
        return Template(source, compiled, where, env)

    def mode_of(self, parse_mode: str | None, where: str) -> str:
        if parse_mode is None or str(parse_mode).lower() in ("", "none", "text"):
            return "none"
        for mode in self.MODES:
            if str(parse_mode).lower() == mode.lower():
                return mode
        if str(parse_mode) == "Markdown":
            raise ConfigError("parse_mode Markdown is legacy: use MarkdownV2 or HTML", where)
        raise ConfigError(f"unknown parse_mode {parse_mode!r} (HTML, MarkdownV2 or none)", where)


def check_fields(tree: nodes.Template, where: str, pattern: Any = ANY_PATTERN) -> None:
    """`emoji.NAME`, `pattern.NAME` and the fields of message, user, chat and callback must
    exist; every one that does not is a ConfigError at its line (all of them at once)."""
    local = {node.name for node in tree.find_all(nodes.Name) if node.ctx != "load"}
    problems = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)   # find_all yields what it was asked
        key = _field_key(node)
        shape = _shape_of(node.node, local)
        if key is None or shape is None or str(key).startswith("_"):
            continue  # _names are the sandbox's to refuse, at render
        problem = _field_problem(shape, _path(node.node), key, pattern)
        if problem:
            problems.append(ConfigError(problem, _shift(where, node.lineno)))
    if problems:
        raise ConfigErrors(problems)


def _field_key(node: nodes.Getattr | nodes.Getitem) -> Any:
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) else None


def _shape_of(node: nodes.Node, local: set[str]) -> str | None:
    """Which known object `node` is: a context name, or a field of one with a known shape."""
    if isinstance(node, nodes.Name):
        return node.name if node.name not in local else None
    if isinstance(node, nodes.Getattr):
        parent = _shape_of(node.node, local)
        return _NESTED.get((parent, node.attr)) if parent else None
    return None


def _path(node: nodes.Node) -> str:
    if isinstance(node, nodes.Getattr):
        return f"{_path(node.node)}.{node.attr}"
    return getattr(node, "name", "?")


def _field_problem(shape: str, path: str, key: Any, pattern: Any) -> str | None:
    if shape == "emoji":
        if key in EMOJI:
            return None
        return f"emoji.{key} is not one of the {len(EMOJI)} emoji names{_hint(key, EMOJI)}"
    if shape == "pattern":
        return _pattern_problem(key, pattern)
    if shape not in _SHAPES:
        return None
    type_name, fields = _SHAPES[shape]
    if key in fields or key in _DICT_METHODS:
        return None
    return f"{path}.{key} is not a field of a Telegram {type_name}{_hint(key, fields)}"


def _pattern_problem(key: Any, pattern: Any) -> str | None:
    if pattern is ANY_PATTERN:
        return None
    if pattern is None:
        return (f"pattern.{key} is always empty here: only a handler's own pattern "
                "fills `pattern`")
    groups = getattr(pattern, "groupindex", {})  # the same for re, regex and their kin
    if isinstance(key, int) and not isinstance(key, bool):
        if 0 <= key <= getattr(pattern, "groups", 0):
            return None
        return f"pattern[{key}]: the pattern {pattern.pattern!r} has no group {key}"
    if key in groups:
        return None
    named = ", ".join(sorted(groups)) or "none"
    return (f"pattern.{key}: the pattern {pattern.pattern!r} has no group named {key!r} "
            f"(its named groups: {named}){_hint(key, groups)}")


def _hint(key: Any, names: Any) -> str:
    import difflib  # only for a template that names something unknown
    close = difflib.get_close_matches(str(key), [str(name) for name in names], n=1)
    return f"; did you mean {close[0]}?" if close else ""


class TemplateError(Exception):
    """A template failed while rendering (an undefined name, a sandbox violation, a bound).

    `bound` names the bound a render went past ("time", "output", "size", "memory",
    "width", "iterations"), or is None for any other failure.
    """

    def __init__(self, where: str, message: str, bound: str | None = None):
        self.where = where
        self.bound = bound
        super().__init__(f"{where}: {message}")


class Template:
    __slots__ = ("source", "_compiled", "where", "is_literal", "_env")

    def __init__(self, source: str, compiled: jinja2.Template, where: str,
                 env: BoundedEnvironment):
        self.source = source
        self._compiled = compiled
        self.where = where
        self.is_literal = "{" not in source
        self._env = env

    def render(self, context: dict) -> str:
        if self.is_literal:
            return self.source
        try:
            return self._env.render(self._compiled, context, MAX_OUTPUT)
        except BoundExceeded as exc:
            raise TemplateError(self.where, f"past the {exc.bound} bound ({exc.limit:g}): "
                                f"{exc.detail}", bound=exc.bound) from None
        except jinja2.TemplateError as exc:
            raise TemplateError(self.where, f"{type(exc).__name__}: {exc}") from None
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError,
                OSError, AssertionError) as exc:
            # OSError: now().fromtimestamp(a huge number); AssertionError: how some of
            # Jinja2's filters check their arguments (truncate(-1))
            raise TemplateError(self.where, f"{type(exc).__name__}: {exc}") from None


def _shift(where: str, lineno: int | None) -> str:
    """file:line of a template line, given where the template's YAML value starts."""
    path, _, line = where.rpartition(":")
    if not path or not line.isdigit() or not lineno:
        return where
    return f"{path}:{int(line) + lineno - 1}"
