"""The daemon configuration: loaded once from YAML into a frozen object and passed explicitly.

Precedence: command-line options, then the config file, then these defaults.
Relative paths in a config file (`database`, `handlers`) are relative to the directory of
that file, not to wherever the daemon was started; on the command line they are relative to
the current directory as usual.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from . import yamlfile
from .chathandler import DEFAULT_ERROR_TEXT
from .errors import ConfigError
from .inbox import DEFAULT_ALLOWED_UPDATES
from .ratelimit import Limits
from .store import Retention
from .telegram import DEFAULT_API_URL

DEFAULT_HOOK_PORT = 8787


@dataclass(frozen=True)
class Config:
    api_url: str = DEFAULT_API_URL
    database: str = "chatdaemon.sqlite3"
    handlers: str = "handlers/counter"
    max_delegates: int = 64
    idle_timeout: float = 300.0
    update_timeout: float = 60.0          # a handler still busy with one update after this is given up
    yield_after: int = 20                 # a busy chat hands its slot to a waiting one after this many…
    yield_seconds: float = 5.0            # …updates or seconds
    poll_timeout: int = 25
    conflict_grace: float | None = None   # seconds of 409 before giving up (poll timeout + 10)
    allowed_updates: tuple[str, ...] = DEFAULT_ALLOWED_UPDATES
    limits: Limits = field(default_factory=Limits)
    hook_bind: str = "127.0.0.1"
    hook_port: int | None = None          # hooks, /healthz, /metrics; None: see hook_address; 0: off
    hook_public_url: str | None = None    # the hook server as upstreams reach it (a proxy's URL)
    callback_expiry: float = 24 * 3600.0  # seconds a conversation.callback_url is accepted
    operators: tuple[int, ...] = ()       # chat ids of the people who answer handoffs
    handoff_timeout: float = 600.0        # seconds a handed-off person waits for an operator
    forget_command: str | None = "/forget"   # None (`forget_command: off`): no built-in forget
    log_level: str = "INFO"
    error_text: str = DEFAULT_ERROR_TEXT
    stop_timeout: float = 20.0
    retention: Retention = field(default_factory=Retention)   # what the database keeps, how long
    # (key, file:line) of the values the config file set, so later errors can say where
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    def replace(self, **changes: Any) -> Config:
        changes = {k: v for k, v in changes.items() if v is not None}
        origins = tuple(origin for origin in self.origins if origin[0] not in changes)
        return dataclasses.replace(self, **changes, origins=origins)

    def origin(self, key: str) -> str | None:
        """file:line where the config file set `key`, if it did."""
        return dict(self.origins).get(key)

    def hook_address(self, bot_defines_hooks: bool) -> tuple[str, int] | None:
        """Where the hook server listens, or None for no server.

        Without a hooks.port it runs only for a bot that defines hooks (on DEFAULT_HOOK_PORT),
        so that several bots started with the defaults on one machine do not compete for a port.
        """
        port = self.hook_port
        if port is None:
            port = DEFAULT_HOOK_PORT if bot_defines_hooks else 0
        return (self.hook_bind, port) if port else None

    def callback_base(self, bot_needs_server: bool) -> str | None:
        """What a conversation.callback_url starts with: hooks.public_url, or else the hook
        server's own address; None when the server is off."""
        address = self.hook_address(bot_needs_server)
        if address is None:
            return None
        if self.hook_public_url:
            return self.hook_public_url.rstrip("/")
        host, port = address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"


_TOP_KEYS = {"api_url", "database", "handlers", "delegates", "polling", "rate_limits", "hooks",
             "operators", "log_level", "error_text", "stop_timeout", "handoff_timeout",
             "forget_command", "retention"}
