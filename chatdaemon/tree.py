"""The `tree` key: a say/answers decision tree, compiled at load and walked one answer at a time.

A conversation inside the tree keeps its place in its state ("tree:", the tree's
fingerprint and the path of answers taken, like "tree:3f2a9c01:1.0"), so it survives a
restart like any other state; after a reload that changed the answers it starts over. An answer
picks an option by its number (1, 2, …) or by a piece of its label that fits exactly one
option, ignoring case, spaces and punctuation ("wifi" picks "Wi-Fi"); anything else gets the
"didn't understand, start again?" prompt. After a leaf the conversation is "tree-done:", so
the next message no handler takes is asked "start again?" rather than left unanswered.

`answers` is a list of {answer, say, …} options, or a mapping of label → node, where a node
is its `say` text alone or a mapping of say/answers/target_state.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import yamlfile
from .errors import ConfigError
from .patterns import Pattern, PatternError, compile_pattern
from .templates import Template, Templates, escape_markdown_v2
from .yamlfile import check_keys

TREE_KEYS = {"pattern", "say", "answers", "parse_mode", "not_understood", "goodbye", "target_state",
             "again", "open_on_any_message"}
NODE_KEYS = {"answer", "say", "answers", "target_state"}
STATE_PREFIX = "tree:"        # at a node, waiting for one of its answers
RETRY_PREFIX = "tree-retry:"  # an answer was not understood; waiting for yes/no
DONE_PREFIX = "tree-done:"    # a leaf was reached; the next message is asked "start again?"
YES = ("yes", "y", "1", "ok", "sure")
DEFAULT_NOT_UNDERSTOOD = "Sorry, I didn't understand that. Start again?"
DEFAULT_GOODBYE = "OK. Send {pattern} whenever you want to start again."
DEFAULT_AGAIN = "Anything else? Start again?"


def in_tree(state: str | None) -> bool:
    return state is not None and state.startswith((STATE_PREFIX, RETRY_PREFIX))


@dataclass
class Node:
    label: str                   # what the user picks (the root has none)
    say: Template
    where: str
    answers: list[Node] = field(default_factory=list)
    target_state: str | None = None


@dataclass
class Tree:
    pattern: Pattern
    root: Node
    where: str
    not_understood: Template
    goodbye: Template
    again: Template                # asked of the message after a leaf
    parse_mode: str | None = None
    target_state: str | None = None
    fingerprint: str = ""          # changes when the tree's answers change (a reload)
    pattern_where: str = ""        # file:line of `pattern`, for a pattern that times out
    any_message: bool = False      # any message opens the tree (in no state), not only `pattern`
    command: str = ""              # the command that opens it, for hints ("/start")

    def state_of(self, path: str) -> str:
        """The state for a place in this tree: its fingerprint and the path of answers taken."""
        return f"{STATE_PREFIX}{self.fingerprint}:{path}"

    def node_at(self, place: str) -> Node | None:
        """The node a state's place names, or None if the tree changed under it (a reload)."""
        fingerprint, _, path = place.partition(":")
        if fingerprint != self.fingerprint:
            return None
        node = self.root
        for part in filter(None, path.split(".")):
            if not part.isdigit() or int(part) >= len(node.answers):
                return None
            node = node.answers[int(part)]
        return node

    def states(self) -> set[str]:
        """Every state a leaf of the tree leaves the conversation in."""
        found: set[str] = {self.target_state} if self.target_state else set()  # "no" leaves there

        def walk(node: Node) -> None:
            if not node.answers:
                state = node.target_state or self.target_state
                if state:
                    found.add(state)
            for child in node.answers:
                walk(child)
        walk(self.root)
        return found

    def count(self) -> int:
        def size(node: Node) -> int:
            return 1 + sum(size(child) for child in node.answers)
        return size(self.root)


def pick(node: Node, text: str) -> int | None:
    """The index of the option an answer picks: its exact label, its number, or a piece of
    exactly one label (ignoring case, spaces and punctuation); None when the answer picks
    nothing or several."""
    answer = text.strip().casefold()
    if not answer:
        return None
    labels = [child.label.casefold() for child in node.answers]
    if answer in labels:
        return labels.index(answer)
    if answer.isdecimal():
        index = int(answer) - 1
        return index if 0 <= index < len(labels) else None
    fits = [index for index, label in enumerate(labels) if answer in label]
    if not fits:  # "wifi" for "Wi-Fi", "guest net" for "Guest-network"
        bare = _bare(answer)
        fits = [index for index, label in enumerate(labels) if bare and bare in _bare(label)]
    return fits[0] if len(fits) == 1 else None


def _bare(text: str) -> str:
    """Letters and digits only: what a person types when they leave out the punctuation."""
    return "".join(char for char in text if char.isalnum())


def _default(text: str, mode: str) -> str:
    """A default text in the tree's parse mode: MarkdownV2 refuses its bare "." (HTML and
    plain text take it as it is: it has no <, > or &)."""
    return escape_markdown_v2(text) if mode == "MarkdownV2" else text


