"""Reading YAML so that every value still knows its file and line, for file:line errors."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError


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


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Mapping:
    mapping = Mapping()
    mapping.where = _place(loader, node)
    mapping.key_where = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
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


def _place(loader: _Loader, node: yaml.Node) -> str:
    return f"{loader.name}:{node.start_mark.line + 1}"


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load(path: str) -> Any:
    """Parse one YAML file; a syntax error becomes a ConfigError naming file:line."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    loader = _Loader(text)
    loader.name = path
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError(f"YAML syntax error: {exc.problem or exc.context}", line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path) from None
    finally:
        loader.dispose()


def check_keys(mapping: Any, allowed: set[str], what: str) -> None:
    """Unknown keys are errors: a typo must not be silently ignored."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{what} must be a mapping", where_of(mapping))
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {key!r} in {what} (known: {', '.join(sorted(allowed))})",
                mapping.key_where.get(key, where_of(mapping)) if isinstance(mapping, Mapping) else None,
            )
