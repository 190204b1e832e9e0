"""Splitting outgoing message text into parts that each fit Telegram's 4096-unit limit.

Telegram measures text in UTF-16 code units, so `utf16_len` counts a character outside the
Basic Multilingual Plane (most emoji) as two. `split_text` cuts at the last paragraph break
within reach, else the last line break, else the last breakable space, else hard at the
limit. The whitespace at a cut is dropped; everything else is kept exactly. No part is
empty or whitespace-only, and no cut separates a surrogate pair or a code point, nor, where
it can be avoided, a character from its combining marks or emoji joiners.

parse_mode "HTML" (any case): no cut falls inside a tag or an entity such as ``&amp;``.
Tags still open at a cut are closed at the end of the part, innermost first, and reopened
with their original text (attributes included) at the start of the next part; the limit
counts those added tags. Every tag name is handled the same way (Telegram has no void
tags). Markup too heavy to carry — a single tag too long for any part (a link to a huge
URL), or tags open at once that would take more than MARKUP_SHARE of a part to close and
reopen — is dropped, the longest tags first, each with its closing tag: their text goes
out without that formatting (logged as a warning) rather than the whole answer failing,
going out as broken markup, or going out as a message per few words.

parse_mode "MarkdownV2" or "Markdown": no cut separates a backslash from the character it
escapes, nor falls inside a link ``[text](url)``; a link too long for any part goes out as
its text (logged as a warning). Other entities (``*bold*``, code blocks) are not tracked,
so one that spans a cut is split across two parts and may be rejected; cuts prefer
paragraph and line breaks, which keeps most entities whole.
"""

from __future__ import annotations

import heapq
import logging
import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096
MARKUP_SHARE = 0.75   # the most of a part the tags open at its start may take to reopen and close

_NO_BREAK = "\u00a0\u2007\u202f"
_BREAKABLE = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and c not in _NO_BREAK)
_WS = "[" + re.escape(_BREAKABLE) + "]"
_HWS = "[" + re.escape(_BREAKABLE.replace("\n", "")) + "]"
_LAST_PARAGRAPH = re.compile(rf"(?s:.*)\n{_HWS}*\n")
_LAST_NEWLINE = re.compile(r"(?s:.*)\n")
_LAST_SPACE = re.compile(rf"(?s:.*){_WS}")
_SPACE_RUN = re.compile(f"{_WS}*")
_BLANK_RUN = re.compile(r"\s*")
_MASK = "\x00"
_VISIBLE = re.compile(r"[^\s\x00]")
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_-]*)(?:\"[^<>\"]*\"|'[^<>']*'|[^<>])*+>")
_MD_LINK = re.compile(r"(?<!\\)\[((?:[^\[\]\\]|\\.)*)\]\((?:[^()\\\s]|\\.)*\)")
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
_ENTITY_SPAN = 32
_GRAPHEME_SPAN = 32
_ZWJ = "\u200d"


_Tag = tuple[int, int, str, bool]
"""A tag as (start, end, lower-case name, whether it is a closing tag)."""


def utf16_len(text: str) -> int:
    """Length of `text` as Telegram counts it: UTF-16 code units."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def split_text(text: str, parse_mode: str | None = None, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Split `text` into parts of at most `limit` UTF-16 units each, in order.

    Text that fits is returned as ``[text]``, the very same string. Raises ValueError when
    `limit` is not positive or when the text has nothing visible to send. HTML markup that
    cannot fit in a part is dropped (see the module's docstring).
    """
    if limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    if utf16_len(text) <= limit:
        return [text]
    mode = (parse_mode or "").lower()
    if mode == "html":
        return _split_html(text, limit)
    markdown = mode in ("markdown", "markdownv2")
    if markdown:
        text = _unlink_long(text, limit)
    return _visible(_Splitter(text, limit, html=False, markdown=markdown).split())


