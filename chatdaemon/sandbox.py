"""The template sandbox and its bounds: what one render may spend in time, memory and output.

Jinja2's SandboxedEnvironment keeps a template away from Python's internals; it does not
stop `{{ 'x' * 10**9 }}` or three nested loops over a long message. This environment adds:
- time: a deadline per render, checked in every intercepted operator, call, filter, loop
  iteration and output chunk, so nested loops cannot spin for minutes;
- size: what one operation would build (`*`, `**`, `+`, `%`, `~`, the str methods and the
  filters that allocate: widths, fills, indents, replace, join, format, sum …) is worked
  out *before* it is built and refused past MAX_SIZE; a list or dict is turned into text
  only if its printed size is within the same bound;
- memory: what one render builds in all (results of those operations, output, growth of
  lists it appends to) is counted against MAX_BUILT;
- loops: every `for` iterates through a counting guard (MAX_ITERATIONS per render) and
  `range` is capped;
- output: the caller renders through `render`, which stops generating at the output cap.
A render past any bound raises BoundExceeded, which names the bound.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import re
import string
import threading
import time
import types
from collections import abc
from collections.abc import Callable, Generator
from typing import Any, cast

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_environment, pass_eval_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

RENDER_SECONDS = 0.5          # one render, however it spends it
MAX_SIZE = 256 * 1024         # characters or items one operation may build
MAX_BUILT = 1024 * 1024       # characters or items one render may build in all
MAX_WIDTH = 64 * 1024         # a width, fill, indent or precision (nothing wider can be sent)
MAX_ITERATIONS = 100_000      # loop iterations in one render, all loops together
MAX_INT_BITS = 64 * 1024      # an integer built by * or ** (about 20,000 digits)
MAX_LIPSUM = (100, 1000)      # lipsum's paragraphs and words per paragraph

_SEQUENCES = (str, bytes, list, tuple)
_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")
# filters whose answer is a piece of their input, not something they built
_REFERENCE_FILTERS = frozenset({"first", "last", "random", "min", "max", "default", "d", "attr"})
# filters that turn their input into text, so a container must print within the bound
_TEXT_FILTERS = frozenset({
    "string", "e", "escape", "forceescape", "pprint", "urlencode", "xmlattr", "urlize",
    "title", "upper", "lower", "capitalize", "trim", "striptags", "truncate", "wordcount",
    "center", "indent", "wordwrap", "replace", "format", "tojson"})


class BoundExceeded(SecurityError):
    """A render went past one of its bounds: `bound` names which, `limit` is its value."""

    def __init__(self, bound: str, limit: float, detail: str):
        self.bound = bound
        self.limit = limit
        self.detail = detail
        super().__init__(f"{detail} (the {bound} bound is {limit:g})")


class Budget:
    """What one render has spent: its deadline, what it built, its loop iterations."""

    def __init__(self, seconds: float = RENDER_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self.deadline = clock() + seconds
        self.built = 0
        self.iterations = 0

    def check_time(self) -> None:
        if self._clock() > self.deadline:
            raise BoundExceeded("time", self.seconds, "the render took too long")

    def charge(self, units: int) -> None:
        self.built += units
        if self.built > MAX_BUILT:
            raise BoundExceeded("memory", MAX_BUILT,
                                "the render built too many characters or items in all")

    def count_iteration(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise BoundExceeded("iterations", MAX_ITERATIONS, "the render's loops ran too long")
        self.check_time()


# -- sizes, worked out before anything is built --------------------------------------------

def size_of(value: Any) -> int:
    """Characters or items in a value (the bits/8 of an integer); 0 for anything else."""
    if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 8
    return 0


def printed_size(value: Any, limit: int = MAX_SIZE) -> int:
    """About len(str(value)), counted without building it; counting stops past `limit`.

    Shared references count each time they print (a list of one long string repeated is
    as long as its text), and a cycle counts until the limit.
    """
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item) + 2
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, abc.Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, abc.Collection):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        elif isinstance(item, Namespace):
            stack.append(dict(item._Namespace__attrs))  # its repr shows what it holds
        else:
            total += 24  # numbers, dates, functions, undefined: short to print
    return total


def check_size(size: int, what: str) -> int:
    if size > MAX_SIZE:
        raise BoundExceeded("size", MAX_SIZE, f"{what} would be {size} characters or items long")
    return size


def check_width(width: Any, what: str) -> int:
    if isinstance(width, str):
        width = len(width)
    if isinstance(width, int) and width > MAX_WIDTH:
        raise BoundExceeded("width", MAX_WIDTH, f"{what} is {width} wide")
    return width if isinstance(width, int) else 0


def check_printable(value: Any, what: str) -> int:
    """The printed size of a value about to become text; a str is already text."""
    if isinstance(value, str):
        return len(value)
    return check_size(printed_size(value), f"{what} as text")


def check_operator(operator: str, left: Any, right: Any) -> int:
    """The size `left <operator> right` would have; BoundExceeded before building a huge one."""
    if operator == "*":
        if isinstance(left, int) and isinstance(right, _SEQUENCES):
            left, right = right, left
        if isinstance(left, _SEQUENCES) and isinstance(right, int):
            return check_size(len(left) * max(right, 0), "a repetition")
        if isinstance(left, int) and isinstance(right, int):
            return _check_bits(left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            return _check_bits(left.bit_length() * right)
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            return check_size(len(left) + len(right), "a sum")
    elif operator == "%" and isinstance(left, str):
        return check_printf(left, right)
    return 0


def _check_bits(bits: int) -> int:
    if bits > MAX_INT_BITS:
        raise BoundExceeded("size", MAX_INT_BITS, f"an integer would have {bits} bits")
    return bits // 8


def check_printf(template: str, args: Any) -> int:
    """The size of `template % args`: widths and precisions bounded, values printable."""
    size, star = len(template), False
    for spec in _PRINTF.finditer(template):
        for number in spec.groups():
            if number == "*":
                star = True
            elif number:
                size += check_width(int(number) if len(number) < 8 else MAX_WIDTH + 1,
                                    "a % format width")
    values = args.values() if isinstance(args, abc.Mapping) else \
        args if isinstance(args, tuple) else (args,)
    for value in values:
        if star and isinstance(value, int) and not isinstance(value, bool):
            size += check_width(value, "a * width")
        size += check_printable(value, "a % format value")
    return check_size(size, "a % format")


def check_format_spec(spec: str) -> None:
    """A str.format spec (nested fields already filled in): no width or precision too big."""
    for number in _DIGITS.findall(spec):
        check_width(int(number) if len(number) < 8 else MAX_WIDTH + 1, "a format width")


def check_method(method: Any, args: tuple, kwargs: dict) -> tuple[tuple, int]:
    """For the str/bytes/int methods that allocate: (args to call with, size of the result)."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "")
    if isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        return args, check_size(length if isinstance(length, int) else 0, "to_bytes")
    if not isinstance(owner, (str, bytes)):
        return args, 0
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        return args, max(check_width(width, f"{name}()"), len(owner))
    if name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        return args, check_size(len(owner) + tabs * max(check_width(tabsize, "a tab"), 0),
                                "expandtabs()")
    if name == "replace" and len(args) >= 2:
        return args, _replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1)
    if name == "join" and args:
        items = bounded_list(args[0], "join()")
        size = sum(len(item) if isinstance(item, _SEQUENCES) else 0 for item in items)
        return (items, *args[1:]), check_size(size + len(owner) * max(len(items) - 1, 0), "join()")
    if name == "translate" and args and isinstance(args[0], abc.Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, _SEQUENCES)), default=1)
        return args, check_size(len(owner) * max(longest, 1), "translate()")
    return args, 0