_SECTIONS = {
    "delegates": {"max": ("max_delegates", int), "idle_timeout": ("idle_timeout", float),
                  "update_timeout": ("update_timeout", float), "yield_after": ("yield_after", int),
                  "yield_seconds": ("yield_seconds", float)},
    "polling": {"timeout": ("poll_timeout", int), "allowed_updates": ("allowed_updates", tuple),
                "conflict_grace": ("conflict_grace", float)},
    "hooks": {"bind": ("hook_bind", str), "port": ("hook_port", int),
              "public_url": ("hook_public_url", str), "callback_expiry": ("callback_expiry", float)},
}
_LIMIT_KEYS = {"enabled": bool, "per_second": float, "per_chat_per_second": float,
               "per_chat_burst": int, "per_group_per_minute": float}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


_PATH_KEYS = ("database", "handlers")


def load_config(path: str | None) -> Config:
    """The config in `path` (defaults for everything it leaves out), or the defaults.

    Raises ConfigError (ConfigErrors when there are several) naming file:line and the key.
    """
    if path is None:
        return Config()
    data = yamlfile.load_mapping(path, "the daemon config")
    if data is None:
        return Config()
    problems = yamlfile.Problems()
    problems.run(yamlfile.check_keys, data, _TOP_KEYS, "the daemon config")
    values: dict[str, Any] = {}
    for key in ("api_url", "database", "handlers", "log_level", "error_text"):
        if key in data:
            values[key] = problems.run(_typed, data, key, str)
    for key in _PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = _beside(path, values[key])
    if "stop_timeout" in data:
        values["stop_timeout"] = problems.run(_typed, data, "stop_timeout", float)
    if "operators" in data:
        values["operators"] = problems.run(_operators, data)
    if "handoff_timeout" in data:
        values["handoff_timeout"] = problems.run(_typed, data, "handoff_timeout", float)
    if "forget_command" in data:
        values["forget_command"] = problems.run(_forget_command, data)
    for section, keys in _SECTIONS.items():
        if section in data:
            values.update(problems.run(_section, data, section, keys, failed={}))
    if "rate_limits" in data:
        values["limits"] = problems.run(_limits, data["rate_limits"], data.key_where["rate_limits"])
    if "retention" in data:
        values["retention"] = problems.run(_retention, data["retention"], data.key_where["retention"])
    problems.raise_any()
    config = Config(**values, origins=tuple((key, where) for key, where in data.key_where.items()
                                            if isinstance(key, str)))
    _validate(config, data)
    return config


def _beside(config_path: str, value: str) -> str:
    """A path written in the config file, relative to that file's directory."""
    if not value or os.path.isabs(value):
        return value
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), value)


def _section(data: yamlfile.Mapping, section: str, keys: dict) -> dict[str, Any]:
    part = data[section]
    yamlfile.check_keys(part, set(keys), section, data.key_where[section])
    problems = yamlfile.Problems()
    values = {name: problems.run(_typed, part, key, kind, section)
              for key, (name, kind) in keys.items() if key in part}
    problems.raise_any()
    return values


def _operators(data: yamlfile.Mapping) -> tuple[int, ...]:
    return tuple(_int(v, data) for v in _typed(data, "operators", list))


def _forget_command(data: yamlfile.Mapping) -> str | None:
    value = data["forget_command"]
    if value is False or value is None or value == "off":
        return None
    if not isinstance(value, str) or not value.startswith("/") or " " in value:
        raise ConfigError(f"forget_command must be a /command or off, not {value!r}",
                          data.key_where.get("forget_command"))
    return value


def _limits(part: Any, where: str) -> Limits:
    if isinstance(part, bool):
        return Limits(enabled=part)
    yamlfile.check_keys(part, set(_LIMIT_KEYS), "rate_limits", where)
    problems = yamlfile.Problems()
    values = {key: problems.run(_typed, part, key, kind, "rate_limits")
              for key, kind in _LIMIT_KEYS.items() if key in part}
    problems.raise_any()
    return Limits(**values)