def _unlink_long(text: str, limit: int) -> str:
    """`text` with each Markdown link longer than `limit` replaced by its text."""
    long = [link for link in _MD_LINK.finditer(text) if utf16_len(link.group()) > limit]
    if not long:
        return text
    log.warning("%d Markdown link(s), the first at offset %d, cannot fit in a message part of %d "
                "UTF-16 units; their text is sent without the link", len(long), long[0].start(),
                limit)
    pieces, cursor = [], 0
    for link in long:
        pieces += [text[cursor:link.start()], link.group(1)]
        cursor = link.end()
    pieces.append(text[cursor:])
    return "".join(pieces)


def _visible(parts: list[str]) -> list[str]:
    if not parts:
        raise ValueError("text has no visible content to send")
    return parts


def _split_html(text: str, limit: int) -> list[str]:
    """Split HTML, dropping the markup that no part can hold until the rest splits."""
    tags = _scan_tags(text)
    text = _remove_tags(text, tags, _heavy_markup(text, tags, limit), limit)
    while True:  # each pass drops at least one tag, so the passes are bounded by the tags
        try:
            return _visible(_Splitter(text, limit, html=True, markdown=False).split())
        except _MarkupTooLong as stuck:
            tags = _scan_tags(text)
            text = _remove_tags(text, tags, _with_pairs(tags, stuck.starts), limit)


@dataclass
class _Open:
    """An opening tag on the stack `_heavy_markup` keeps."""

    index: int
    units: int   # to reopen it and to close it
    name: str
    dropped: bool = False
    closed: bool = False


def _heavy_markup(text: str, tags: list[_Tag], limit: int) -> set[int]:
    """Indices of the tags to drop (opening tags, with the closing tags that pair with them)
    so that, wherever a part starts, the tags open there take at most MARKUP_SHARE of it to
    reopen and close. Heaviest first, in one pass over the tags.

    The stack keeps dropped tags too, so that a closing tag still pairs with the tag the
    splitter would pair it with; `heaviest` holds them by weight, skipping any no longer open.
    """
    budget = int(limit * MARKUP_SHARE)
    stack: list[_Open] = []
    heaviest: list[tuple[int, int, _Open]] = []
    overhead = 0
    drop: set[int] = set()
    for k, (start, end, name, closing) in enumerate(tags):
        if closing:
            opened = _close_on(stack, name)
            if opened is not None and opened.dropped:
                drop.add(k)
            elif opened is not None:
                overhead -= opened.units
            continue
        entry = _Open(k, utf16_len(text[start:end]) + len(_closer(name)), name)
        stack.append(entry)
        heapq.heappush(heaviest, (-entry.units, k, entry))
        overhead += entry.units
        while overhead > budget:
            _, _, entry = heapq.heappop(heaviest)
            if not (entry.dropped or entry.closed):
                entry.dropped = True
                overhead -= entry.units
                drop.add(entry.index)
    return drop


