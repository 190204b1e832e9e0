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
from jinja2 import meta

from .errors import ConfigError
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
                extra_names: frozenset[str] = frozenset(), url: bool = False) -> Template:
        """A compiled template; a syntax error or an unknown name is a ConfigError at `where`.

        `url=True` compiles a request URL: every value is percent-encoded on the way in.
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
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError) as exc:
            raise TemplateError(self.where, f"{type(exc).__name__}: {exc}") from None


def _shift(where: str, lineno: int | None) -> str:
    """file:line of a template line, given where the template's YAML value starts."""
    path, _, line = where.rpartition(":")
    if not path or not line.isdigit() or not lineno:
        return where
    return f"{path}:{int(line) + lineno - 1}"