_RETENTION_KEYS = ("keep_handled", "max_database_mb", "forget_conversations_after")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _retention(part: Any, where: str) -> Retention:
    yamlfile.check_keys(part, set(_RETENTION_KEYS), "retention", where)
    defaults = Retention()
    keep = _duration(part, "keep_handled", defaults.keep_handled)
    # Telegram re-sends an unacknowledged update for up to 24 h: a handled one must be
    # recognised at least that long
    if keep is None or keep < 86400:
        raise ConfigError(f"retention.keep_handled must be at least 24h, not {part['keep_handled']!r}",
                          part.key_where.get("keep_handled"))
    size = part.get("max_database_mb", defaults.max_database_bytes / 2 ** 20)
    if size in (False, "off"):
        size = 0
    if isinstance(size, bool) or not isinstance(size, int | float) or not 0 <= size < math.inf:
        raise ConfigError(f"retention.max_database_mb must be a number of MB or off, not {size!r}",
                          part.key_where.get("max_database_mb"))
    return Retention(keep, int(size * 2 ** 20),
                     _duration(part, "forget_conversations_after", defaults.forget_conversations_after))


def _duration(part: yamlfile.Mapping, key: str, default: float | None) -> float | None:
    """Seconds from a number or '90s' / '30m' / '48h' / '7d'; off (or false) is None."""
    if key not in part:
        return default
    value = part[key]
    if value is False or value == "off":
        return None
    seconds = -1.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        number, unit = (text[:-1], _UNITS[text[-1]]) if text[-1] in _UNITS else (text, 1)
        with contextlib.suppress(ValueError):
            seconds = float(number) * unit
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"retention.{key} must be a duration like 48h, 30m, 7d or off, "
                          f"not {value!r}", part.key_where.get(key))
    return seconds


def _typed(mapping: dict, key: str, kind: type, section: str = "") -> Any:
    value = mapping[key]
    where = mapping.key_where.get(key) if isinstance(mapping, yamlfile.Mapping) else None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        # YAML's .nan and .inf: every comparison with NaN is false, so a check such as
        # "must be positive" would pass it and the setting would silently mean nothing
        name = f"{section}.{key}" if section else key
        raise ConfigError(f"{name} must be a finite number, not {value!r}", where)
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = f"{section}.{key}" if section else key
        raise ConfigError(f"{name} must be {_name(kind)}, not {value!r}", where)
    return value


def _int(value: Any, data: yamlfile.Mapping) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"operators must be chat ids (integers), not {value!r}",
                          data.key_where.get("operators"))
    return value


def _name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", tuple: "a list"}[kind]


_TOKEN_PATH = re.compile(r"/bot\d+:")   # a method URL's /bot<token>/ part


def check_api_url(config: Config, where: str | None = None) -> None:
    from .telegram import api_url_problem
    problem = api_url_problem(config.api_url)
    if problem:
        raise ConfigError(problem, where)
    # a URL copied from a browser or a curl example: every call would then go to
    # /bot<token>/bot<token>/… and be answered 404, reported as a rejected token
    if _TOKEN_PATH.search(urllib.parse.urlsplit(config.api_url).path):
        raise ConfigError("the Bot API URL must be the server's address (like "
                          "https://api.telegram.org), without /bot<token>: the token is given "
                          "on its own", where)


# The Bot API's update types (Update's optional fields); a misspelt one would make
# Telegram send nothing of that kind, and the bot would stay silent without an error.
UPDATE_TYPES = frozenset({
    "message", "edited_message", "channel_post", "edited_channel_post", "business_connection",
    "business_message", "edited_business_message", "deleted_business_messages",
    "message_reaction", "message_reaction_count", "inline_query", "chosen_inline_result",
    "callback_query", "shipping_query", "pre_checkout_query", "purchased_paid_media", "poll",
    "poll_answer", "my_chat_member", "chat_member", "chat_join_request", "chat_boost",
    "removed_chat_boost"})


def _unknown_update_types(config: Config) -> list:
    return [kind for kind in config.allowed_updates
            if not isinstance(kind, str) or kind not in UPDATE_TYPES]


