"""Run unchanged telepot programs on chatdaemon's durable core (`chatdaemon telepot SCRIPT`).

The modules here stand in for telepot's: `telepot` (Bot, DelegatorBot, glance), `helper`,
`delegate`, `loop`, `exception` and `namedtuple`. They are never installed as a top-level
`telepot` package; `install()` makes `import telepot…` resolve to them in the one process
that runs a program, bound to that program's `Runtime`.
"""

from __future__ import annotations

import importlib.abc
import sys
import types
from dataclasses import dataclass, field

from . import delegate, exception, helper, loop, namedtuple
from . import telepot as telepot_module
from .runtime import Runtime

SUBMODULES = {"helper": helper, "delegate": delegate, "loop": loop, "exception": exception,
              "namedtuple": namedtuple}


class _MissingTelepotModule(importlib.abc.MetaPathFinder):
    """A clear error for the parts of telepot that are not provided (telepot.aio, …)."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("telepot.") and fullname not in sys.modules:
            provided = ", ".join(f"telepot.{name}" for name in SUBMODULES)
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: `chatdaemon telepot` provides telepot, "
                f"{provided} (not the asyncio API telepot.aio)", name=fullname)
        return None


@dataclass
class Installed:
    """The `telepot` modules registered in sys.modules; `remove()` takes them out again."""

    modules: dict[str, types.ModuleType]
    finder: _MissingTelepotModule
    replaced: dict[str, types.ModuleType | None] = field(default_factory=dict)

    @property
    def telepot(self) -> types.ModuleType:
        return self.modules["telepot"]

    def remove(self) -> None:
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        for name, module in self.replaced.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def build_modules(runtime: Runtime) -> dict[str, types.ModuleType]:
    """`telepot` and its submodules, with Bot and DelegatorBot bound to `runtime`."""
    top = types.ModuleType("telepot", telepot_module.__doc__)
    top.__dict__.update({key: value for key, value in vars(telepot_module).items()
                         if not key.startswith("__")})
    bot, delegator_bot = telepot_module.bind(runtime)
    top.__dict__.update(__version__=telepot_module.__version__, Bot=bot, DelegatorBot=delegator_bot)
    top.__path__ = []  # a package, so that a missing submodule reaches the finder
    modules = {"telepot": top}
    for name, module in SUBMODULES.items():
        setattr(top, name, module)
        modules[f"telepot.{name}"] = module
    return modules


def install(runtime: Runtime) -> Installed:
    """Make `import telepot` (and its submodules) resolve to this package, in this process."""
    modules = build_modules(runtime)
    installed = Installed(modules, _MissingTelepotModule())
    for name, module in modules.items():
        installed.replaced[name] = sys.modules.get(name)
        sys.modules[name] = module
    sys.meta_path.insert(0, installed.finder)
    return installed


__all__ = ["Installed", "Runtime", "build_modules", "install"]
