"""Loading a bot: the YAML definitions in a handlers directory, and the ChatHandler they name."""

from __future__ import annotations

import glob
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from . import yamlfile
from .chathandler import ChatHandler
from .config import DEFAULT_ERROR_TEXT
from .definitions import Compiler, Definitions
from .errors import ConfigError
from .pipeline import Pipeline, PipelineHandler
from .templates import Templates

DEFINITION_KEYS = {"python", "error_text", "env", "handlers", "tree", "fallback", "schedules", "hooks"}


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

    @property
    def hooks(self) -> dict:
        return self.definitions.hooks

    def create_handler(self, context: Any, conversation: Any, sender: Any) -> ChatHandler:
        """The chat's handler; `context` is the update transaction (a ChatContext)."""
        if self.pipeline is not None:
            return PipelineHandler(context, conversation, sender, self.pipeline)
        return self.handler_class(context, conversation, sender)

    def describe(self) -> list[str]:
        """What `chatdaemon check` prints about this bot."""
        lines = [f"bot in {self.directory} ({len(self.files)} file(s))"]
        if self.handler_class is not None:
            cls = self.handler_class
            lines.append(f"  python handler: {cls.__module__}:{cls.__qualname__}")
        if self.pipeline is not None:
            lines += describe_definitions(self.definitions)
        for schedule in self.definitions.schedules.values():
            lines.append(f"  schedule {schedule.name} ({schedule.where})")
        for hook in self.definitions.hooks.values():
            recipients = ", ".join(str(c) for c in hook.recipients)
            lines.append(f"  hook {hook.name}: POST /hooks/{hook.name} → chats {recipients} "
                         f"(at most {hook.rate_limit}/min)")
        for missing in self.definitions.missing_env:
            lines.append(f"  missing environment variable: {missing}")
        return lines


def describe_definitions(definitions: Definitions) -> list[str]:
    lines = []
    by_state: dict[str, list[str]] = {}
    for handler in definitions.handlers:
        states = handler.source_states or ("(any state)",)
        for state in states:
            arrow = f" → {handler.target_state}" if handler.target_state else ""
            pattern = handler.pattern.pattern if handler.pattern else "(anything)"
            extra = " + request" if handler.request else ""
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
    fallback = "yes" if definitions.fallback else "none (unmatched messages get no answer)"
    lines.append(f"  fallback: {fallback}")
    if definitions.env:
        lines.append(f"  env: {', '.join(sorted(definitions.env))}")
    return lines


def definition_files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise ConfigError(f"handlers directory {directory} does not exist")
    files = sorted(glob.glob(os.path.join(directory, "*.yaml")) +
                   glob.glob(os.path.join(directory, "*.yml")))
    if not files:
        raise ConfigError(f"no bot definition (*.yaml) in {directory}")
    return files


def load_bot(directory: str, error_text: str = DEFAULT_ERROR_TEXT,
             environ: dict[str, str] | None = None) -> Bot:
    """Read every definition in `directory` as one bot; ConfigError with file:line on any mistake."""
    files = definition_files(directory)
    compiler = Compiler(Templates(), environ)
    python_ref: tuple[str, str] | None = None
    fallback_where: str | None = None
    yaml_where: str | None = None
    for path in files:
        data = yamlfile.load(path)
        if data is None:
            continue
        yamlfile.check_keys(data, DEFINITION_KEYS, "a bot definition")
        where = data.key_where
        if "python" in data:
            if python_ref is not None:
                raise ConfigError(f"`python` is already set in {python_ref[1]}", where["python"])
            python_ref = (data["python"], where["python"])
        if "error_text" in data:
            error_text = str(data["error_text"])
        if "env" in data:
            compiler.add_env(data["env"])
        if "handlers" in data:
            compiler.add_handlers(data["handlers"])
            yaml_where = yaml_where or where["handlers"]
        if "tree" in data:
            compiler.add_tree(data["tree"], where["tree"])
            yaml_where = yaml_where or where["tree"]
        if "schedules" in data:
            compiler.add_schedules(data["schedules"])
        if "hooks" in data:
            compiler.add_hooks(data["hooks"])
        if "fallback" in data:
            if fallback_where is not None:
                raise ConfigError(f"fallback is already set in {fallback_where}", where["fallback"])
            fallback_where = where["fallback"]
            compiler.result.fallback = compiler.response(data["fallback"], fallback_where)
    definitions = compiler.finish()
    if python_ref is not None and yaml_where is not None:
        raise ConfigError(f"a bot is either `python` ({python_ref[1]}) or YAML handlers, not both",
                          yaml_where)
    bot = Bot(directory, error_text=error_text, files=files, warnings=definitions.warnings,
              definitions=definitions)
    if python_ref is not None:
        bot.handler_class = import_handler(directory, *python_ref)
    elif definitions.handlers or definitions.tree:
        bot.pipeline = Pipeline(definitions, error_text)
    else:
        raise ConfigError(f"no handler defined in {directory}: add `handlers:`, `tree:` or "
                          "`python: module:Class`", files[0])
    return bot


def import_handler(directory: str, ref: Any, where: str) -> type[ChatHandler]:
    """Import `module:Class` from `directory` and check it is a ChatHandler."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ConfigError(f"python must look like module:Class, not {ref!r}", where)
    module_name, class_name = ref.split(":")
    path = os.path.join(directory, module_name + ".py")
    if not os.path.isfile(path):
        raise ConfigError(f"python module {module_name}.py not found in {directory}", where)
    module = _import_file(path, module_name)
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, ChatHandler)):
        raise ConfigError(f"{ref} is not a subclass of chatdaemon.ChatHandler", where)
    return cls


def _import_file(path: str, module_name: str) -> Any:
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)  # so a handler module can import its neighbours
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
        lineno = exc.lineno if isinstance(exc, SyntaxError) else (frames[-1].lineno if frames else 1)
        raise ConfigError(f"cannot import {module_name}: {type(exc).__name__}: {exc}",
                          f"{path}:{lineno}") from None
    sys.modules[module_name] = module
    return module
