"""Bot definitions: the YAML `env`, `handlers` and `fallback` keys, checked and compiled at load.

Everything a message needs at run time — regexes, templates, request specs — is compiled
here once; a mistake is a ConfigError naming file:line, and suspicious things are warnings.
Mistakes are collected, not raised one at a time: a handler, hook or schedule with an error
is left out and the next one is still checked, so `check` reports every error of a bot.
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import yamlfile
from .errors import ConfigError
from .yamlfile import Problems, check_keys

# patterns (regex), templates (jinja2) and tree are imported where a definition first needs
# them: a bot of one Python handler never loads them
if TYPE_CHECKING:
    from .patterns import Pattern
    from .templates import Template, Templates
    from .tree import Tree

HANDLER_KEYS = {"name", "pattern", "source_states", "target_state", "priority", "request",
                "response", "on_error", "save", "handoff", "schedule", "on_callback"}
SCHEDULE_KEYS = {"name", "request", "response", "on_error"}
HOOK_KEYS = {"name", "key", "recipients", "response", "rate_limit"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
CONVERSATION_KEYS = ("per_chat", "per_user")   # `conversation:`: whose state a group keeps
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
SWITCH_KEYS = ("remove_keyboard", "one_time_keyboard", "disable_web_page_preview")
RESPONSE_KEYS = {"text", "keyboard", "buttons", "parse_mode", "remove_keyboard",
                 "one_time_keyboard", "disable_web_page_preview", "photo", "document", "caption"}
MEDIA_KEYS = ("photo", "document")   # a response sends at most one of these, with a caption
REQUEST_KEYS = {"method", "url", "params", "headers", "json", "data", "timeout"}
METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}
MAX_TIMEOUT = 60.0
DEFAULT_FALLBACK = "Sorry, I didn't understand that."
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_RECIPIENTS = 1000      # chats one hook POST may name
CHAT_ID_LIMIT = 2 ** 63    # a chat id is a signed 64-bit integer
CALLBACK_NAMES = frozenset({"conversation"})   # what a handler's request sees besides the rest
CALLBACK_FIELDS = frozenset({"callback_url"})
# on_callback as a mapping with one of these is more than a response: it saves and moves on
ON_CALLBACK_KEYS = {"response", "save", "target_state"}


@dataclass
class Button:
    text: Template
    data: Template | None = None
    url: Template | None = None


@dataclass
class Media:
    """`photo:` or `document:` of a response: a URL, a file_id or a path in the bot's directory."""

    kind: str                 # "photo" or "document"
    source: Template
    where: str = "?"


@dataclass
class Response:
    text: Template            # with media: the caption (may render empty)
    parse_mode: str | None = None
    keyboard: list[list[Template]] | None = None
    buttons: list[list[Button]] | None = None
    remove_keyboard: bool = False
    one_time_keyboard: bool = False
    disable_web_page_preview: bool = False
    where: str = "?"
    keyboard_rows: Template | None = None   # `keyboard: "{{ … }}"`: rows computed at render
    button_rows: Template | None = None     # `buttons: "{{ … }}"`: the same for inline buttons
    media: Media | None = None              # sent with sendPhoto/sendDocument, text as caption


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
    uses_callback: bool = False   # a template names conversation.callback_url


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


class RecipientError(ValueError):
    """A hook's recipient that is not a chat id: `value` as given or rendered, `reason` why
    not, `source` the template it came from (None for a static one)."""

    def __init__(self, value: Any, reason: str, source: str | None = None):
        self.value = value
        self.reason = reason
        self.source = source
        origin = f" from {source}" if source else ""
        super().__init__(f"recipient {value!r}{origin} is not a chat id: {reason}")


def chat_id_of(value: Any, source: str | None = None) -> int:
    """`value` as a chat id: an int within int64, or a string of one; never a bool, a float
    or a @username. Raises RecipientError saying why not."""
    if isinstance(value, bool):
        raise RecipientError(value, "true/false is not a number", source)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("@"):
            raise RecipientError(value, "a username cannot be sent to by a bot; use the "
                                 "numeric chat id", source)
        if not re.fullmatch(r"-?[0-9]{1,19}", text):
            raise RecipientError(value, "not a whole number", source)
        value = int(text)
    if not isinstance(value, int):
        raise RecipientError(value, f"a {type(value).__name__}, not a whole number", source)
    if not -CHAT_ID_LIMIT <= value < CHAT_ID_LIMIT:
        raise RecipientError(value, "outside the 64-bit range of chat ids", source)
    return value


