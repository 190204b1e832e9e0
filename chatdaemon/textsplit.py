"""Splitting outgoing text so that every part fits Telegram's 4096 UTF-16 unit limit."""

from __future__ import annotations

import re

_TAG = re.compile(r"<(/?)([a-zA-Z][\w-]*)[^>]*>")


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, parse_mode: str | None = None, limit: int = 4096) -> list[str]:
    if utf16_len(text) <= limit:
        return [text]
    html = (parse_mode or "").upper() == "HTML"
    parts: list[str] = []
    open_tags: list[tuple[str, str]] = []
    rest = text
    while rest:
        prefix = "".join(tag for _, tag in open_tags) if html else ""
        budget = limit - utf16_len(prefix)
        closing = "".join(f"</{name}>" for name, _ in reversed(open_tags)) if html else ""
        if utf16_len(rest) + utf16_len(prefix) <= limit:
            parts.append(prefix + rest)
            break
        cut = _cut(rest, budget - utf16_len(closing) - (64 if html else 0), html, parse_mode)
        chunk = rest[:cut]
        rest = rest[cut:].lstrip()
        if html:
            state = list(open_tags)
            for match in _TAG.finditer(chunk):
                name = match.group(2).lower()
                if match.group(1):
                    for i in range(len(state) - 1, -1, -1):
                        if state[i][0] == name:
                            del state[i]
                            break
                else:
                    state.append((name, match.group(0)))
            closing = "".join(f"</{name}>" for name, _ in reversed(state))
            parts.append(prefix + chunk.rstrip() + closing)
            open_tags = state
        else:
            if chunk.strip():
                parts.append(chunk.rstrip())
    return [p for p in parts if p.strip()]


def _cut(text: str, budget: int, html: bool, parse_mode: str | None) -> int:
    if budget < 1:
        raise ValueError("the text's markup leaves no room to split it within the limit")
    end, units = 0, 0
    while end < len(text):
        units += 2 if ord(text[end]) > 0xFFFF else 1
        if units > budget:
            break
        end += 1
    window = text[:end]
    cut = max(window.rfind("\n\n"), -1)
    if cut <= 0:
        cut = window.rfind("\n")
    if cut <= 0:
        cut = max(window.rfind(" "), window.rfind("\t"))
    if cut <= 0:
        cut = end
    if html:
        lt, gt = window.rfind("<", 0, cut), window.rfind(">", 0, cut)
        if lt > gt:
            cut = lt
        amp, semi = window.rfind("&", 0, cut), window.rfind(";", 0, cut)
        if amp > semi and cut - amp < 12:
            cut = amp
    elif parse_mode and parse_mode.lower().startswith("markdown"):
        while cut > 1 and text[cut - 1] == "\\":
            cut -= 1
    if cut <= 0:
        raise ValueError("a single tag is longer than the limit")
    return cut
