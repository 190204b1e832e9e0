"""The daemon configuration: loaded once from YAML into a frozen object and passed explicitly.

Precedence: command-line options, then the config file, then these defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import yamlfile
from .errors import ConfigError
from .inbox import DEFAULT_ALLOWED_UPDATES
from .ratelimit import Limits
from .telegram import DEFAULT_API_URL

DEFAULT_ERROR_TEXT = "Sorry, something went wrong on my side. Please try again later."


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
    conflict_grace: float | None = None   # seconds of 409 before giving up (2 poll periods + 10)
    allowed_updates: tuple[str, ...] = DEFAULT_ALLOWED_UPDATES
    limits: Limits = field(default_factory=Limits)
    hook_bind: str = "127.0.0.1"
    hook_port: int = 8787                 # hooks, /healthz, /metrics; 0 turns the server off
    operators: tuple[int, ...] = ()
    log_level: str = "INFO"
    error_text: str = DEFAULT_ERROR_TEXT
    stop_timeout: float = 20.0

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_TOP_KEYS = {"api_url", "database", "handlers", "delegates", "polling", "rate_limits", "hooks",
             "operators", "log_level", "error_text", "stop_timeout"}
_SECTIONS = {
    "delegates": {"max": ("max_delegates", int), "idle_timeout": ("idle_timeout", float),
                  "update_timeout": ("update_timeout", float), "yield_after": ("yield_after", int),
                  "yield_seconds": ("yield_seconds", float)},
    "polling": {"timeout": ("poll_timeout", int), "allowed_updates": ("allowed_updates", tuple),
                "conflict_grace": ("conflict_grace", float)},
    "hooks": {"bind": ("hook_bind", str), "port": ("hook_port", int)},
}
_LIMIT_KEYS = {"enabled": bool, "per_second": float, "per_chat_per_second": float,
               "per_chat_burst": int, "per_group_per_minute": float}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def load_config(path: str | None) -> Config:
    """The config in `path` (defaults for everything it leaves out), or the defaults."""
    if path is None:
        return Config()
    data = yamlfile.load(path)
    if data is None:
        return Config()
    yamlfile.check_keys(data, _TOP_KEYS, "the daemon config")
    values: dict[str, Any] = {}
    for key in ("api_url", "database", "handlers", "log_level", "error_text"):
        if key in data:
            values[key] = _typed(data, key, str)
    if "stop_timeout" in data:
        values["stop_timeout"] = _typed(data, "stop_timeout", float)
    if "operators" in data:
        values["operators"] = tuple(_int(v, data) for v in _typed(data, "operators", list))
    for section, keys in _SECTIONS.items():
        if section in data:
            part = data[section]
            yamlfile.check_keys(part, set(keys), section)
            for key, (name, kind) in keys.items():
                if key in part:
                    values[name] = _typed(part, key, kind)
    if "rate_limits" in data:
        values["limits"] = _limits(data["rate_limits"])
    config = Config(**values)
    _validate(config, data)
    return config


def _limits(part: Any) -> Limits:
    if isinstance(part, bool):
        return Limits(enabled=part)
    yamlfile.check_keys(part, set(_LIMIT_KEYS), "rate_limits")
    return Limits(**{key: _typed(part, key, kind) for key, kind in _LIMIT_KEYS.items() if key in part})


def _typed(mapping: dict, key: str, kind: type) -> Any:
    value = mapping[key]
    where = mapping.key_where.get(key) if isinstance(mapping, yamlfile.Mapping) else None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {_name(kind)}, not {value!r}", where)
    return value


def _int(value: Any, data: dict) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"operators must be chat ids (integers), not {value!r}",
                          data.key_where.get("operators"))
    return value


def _name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", tuple: "a list"}[kind]


def check_api_url(config: Config, where: str | None = None) -> None:
    from .telegram import api_url_problem
    problem = api_url_problem(config.api_url)
    if problem:
        raise ConfigError(problem, where)


def _validate(config: Config, data: dict) -> None:
    where = data.key_where if isinstance(data, yamlfile.Mapping) else {}
    check_api_url(config, where.get("api_url"))
    if config.max_delegates < 1:
        raise ConfigError("delegates.max must be at least 1", where.get("delegates"))
    if config.idle_timeout <= 0:
        raise ConfigError("delegates.idle_timeout must be positive", where.get("delegates"))
    if config.update_timeout <= 0 or config.yield_after < 1 or config.yield_seconds <= 0:
        raise ConfigError("delegates.update_timeout, yield_after and yield_seconds must be positive",
                          where.get("delegates"))
    if not 0 <= config.poll_timeout <= 50:
        raise ConfigError("polling.timeout must be between 0 and 50 seconds", where.get("polling"))
    if config.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(sorted(_LOG_LEVELS))}",
                          where.get("log_level"))
    limits = config.limits
    if min(limits.per_second, limits.per_chat_per_second, limits.per_group_per_minute) <= 0 \
            or limits.per_chat_burst < 1:
        raise ConfigError("rate_limits values must be positive", where.get("rate_limits"))