def compile_tree(data: Any, where: str, templates: Templates,
                 state_name: Any) -> Tree:
    """The `tree` key of a bot definition; ConfigError with file:line on any mistake."""
    check_keys(data, TREE_KEYS, "the tree")
    mode = templates.mode_of(data.get("parse_mode"), _at(data, "parse_mode", where))
    source = data.get("pattern", r"^/start$")
    if not isinstance(source, str):
        raise ConfigError("tree: pattern must be a string", _at(data, "pattern", where))
    try:
        pattern = compile_pattern(source)
    except PatternError as exc:
        raise ConfigError(f"tree: pattern does not compile: {exc}", _at(data, "pattern", where)) \
            from None
    root = _node(data, where, templates, mode, state_name, root=True)
    if not root.answers:
        raise ConfigError("the tree needs answers: a list of {answer, say} options", where)
    command = re.search(r"/\(?(\w+)", source)  # '^/start$' or '^/(start|help)$' → /start
    shown = "/" + command.group(1) if command else "the start command"
    any_message = data.get("open_on_any_message", False)
    if not isinstance(any_message, bool):
        raise ConfigError("tree: open_on_any_message must be true or false",
                          _at(data, "open_on_any_message", where))
    not_understood = data.get("not_understood", _default(DEFAULT_NOT_UNDERSTOOD, mode))
    goodbye = data.get("goodbye", _default(DEFAULT_GOODBYE.format(pattern=shown), mode))
    return Tree(
        pattern=pattern, root=root, where=where, fingerprint=_fingerprint(root),
        pattern_where=_at(data, "pattern", where),
        not_understood=templates.compile(not_understood, _at(data, "not_understood", where), mode),
        goodbye=templates.compile(goodbye, _at(data, "goodbye", where), mode),
        parse_mode=None if mode == "none" else mode,
        target_state=state_name(data, "target_state"),
        again=templates.compile(data.get("again", _default(DEFAULT_AGAIN, mode)),
                                _at(data, "again", where), mode),
        any_message=any_message, command="/" + command.group(1) if command else "",
    )


def _node(data: Any, where: str, templates: Templates, mode: str, state_name: Any,
          root: bool = False) -> Node:
    if not root:
        check_keys(data, NODE_KEYS, "a tree answer", where)
    label = ""
    if not root:
        label = data.get("answer")
        if isinstance(label, bool) or label is None or not str(label).strip():
            raise ConfigError("every tree answer needs `answer:`, the label the user picks "
                              "(quote yes/no/true/false)", where)
        label = str(label).strip()
    if "say" not in data:
        raise ConfigError("a tree node needs `say:`, what the bot answers there", where)
    answers = data.get("answers") or []
    if isinstance(answers, dict):
        answers = _as_list(answers, _at(data, "answers", where))
    if not isinstance(answers, list):
        raise ConfigError("answers must be a list of {answer, say} options, or a mapping of "
                          "label: say", _at(data, "answers", where))
    children = []
    seen: dict[str, str] = {}
    for index, item in enumerate(answers):
        item_where = answers.item_where[index] if isinstance(answers, yamlfile.Sequence) else \
            getattr(item, "where", where)
        child = _node(item, item_where, templates, mode, state_name)
        key = child.label.casefold()
        if key in seen:
            raise ConfigError(f"tree answer {child.label!r} is listed twice here (also at {seen[key]})",
                              item_where)
        seen[key] = item_where
        children.append(child)
    return Node(label=label, say=templates.compile(data["say"], _at(data, "say", where), mode),
                where=where, answers=children,
                target_state=None if root else state_name(data, "target_state"))


class _Option(dict):
    """One option of the mapping form, as the list form writes it, with its file:line."""

    def __init__(self, values: dict, where: str, key_where: dict):
        super().__init__(values)
        self.where = where
        self.key_where = key_where


def _as_list(answers: dict, where: str) -> list:
    """`answers` written as label → node: the same options as the list form."""
    options = []
    for label, node in answers.items():
        at = _at(answers, label, where)
        if isinstance(label, bool) or label is None:
            raise ConfigError("YAML read a tree answer's label as true/false/null: put it in quotes",
                              at)
        if isinstance(node, dict):
            if "answer" in node:
                raise ConfigError(f"tree answer {label!r}: the label is the key here; leave out "
                                  "`answer:`", at)
            key_where = dict(getattr(node, "key_where", {}))
            options.append(_Option({"answer": str(label), **node}, at, key_where))
        elif isinstance(node, (str, int, float)):
            options.append(_Option({"answer": str(label), "say": str(node)}, at, {"say": at}))
        else:
            raise ConfigError(f"tree answer {label!r}: give what the bot says, or a mapping of "
                              "say/answers/target_state", at)
    return options


def _fingerprint(root: Node) -> str:
    def shape(node: Node) -> list:
        return [node.label, [shape(child) for child in node.answers]]
    return hashlib.sha1(json.dumps(shape(root)).encode()).hexdigest()[:8]


def _at(mapping: Any, key: str, default: str) -> str:
    if isinstance(mapping, (yamlfile.Mapping, _Option)):
        return mapping.key_where.get(key, default)
    return default
