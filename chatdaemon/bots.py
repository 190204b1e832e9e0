"""Loading a bot: the YAML definitions in a handlers directory, and the ChatHandler they name.

A bot's Python modules are imported as `chatdaemon_bots.<hash of the directory>.<module>`,
never under their bare names: a module called `json` does not shadow the standard library,
two bots' `handler.py` do not collide, a module imports its neighbours with `from . import x`,
and every load (a reload) runs the files as they are now.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from . import yamlfile
from .chathandler import DEFAULT_ERROR_TEXT, BotSender, ChatHandler, SeedTuple
from .definitions import Compiler, Definitions
from .errors import ConfigError
from .handoff import Desk, People
from .inbox import copied

if TYPE_CHECKING:
    from .pipeline import Pipeline

DEFINITION_KEYS = {"python", "error_text", "env", "handlers", "tree", "fallback", "schedules", "hooks",
                   "session_timeout", "conversation"}
PACKAGE = "chatdaemon_bots"
T = TypeVar("T")


@dataclass
class Bot:
    """Everything needed to answer a chat: a Python handler class or a YAML pipeline."""

    directory: str
    handler_class: type[ChatHandler] | None = None
    pipeline: Pipeline | None = None
    error_text: str = DEFAULT_ERROR_TEXT
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    definitions: Definitions = field(default_factory=Definitions)
    python_ref: str | None = None      # `module:Class` as the definition wrote it
    people: People = field(default_factory=People)   # operators, handoff timeout, /forget

    @property
    def hooks(self) -> dict:
        return self.definitions.hooks

    @property
    def needs_hook_server(self) -> bool:
        """Hooks to serve, or requests handing out conversation.callback_url to POST to."""
        return bool(self.definitions.hooks or self.definitions.callback_handlers)

    @property
    def per_member(self) -> bool:
        """Groups keep a conversation per member: `conversation: per_user` in a definition,
        or a handler class's `per_user = True` (a definition's key, if any, decides)."""
        if self.definitions.conversation is not None:
            return self.definitions.conversation == "per_user"
        return self.handler_class is not None and self.handler_class.per_user

    def create_handler(self, context: Any, conversation: Any, sender: Any) -> Contained:
        """The chat's handler; `context` is the update transaction (a ChatContext)."""
        handler: ChatHandler
        if self.pipeline is not None:
            from .pipeline import PipelineHandler
            handler = PipelineHandler(context, conversation, sender, self.pipeline)
        else:
            assert self.handler_class is not None   # load_bot gives a bot a pipeline or a class
            handler = contain(construct, self.handler_class, context, conversation, sender)
        return Contained(Desk(handler, context, conversation, sender, self.people))

    def describe(self) -> list[str]:
        """What `chatdaemon check` prints about this bot."""
        lines = [f"bot in {self.directory} ({len(self.files)} file(s))"]
        if self.handler_class is not None:
            lines.append(f"  python handler: {self.python_ref} "
                         f"(imported as {self.handler_class.__module__})")
            lines.append(f"    {describe_life_cycle(self.handler_class)}")
        if self.pipeline is not None:
            lines += describe_definitions(self.definitions)
        if self.per_member:
            lines.append("  conversation: per_user (in groups, one conversation per member)")
        for schedule in self.definitions.schedules.values():
            lines.append(f"  schedule {schedule.name} ({schedule.where})")
        for hook in self.definitions.hooks.values():
            lines.append(f"  hook {hook.name}: POST /hooks/{hook.name} → chats {hook.describe_recipients()} "
                         f"(at most {hook.rate_limit}/min)")
        return lines


class HandlerExited(Exception):
    """Handler code raised a BaseException that is not an Exception (SystemExit from
    sys.exit(), KeyboardInterrupt, GeneratorExit, …); `raised` is what it raised."""

    def __init__(self, raised: BaseException):
        self.raised = raised
        super().__init__(f"the handler raised {type(raised).__name__}({raised!s}); a bot's "
                         "handler cannot end the daemon, so this update failed instead")


def contain(call: Callable[..., T], *args: Any) -> T:
    """call(*args), with a BaseException that is not an Exception raised as HandlerExited."""
    try:
        return call(*args)
    except Exception:
        raise
    except BaseException as exc:
        raise HandlerExited(exc) from exc


