"""Reading YAML so that every value still knows its file and line, for file:line errors.

Whatever a file holds — bytes that are not UTF-8, a list as a key, nesting thousands of
levels deep, an unknown tag, a value its tag cannot read — the result is a ConfigError
naming file:line, never another exception: a reload must be able to refuse a file and keep
the running bot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from .errors import ConfigError, ConfigErrors

MAX_DEPTH = 64           # nesting levels of mappings and sequences; a bot needs far fewer
MAX_BYTES = 4 * 1024 * 1024
MAX_ALIASED = 100_000    # values a file's aliases (*name) add when expanded


class Mapping(dict):
    """A YAML mapping that remembers where it and each of its keys were written."""

    where: str = "?"
    key_where: dict


class Sequence(list):
    """A YAML sequence that remembers where it and each item were written."""

    where: str = "?"
    item_where: list


def where_of(value: Any, default: str = "?") -> str:
    return getattr(value, "where", default)


class Problems:
    """Every ConfigError of one load, so that a run reports them all, not just the first."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def __len__(self) -> int:
        return len(self.errors)

    def add(self, error: ConfigError) -> None:
        self.errors.extend(error.errors if isinstance(error, ConfigErrors) else [error])

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Record a ConfigError raised inside the block and carry on after it."""
        try:
            yield
        except ConfigError as exc:
            self.add(exc)

    def run(self, build: Any, *args: Any, failed: Any = None) -> Any:
        """build(*args), or `failed` when it raised a ConfigError (which is recorded)."""
        with self.collect():
            return build(*args)
        return failed

    def raise_any(self) -> None:
        if self.errors:
            raise ConfigErrors(self.errors)


class _Loader(yaml.SafeLoader):
    def __init__(self, text: str, name: str):
        super().__init__(text)
        self.name = name
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # the composer and constructor recurse once per level: cap it before Python's stack
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep",
                                  f"{self.name}:{mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ConfigError, yaml.YAMLError):
            raise
        except Exception as exc:  # e.g. !!int "abc": the tag's constructor fails on the value
            raise ConfigError(f"cannot read this {node.tag.rpartition(':')[2]} value: "
                              f"{type(exc).__name__}: {exc}", _place(self, node)) from None


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Mapping:
    loader.flatten_mapping(node)  # `<<: *anchor` merges
    mapping = Mapping()
    mapping.where = _place(loader, node)
    mapping.key_where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not _hashable(key):
            raise ConfigError(f"a key must be a plain value, not a {_kind(key)}",
                              _place(loader, key_node))
        if key in mapping:
            raise ConfigError(f"duplicate key {key!r}", _place(loader, key_node))
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_where[key] = _place(loader, key_node)
    return mapping


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Sequence:
    items = Sequence(loader.construct_object(child, deep=True) for child in node.value)
    items.where = _place(loader, node)
    items.item_where = [_place(loader, child) for child in node.value]
    return items


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _kind(value: Any) -> str:
    for kind, name in ((bool, "boolean"), (dict, "mapping"), (list, "list"), (set, "set"),
                       (str, "string"), (int, "number"), (float, "number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _place(loader: _Loader, node: yaml.Node) -> str:
    return f"{loader.name}:{node.start_mark.line + 1}"


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load(path: str) -> Any:
    """Parse one YAML file; anything wrong with it becomes a ConfigError naming file:line."""
    return _load(path)[0]


def load_mapping(path: str, what: str) -> Mapping | None:
    """A file whose top level must be a mapping (or empty, which gives None)."""
    data, where = _load(path)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{what} must be a mapping of `key: value` lines, "
                          f"not a {_kind(data)}", where)
    return data


def _load(path: str) -> tuple[Any, str]:
    """The document in `path` and the file:line where it starts."""
    text = _read_text(path)
    loader = None
    try:
        loader = _Loader(text, path)  # the reader checks every character here
        node = loader.get_single_node()
        if node is None:
            return None, f"{path}:1"
        _check_expansion(loader, node)
        return loader.construct_document(node), _place(loader, node)
    except yaml.MarkedYAMLError as exc:
        kind = "syntax error" if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError) \
            else "error"
        raise ConfigError(f"YAML {kind}: {_describe(exc)}", _syntax_where(path, exc)) from None
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"YAML error: character {exc.character!r} is not allowed in YAML",
                          f"{path}:{line}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path) from None
    except RecursionError:  # a net under MAX_DEPTH: never let a file take the process down
        raise ConfigError("nested too deeply to read", path) from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_expansion(loader: _Loader, root: yaml.Node) -> None:
    """Refuse a document whose aliases add more than MAX_ALIASED values ("billion laughs").

    An alias is one shared object once read, but whatever walks the definitions (compiling
    every template of a request body, say) meets it once per reference: ten lists of ten
    aliases, seven deep, are 10**7 templates. What the file writes out is bounded by
    MAX_BYTES; what its aliases add is bounded here. Counted per distinct node, so this
    costs one pass over what the file wrote (its depth is capped at MAX_DEPTH).
    """
    sizes: dict[int, int] = {}

    def expanded(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1   # a node met again while counting itself counts once
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [child for pair in node.value for child in pair]
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]

    # the invariant: nothing built from this file walks more than MAX_ALIASED values
    # beyond the ones it writes out
    added = expanded(root) - len(sizes)
    if added > MAX_ALIASED:
        raise ConfigError(f"its aliases (*name) add {added} values, more than {MAX_ALIASED}",
                          _place(loader, root))


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"larger than {MAX_BYTES // (1024 * 1024)} MiB; is this the right file?",
                          path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"not UTF-8: byte 0x{data[exc.start]:02x} at column {column} "
                          "(save the file as UTF-8)", f"{path}:{line}") from None


def _syntax_where(path: str, exc: yaml.MarkedYAMLError) -> str:
    """The line to blame: where a token started for a scanner error (an unterminated quote
    is reported where the quote opens, not at the end of the file), else the problem's line."""
    scanner = isinstance(exc, yaml.scanner.ScannerError)
    mark = (exc.context_mark if scanner else None) or exc.problem_mark or exc.context_mark
    return f"{path}:{mark.line + 1}" if mark else path


def _describe(exc: yaml.MarkedYAMLError) -> str:
    parts = []
    if exc.context:
        line = f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""
        parts.append(f"{exc.context}{line}")
    if exc.problem:
        line = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        parts.append(f"{exc.problem}{line}")
    return ", ".join(parts) or "unreadable YAML"


def check_keys(mapping: Any, allowed: set[str], what: str, where: str | None = None) -> None:
    """Unknown keys are errors — every one of them: a typo must not be silently ignored."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{what} must be a mapping", where_of(mapping, where or "?"))
    problems = Problems()
    for key in mapping:
        if key not in allowed:
            problems.add(ConfigError(
                f"unknown key {key!r} in {what} (known: {', '.join(sorted(allowed))})",
                mapping.key_where.get(key, mapping.where) if isinstance(mapping, Mapping) else where))
    problems.raise_any()
