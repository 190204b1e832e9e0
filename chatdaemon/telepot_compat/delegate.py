"""telepot.delegate: seeders pick a message's seed; factories make the seed's handler.

A delegation pattern is (seeder, factory). `pave_event_space()` and
`include_callback_query_chat_id()` wrap the building of a pattern as in telepot 12, so
`pave_event_space()(per_chat_id(), create_open, Handler, timeout=10)` reads the same.
Under `chatdaemon telepot` every seed lives inside its chat's delegate: seeds of one chat
are served one update at a time, in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .exception import BadFlavor, Unsupported
from .telepot import flavor

Seeder = Callable[[dict], Any]

# telepot's seeders and wrappers for updates that belong to no chat, or that need a
# message's origin tracked across chats: a program using one learns why at start-up.
NOT_PROVIDED = {
    "per_inline_from_id": "inline queries belong to no chat",
    "per_inline_from_id_in": "inline queries belong to no chat",
    "per_inline_from_id_except": "inline queries belong to no chat",
    "per_invoice_payload": "shipping and pre-checkout queries belong to no chat",
    "per_callback_query_origin": "button presses go to the chat they were pressed in",
    "intercept_callback_query_origin": "button presses go to the chat they were pressed in",
    "per_event_source_id": "timed events are not provided; the daemon's idle timeout is",
}


def __getattr__(name: str) -> Any:
    if name in NOT_PROVIDED:
        raise Unsupported(f"telepot.delegate.{name} is not provided by `chatdaemon telepot`: "
                          f"{NOT_PROVIDED[name]}")
    raise AttributeError(f"module 'telepot.delegate' has no attribute {name!r}")



def _none_on_missing(fn: Seeder) -> Seeder:
    def seeder(msg: dict) -> Any:
        try:
            return fn(msg)
        except (KeyError, TypeError, BadFlavor):
            return None
    return seeder


def _chat_type_ok(msg: dict, types: Any) -> bool:
    return types == "all" or msg["chat"]["type"] in types


def per_chat_id(types: Any = "all") -> Seeder:
    """Seed = the chat id of a chat message (of the given chat types)."""
    return _none_on_missing(lambda msg: msg["chat"]["id"] if _chat_type_ok(msg, types) else None)


def per_chat_id_in(s: Any, types: Any = "all") -> Seeder:
    """Seed = the chat id, for chats in `s` only."""
    return _none_on_missing(
        lambda msg: msg["chat"]["id"] if _chat_type_ok(msg, types) and msg["chat"]["id"] in s
        else None)


def per_chat_id_except(s: Any, types: Any = "all") -> Seeder:
    """Seed = the chat id, for chats not in `s`."""
    return _none_on_missing(
        lambda msg: msg["chat"]["id"] if _chat_type_ok(msg, types) and msg["chat"]["id"] not in s
        else None)


def per_from_id(flavors: Any = ("chat", "inline_query", "chosen_inline_result")) -> Seeder:
    """Seed = the sender's user id."""
    return _none_on_missing(
        lambda msg: msg["from"]["id"] if flavors == "all" or flavor(msg) in flavors else None)


def per_from_id_in(s: Any, flavors: Any = ("chat", "inline_query", "chosen_inline_result")) -> Seeder:
    seeder = per_from_id(flavors)
    return lambda msg: seed if (seed := seeder(msg)) in s else None


def per_from_id_except(s: Any, flavors: Any = ("chat", "inline_query", "chosen_inline_result")
                       ) -> Seeder:
    seeder = per_from_id(flavors)
    return lambda msg: seed if (seed := seeder(msg)) is not None and seed not in s else None


def per_callback_query_chat_id(types: Any = "all") -> Seeder:
    """Seed = the chat id of the message a button was pressed on."""
    return _none_on_missing(
        lambda msg: msg["message"]["chat"]["id"]
        if flavor(msg) == "callback_query" and _chat_type_ok(msg["message"], types) else None)


def per_application() -> Seeder:
    """One seed for every message: one handler (per chat, under chatdaemon) sees them all."""
    return lambda msg: 1


def per_message(flavors: Any = "all") -> Seeder:
    """A new handler for every message (an unhashable seed ties it to no other message)."""
    return _none_on_missing(lambda msg: [msg] if flavors == "all" or flavor(msg) in flavors else None)


def chain(*seeders: Seeder) -> Seeder:
    """The first seed any of the seeders gives."""
    def seeder(msg: dict) -> Any:
        for one in seeders:
            seed = one(msg)
            if seed is not None:
                return seed
        return None
    return seeder


# -- factories -------------------------------------------------------------------------------

class OpenFactory:
    """create_open: the handler's open(), then on_message() for each message."""

    def __init__(self, cls: type, args: tuple, kwargs: dict):
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.timeout = kwargs.get("timeout")

    def __call__(self, seed_tuple: tuple) -> Any:
        return self.cls(seed_tuple, *self.args, **self.kwargs)


def create_open(cls: type, *args: Any, **kwargs: Any) -> OpenFactory:
    return OpenFactory(cls, args, kwargs)


def create_run(cls: type, *args: Any, **kwargs: Any) -> Callable[[tuple], Callable[[], Any]]:
    """The handler's run(), which reads its messages with listener.wait()."""
    def factory(seed_tuple: tuple) -> Callable[[], Any]:
        return cls(seed_tuple, *args, **kwargs).run
    # DelegatorBot reads a factory's idle `timeout`, as it does OpenFactory's
    factory.timeout = kwargs.get("timeout")  # type: ignore[attr-defined]
    return factory


def call(func: Callable, *args: Any, **kwargs: Any) -> Callable[[tuple], Callable[[], Any]]:
    """func(seed_tuple, *args, **kwargs), run once for the seed."""
    return lambda seed_tuple: (lambda: func(seed_tuple, *args, **kwargs))


# -- building patterns -----------------------------------------------------------------------

def pair(seeders: list, delegator_factory: Callable, *args: Any, **kwargs: Any) -> tuple:
    seeder = chain(*seeders) if len(seeders) > 1 else seeders[0]
    return seeder, delegator_factory(*args, **kwargs)


def _as_list(seeders: Any) -> list:
    return list(seeders) if isinstance(seeders, list | tuple) else [seeders]


def pave_event_space(fn: Callable = pair) -> Callable:
    """Give the handlers an event space (for telepot's timed events; idle is the daemon's)."""
    event_space = object()  # only its identity matters

    def build(seeders: Any, delegator_factory: Callable, *args: Any, **kwargs: Any) -> tuple:
        return fn(_as_list(seeders), delegator_factory, *args, event_space=event_space, **kwargs)
    return build


def include_callback_query_chat_id(fn: Callable = pair, types: Any = "all") -> Callable:
    """Also seed button presses by the chat they were pressed in."""
    def build(seeders: Any, delegator_factory: Callable, *args: Any, **kwargs: Any) -> tuple:
        return fn(_as_list(seeders) + [per_callback_query_chat_id(types)], delegator_factory,
                  *args, include_callback_query=True, **kwargs)
    return build