def rendered_values(text: str) -> list[Any]:
    """The values a recipients template rendered to: a list gives its items, anything else
    (a literal or plain text) is one value."""
    text = text.strip()
    if not text:
        return []
    try:
        value = literal_of(text)
    except ValueError:
        value = text
    return list(value) if isinstance(value, (list, tuple)) else [value]


def literal_of(text: str) -> Any:
    """The value a template rendered as text: JSON (`| tojson`), or a Python-looking literal
    (as `{{ a_list }}` renders one); ValueError when it is neither. Nothing is evaluated."""
    try:
        return json.loads(text)
    except RecursionError:   # brackets a few thousand deep (user text can render them)
        raise ValueError(f"not a value: {text[:60]!r}") from None
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"not a value: {text[:60]!r}") from None


@dataclass
class Hook:
    name: str
    where: str
    key: str
    recipients: tuple[int, ...]                     # the chat ids written as such
    response: Response
    rate_limit: int = 600     # accepted POSTs per minute
    recipient_templates: tuple[Template, ...] = ()  # rendered against each POST's data

    def chats(self, context: dict) -> list[int]:
        """Every chat this POST goes to, each once, in the order written.

        All or nothing: one recipient that is not a chat id raises RecipientError (a
        template that fails raises TemplateError) and the POST queues nothing.
        """
        chats = list(self.recipients)
        for template in self.recipient_templates:
            chats += [chat_id_of(value, template.source)
                      for value in rendered_values(template.render(context))]
        unique = list(dict.fromkeys(chats))
        if not unique:
            raise RecipientError([], "the recipients came out empty",
                                 ", ".join(t.source for t in self.recipient_templates) or None)
        if len(unique) > MAX_RECIPIENTS:
            raise RecipientError(len(unique), f"more than {MAX_RECIPIENTS} chats in one POST")
        return unique

    def describe_recipients(self) -> str:
        """The recipients as `check` shows them: chat ids, and the templates that add more."""
        parts = [str(chat) for chat in self.recipients]
        parts += [f"those of {template.source}" for template in self.recipient_templates]
        return ", ".join(parts)


@dataclass
class OnCallback:
    """What a handler does with the result POSTed to its conversation.callback_url: answer
    it, and like a handler's own keys, save variables and enter a state (all or nothing)."""

    response: Response
    save: dict[str, Template] = field(default_factory=dict)
    target_state: str | None = None
    where: str = "?"


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
    handoff: bool = False     # after its response the chat goes to a human (the operators)
    on_callback: OnCallback | None = None   # when its conversation.callback_url is POSTed

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
    warnings: list[str] = field(default_factory=list)
    session_timeout: float | None = None   # idle seconds after which a conversation starts over
    conversation: str | None = None   # per_chat or per_user (a group member each); None: unset
    silent: bool = False            # `fallback: none`: unmatched messages get no answer, on purpose
    default_fallback: bool = False  # the bot wrote no fallback: DEFAULT_FALLBACK answers
    # (handler name, file:line) of the requests that hand out conversation.callback_url
    callback_handlers: list[tuple[str, str]] = field(default_factory=list)
    directory: str | None = None    # the bot's directory: a response's file paths start here