def _validate(config: Config, data: dict) -> None:
    where = data.key_where if isinstance(data, yamlfile.Mapping) else {}
    problems = yamlfile.Problems()
    problems.run(check_api_url, config, where.get("api_url"))
    limits = config.limits
    for wrong, message, key in (
        (config.max_delegates < 1, "delegates.max must be at least 1", "delegates"),
        (config.idle_timeout <= 0, "delegates.idle_timeout must be positive", "delegates"),
        (config.update_timeout <= 0 or config.yield_after < 1 or config.yield_seconds <= 0,
         "delegates.update_timeout, yield_after and yield_seconds must be positive", "delegates"),
        (not 0 <= config.poll_timeout <= 50, "polling.timeout must be between 0 and 50 seconds",
         "polling"),
        (bool(_unknown_update_types(config)),
         f"polling.allowed_updates: {', '.join(map(repr, _unknown_update_types(config)))} is "
         f"no Bot API update type (they are {', '.join(sorted(UPDATE_TYPES))})", "polling"),
        (config.handoff_timeout < 1, "handoff_timeout must be at least 1 second",
         "handoff_timeout"),
        (config.stop_timeout < 0, "stop_timeout must be a number of seconds, 0 or more",
         "stop_timeout"),
        (config.conflict_grace is not None and config.conflict_grace < 0,
         "polling.conflict_grace must be a number of seconds, 0 or more", "polling"),
        # a port outside this range is no OSError at bind but an OverflowError (a traceback)
        (config.hook_port is not None and not 0 <= config.hook_port <= 65535,
         "hooks.port must be between 0 (off) and 65535", "hooks"),
        (config.log_level.upper() not in _LOG_LEVELS,
         f"log_level must be one of {', '.join(sorted(_LOG_LEVELS))}", "log_level"),
        (min(limits.per_second, limits.per_chat_per_second, limits.per_group_per_minute) <= 0
         or limits.per_chat_burst < 1, "rate_limits values must be positive", "rate_limits"),
        (config.callback_expiry <= 0, "hooks.callback_expiry must be a positive number of "
         "seconds", "hooks"),
        # a chat's handler holds its conversation in memory until it idles out: pruned
        # before that, the conversation would come back with the chat's next update
        (config.retention.forget_conversations_after is not None
         and config.retention.forget_conversations_after <= config.idle_timeout,
         f"retention.forget_conversations_after must be longer than delegates.idle_timeout "
         f"({config.idle_timeout:.0f} s)", "retention"),
        (config.hook_public_url is not None and not _is_base_url(config.hook_public_url),
         "hooks.public_url must be an http:// or https:// URL with no query or fragment "
         "(e.g. https://pi.example.org/bot)", "hooks"),
    ):
        if wrong:
            problems.add(ConfigError(message, where.get(key)))
    problems.raise_any()


def _is_base_url(url: str) -> bool:
    import urllib.parse
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.query \
        and not parts.fragment and "#" not in url and "?" not in url


def check_callbacks(config: Config, bot: Any) -> None:
    """A bot whose requests hand out conversation.callback_url needs the hook server to take
    the results posted to it: with hooks.port 0 that is a ConfigError at the first one."""
    uses = bot.definitions.callback_handlers
    if uses and config.hook_address(True) is None:
        name, where = uses[0]
        raise ConfigError(f"handler {name} hands out conversation.callback_url, but the hook "
                          "server that takes the results is off (hooks.port: 0): set hooks.port",
                          where)


WILDCARD_HOSTS = ("0.0.0.0", "::", "")   # a bind address that names no host to reach


def callback_warning(config: Config, bot: Any) -> str | None:
    """Callback URLs an upstream cannot reach: the server binds every address and no
    hooks.public_url says which one, so the URL would read http://0.0.0.0:PORT/…"""
    uses = bot.definitions.callback_handlers
    if not uses or config.hook_public_url or config.hook_bind not in WILDCARD_HOSTS:
        return None
    return (f"callback URLs would name {config.hook_bind or 'no host'}, which no upstream can "
            "reach: set hooks.public_url to the address upstreams use for this machine")