def _replaced_size(text: Any, old: Any, new: Any, count: Any) -> int:
    text, old, new = str(text), str(old), str(new)
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return check_size(len(text) + found * len(new), "replace()")


def bounded_list(iterable: Any, what: str) -> list | tuple:
    """The items of an iterable, at most MAX_SIZE of them (lists and tuples as they are)."""
    if isinstance(iterable, (list, tuple)):
        return iterable
    items = []
    for item in iterable:
        items.append(item)
        if len(items) > MAX_SIZE:
            raise BoundExceeded("size", MAX_SIZE, f"{what} was given too many items")
    return items


# -- filters with a bound ------------------------------------------------------------------

def _check_center(args: dict) -> int:
    return max(check_width(args["width"], "center()"), check_printable(args["value"], "center()"))


def _check_indent(args: dict) -> int:
    text = str(args["s"])
    width = check_width(args["width"], "indent()")
    return check_size(len(text) + (text.count("\n") + 1) * width, "indent()")


def _check_wordwrap(args: dict) -> int:
    text = str(args["s"])
    wrap = args["wrapstring"] or args["environment"].newline_sequence
    width = args["width"] if isinstance(args["width"], int) else 1
    lines = min(len(text) + 1, len(text) // max(width, 1) + text.count(" ") + text.count("-")
                + text.count("\n") + 1)
    return check_size(len(text) + lines * len(str(wrap)), "wordwrap()")