class Compiler:
    """Turns the YAML of a handlers directory into Definitions."""

    def __init__(self, templates: Templates | None = None, environ: dict[str, str] | None = None,
                 directory: str | None = None):
        self._templates = templates
        self.environ = os.environ if environ is None else environ
        # absolute now: a daemon that detaches changes its working directory after loading
        self.result = Definitions(directory=os.path.abspath(directory) if directory else None)
        self.problems = Problems()
        self._long_data: list[str] = []   # where static button data over 64 bytes was written
        self._names: dict[str, str] = {}
        self._regex: Any = None   # the regex that fills `pattern` here; None: nothing does
        self._lost_states: set[str] = set()     # named by handlers left out for an error
        self._lost_schedules: set[str] = set()  # schedules left out for an error
        self._in_handler = False   # a handler's request may name `conversation`; a schedule's not
        self._request_names: set[str] | None = None   # names a request's templates use

    @property
    def templates(self) -> Templates:
        """The template compiler, built when the first template is met."""
        if self._templates is None:
            from .templates import Templates
            self._templates = Templates()
        return self._templates

    def _template(self, source: Any, where: str, parse_mode: str | None = None,
                  url: bool = False) -> Template:
        if self._request_names is None:
            return self.templates.compile(source, where, parse_mode, url=url, pattern=self._regex)
        template = self.templates.compile(source, where, parse_mode, CALLBACK_NAMES, url=url,
                                          pattern=self._regex)
        self._request_names.update(_conversation_fields(template))
        return template

    # -- env -------------------------------------------------------------------------------

    def add_env(self, data: Any, where: str | None = None) -> None:
        if not isinstance(data, dict):
            raise ConfigError("env must be a mapping of names to values",
                              yamlfile.where_of(data, where or "?"))
        for name, value in data.items():
            with self.problems.collect():
                self._add_env_value(name, value, _at(data, name, where or "?"))

    def _add_env_value(self, name: Any, value: Any, where: str) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"env name {name!r} must be an identifier", where)
        if name in self.result.env:
            raise ConfigError(f"env {name} is defined twice", where)
        self.result.env[name] = self._expand(str(value), f"env.{name}", where)

    def _expand(self, value: str, name: str, where: str) -> str:
        """${VAR} and ${VAR:-default} from the environment; a VAR that is not set and has no
        default is an error naming it (never an empty value that fails later)."""
        missing = [match.group(1) for match in _ENV_REFERENCE.finditer(value)
                   if match.group(1) not in self.environ and match.group(2) is None]
        if missing:
            raise ConfigError(f"{name}: environment variable {', '.join(missing)} is not set "
                              f"(set it, or give a default: ${{{missing[0]}:-value}})", where)
        return _ENV_REFERENCE.sub(lambda match: self.environ.get(match.group(1), match.group(2)),
                                  value)

    # -- handlers --------------------------------------------------------------------------

    def add_handlers(self, items: Any, where: str | None = None) -> None:
        if not isinstance(items, list):
            raise ConfigError("handlers must be a list", yamlfile.where_of(items, where or "?"))
        for index, item in enumerate(items):
            item_where = items.item_where[index] if isinstance(items, yamlfile.Sequence) else "?"
            handler = self.problems.run(self._handler, item, item_where, len(self.result.handlers))
            if handler is not None:
                self.result.handlers.append(handler)
            else:
                self._remember_lost(item)

    def _remember_lost(self, item: Any) -> None:
        """A handler left out for an error still counts for the whole-bot checks, so that
        its mistake is not reported a second time as "nothing enters state X"."""
        if not isinstance(item, dict):
            return
        for state in (item.get("target_state"), *_as_list(item.get("source_states")),
                      _callback_target(item.get("on_callback"))):
            if isinstance(state, str):
                self._lost_states.add(state)

    def _handler(self, item: Any, where: str, order: int) -> Handler:
        """One handler; raises every mistake in it at once (ConfigErrors)."""
        if not isinstance(item, dict):
            raise ConfigError("a handler must be a mapping (name, pattern, response, …)", where)
        part = Problems()
        part.run(check_keys, item, HANDLER_KEYS, "a handler", where)
        name = part.run(self._handler_name, item, where, failed=str(item.get("name") or "?"))
        if "response" not in item and "handoff" not in item:
            part.add(ConfigError(f"handler {name} has no response", where))
        if not isinstance(item.get("handoff", False), bool):
            part.add(ConfigError(f"handler {name}: handoff must be true or false",
                                 _at(item, "handoff")))
        from .templates import ANY_PATTERN
        regex = part.run(self._pattern, item, name, failed=ANY_PATTERN)
        self._regex = regex  # response, request, on_error and save see this handler's groups
        self._in_handler = True
        try:
            handler = Handler(
                name=name, where=where,
                pattern=None if regex is ANY_PATTERN else regex,
                source_states=part.run(self._states, item, name),
                target_state=part.run(self._state_name, item, "target_state"),
                priority=part.run(self._priority, item, failed=0),
                order=order,
                response=part.run(self._optional, item, "response", self.response),
                request=part.run(self._optional, item, "request", self._request),
                on_error=part.run(self._optional, item, "on_error", self.response),
                save=part.run(self._save, item, failed={}),
                schedule=part.run(self._optional, item, "schedule", self._schedule_action),
                handoff=item.get("handoff") is True,
                on_callback=part.run(self._optional, item, "on_callback", self._on_callback),
            )
        finally:
            self._regex = None
            self._in_handler = False
        part.raise_any()
        self._check_callback(handler)
        return handler

    def _check_callback(self, handler: Handler) -> None:
        """A request handing out conversation.callback_url needs an on_callback to answer
        the POST with; an on_callback without one is never used."""
        if handler.request is not None and handler.request.uses_callback:
            if handler.on_callback is None:
                raise ConfigError(f"handler {handler.name} gives its upstream "
                                  "conversation.callback_url but has no on_callback to answer "
                                  "the result with", handler.request.where)
            self.result.callback_handlers.append((handler.name, handler.request.where))
        elif handler.on_callback is not None:
            self.result.warnings.append(
                f"{handler.on_callback.where}: handler {handler.name}: on_callback is never used: "
                "no template of its request names conversation.callback_url")

    def _on_callback(self, data: Any, where: str) -> OnCallback:
        """on_callback: a response (text or a response mapping), or a mapping of `response`,
        `save` and `target_state`, which behave as the handler's own keys do."""
        if not _is_callback_form(data):
            return OnCallback(self.response(data, where), where=where)
        part = Problems()
        part.run(check_keys, data, ON_CALLBACK_KEYS, "an on_callback", where)
        if "response" not in data:
            part.add(ConfigError("on_callback with save or target_state needs a response "
                                 "to answer the result with", where))
        response = part.run(self._optional, data, "response", self.response)
        save = part.run(self._save, data, failed={})
        target_state = part.run(self._state_name, data, "target_state")
        part.raise_any()
        return OnCallback(response, save, target_state, where)

    def _handler_name(self, item: dict, where: str) -> str:
        name = item.get("name")
        if isinstance(name, bool):
            raise ConfigError(f"YAML read the handler name as {name}: put it in quotes", where)
        if not isinstance(name, str) or not name:
            raise ConfigError("every handler needs a name", where)
        if name in self._names:
            raise ConfigError(f"duplicate handler name {name!r} (also at {self._names[name]})", where)
        self._names[name] = where
        return name

    def _optional(self, item: dict, key: str, build: Any) -> Any:
        return build(item[key], _at(item, key)) if key in item else None

    def _schedule_action(self, data: Any, where: str) -> ScheduleAction:
        check_keys(data, {"start", "stop", "every"}, "a handler's schedule")
        if ("start" in data) == ("stop" in data):
            raise ConfigError("schedule needs either start: NAME (with every) or stop: NAME|all", where)
        if "stop" in data:
            return ScheduleAction("stop", str(data["stop"]))
        if "every" not in data:
            raise ConfigError("schedule start needs every (like 60, 30s, 5m, 1h)", where)
        name = _schedule_name(str(data["start"]), _at(data, "start", where))
        return ScheduleAction("start", name, parse_duration(data["every"], where))

    def _pattern(self, item: dict, name: str) -> Pattern | None:
        if "pattern" not in item:
            return None
        from .patterns import MATCH_SECONDS, PatternError, compile_pattern, probe
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
        part = Problems()
        for name in save:
            if not isinstance(name, str) or not name.isidentifier():
                part.add(ConfigError(f"save: {name!r} is not a variable name", _at(save, name, where)))
        saved = {name: part.run(self._template, value, _at(save, name, where))
                 for name, value in save.items()}
        part.raise_any()
        return saved

    # -- responses and requests ------------------------------------------------------------

    def response(self, data: Any, where: str) -> Response:
        """A response; raises every mistake in its parts at once (ConfigErrors)."""
        if isinstance(data, str):
            data = {"text": data}
        check_keys(data, RESPONSE_KEYS, "a response", where)
        part = Problems()
        media = part.run(self._media, data, where)
        has_media = any(kind in data for kind in MEDIA_KEYS)
        text_key = "caption" if has_media else "text"
        if "text" not in data and not has_media:
            part.add(ConfigError("a response needs text (or a photo or document)", where))
        mode = part.run(self.templates.mode_of, data.get("parse_mode"),
                        _at(data, "parse_mode", where), failed="none")
        for switch in SWITCH_KEYS:   # a quoted "no" would otherwise count as true
            if not isinstance(data.get(switch, False), bool):
                part.add(ConfigError(f"{switch} must be true or false, not "
                                     f"{data[switch]!r}", _at(data, switch, where)))
        response = Response(
            text=part.run(self._template, data.get(text_key, "" if has_media else "-"),
                          _at(data, text_key, where), mode),
            media=media,
            parse_mode=None if mode == "none" else mode,
            keyboard=part.run(self._keyboard, _unless_template(data.get("keyboard")),
                              _at(data, "keyboard", where)),
            buttons=part.run(self._buttons, _unless_template(data.get("buttons")),
                             _at(data, "buttons", where)),
            keyboard_rows=part.run(self._rows_template, data.get("keyboard"),
                                   _at(data, "keyboard", where)),
            button_rows=part.run(self._rows_template, data.get("buttons"),
                                 _at(data, "buttons", where)),
            remove_keyboard=bool(data.get("remove_keyboard", False)),
            one_time_keyboard=bool(data.get("one_time_keyboard", False)),
            disable_web_page_preview=bool(data.get("disable_web_page_preview", False)),
            where=where,
        )
        part.raise_any()
        return response

    def _media(self, data: dict, where: str) -> Media | None:
        """The response's photo or document; a literal path is checked against the bot's
        directory now (a templated one when it renders)."""
        kinds = [kind for kind in MEDIA_KEYS if kind in data]
        if not kinds:
            if "caption" in data:
                raise ConfigError("caption goes with a photo or document; a text response "
                                  "has text", _at(data, "caption", where))
            return None
        if len(kinds) > 1:
            raise ConfigError("a response sends a photo or a document, not both", where)
        kind = kinds[0]
        if "text" in data:
            raise ConfigError(f"a {kind} response has a caption, not text", _at(data, "text", where))
        at = _at(data, kind, where)
        source = self._template(data[kind], at)
        if source.is_literal and self.result.directory is not None:
            from .media import MediaError, check_file, source_of
            if source_of(source.source.strip()) == "path":
                try:
                    check_file(self.result.directory, kind, source.source.strip(), at)
                except MediaError as exc:
                    raise ConfigError(f"{kind} {exc.value!r}: {exc.reason}", at) from None
        return Media(kind, source, at)

    def _rows_template(self, source: Any, where: str) -> Template | None:
        """A keyboard or buttons given as one template that renders to rows (a list, as JSON)."""
        return self._template(source, where) if isinstance(source, str) else None

    def _rows(self, rows: Any, where: str, what: str) -> list[list[Any]]:
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{what} must be a list of rows", where)
        return [row if isinstance(row, list) else [row] for row in rows]

    def _keyboard(self, rows: Any, where: str) -> list[list[Template]] | None:
        if rows is None:
            return None
        return [[self._template(label, where) for label in row]
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
        check_keys(button, {"text", "data", "url"}, "an inline button", where)
        if "text" not in button:
            raise ConfigError("an inline button needs text", where)
        where = yamlfile.where_of(button, where)
        data = button.get("data")
        if data is None and "url" not in button:
            data = button["text"]
        if isinstance(data, str) and "{" not in data and len(data.encode()) > 64:
            # sent as a short token kept in the database, as templated data is; a hook's
            # notification has no update to keep one with (add_hooks refuses it)
            self._long_data.append(where)
            self.result.warnings.append(f"{where}: button data is longer than Telegram's 64 "
                                        "bytes; it goes out as a token kept in the database")
        return Button(
            text=self._template(button["text"], where),
            data=self._template(data, where) if data is not None else None,
            url=self._template(button["url"], where, url=True) if "url" in button else None,
        )

    def _request(self, data: Any, where: str) -> Request:
        """A request step; raises every mistake in it at once (ConfigErrors).

        A handler's request (not a schedule's) may name `conversation.callback_url`.
        """
        self._request_names = set() if self._in_handler else None
        try:
            request = self._request_parts(data, where)
        finally:
            names, self._request_names = self._request_names, None
        request.uses_callback = bool(names)
        return request

    def _request_parts(self, data: Any, where: str) -> Request:
        check_keys(data, REQUEST_KEYS, "a request", where)
        part = Problems()
        method = str(data.get("method", "GET")).upper()
        if method not in METHODS:
            part.add(ConfigError(f"request method {method} is not one of "
                                 f"{', '.join(sorted(METHODS))}", _at(data, "method", where)))
        if "url" not in data:
            part.add(ConfigError("a request needs a url", where))
        if "json" in data and "data" in data:
            part.add(ConfigError("a request has either json or data, not both", where))
        url = part.run(self._url, data["url"], _at(data, "url", where)) if "url" in data else None
        timeout = part.run(self._timeout, data, where, failed=10.0)
        params = part.run(self._template_map, data.get("params"), _at(data, "params", where),
                          "params")
        headers = part.run(self._template_map, data.get("headers"), _at(data, "headers", where),
                           "headers")
        json = part.run(self._template_tree, data["json"], _at(data, "json", where)) \
            if "json" in data else None
        body = part.run(self._template_tree, data["data"], _at(data, "data", where)) \
            if "data" in data else None
        part.raise_any()
        assert url is not None   # a missing or bad url is one of `part`'s errors, raised above
        return Request(method=method, url=url, params=params, headers=headers, json=json,
                       data=body, timeout=timeout, where=where)

    def _url(self, source: Any, where: str) -> Template:
        url = self._template(source, where, url=True)
        if not re.match(r"(https?://|\{\{)", url.source):
            raise ConfigError("request url must start with http:// or https:// (or an env value)",
                              where)
        return url

    def _timeout(self, data: dict, where: str) -> float:
        timeout = data.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not 0 < timeout <= MAX_TIMEOUT:
            raise ConfigError(f"request timeout must be a number of seconds, at most {MAX_TIMEOUT:.0f}",
                              _at(data, "timeout", where))
        return float(timeout)

    def _template_map(self, mapping: Any, where: str, what: str) -> dict[str, Template]:
        if mapping is None:
            return {}
        if not isinstance(mapping, dict):
            raise ConfigError(f"{what} must be a mapping", where)
        return {str(k): self._template(v, _at(mapping, k, where)) for k, v in mapping.items()}

    def _template_tree(self, value: Any, where: str) -> Any:
        if isinstance(value, str):
            return self._template(value, where)
        if isinstance(value, dict):
            return {k: self._template_tree(v, _at(value, k, where)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._template_tree(v, where) for v in value]
        return value

    # -- schedules and hooks -----------------------------------------------------------------

    def add_schedules(self, items: Any, where: str | None = None) -> None:
        for item, item_where in self._items(items, "schedules", where):
            schedule = self.problems.run(self._schedule, item, item_where)
            if schedule is not None:
                self.result.schedules[schedule.name] = schedule
            elif isinstance(item, dict) and isinstance(item.get("name"), str):
                self._lost_schedules.add(item["name"])

    def _schedule(self, item: Any, where: str) -> Schedule:
        check_keys(item, SCHEDULE_KEYS, "a schedule", where)
        name = item.get("name")
        if not isinstance(name, str) or not name or name == "all":
            raise ConfigError("every schedule needs a name (not 'all')", where)
        _schedule_name(name, _at(item, "name", where))
        if name in self.result.schedules:
            raise ConfigError(f"duplicate schedule name {name!r}", where)
        if "response" not in item:
            raise ConfigError(f"schedule {name} has no response", where)
        part = Problems()
        schedule = Schedule(
            name, where, part.run(self.response, item["response"], _at(item, "response")),
            part.run(self._optional, item, "request", self._request),
            part.run(self._optional, item, "on_error", self.response))
        part.raise_any()
        return schedule

    def add_hooks(self, items: Any, where: str | None = None) -> None:
        for item, item_where in self._items(items, "hooks", where):
            hook = self.problems.run(self._hook, item, item_where)
            if hook is not None:
                self.result.hooks[hook.name] = hook

    def _hook(self, item: Any, where: str) -> Hook:
        check_keys(item, HOOK_KEYS, "a hook", where)
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise ConfigError("a hook needs a name of letters, digits, - and _", where)
        if name in self.result.hooks:
            raise ConfigError(f"duplicate hook name {name!r}", where)
        part = Problems()
        key = part.run(self._hook_key, item, name, where, failed="?" * 16)
        recipients, templates = part.run(self._recipients, item, name, where, failed=((), ()))
        if "response" not in item:
            part.add(ConfigError(f"hook {name} has no response", where))
        rate = item.get("rate_limit", 600)
        if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
            part.add(ConfigError(f"hook {name}: rate_limit is POSTs per minute, a positive integer",
                                 _at(item, "rate_limit", where)))
        long_data = len(self._long_data)
        response = part.run(self._optional, item, "response", self.response)
        if response is not None and response.media is not None:
            part.add(ConfigError(f"hook {name}: a hook sends text; a photo or document is for "
                                 "handlers, schedules and the fallback", response.media.where))
        if len(self._long_data) > long_data:
            part.add(ConfigError(f"hook {name}: button data is longer than Telegram's 64 bytes",
                                 self._long_data[-1]))
        part.raise_any()
        return Hook(name, where, key, recipients, response, rate, templates)

    def _hook_key(self, item: dict, name: str, where: str) -> str:
        key_where = _at(item, "key", where)
        key = self._expand(str(item.get("key") or ""), f"hooks.{name}.key", key_where)
        if not key:
            raise ConfigError(f"hook {name} needs a key (the secret a sender must present)", where)
        if len(key) < 16:
            self.result.warnings.append(f"{key_where}: hook {name}'s key is short; "
                                        "use 16+ characters")
        return key

    def _recipients(self, item: dict, name: str,
                    where: str) -> tuple[tuple[int, ...], tuple[Template, ...]]:
        """The chat ids written as such, and the templates that take them from a POST's data
        (`recipients: "{{ data.chat_ids }}"`, or such items in the list)."""
        recipients = item.get("recipients")
        where = _at(item, "recipients", where)
        if isinstance(recipients, str) and "{" in recipients:
            recipients = [recipients]
        if not isinstance(recipients, list) or not recipients:
            raise ConfigError(f"hook {name} needs recipients: a list of chat ids, or a template "
                              "such as \"{{ data.chat_ids }}\"", where)
        chats, templates = [], []
        for chat in recipients:
            if isinstance(chat, bool):
                raise ConfigError(f"hook {name}: YAML read a recipient as {chat}: "
                                  "give a chat id", where)
            text = self._expand(str(chat), f"hooks.{name}.recipients", where)
            if "{" in text:
                templates.append(self._template(text, where))
                continue
            try:
                chats.append(chat_id_of(text))
            except RecipientError as exc:
                raise ConfigError(f"hook {name}: {exc}", where) from None
        return tuple(chats), tuple(templates)

    def _items(self, items: Any, what: str, where: str | None):
        if not isinstance(items, list):
            raise ConfigError(f"{what} must be a list", yamlfile.where_of(items, where or "?"))
        for index, item in enumerate(items):
            yield item, items.item_where[index] if isinstance(items, yamlfile.Sequence) else "?"

    def add_tree(self, data: Any, where: str) -> None:
        if self.result.tree is not None:
            raise ConfigError(f"tree is already set in {self.result.tree.where}", where)
        from .tree import compile_tree
        self.result.tree = compile_tree(data, yamlfile.where_of(data, where), self.templates,
                                        self._state_name)

    def add_session_timeout(self, data: Any, where: str) -> None:
        """`session_timeout: 30m`: a conversation idle that long returns to its start state."""
        self.result.session_timeout = parse_duration(data, where)

    def add_conversation(self, data: Any, where: str) -> None:
        """`conversation: per_user`: in groups, each member has a conversation of their own."""
        if data not in CONVERSATION_KEYS:
            raise ConfigError(f"conversation must be one of {', '.join(CONVERSATION_KEYS)}, "
                              f"not {data!r}", where)
        self.result.conversation = data

    # -- the whole bot ---------------------------------------------------------------------

    def fallback(self, data: Any, where: str) -> Response | None:
        """The `fallback` key: a response, or `none` for silence on purpose (with a warning)."""
        if data is None or data == "none":
            self.result.silent = True
            self.result.warnings.append(
                f"{where}: fallback: none: a message no handler matches gets no answer")
            return None
        return self.response(data, where)

    def _default_fallback(self) -> None:
        """Every message gets an answer: a bot that wrote no fallback gets this one."""
        if self.result.fallback is not None or self.result.silent:
            return
        tree = self.result.tree
        hint = f" Send {tree.command} to see the options." if tree and tree.command else ""
        self.result.fallback = self.response(DEFAULT_FALLBACK + hint, "(the default fallback)")
        self.result.default_fallback = True

    def finish(self, answers_itself: bool = False) -> Definitions:
        """The whole-bot checks; the problems of the whole load are left in `problems`.
        `answers_itself`: a Python handler answers every message (no default fallback)."""
        if not answers_itself:
            self._default_fallback()
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
            if action.name not in self.result.schedules and action.name not in self._lost_schedules:
                self.problems.add(ConfigError(f"handler {handler.name}: no schedule named "
                                              f"{action.name!r} under schedules:", handler.where))

    def _check_states(self) -> None:
        handlers = self.result.handlers
        tree_states = self.result.tree.states() if self.result.tree else set()
        # a state an on_callback moves to is entered like a handler's target_state
        targets = {state for h in handlers for state, _ in _entered(h)} | tree_states \
            | self._lost_states
        for handler in handlers:
            for state in handler.source_states or ():
                if state not in targets:
                    self.problems.add(ConfigError(
                        f"handler {handler.name}: no handler has target_state {state!r}, "
                        "so this handler can never run", handler.where))
        catch_all = any(h.source_states is None for h in handlers)
        sources = {s for h in handlers for s in (h.source_states or ())}
        for handler in handlers:
            for target, by in _entered(handler):
                if target not in sources and not catch_all:
                    self.result.warnings.append(
                        f"{handler.where}: state {target!r} (entered by {by}) has no handler; "
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
                # its on_callback runs only after the handler did: reached when it is
                targets = {handler.target_state} | {state for state, _ in _entered(handler)}
                if not targets <= reached and (
                        handler.source_states is None or reached.intersection(handler.source_states)):
                    reached |= targets
                    grew = True
        for handler in handlers:
            stuck = [s for s in handler.source_states or () if s not in reached]
            if stuck and len(stuck) == len(handler.source_states or ()):
                self.result.warnings.append(
                    f"{handler.where}: handler {handler.name} never runs: no chain of handlers "
                    f"leads from a new conversation to {', '.join(map(repr, stuck))}")


def _entered(handler: Handler) -> list[tuple[str, str]]:
    """The states a handler moves a conversation to, each with what moves it there."""
    entered = [(handler.target_state, handler.name)] if handler.target_state else []
    callback = handler.on_callback
    if callback is not None and callback.target_state:
        entered.append((callback.target_state, f"the on_callback of {handler.name}"))
    return entered


def _is_callback_form(data: Any) -> bool:
    """Whether an on_callback is the mapping of response/save/target_state, not a response."""
    return isinstance(data, dict) and not ON_CALLBACK_KEYS.isdisjoint(data)


def _callback_target(data: Any) -> Any:
    """The target_state an on_callback names, whatever else is wrong with it; None: none."""
    return data.get("target_state") if _is_callback_form(data) else None


def parse_duration(value: Any, where: str) -> float:
    """Seconds from 60, "30s", "5m", "1h" or "1d"; at least 5 seconds."""
    found = _DURATION.match(str(value)) if not isinstance(value, bool) else None
    if not found:
        raise ConfigError(f"{value!r} is not a duration (like 60, 30s, 5m, 1h)", where)
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if seconds < 5:
        raise ConfigError("a schedule ticks at most every 5 seconds", where)
    return seconds


def _unless_template(value: Any) -> Any:
    """Rows written out in YAML; None when they are one template string (rendered later)."""
    return None if isinstance(value, str) else value


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _at(mapping: Any, key: Any, default: str = "?") -> str:
    if isinstance(mapping, yamlfile.Mapping):
        return mapping.key_where.get(key, mapping.where)
    return default


def _schedule_name(name: str, where: str) -> str:
    """A schedule's name as a handler may start it: '@' is refused here, at load, as
    ChatHandler.start_schedule would refuse it at run time (NAME@USER_ID is how a group
    member's schedule is stored)."""
    if "@" in name:
        raise ConfigError(f"a schedule name cannot contain '@': {name!r}", where)
    return name


def _conversation_fields(template: Template) -> set[str]:
    """The fields of `conversation` a template uses; a ConfigError for any but callback_url."""
    if "conversation" not in template.source:
        return set()
    from jinja2 import Environment, nodes  # the template compiled: jinja2 is loaded already
    tree = Environment().parse(template.source)
    fields = {node.attr for node in tree.find_all(nodes.Getattr)
              if isinstance(node.node, nodes.Name) and node.node.name == "conversation"}
    fields |= {str(node.arg.value) for node in tree.find_all(nodes.Getitem)
               if isinstance(node.node, nodes.Name) and node.node.name == "conversation"
               and isinstance(node.arg, nodes.Const)}
    unknown = fields - CALLBACK_FIELDS
    if unknown:
        raise ConfigError(f"conversation.{sorted(unknown)[0]} is not known here "
                          f"(a request may use conversation.callback_url)", template.where)
    if not fields and any(node.name == "conversation" for node in tree.find_all(nodes.Name)):
        fields = set(CALLBACK_FIELDS)   # `conversation` as a whole: its url is in it
    return fields