class Contained:
    """A chat's handler as the update transaction sees it, whatever the bot's code raises.

    Invariant: only Exceptions leave handler code, and handler code never changes the
    update as the inbox holds it. The transaction answers those with the
    error text and marks the update done; a SystemExit or KeyboardInterrupt would instead
    end the chat's thread silently and leave its updates waiting behind a dead handler.
    """

    def __init__(self, inner: Desk):
        self.inner = inner

    @property
    def ends_on_error(self) -> bool:
        return self.inner.ends_on_error

    def start(self, payload: dict) -> bool:
        return contain(self.inner.start, copied(payload))

    def on_update(self, kind: str, payload: dict) -> None:
        # the handler gets its own copy: the update as it came still answers a button press
        # and words the error text, whatever the handler did to its message
        contain(self.inner.on_update, kind, copied(payload))

    def end(self, reason: BaseException) -> None:
        contain(self.inner.end, reason)

    def takes(self, kind: str, payload: dict) -> bool:
        return contain(self.inner.takes, kind, payload)

    def waiting(self) -> None:
        contain(self.inner.waiting)


def describe_life_cycle(cls: type[ChatHandler]) -> str:
    """Which of telepot's life-cycle methods the class brings, for `chatdaemon check`."""
    made = "telepot's (seed_tuple)" if takes_seed_tuple(cls) else "(context, conversation, sender)"
    own = [name for name in ("open", "on__idle", "on_close")
           if getattr(cls, name, None) is not getattr(ChatHandler, name, None)]
    return f"made with {made}; defines {', '.join(own) if own else 'no open or on_close'}"


def describe_definitions(definitions: Definitions) -> list[str]:
    lines = []
    by_state: dict[str, list[str]] = {}
    for handler in definitions.handlers:
        states = handler.source_states or ("(any state)",)
        for state in states:
            arrow = f" → {handler.target_state}" if handler.target_state else ""
            pattern = handler.pattern.pattern if handler.pattern else "(anything)"
            extra = " + request" if handler.request else ""
            extra += " + on_callback" if handler.on_callback else ""
            by_state.setdefault(state, []).append(
                f"{handler.name}: {pattern}{extra}{arrow} (priority {handler.priority})")
    lines.append(f"  handlers: {len(definitions.handlers)}")
    for state, entries in by_state.items():
        lines.append(f"    in {state}:")
        lines += [f"      {entry}" for entry in entries]
    tree = definitions.tree
    if tree is not None:
        lines.append(f"  tree: {tree.count()} node(s), started by {tree.pattern.pattern} "
                     f"(after the handlers), {len(tree.root.answers)} first answer(s)")
    fallback = "none (on purpose: unmatched messages get no answer)" if definitions.silent \
        else "the default" if definitions.default_fallback else "yes"
    lines.append(f"  fallback: {fallback}")
    if definitions.env:
        lines.append(f"  env: {', '.join(sorted(definitions.env))}")
    return lines


def definition_files(directory: str, where: str | None = None) -> list[str]:
    if not os.path.isdir(directory):
        raise ConfigError(f"handlers directory {directory} does not exist", where)
    files = sorted(glob.glob(os.path.join(directory, "*.yaml")) +
                   glob.glob(os.path.join(directory, "*.yml")))
    if not files:
        raise ConfigError(f"no bot definition (*.yaml) in {directory}", where)
    return files


@dataclass
class _Seen:
    """What the files of one bot said so far, for the checks across files."""

    error_text: str
    python: tuple[Any, str] | None = None    # (module:Class, where)
    fallback_where: str | None = None
    yaml_where: str | None = None


def load_bot(directory: str, error_text: str = DEFAULT_ERROR_TEXT,
             environ: dict[str, str] | None = None, where: str | None = None) -> Bot:
    """Read every definition in `directory` (named at `where`, if a file named it) as one bot.

    Raises ConfigError — ConfigErrors when there are several — naming file:line for every
    mistake in every file, never another exception (a reload must survive any file).
    """
    files = definition_files(directory, where)
    compiler = Compiler(environ=environ,  # templates (jinja2) only once a definition has one
                        directory=directory)
    problems = compiler.problems
    seen = _Seen(error_text)
    for path in files:
        problems.run(_read_definition, path, compiler, seen)
    definitions = compiler.finish(answers_itself=seen.python is not None)
    handler_class = None
    if seen.python is not None and seen.yaml_where is not None:
        problems.add(ConfigError(f"a bot is either `python` ({seen.python[1]}) or YAML handlers, "
                                 "not both", seen.yaml_where))
    elif seen.python is not None:
        handler_class = problems.run(import_handler, directory, *seen.python)
    elif seen.yaml_where is None and not problems:
        problems.add(ConfigError(f"no handler defined in {directory}: add `handlers:`, `tree:` or "
                                 "`python: module:Class`", files[0]))
    problems.raise_any()
    bot = Bot(directory, error_text=seen.error_text, files=files, warnings=definitions.warnings,
              definitions=definitions)
    if handler_class is not None:
        assert seen.python is not None   # a handler class is imported only from `python:`
        bot.handler_class, bot.python_ref = handler_class, seen.python[0]
    else:
        # the YAML pipeline, and what it imports (requests, jinja2, regex), only for a YAML bot
        from .pipeline import Pipeline
        bot.pipeline = Pipeline(definitions, seen.error_text)
    return bot