def _check_replace(args: dict) -> int:
    return _replaced_size(args["s"], args["old"], args["new"], args["count"])


def _check_join(args: dict) -> int:
    items = args["value"] = bounded_list(args["value"], "join()")
    size = sum(check_printable(item, "a joined item") for item in items)
    return check_size(size + len(str(args["d"])) * max(len(items) - 1, 0), "join()")


def _check_format(args: dict) -> int:
    return check_printf(str(args["value"]), args["kwargs"] or args["args"])


def _check_batch(args: dict) -> int:
    return check_size(args["linecount"] if isinstance(args["linecount"], int) else 0, "a batch")


def _check_slice(args: dict) -> int:
    return check_width(args["slices"], "slice()")


def _check_tojson(args: dict) -> int:
    indent = args["indent"]
    width = check_width(indent, "tojson()'s indent") if indent is not None else 0
    return check_size(printed_size(args["value"]) * (1 + 4 * width), "tojson()")


_FILTER_CHECKS: dict[str, Callable[[dict], int]] = {
    "center": _check_center, "indent": _check_indent, "wordwrap": _check_wordwrap,
    "replace": _check_replace, "join": _check_join, "format": _check_format,
    "batch": _check_batch, "slice": _check_slice, "tojson": _check_tojson,
}


@pass_environment
def bounded_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """The `sum` filter in linear time: lists and tuples are chained, not re-copied per item."""
    items = bounded_list(iterable, "sum()")
    if attribute is not None:
        items = list(map(make_attrgetter(environment, attribute), items))
    if not isinstance(start, (list, tuple)):
        return sum(items, start)
    if not all(isinstance(item, type(start)) for item in items):
        raise TypeError(f"sum() can only add {type(start).__name__}s to a {type(start).__name__}")
    check_size(len(start) + sum(len(item) for item in items), "sum()")
    chained = itertools.chain.from_iterable(items)
    return start + list(chained) if isinstance(start, list) else start + tuple(chained)


# -- the environment -----------------------------------------------------------------------

class _SpecCheck(string.Formatter):
    """Mixed into the sandbox's str.format formatters: widths bounded, values printable."""

    _env: jinja2.Environment   # set by SandboxedFormatter, which this is mixed into

    def format_field(self, value: Any, format_spec: str) -> Any:
        check_format_spec(format_spec)
        size = check_printable(value, "a format value")
        # only BoundedEnvironment.wrap_str_format makes these formatters, with itself
        assert isinstance(self._env, BoundedEnvironment)
        self._env.budget().charge(size)
        return super().format_field(value, format_spec)


class _BoundedFormatter(_SpecCheck, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_SpecCheck, SandboxedEscapeFormatter):
    pass