def _close_on(stack: list[_Open], name: str) -> _Open | None:
    """Close the latest `name` on the stack, as the splitter does; that tag, or None."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i].name == name:
            entry = stack.pop(i)
            entry.closed = True
            return entry
    return None


def _with_pairs(tags: list[_Tag], starts: list[int]) -> set[int]:
    """Indices of the tags at `starts`, and of the closing tags that pair with them."""
    index = {tag[0]: k for k, tag in enumerate(tags)}
    drop = set()
    for start in starts:
        k = index[start]
        drop.add(k)
        if not tags[k][3]:
            pair = _closing_pair(tags, k)
            if pair is not None:
                drop.add(pair)
    return drop


def _closing_pair(tags: list[_Tag], k: int) -> int | None:
    """Index of the closing tag that closes the opening tag tags[k], as the splitter pairs them."""
    name, depth = tags[k][2], 0
    for j in range(k + 1, len(tags)):
        if tags[j][2] != name:
            continue
        if not tags[j][3]:
            depth += 1
        elif depth == 0:
            return j
        else:
            depth -= 1
    return None


def _remove_tags(text: str, tags: list[_Tag], drop: set[int], limit: int) -> str:
    """`text` without the tags whose indices are in `drop`, logged as one warning."""
    if not drop:
        return text
    first = tags[min(drop)]
    log.warning("%d HTML tag(s), the first <%s> at offset %d, cannot fit in a message part of "
                "%d UTF-16 units; their text is sent without that markup",
                sum(not tags[k][3] for k in drop), first[2], first[0], limit)
    pieces, cursor = [], 0
    for k in sorted(drop):
        pieces.append(text[cursor:tags[k][0]])
        cursor = tags[k][1]
    pieces.append(text[cursor:])
    return "".join(pieces)


class _MarkupTooLong(ValueError):
    """The open tags at a position cannot fit in a part: `starts` are the ones to drop."""

    def __init__(self, message: str, starts: list[int]):
        super().__init__(message)
        self.starts = starts


def _scan_tags(text: str) -> list[_Tag]:
    return [(m.start(), m.end(), m.group(2).lower(), m.group(1) == "/") for m in _TAG.finditer(text)]


def _mask_tags(text: str) -> str:
    """`text` with every tag overwritten by a filler that is neither space nor visible."""
    return _TAG.sub(lambda m: _MASK * (m.end() - m.start()), text)


def _run_end(run: re.Pattern[str], text: str, pos: int) -> int:
    """End of the run of `run` (a pattern of the form ``X*``) that starts at `pos`."""
    found = run.match(text, pos)
    assert found is not None  # an ``X*`` pattern matches the empty string at every position
    return found.end()


def _closer(name: str) -> str:
    return f"</{name}>"


def _fit(text: str, start: int, stop: int, room: int, narrow: bool) -> tuple[int, int]:
    """Longest prefix of text[start:stop] within `room` units, as (end, units).

    `narrow` says every character of `text` is one unit, which makes this arithmetic.
    """
    if room <= 0:
        return start, 0
    end = min(stop, start + room)
    if narrow:
        return end, end - start
    units = utf16_len(text[start:end])
    if units <= room:
        return end, units
    low, high = start + room // 2, end - 1
    while low < high:
        middle = (low + high + 1) // 2
        if utf16_len(text[start:middle]) <= room:
            low = middle
        else:
            high = middle - 1
    return low, utf16_len(text[start:low])


def _close_delta(names: list[str], name: str, closing: bool) -> int:
    """Change in closing-tag units once a tag is passed, applying it to the open `names`."""
    if not closing:
        names.append(name)
        return len(name) + 3
    for i in range(len(names) - 1, -1, -1):
        if names[i] == name:
            del names[i]
            return -len(name) - 3
    return 0


def _is_regional(char: str) -> bool:
    return "\U0001f1e6" <= char <= "\U0001f1ff"


def _joins(text: str, at: int, floor: int) -> bool:
    """Whether a cut before text[at] would split one user-perceived character."""
    if at <= 0 or at >= len(text):
        return False
    char, before = text[at], text[at - 1]
    if _ZWJ in (char, before):
        return True
    if "\ufe00" <= char <= "\ufe0f" or "\U0001f3fb" <= char <= "\U0001f3ff":
        return True
    if "\U000e0020" <= char <= "\U000e007f" or unicodedata.category(char).startswith("M"):
        return True
    if _is_regional(char) and _is_regional(before):
        run = at
        while run > floor and _is_regional(text[run - 1]):
            run -= 1
        return (at - run) % 2 == 1
    return False


class _Splitter:
    """One pass over one text, carrying the HTML tags open at the current position."""

    def __init__(self, text: str, limit: int, html: bool, markdown: bool) -> None:
        self.text = text
        self.limit = limit
        self.html = html
        self.markdown = markdown
        self.tags = _scan_tags(text) if html else []
        self.masked = _mask_tags(text) if self.tags else text
        self.starts = [tag[0] for tag in self.tags]
        self.links = [(m.start(), m.end()) for m in _MD_LINK.finditer(text)] if markdown else []
        self.link_starts = [link[0] for link in self.links]
        self.narrow = utf16_len(text) == len(text)
        self.stack: list[_Tag] = []
        self.next_tag = 0
        self.pos = 0

    def split(self) -> list[str]:
        parts: list[str] = []
        pos = 0
        while True:
            pos = self._absorb(pos, blanks=False)
            self.pos = pos
            prefix = self._openers()
            avail = self.limit - utf16_len(prefix)
            first = self._first_visible(pos)
            if self._rest_fits(pos, avail):
                if first < len(self.text):
                    parts.append(prefix + self.text[pos:])
                return parts
            span = self._choose_cut(pos, self._reach(pos, avail), first)
            if span is None:
                skipped = self._absorb(pos, blanks=True)
                if skipped == pos:
                    raise self._stuck(pos)
                pos = skipped
                continue
            cut, resume = span
            body = self.text[pos:cut]
            self._advance(cut)
            parts.append(prefix + body + self._closers())
            pos = resume

    def _absorb(self, pos: int, blanks: bool) -> int:
        """Move past tags at `pos` into the open-tag stack, and past blank runs if `blanks`."""
        while pos < len(self.text):
            if blanks:
                blank_end = _run_end(_BLANK_RUN, self.masked, pos)
                if blank_end > pos:
                    pos = blank_end
                    continue
            tag = self._tag_at(pos)
            if tag is None or not self._apply(tag):
                return pos
            self.next_tag += 1
            pos = tag[1]
        return pos

    def _tag_at(self, pos: int) -> _Tag | None:
        if self.next_tag < len(self.tags) and self.tags[self.next_tag][0] == pos:
            return self.tags[self.next_tag]
        return None

    def _apply(self, tag: _Tag) -> bool:
        """Open or close `tag` on the stack; False for a closing tag that closes nothing."""
        _, _, name, closing = tag
        if not closing:
            self.stack.append(tag)
            return True
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][2] == name:
                del self.stack[i]
                return True
        return False

    def _advance(self, cut: int) -> None:
        while self.next_tag < len(self.tags) and self.tags[self.next_tag][0] < cut:
            self._apply(self.tags[self.next_tag])
            self.next_tag += 1

    def _openers(self) -> str:
        return "".join(self.text[start:end] for start, end, _, _ in self.stack)

    def _closers(self) -> str:
        return "".join(_closer(tag[2]) for tag in reversed(self.stack))

    def _first_visible(self, pos: int) -> int:
        found = _VISIBLE.search(self.masked, pos)
        return found.start() if found else len(self.text)

    def _rest_fits(self, pos: int, avail: int) -> bool:
        return len(self.text) - pos <= avail and utf16_len(self.text[pos:]) <= avail

    def _reach(self, pos: int, avail: int) -> int:
        """Furthest position whose part, closing tags included, stays within `avail` units."""
        names = [tag[2] for tag in self.stack]
        closing = utf16_len(self._closers())
        used, cursor = 0, pos
        text, narrow = self.text, self.narrow
        for k in range(self.next_tag, len(self.tags)):
            start, end, name, is_closing = self.tags[k]
            fitted, units = _fit(text, cursor, start, avail - closing - used, narrow)
            if fitted < start:
                return fitted
            used += units
            delta = _close_delta(names, name, is_closing)
            tag_units = end - start if narrow else utf16_len(text[start:end])
            if used + tag_units + closing + delta > avail:
                return start
            used += tag_units
            closing += delta
            cursor = end
        return _fit(text, cursor, len(text), avail - closing - used, narrow)[0]

    def _choose_cut(self, pos: int, reach: int, first: int) -> tuple[int, int] | None:
        """(end of this part, start of the next) for the best cut at or before `reach`."""
        if reach <= first:
            return None
        stop = _run_end(_SPACE_RUN, self.masked, reach)
        for pattern in (_LAST_PARAGRAPH, _LAST_NEWLINE, _LAST_SPACE):
            span = self._last_break(pattern, pos, stop, first)
            if span is not None:
                return span
        cut = self._settle(reach, first)
        return (cut, cut) if cut > first else None

    def _last_break(self, pattern: re.Pattern[str], pos: int, stop: int,
                    first: int) -> tuple[int, int] | None:
        while True:
            found = pattern.match(self.masked, pos, stop)
            if found is None:
                return None
            mark = found.end() - 1
            cut = pos + len(self.masked[pos:mark].rstrip(_BREAKABLE))
            if cut <= first:
                return None
            if self._blocker(cut) is None:
                return cut, self._resume(cut)
            stop = cut

    def _resume(self, cut: int) -> int:
        """Start of the next part: past the blank run, keeping indentation after its last newline."""
        end = _run_end(_SPACE_RUN, self.masked, cut)
        newline = self.masked.rfind("\n", cut, end)
        return newline + 1 if newline >= 0 else end

    def _settle(self, cut: int, first: int) -> int:
        """Move a hard cut back until it splits nothing, preferably no grapheme either."""
        while cut > first and (back := self._blocker(cut)) is not None:
            cut = back
        for candidate in range(cut, max(first, cut - _GRAPHEME_SPAN), -1):
            if self._blocker(candidate) is None and not _joins(self.text, candidate, self.pos):
                cut = candidate
                break
        return self._before_open_tags(cut, first)

    def _before_open_tags(self, cut: int, first: int) -> int:
        """Leave opening tags right before a hard cut to the next part."""
        k = bisect_left(self.starts, cut) - 1
        while k >= self.next_tag:
            start, end, _, closing = self.tags[k]
            if end != cut or closing or start <= first:
                break
            cut = start
            k -= 1
        return cut

    def _blocker(self, cut: int) -> int | None:
        """Start of the unit a cut at `cut` would break apart, or None if the cut is clean."""
        text = self.text
        if cut <= 0 or cut >= len(text):
            return None
        if "\ud800" <= text[cut - 1] <= "\udbff" and "\udc00" <= text[cut] <= "\udfff":
            return cut - 1
        if self.html:
            inside = self._tag_around(cut)
            if inside is None:
                inside = self._entity_around(cut)
            return inside
        if self.markdown:
            return cut - 1 if self._escaped(cut) else self._link_around(cut)
        return None

    def _link_around(self, cut: int) -> int | None:
        k = bisect_left(self.link_starts, cut) - 1
        if k >= 0 and self.links[k][1] > cut:
            return self.links[k][0]
        return None

    def _tag_around(self, cut: int) -> int | None:
        k = bisect_left(self.starts, cut) - 1
        if k >= 0 and self.tags[k][1] > cut:
            return self.tags[k][0]
        return None

    def _entity_around(self, cut: int) -> int | None:
        amp = self.text.rfind("&", max(0, cut - _ENTITY_SPAN), cut)
        if amp < 0:
            return None
        entity = _ENTITY.match(self.text, amp, cut + _ENTITY_SPAN)
        return amp if entity is not None and entity.end() > cut else None

    def _escaped(self, cut: int) -> bool:
        """Whether text[cut - 1] is a backslash escaping text[cut]."""
        if self.text[cut - 1] != "\\":
            return False
        before = self.text[self.pos:cut]
        return (len(before) - len(before.rstrip("\\"))) % 2 == 1

    def _stuck(self, pos: int) -> ValueError:
        """Why no part can start at `pos`: the open tags there, longest first, to drop."""
        tag = self._tag_at(pos)
        held = [*self.stack, *([tag] if tag is not None and not tag[3] else [])]
        if not held:
            return ValueError(f"cannot split the text at offset {pos} within {self.limit} UTF-16 units")
        held.sort(key=lambda t: t[1] - t[0], reverse=True)
        overhead = sum(utf16_len(self.text[start:end]) + len(_closer(name))
                       for start, end, name, _ in held)
        starts = []
        for start, end, name, _ in held:  # until the rest takes at most half a part
            if overhead <= self.limit // 2:
                break
            starts.append(start)
            overhead -= utf16_len(self.text[start:end]) + len(_closer(name))
        return _MarkupTooLong(f"{len(held)} HTML tags open at offset {pos} leave too little room "
                              f"within {self.limit} UTF-16 units", starts or [held[0][0]])