def _read_definition(path: str, compiler: Compiler, seen: _Seen) -> None:
    """One definition file into the compiler; every mistake in it is collected."""
    data = yamlfile.load_mapping(path, "a bot definition")
    if data is None:
        return
    problems = compiler.problems
    problems.run(yamlfile.check_keys, data, DEFINITION_KEYS, "a bot definition")
    where = data.key_where
    if "python" in data:
        if seen.python is not None:
            problems.add(ConfigError(f"`python` is already set in {seen.python[1]}", where["python"]))
        else:
            seen.python = (data["python"], where["python"])
    if "error_text" in data:
        seen.error_text = str(data["error_text"])
    sections = (("env", compiler.add_env), ("handlers", compiler.add_handlers),
                ("schedules", compiler.add_schedules), ("hooks", compiler.add_hooks),
                ("tree", compiler.add_tree), ("session_timeout", compiler.add_session_timeout),
                ("conversation", compiler.add_conversation))
    for key, add in sections:
        if key in data:
            problems.run(add, data[key], where[key])
    if ("handlers" in data or "tree" in data) and seen.yaml_where is None:
        seen.yaml_where = where["handlers" if "handlers" in data else "tree"]
    if "fallback" in data:
        if seen.fallback_where is not None:
            problems.add(ConfigError(f"fallback is already set in {seen.fallback_where}",
                                     where["fallback"]))
        else:
            seen.fallback_where = where["fallback"]
            compiler.result.fallback = problems.run(compiler.fallback, data["fallback"],
                                                    where["fallback"])


def import_handler(directory: str, ref: Any, where: str) -> type[ChatHandler]:
    """Import `module:Class` from `directory` and check it is a ChatHandler."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ConfigError(f"python must look like module:Class, not {ref!r}", where)
    module_name, class_name = ref.split(":")
    if not module_name.isidentifier() or not class_name.isidentifier():
        raise ConfigError(f"python must look like module:Class, not {ref!r}", where)
    path = os.path.join(directory, module_name + ".py")
    if not os.path.isfile(path):
        raise ConfigError(f"python module {module_name}.py not found in {directory}", where)
    module = _import_file(path, module_name)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ChatHandler)):
        raise ConfigError(f"{ref} is not a subclass of chatdaemon.ChatHandler", where)
    check_handler_class(cls, ref, where)
    return cls


def takes_seed_tuple(cls: type[ChatHandler]) -> bool:
    """True when the constructor is telepot's `__init__(self, seed_tuple, **kwargs)`: it
    cannot take chatdaemon's (context, conversation, sender) but takes one argument."""
    signature = inspect.signature(cls)
    try:
        signature.bind(None, None, None)
    except TypeError:
        signature.bind(None)  # TypeError: neither form; check_handler_class names the line
        return True
    return False


def construct(cls: type[ChatHandler], context: Any, conversation: Any, sender: Any) -> ChatHandler:
    """A handler of `cls`, with chatdaemon's three arguments or telepot's seed tuple
    (bot, initial_msg, seed = the chat id), whichever its constructor takes."""
    if not takes_seed_tuple(cls):
        return cls(context, conversation, sender)
    seed = SeedTuple((BotSender(sender, context), context.payload(), conversation.chat_id))
    seed.context, seed.conversation, seed.sender = context, conversation, sender
    return cls(seed)


class _StubContext:
    """What `check_handler_class` gives a constructor: a chat with no updates."""

    def payload(self) -> dict:
        return {"message_id": 0, "date": 0, "chat": {"id": 0, "type": "private"}, "text": ""}

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _StubSender:
    """Accepts every call and sends nothing."""

    api = None

    def call(self, method: str, params: dict | None = None, **options: Any) -> dict:
        return {}


