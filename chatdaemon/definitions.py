"""Bot definitions: the YAML `env`, `handlers` and `fallback` keys, checked and compiled at load.

Everything a message needs at run time — regexes, templates, request specs — is compiled
here once; a mistake is a ConfigError naming file:line, and suspicious things are warnings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import yamlfile
from .errors import ConfigError
from .patterns import MATCH_SECONDS, Pattern, PatternError, compile_pattern, probe
from .templates import Template, Templates
from .tree import Tree, compile_tree
from .yamlfile import check_keys

HANDLER_KEYS = {"name", "pattern", "source_states", "target_state", "priority", "request",
                "response", "on_error", "save", "handoff", "schedule"}
SCHEDULE_KEYS = {"name", "request", "response", "on_error"}
HOOK_KEYS = {"name", "key", "recipients", "response", "rate_limit"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
RESPONSE_KEYS = {"text", "keyboard", "buttons", "parse_mode", "remove_keyboard",
                 "one_time_keyboard", "disable_web_page_preview"}
REQUEST_KEYS = {"method", "url", "params", "headers", "json", "data", "timeout"}
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}
MAX_TIMEOUT = 60.0
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Button:
    text: Template
    data: Template | None = None
    url: Template | None = None


@dataclass
class Response:
    text: Template
    parse_mode: str | None = None
    keyboard: list[list[Template]] | None = None
    buttons: list[list[Button]] | None = None
    remove_keyboard: bool = False
    one_time_keyboard: bool = False
    disable_web_page_preview: bool = False
    where: str = "?"


@dataclass
class Request:
    method: str
    url: Template
    params: dict[str, Template] = field(default_factory=dict)
    headers: dict[str, Template] = field(default_factory=dict)
    json: Any = None           # the structure with Templates in place of strings
    data: Any = None
    timeout: float = 10.0
    where: str = "?"


@dataclass
class ScheduleAction:
    action: str               # "start" or "stop"
    name: str                 # a schedule's name, or "all" with stop
    every: float = 0.0


@dataclass
class Schedule:
    name: str
    where: str
    response: Response
    request: Request | None = None
    on_error: Response | None = None


@dataclass
class Hook:
    name: str
    where: str
    key: str
    recipients: tuple[int, ...]
    response: Response
    rate_limit: int = 600     # accepted POSTs per minute


@dataclass
class Handler:
    name: str
    where: str
    pattern: Pattern | None
    source_states: tuple[str, ...] | None
    target_state: str | None
    priority: int
    order: int
    response: Response | None
    request: Request | None = None
    on_error: Response | None = None
    save: dict[str, Template] = field(default_factory=dict)
    schedule: ScheduleAction | None = None

    def accepts(self, state: str | None) -> bool:
        return self.source_states is None or state in self.source_states


@dataclass
class Definitions:
    env: dict[str, str] = field(default_factory=dict)
    handlers: list[Handler] = field(default_factory=list)
    fallback: Response | None = None
    schedules: dict[str, Schedule] = field(default_factory=dict)
    hooks: dict[str, Hook] = field(default_factory=dict)
    tree: Tree | None = None
    missing_env: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Compiler:
    """Turns the YAML of a handlers directory into Definitions."""

    def __init__(self, templates: Templates, environ: dict[str, str] | None = None):
        self.templates = templates
        self.environ = os.environ if environ is None else environ
        self.result = Definitions()
        self._names: dict[str, str] = {}

    # -- env -------------------------------------------------------------------------------

    def add_env(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError("env must be a mapping of names to values", yamlfile.where_of(data))
        for name, value in data.items():
            where = data.key_where.get(name, "?") if isinstance(data, yamlfile.Mapping) else "?"
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"env name {name!r} must be an identifier", where)
            if name in self.result.env:
                raise ConfigError(f"env {name} is defined twice", where)
            self.result.env[name] = self._expand(str(value), name, where)

    def _expand(self, value: str, name: str, where: str) -> str:
        def lookup(match: re.Match) -> str:
            variable, default = match.group(1), match.group(2)
            if variable in self.environ:
                return self.environ[variable]
            if default is None:
                self.result.missing_env.append(f"{variable} (env.{name}, {where})")
                return ""
            return default
        return _ENV_REFERENCE.sub(lookup, value)

    # -- handlers --------------------------------------------------------------------------

    def add_handlers(self, items: Any) -> None:
        if not isinstance(items, list):
            raise ConfigError("handlers must be a list", yamlfile.where_of(items))
        for index, item in enumerate(items):
            where = items.item_where[index] if isinstance(items, yamlfile.Sequence) else "?"
            self.result.handlers.append(self._handler(item, where, len(self.result.handlers)))

    def _handler(self, item: Any, where: str, order: int) -> Handler:
        check_keys(item, HANDLER_KEYS, "a handler")
        name = item.get("name")
        if isinstance(name, bool):
            raise ConfigError(f"YAML read the handler name as {name}: put it in quotes", where)
        if not isinstance(name, str) or not name:
            raise ConfigError("every handler needs a name", where)
        if name in self._names:
            raise ConfigError(f"duplicate handler name {name!r} (also at {self._names[name]})", where)
        self._names[name] = where
        if "response" not in item and "handoff" not in item:
            raise ConfigError(f"handler {name} has no response", where)
        if "handoff" in item:
            raise ConfigError(f"handler {name}: handoff is not supported yet", _at(item, "handoff"))
        return Handler(
            name=name, where=where,
            pattern=self._pattern(item, name),
            source_states=self._states(item, name),
            target_state=self._state_name(item, "target_state"),
            priority=self._priority(item),
            order=order,
            response=self.response(item["response"], _at(item, "response")),
            request=self._request(item["request"], _at(item, "request")) if "request" in item else None,
            on_error=self.response(item["on_error"], _at(item, "on_error")) if "on_error" in item else None,
            save=self._save(item),
            schedule=self._schedule_action(item["schedule"], _at(item, "schedule"))
            if "schedule" in item else None,
        )

    def _schedule_action(self, data: Any, where: str) -> ScheduleAction:
        check_keys(data, {"start", "stop", "every"}, "a handler's schedule")
        if ("start" in data) == ("stop" in data):
            raise ConfigError("schedule needs either start: NAME (with every) or stop: NAME|all", where)
        if "stop" in data:
            return ScheduleAction("stop", str(data["stop"]))
        if "every" not in data:
            raise ConfigError("schedule start needs every (like 60, 30s, 5m, 1h)", where)
        return ScheduleAction("start", str(data["start"]), parse_duration(data["every"], where))

    def _pattern(self, item: dict, name: str) -> Pattern | None:
        if "pattern" not in item:
            return None
        source = item["pattern"]
        where = _at(item, "pattern")
        if not isinstance(source, str):
            raise ConfigError(f"handler {name}: pattern must be a string", where)
        try:
            pattern = compile_pattern(source)
        except PatternError as exc:
            raise ConfigError(f"handler {name}: pattern does not compile: {exc}", where) from None
        slow = probe(pattern)
        if slow is not None:
            self.result.warnings.append(
                f"{where}: handler {name}: pattern is slow on text like {slow[:12]!r}… "
                f"({len(slow)} characters), it backtracks; a message it cannot decide within "
                f"{MATCH_SECONDS:g} s gets the error text")
        return pattern

    def _states(self, item: dict, name: str) -> tuple[str, ...] | None:
        if "source_states" not in item:
            return None
        states = item["source_states"]
        if isinstance(states, str):
            states = [states]
        if not isinstance(states, list) or not all(isinstance(s, str) and s for s in states):
            raise ConfigError(f"handler {name}: source_states must be a list of state names",
                              _at(item, "source_states"))
        return tuple(states)

    def _state_name(self, item: dict, key: str) -> str | None:
        value = item.get(key)
        if isinstance(value, bool):
            raise ConfigError(f"YAML read {key} as {value}: put the state name in quotes",
                              _at(item, key))
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{key} must be a state name", _at(item, key))
        return value

    def _priority(self, item: dict) -> int:
        value = item.get("priority", 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError("priority must be an integer", _at(item, "priority"))
        return value

    def _save(self, item: dict) -> dict[str, Template]:
        save = item.get("save") or {}
        where = _at(item, "save")
        if not isinstance(save, dict):
            raise ConfigError("save must map variable names to templates", where)
        for name in save:
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"save: {name!r} is not a variable name", where)
        return {name: self.templates.compile(value, _at(save, name, where))
                for name, value in save.items()}

    # -- responses and requests ------------------------------------------------------------

    def response(self, data: Any, where: str) -> Response:
        if isinstance(data, str):
            data = {"text": data}
        check_keys(data, RESPONSE_KEYS, "a response")
        if "text" not in data:
            raise ConfigError("a response needs text", where)
        mode = self.templates.mode_of(data.get("parse_mode"), _at(data, "parse_mode", where))
        return Response(
            text=self.templates.compile(data["text"], _at(data, "text", where), mode),
            parse_mode=None if mode == "none" else mode,
            keyboard=self._keyboard(data.get("keyboard"), _at(data, "keyboard", where)),
            buttons=self._buttons(data.get("buttons"), _at(data, "buttons", where)),
            remove_keyboard=bool(data.get("remove_keyboard", False)),
            one_time_keyboard=bool(data.get("one_time_keyboard", False)),
            disable_web_page_preview=bool(data.get("disable_web_page_preview", False)),
            where=where,
        )

    def _rows(self, rows: Any, where: str, what: str) -> list[list[Any]]:
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{what} must be a list of rows", where)
        return [row if isinstance(row, list) else [row] for row in rows]

    def _keyboard(self, rows: Any, where: str) -> list[list[Template]] | None:
        if rows is None:
            return None
        return [[self.templates.compile(label, where) for label in row]
                for row in self._rows(rows, where, "keyboard")]

    def _buttons(self, rows: Any, where: str) -> list[list[Button]] | None:
        if rows is None:
            return None
        result = []
        for row in self._rows(rows, where, "buttons"):
            result.append([self._button(button, where) for button in row])
        return result

    def _button(self, button: Any, where: str) -> Button:
        if isinstance(button, str):
            button = {"text": button, "data": button}
        check_keys(button, {"text", "data", "url"}, "an inline button")
        if "text" not in button:
            raise ConfigError("an inline button needs text", where)
        where = yamlfile.where_of(button, where)
        data = button.get("data")
        if data is None and "url" not in button:
            data = button["text"]
        if isinstance(data, str) and "{" not in data and len(data.encode()) > 64:
            raise ConfigError("button data is longer than Telegram's 64 bytes", where)
        return Button(
            text=self.templates.compile(button["text"], where),
            data=self.templates.compile(data, where) if data is not None else None,
            url=self.templates.compile(button["url"], where, url=True) if "url" in button else None,
        )

    def _request(self, data: Any, where: str) -> Request:
        check_keys(data, REQUEST_KEYS, "a request")
        method = str(data.get("method", "GET")).upper()
        if method not in METHODS:
            raise ConfigError(f"request method {method} is not one of {', '.join(sorted(METHODS))}",
                              _at(data, "method", where))
        if "url" not in data:
            raise ConfigError("a request needs a url", where)
        if "json" in data and "data" in data:
            raise ConfigError("a request has either json or data, not both", where)
        url = self.templates.compile(data["url"], _at(data, "url", where), url=True)
        if not re.match(r"(https?://|\{\{)", url.source):
            raise ConfigError("request url must start with http:// or https:// (or an env value)",
                              _at(data, "url", where))
        timeout = data.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= MAX_TIMEOUT:
            raise ConfigError(f"request timeout must be a number of seconds, at most {MAX_TIMEOUT:.0f}",
                              _at(data, "timeout", where))
        return Request(
            method=method, url=url,
            params=self._template_map(data.get("params"), _at(data, "params", where), "params"),
            headers=self._template_map(data.get("headers"), _at(data, "headers", where), "headers"),
            json=self._template_tree(data["json"], _at(data, "json", where)) if "json" in data else None,
            data=self._template_tree(data["data"], _at(data, "data", where)) if "data" in data else None,
            timeout=float(timeout), where=where,
        )

    def _template_map(self, mapping: Any, where: str, what: str) -> dict[str, Template]:
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise ConfigError(f"{what} must be a mapping", where)
        return {str(k): self.templates.compile(v, _at(mapping, k, where)) for k, v in mapping.items()}

    def _template_tree(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            return self.templates.compile(value, where)
        if isinstance(value, dict):
            return {k: self._template_tree(v, _at(value, k, where)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._template_tree(v, where) for v in value]
        return value

    # -- schedules and hooks -----------------------------------------------------------------

    def add_schedules(self, items: Any) -> None:
        for item, where in self._items(items, "schedules"):
            check_keys(item, SCHEDULE_KEYS, "a schedule")
            name = item.get("name")
            if not isinstance(name, str) or not name or name == "all":
                raise ConfigError("every schedule needs a name (not 'all')", where)
            if name in self.result.schedules:
                raise ConfigError(f"duplicate schedule name {name!r}", where)
            if "response" not in item:
                raise ConfigError(f"schedule {name} has no response", where)
            self.result.schedules[name] = Schedule(
                name, where, self.response(item["response"], _at(item, "response")),
                self._request(item["request"], _at(item, "request")) if "request" in item else None,
                self.response(item["on_error"], _at(item, "on_error")) if "on_error" in item else None)

    def add_hooks(self, items: Any) -> None:
        for item, where in self._items(items, "hooks"):
            check_keys(item, HOOK_KEYS, "a hook")
            name = item.get("name")
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
                raise ConfigError("a hook needs a name of letters, digits, - and _", where)
            if name in self.result.hooks:
                raise ConfigError(f"duplicate hook name {name!r}", where)
            key = self._expand(str(item.get("key") or ""), f"hooks.{name}.key", where)
            if not key:
                raise ConfigError(f"hook {name} needs a key (the secret a sender must present)", where)
            if len(key) < 16:
                self.result.warnings.append(f"{where}: hook {name}'s key is short; use 16+ characters")
            recipients = item.get("recipients")
            if not isinstance(recipients, list) or not recipients:
                raise ConfigError(f"hook {name} needs recipients: a list of chat ids", where)
            chats = []
            for chat in recipients:
                chat = self._expand(str(chat), f"hooks.{name}.recipients", where)
                if not re.fullmatch(r"-?\d+", chat.strip()):
                    raise ConfigError(f"hook {name}: recipient {chat!r} is not a chat id", where)
                chats.append(int(chat))
            if "response" not in item:
                raise ConfigError(f"hook {name} has no response", where)
            rate = item.get("rate_limit", 600)
            if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
                raise ConfigError(f"hook {name}: rate_limit is POSTs per minute, a positive integer",
                                  where)
            self.result.hooks[name] = Hook(name, where, key, tuple(chats),
                                           self.response(item["response"], _at(item, "response")),
                                           rate)

    def _items(self, items: Any, what: str):
        if not isinstance(items, list):
            raise ConfigError(f"{what} must be a list", yamlfile.where_of(items))
        for index, item in enumerate(items):
            yield item, items.item_where[index] if isinstance(items, yamlfile.Sequence) else "?"

    def add_tree(self, data: Any, where: str) -> None:
        if self.result.tree is not None:
            raise ConfigError(f"tree is already set in {self.result.tree.where}", where)
        self.result.tree = compile_tree(data, yamlfile.where_of(data, where), self.templates,
                                        self._state_name)

    # -- the whole bot ---------------------------------------------------------------------

    def finish(self) -> Definitions:
        self._check_states()
        self._check_schedules()
        self.result.handlers.sort(key=lambda h: (-h.priority, h.order))
        self._warn_shadowed()
        return self.result

    def _warn_shadowed(self) -> None:
        """A handler after one that takes anything in any state can never run."""
        catch_all = None
        for handler in self.result.handlers:
            if catch_all is not None:
                self.result.warnings.append(
                    f"{handler.where}: handler {handler.name} never runs: {catch_all.name} "
                    f"({catch_all.where}) takes every message first")
            elif handler.pattern is None and handler.source_states is None:
                catch_all = handler

    def _check_schedules(self) -> None:
        for handler in self.result.handlers:
            action = handler.schedule
            if action is None or (action.action == "stop" and action.name == "all"):
                continue
            if action.name not in self.result.schedules:
                raise ConfigError(f"handler {handler.name}: no schedule named {action.name!r} "
                                  "under schedules:", handler.where)

    def _check_states(self) -> None:
        handlers = self.result.handlers
        tree_states = self.result.tree.states() if self.result.tree else set()
        targets = {h.target_state for h in handlers if h.target_state} | tree_states
        for handler in handlers:
            for state in handler.source_states or ():
                if state not in targets:
                    raise ConfigError(f"handler {handler.name}: no handler has target_state "
                                      f"{state!r}, so this handler can never run", handler.where)
        catch_all = any(h.source_states is None for h in handlers)
        sources = {s for h in handlers for s in (h.source_states or ())}
        for handler in handlers:
            state = handler.target_state
            if state and state not in sources and not catch_all:
                self.result.warnings.append(
                    f"{handler.where}: state {state!r} (entered by {handler.name}) has no handler; "
                    "only the fallback answers there")
        self._warn_unreachable()

    def _warn_unreachable(self) -> None:
        """States no chain of handlers leads to from a new conversation (which has no state).

        A warning, not an error: conversations saved by an earlier version of the bot may
        still be in such a state.
        """
        handlers = self.result.handlers
        # the tree starts from any state, so the states its leaves set are always reachable
        reached: set[str | None] = {None} | (self.result.tree.states() if self.result.tree else set())
        grew = True
        while grew:
            grew = False
            for handler in handlers:
                if handler.target_state not in reached and (
                        handler.source_states is None or reached.intersection(handler.source_states)):
                    reached.add(handler.target_state)
                    grew = True
        for handler in handlers:
            stuck = [s for s in handler.source_states or () if s not in reached]
            if stuck and len(stuck) == len(handler.source_states):
                self.result.warnings.append(
                    f"{handler.where}: handler {handler.name} never runs: no chain of handlers "
                    f"leads from a new conversation to {', '.join(map(repr, stuck))}")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from 60, "30s", "5m", "1h" or "1d"; at least 5 seconds."""
    found = _DURATION.match(str(value)) if not isinstance(value, bool) else None
    if not found:
        raise ConfigError(f"{value!r} is not a duration (like 60, 30s, 5m, 1h)", where)
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds < 5:
        raise ConfigError("a schedule ticks at most every 5 seconds", where)
    return seconds


def _at(mapping: Any, key: Any, default: str = "?") -> str:
    if isinstance(mapping, yamlfile.Mapping):
        return mapping.key_where.get(key, mapping.where)
    return default