class BoundedEnvironment(SandboxedEnvironment):
    """A sandboxed Jinja2 environment whose renders have bounded time, memory and output.

    One environment serves every chat's thread at once; the budget of the render a thread
    is running is kept per thread (`budget()`).
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, finalize: Callable[[Any], Any] | None = None, **kwargs: Any):
        self._current = threading.local()
        self._inner_finalize = finalize
        super().__init__(*args, finalize=self._finalize, **kwargs)
        self.globals["range"] = self.bounded_range
        self.globals["lipsum"] = self.bounded_lipsum
        self.filters["sum"] = bounded_sum
        self.filters = {name: self._guard_filter(name, function)
                        for name, function in self.filters.items()}

    # -- the render and its budget ---------------------------------------------------------

    def budget(self) -> Budget:
        """The budget of the render this thread is running (a fresh one while compiling,
        where Jinja2 folds constant expressions)."""
        budget = getattr(self._current, "budget", None)
        return budget if budget is not None else Budget()

    def render(self, template: jinja2.Template, context: dict, max_output: int) -> str:
        """The template's text, generated piece by piece and stopped at `max_output`."""
        budget = Budget()
        outer = getattr(self._current, "budget", None)
        self._current.budget = budget
        # generate() is a generator function, though Jinja2 annotates it as an Iterator
        pieces = cast(Generator[str, None, None], template.generate(context))
        try:
            parts, length = [], 0
            for piece in pieces:
                length += len(piece)
                # the invariant: output never grows past the cap, it is cut while produced
                if length > max_output:
                    raise BoundExceeded("output", max_output, "the rendered text is too long")
                budget.check_time()
                parts.append(piece)
            return "".join(parts)
        finally:
            pieces.close()
            self._current.budget = outer

    def guard(self, tree: nodes.Template) -> nodes.Template:
        """The parsed template with every loop counted and every `~` size-checked."""
        tree = _Guard().visit(tree)
        tree.set_environment(self)
        return tree

    # -- what the compiled template calls --------------------------------------------------

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = self.budget()
        budget.check_time()
        size = check_operator(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        budget.charge(max(size, size_of(result)))
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = __self.budget()
        budget.check_time()
        plain = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
        args, size = check_method(__obj, args, plain)
        grows = getattr(__obj, "__self__", None)
        grows = grows if isinstance(grows, (list, dict, set)) else None
        before = len(grows) if grows is not None else 0
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(getattr(__obj, "__self__", None), (str, bytes)):
            size = max(size, size_of(result))  # a str method's answer is new: split, upper …
        elif isinstance(__obj, types.BuiltinMethodType) and isinstance(result, (str, bytes)):
            # other built-in methods build text too, unforeseeably: now().strftime('%c' * n)
            # is twelve times its format; within MAX_SIZE, and charged like any built text
            size = max(size, check_size(len(result), f"the text {__obj.__name__}() built"))
        budget.charge(size)
        if grows is not None:
            # list.extend, dict.update … on a value the template holds: bounded like the rest
            check_size(len(grows), f"a {type(grows).__name__} grown by {__obj.__name__}()")
            budget.charge(max(len(grows) - before, 0))
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja2's sandboxed str.format / format_map, with the widths and values bounded."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) \
                or value.__name__ not in ("format", "format_map") \
                or not isinstance(value.__self__, str):
            return None
        template: str = value.__self__
        formatter = _BoundedEscapeFormatter(self, escape=template.escape) \
            if isinstance(template, Markup) else _BoundedFormatter(self)
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                kwargs, args = args[0], ()
            return type(template)(formatter.vformat(template, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def concat(self, parts: Any) -> str:
        """The text of a block, a macro or a `{% set %}` capture: joined only within bounds."""
        parts = bounded_list(parts, "a block")
        budget = self.budget()
        budget.charge(check_size(sum(len(part) for part in parts), "a block's text"))
        return "".join(parts)

    @pass_eval_context
    def guarded_concat(self, eval_ctx: Any, *operands: Any) -> str:
        """`a ~ b ~ …`: every operand printable, the result within MAX_SIZE, then joined."""
        size = check_size(sum(check_printable(operand, "a ~ operand") for operand in operands),
                          "a ~ concatenation")
        self.budget().charge(size)
        join = markup_join if eval_ctx.autoescape or eval_ctx.volatile else str_join
        return join(operands)

    def guarded_iter(self, iterable: Any) -> Any:
        """What a `for` loop iterates: the same items, each counted against the budget."""
        budget = self.budget()
        for item in iterable:
            budget.count_iteration()
            yield item

    def bounded_range(self, *args: int) -> range:
        numbers = range(*args)
        try:
            count = len(numbers)
        except OverflowError:
            count = MAX_ITERATIONS + 1
        if count > MAX_ITERATIONS:
            raise BoundExceeded("iterations", MAX_ITERATIONS, "range() is too long")
        return numbers

    def bounded_lipsum(self, n: int = 5, html: bool = True, min: int = 20,  # noqa: A002
                       max: int = 100) -> Any:  # noqa: A002 - Jinja2's names
        paragraphs, words = MAX_LIPSUM
        if not 0 < n <= paragraphs or not 0 < min <= max <= words:
            raise BoundExceeded("size", words, "lipsum() asks for too much text")
        text = generate_lorem_ipsum(n, html, min, max)
        self.budget().charge(len(text))
        return text

    def _finalize(self, value: Any) -> Any:
        """Every `{{ … }}`: charged as it becomes text, a container only if it prints small."""
        budget = self.budget()
        budget.check_time()
        budget.charge(check_printable(value, "an output value"))
        return self._inner_finalize(value) if self._inner_finalize is not None else value

    def _guard_filter(self, name: str, function: Callable) -> Callable:
        check = _FILTER_CHECKS.get(name)
        binder = _Binder(function) if check is not None else None
        text = name in _TEXT_FILTERS
        charged = name not in _REFERENCE_FILTERS

        def guarded(*args: Any, **kwargs: Any) -> Any:
            budget = self.budget()
            budget.check_time()
            size = 0
            if binder is not None and check is not None:   # both or neither
                arguments = binder.bind(args, kwargs)
                size = check(arguments)
                args, kwargs = binder.rebuild(arguments, args, kwargs)
            elif text:
                for value in (*args, *kwargs.values()):
                    check_printable(value, f"the {name} filter's input")
            result = function(*args, **kwargs)
            if charged:
                budget.charge(max(size, size_of(result)))
            return result

        return functools.update_wrapper(guarded, function)


class _Binder:
    """A filter's arguments by name (inspect's bind, without its cost on every call)."""

    def __init__(self, function: Callable):
        self.positional: list[str] = []
        self.defaults: dict[str, Any] = {}
        self.rest: str | None = None      # the *args parameter
        self.options: str | None = None   # the **kwargs parameter
        for parameter in _signature(function).parameters.values():
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                self.rest = parameter.name
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                self.options = parameter.name
            else:
                if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
                    self.positional.append(parameter.name)
                if parameter.default is not inspect.Parameter.empty:
                    self.defaults[parameter.name] = parameter.default

    def bind(self, args: tuple, kwargs: dict) -> dict:
        arguments = dict(self.defaults)
        arguments.update(zip(self.positional, args, strict=False))
        if self.rest is not None:
            arguments[self.rest] = tuple(args[len(self.positional):])
        known = {k: v for k, v in kwargs.items() if k in arguments or k in self.positional}
        arguments.update(known)
        if self.options is not None:
            arguments[self.options] = {k: v for k, v in kwargs.items() if k not in known}
        return arguments

    def rebuild(self, arguments: dict, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The call's arguments again, with any value a check replaced (join's items)."""
        count = min(len(args), len(self.positional))
        args = tuple(arguments[name] for name in self.positional[:count]) + tuple(args[count:])
        kwargs = {k: arguments.get(k, v) if k in self.positional else v for k, v in kwargs.items()}
        return args, kwargs


def _signature(function: Callable) -> inspect.Signature:
    """How a filter is called. Jinja2's sync/async filters wrap the sync function and add
    an eval-context first argument that the wrapped signature does not show."""
    signature = inspect.signature(function)
    if getattr(function, "jinja_pass_arg", None) is not None \
            and getattr(inspect.unwrap(function), "jinja_pass_arg", None) is None:
        extra = inspect.Parameter("eval_ctx", inspect.Parameter.POSITIONAL_ONLY)
        signature = signature.replace(parameters=[extra, *signature.parameters.values()])
    return signature


class _Guard(NodeTransformer):
    """Rewrites a parsed template: loops iterate through guarded_iter, `~` goes through
    guarded_concat. Both are environment attributes, so no template name can reach them."""

    def visit_For(self, node: nodes.For) -> nodes.Node:  # noqa: N802 - the visitor's naming
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("guarded_iter"), [node.iter], [],
                               None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:  # noqa: N802
        self.generic_visit(node)
        return nodes.Call(nodes.EnvironmentAttribute("guarded_concat"), list(node.nodes), [],
                          None, None, lineno=node.lineno)