def check_handler_class(cls: type[ChatHandler], ref: str, where: str) -> None:
    """Make one handler of `cls` against a stub chat, and check that open and on_close can
    be called as the daemon calls them; a ConfigError naming the file:line otherwise."""
    from .store import Conversation
    try:
        takes_seed_tuple(cls)
    except TypeError:
        raise ConfigError(f"{ref}: its constructor takes neither (context, conversation, sender) "
                          f"nor telepot's (seed_tuple)", _definition_where(cls.__init__, where)) from None
    try:
        handler = construct(cls, _StubContext(), Conversation(0, None, {}), _StubSender())
    except (Exception, SystemExit) as exc:  # a reload must survive whatever the class does
        directory = os.path.dirname(os.path.abspath(inspect.getfile(cls)))
        frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
                  if os.path.dirname(os.path.abspath(frame.filename)) == directory]
        raise ConfigError(f"{ref}: making a handler failed: {type(exc).__name__}: {exc}",
                          f"{frames[-1].filename}:{frames[-1].lineno}" if frames else where) from None
    _check_callable(handler.open, ((None,), (None, 0)), f"{ref}.open", where,
                    "open(self, initial_msg) or open(self, initial_msg, seed)")
    _check_callable(handler.on_close, ((None,),), f"{ref}.on_close", where, "on_close(self, reason)")


def _check_callable(method: Any, calls: tuple, name: str, where: str, expected: str) -> None:
    signature = inspect.signature(method)
    for args in calls:
        try:
            signature.bind(*args)
            return
        except TypeError:
            continue
    raise ConfigError(f"{name} cannot be called as {expected}", _definition_where(method, where))


def _definition_where(function: Any, where: str) -> str:
    """file:line of a function's `def`, or `where` (the definition's python: line)."""
    try:
        function = inspect.unwrap(getattr(function, "__func__", function))
        return f"{inspect.getsourcefile(function)}:{function.__code__.co_firstlineno}"
    except (TypeError, OSError, AttributeError):
        return where


def package_name(directory: str) -> str:
    """The package a handlers directory's modules are imported into."""
    digest = hashlib.sha256(os.path.realpath(directory).encode()).hexdigest()[:12]
    return f"{PACKAGE}.d{digest}"


def _import_file(path: str, module_name: str) -> Any:
    """Run `path` as a fresh module of its directory's package.

    The package's modules from an earlier load are set aside first, so that the module and
    the neighbours it imports are read again; if the import fails they are put back, and the
    running bot keeps the modules it was built from.
    """
    directory = os.path.dirname(os.path.abspath(path))
    package = package_name(directory)
    earlier = _set_aside(package)
    _add_package(PACKAGE, [])
    _add_package(package, [directory])
    # the package's neighbours are found by a fresh finder whose loader reads the source
    # every time (the directory is on no other path, so nothing else is affected)
    sys.path_importer_cache[directory] = importlib.machinery.FileFinder(
        directory, (_SourceLoader, importlib.machinery.SOURCE_SUFFIXES))
    name = f"{package}.{module_name}"
    try:
        return _execute(path, name)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: a bot's import never ends the daemon
        _set_aside(package)
        sys.modules.update(earlier)
        raise ConfigError(f"cannot import {module_name}: {type(exc).__name__}: {exc}",
                          _failure_where(exc, path, directory)) from None


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles from the source on every import and writes no .pyc: a cached .pyc of an edit
    made within the same second (and the same size) would bring back the old code."""

    def get_code(self, fullname: str) -> types.CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


def _execute(path: str, name: str) -> types.ModuleType:
    with open(path, "rb") as handle:
        source = handle.read()
    spec = importlib.machinery.ModuleSpec(name, None, origin=path)
    spec.has_location = True
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules[name] = module  # as the import system does, so that circular imports work
    # compiled from the source every time: a cached .pyc of an edit within the same second
    # would bring back the old code
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def _set_aside(package: str) -> dict[str, types.ModuleType]:
    """Remove `package` and its modules from sys.modules and return them."""
    names = [name for name in sys.modules if name == package or name.startswith(package + ".")]
    return {name: sys.modules.pop(name) for name in names}


def _add_package(name: str, path: list[str]) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = path
    module.__package__ = name
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__spec__.submodule_search_locations = path
    sys.modules[name] = module


def _failure_where(exc: BaseException, path: str, directory: str) -> str:
    """file:line of the failure: the last line of the bot's own files in the traceback."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f"{exc.filename}:{exc.lineno}"
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if os.path.dirname(os.path.abspath(frame.filename)) == directory]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else f"{path}:1"
