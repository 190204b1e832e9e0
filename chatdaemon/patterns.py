"""Bot authors' regexes: compiled with the `regex` package and matched within a time bound.

Python's `re` holds the GIL while it backtracks, so one pattern with catastrophic
backtracking meeting the wrong text froze the whole process: no polling, no other chat,
no SIGTERM. `regex` speaks the same dialect (VERSION0 is `re`'s), releases the GIL while
it matches a str, and gives up at a timeout, so a hostile pattern costs one message at most
MATCH_SECONDS and every other thread keeps running meanwhile.
"""

from __future__ import annotations

import time

import regex

MATCH_SECONDS = 0.25  # what matching one message may cost, all of a bot's patterns together
PROBE_SECONDS = 0.02  # what one probe of a pattern may cost at load
# texts that make a backtracking pattern try every way to split a run: a run of one kind
# of character, then one that breaks the match at the very end
_PROBE_RUNS = ("a", "1", " ", "a ", "ab", "_", ".", "-")
_PROBE_ENDS = ("!", "\x00")

Pattern = regex.Pattern
Match = regex.Match
PatternError = regex.error


class PatternTimeout(Exception):
    """A pattern could not decide whether it matches a message within MATCH_SECONDS."""

    def __init__(self, owner: str, where: str, pattern: str, text_length: int, seconds: float):
        self.owner = owner            # "handler NAME" or "tree"
        self.where = where            # file:line of the pattern
        self.pattern = pattern
        self.text_length = text_length
        self.seconds = seconds
        super().__init__(f"{owner} ({where}): pattern {pattern!r} did not finish within "
                         f"{seconds:g} s on a {text_length}-character message")


def compile_pattern(source: str) -> Pattern:
    """The compiled pattern, with `re`'s syntax and semantics; PatternError if it is invalid."""
    return regex.compile(source, regex.VERSION0)


def search(pattern: Pattern, text: str, deadline: float, owner: str, where: str) -> Match | None:
    """pattern.search(text), or PatternTimeout once the clock passes `deadline`."""
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise TimeoutError
        # the invariant: no author's pattern runs past the message's deadline, and it runs
        # without the GIL (regex releases it for str), so other chats and the poller go on
        return pattern.search(text, timeout=remaining)
    except TimeoutError:
        raise PatternTimeout(owner, where, pattern.pattern, len(text), MATCH_SECONDS) from None


def probe(pattern: Pattern) -> str | None:
    """A text the pattern cannot decide about in PROBE_SECONDS (it backtracks badly), or
    None. Used at load to warn; the per-message bound holds either way."""
    for length in (32, 4096):  # exponential blow-ups show on short runs, polynomial on long
        for run in _PROBE_RUNS:
            for end in _PROBE_ENDS:
                text = (run * length)[:length] + end
                try:
                    pattern.search(text, timeout=PROBE_SECONDS)
                except TimeoutError:
                    return text
    return None

