"""Tests of splitting outgoing text into parts within Telegram's UTF-16 length limit."""

from __future__ import annotations

import random
import re
import time
from html.parser import HTMLParser

import pytest

from chatdaemon.textsplit import split_text, utf16_len

ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9_-]*)(?:\"[^<>\"]*\"|'[^<>']*'|[^<>])*+>")


class Markup(HTMLParser):
    """Parses one HTML part, failing on bad nesting; keeps raw start tags and the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.start_tags: list[str] = []
        self.data: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.open.append(tag)
        self.start_tags.append(self.get_starttag_text())

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.data.append(data)

    def handle_entityref(self, name: str) -> None:
        self.data.append(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.data.append(f"&#{name};")


def parse_html(part: str) -> Markup:
    parser = Markup()
    parser.feed(part)
    parser.close()
    return parser


def check_plain_parts(parts: list[str], limit: int) -> None:
    assert parts
    for part in parts:
        assert utf16_len(part) <= limit
        assert part.strip(), "empty or whitespace-only part"
        part.encode("utf-8")


def check_html_parts(text: str, parts: list[str], limit: int) -> None:
    """Every part fits, is balanced, keeps tags and entities whole, and no text is lost."""
    original = parse_html(text)
    seen_text = []
    for part in parts:
        assert utf16_len(part) <= limit
        markup = parse_html(part)
        assert markup.open == [], f"unclosed {markup.open} in {part!r}"
        assert set(markup.start_tags) <= set(original.start_tags)
        body = TAG.sub("", part)
        assert "<" not in body and ">" not in body, f"cut inside a tag: {part!r}"
        for amp in re.finditer("&", body):
            assert ENTITY.match(body, amp.start()), f"cut inside an entity: {part!r}"
        visible = "".join(markup.data)
        assert visible.strip(), f"part without visible text: {part!r}"
        seen_text.append(visible)
    assert squeeze("".join(seen_text)) == squeeze("".join(original.data))


def squeeze(text: str) -> str:
    return "".join(text.split())


def reassemble(text: str, parts: list[str]) -> list[str]:
    """The dropped separators, after checking parts + separators rebuild `text` exactly."""
    pieces, separators, at = [], [], 0
    for part in parts:
        found = text.find(part, at)
        assert found >= 0, f"part not found in order: {part[:40]!r}"
        gap = text[at:found]
        assert gap == "" or gap.isspace(), f"non-space content dropped: {gap!r}"
        separators.append(gap)
        pieces += [gap, part]
        at = found + len(part)
    tail = text[at:]
    assert tail == "" or tail.isspace()
    assert "".join(pieces) + tail == text
    return separators


def random_text(rng: random.Random, size: int) -> str:
    tokens = ["word", "x", "Telegram", "😀", "👨\u200d👩\u200d👧", "привет", "e\u0301", "🇺🇦",
              " ", " ", " ", "\n", "\n\n", "\t", "  \n", "\u00a0", "\\", "\\_"]
    pieces, length = [], 0
    while length < size:
        if rng.random() < 0.02:
            piece = rng.choice("ab😀") * rng.randint(50, 400)
        else:
            piece = rng.choice(tokens)
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


def random_html(rng: random.Random, size: int, depth: int = 0) -> str:
    openers = ["<b>", "<i>", "<u>", "<s>", "<code>", "<tg-spoiler>", '<span class="tg-spoiler">',
               '<a href="https://example.com/?a=1&amp;b=2">', "<blockquote expandable>", "<pre>",
               '<tg-emoji emoji-id="5368324170671202286">']
    words = ["word", "&amp;", "&lt;tag&gt;", "&#128512;", "&#x1F600;", "😀", "привет", " ", " ", "\n", "\n\n"]
    pieces, length = [], 0
    while length < size:
        if depth < 2 and rng.random() < 0.15:
            opener = rng.choice(openers)
            name = TAG.match(opener).group(2)
            piece = opener + random_html(rng, rng.randint(5, 300), depth + 1) + f"</{name}>"
        else:
            piece = rng.choice(words)
        pieces.append(piece)
        length += len(piece)
    return "".join(pieces)


def test_utf16_len_counts_astral_characters_as_two():
    assert utf16_len("") == 0
    assert utf16_len("abc") == 3
    assert utf16_len("привет") == 6
    assert utf16_len("😀") == 2
    assert utf16_len("a😀b") == 4


def test_text_that_fits_is_returned_unchanged():
    for text, mode in [("a" * 4096, None), ("😀" * 2048, None), ("<b>unclosed", "HTML"),
                       ("x" * 10, "MarkdownV2"), ("", None), ("   ", None)]:
        parts = split_text(text, mode)
        assert parts == [text]
        assert parts[0] is text


def test_emoji_count_two_units_each():
    text = "😀" * 4096
    parts = split_text(text)
    assert [len(part) for part in parts] == [2048, 2048]
    assert "".join(parts) == text


def test_hard_cut_never_splits_a_surrogate_pair():
    text = "a" + "😀" * 3000
    parts = split_text(text)
    assert "".join(parts) == text
    assert utf16_len(parts[0]) == 4095
    check_plain_parts(parts, 4096)


def test_prefers_a_paragraph_break():
    text = "x" * 1000 + "\n\n" + "y" * 1000 + "\n" + "z" * 1000 + " " + "w" * 2000
    assert split_text(text) == ["x" * 1000, "y" * 1000 + "\n" + "z" * 1000 + " " + "w" * 2000]


def test_prefers_a_newline_over_a_space():
    text = "y" * 1000 + "\n" + "z" * 1000 + " " + "w" * 2500
    assert split_text(text) == ["y" * 1000, "z" * 1000 + " " + "w" * 2500]


def test_prefers_the_last_space_that_fits():
    words = [f"word{i:04d}" for i in range(600)]
    text = " ".join(words)
    parts = split_text(text)
    assert all(part.split() == part.split(" ") for part in parts)
    assert utf16_len(parts[0]) <= 4096 and utf16_len(parts[0]) > 4096 - 9
    assert " ".join(parts) == text


def test_long_word_is_cut_hard_at_the_limit():
    text = "a" * 10000
    assert [len(part) for part in split_text(text)] == [4096, 4096, 1808]


def test_separator_is_dropped_but_indentation_kept():
    text = "a" * 30 + "  \n\n    indented code"
    parts = split_text(text, limit=40)
    assert parts == ["a" * 30, "    indented code"]


def test_paragraph_break_made_of_crlf_and_blank_lines():
    text = "a" * 30 + "\r\n  \r\n" + "b" * 30
    assert split_text(text, limit=40) == ["a" * 30, "b" * 30]


def test_no_part_is_whitespace_only():
    text = "x" + " " * 5000 + "y" + "\n" * 9000 + "z" + " \u00a0 " * 3000
    parts = split_text(text)
    check_plain_parts(parts, 4096)
    assert [part.strip() for part in parts] == ["x", "y", "z"]
    reassemble(text, parts)


def test_text_with_nothing_visible_raises():
    with pytest.raises(ValueError, match="visible"):
        split_text(" \n" * 5000)


def test_parts_and_dropped_separators_rebuild_the_text():
    rng = random.Random(4096)
    for _ in range(40):
        text = random_text(rng, rng.randint(200, 3000))
        limit = rng.randint(16, 300)
        parts = split_text(text, limit=limit)
        check_plain_parts(parts, limit)
        separators = reassemble(text, parts)
        assert all(sep == "" or sep.isspace() for sep in separators)


def test_grapheme_clusters_stay_whole_when_cut_hard():
    family = "👨\u200d👩\u200d👧"
    for text in [family * 50, "e\u0301" * 200, "🇺🇦" * 100, "a\ufe0f" * 200]:
        for limit in (9, 10, 11, 15):
            parts = split_text(text, limit=limit)
            assert "".join(parts) == text
            check_plain_parts(parts, limit)
            for left, right in zip(parts, parts[1:], strict=False):
                assert not right.startswith(("\u200d", "\u0301", "\ufe0f")) and not left.endswith("\u200d")
                if text.startswith("🇺🇦"):
                    assert len(left) % 2 == 0


def test_markdown_escape_is_never_separated():
    for mode in ("MarkdownV2", "Markdown", "markdownv2"):
        text = "a" + "\\_" * 5000
        parts = split_text(text, mode)
        assert "".join(parts) == text
        for part in parts:
            assert utf16_len(part) <= 4096
            assert (len(part) - len(part.rstrip("\\"))) % 2 == 0, "cut right after a backslash"


def test_markdown_escaped_space_is_not_a_separator():
    text = "a" * 20 + "\\ " + "b" * 30
    parts = split_text(text, "MarkdownV2", limit=30)
    assert "".join(parts) == text
    assert all((len(p) - len(p.rstrip("\\"))) % 2 == 0 for p in parts)


def test_markdown_random_texts_keep_escapes():
    rng = random.Random(7)
    for _ in range(20):
        text = random_text(rng, rng.randint(200, 2000))
        limit = rng.randint(16, 200)
        parts = split_text(text, "MarkdownV2", limit=limit)
        check_plain_parts(parts, limit)
        reassemble(text, parts)
        assert all((len(p) - len(p.rstrip("\\"))) % 2 == 0 for p in parts[:-1])


def test_html_tags_are_closed_and_reopened_with_attributes():
    opener = '<a href="https://example.com/?a=1&amp;b=2">'
    text = "intro " + opener + "word " * 2000 + "</a> outro"
    parts = split_text(text, "HTML")
    check_html_parts(text, parts, 4096)
    assert len(parts) == 3
    assert parts[0].startswith("intro " + opener) and parts[0].endswith("</a>")
    assert parts[1].startswith(opener) and parts[1].endswith("</a>")
    assert parts[2].startswith(opener) and parts[2].endswith("</a> outro")


def test_html_nested_tags_close_in_reverse_and_reopen_in_order():
    text = '<b><span class="tg-spoiler"><i>' + "word " * 3000 + "</i></span></b>"
    parts = split_text(text, "html")
    check_html_parts(text, parts, 4096)
    for part in parts:
        assert part.startswith('<b><span class="tg-spoiler"><i>')
        assert part.endswith("</i></span></b>")


def test_html_limit_counts_the_added_tags():
    text = "<b>" + "a" * 30 + "</b>"
    parts = split_text(text, "HTML", limit=30)
    assert parts == ["<b>" + "a" * 23 + "</b>", "<b>" + "a" * 7 + "</b>"]


def test_html_blockquote_expandable_and_unknown_tags_reopen_verbatim():
    text = "<blockquote expandable>" + "line\n" * 20 + "</blockquote><foo x='1'>" + "z " * 40 + "</foo>"
    parts = split_text(text, "HTML", limit=60)
    check_html_parts(text, parts, 60)
    assert parts[1].startswith("<blockquote expandable>")
    assert any(part.startswith("<foo x='1'>") and part.endswith("</foo>") for part in parts[2:])


def test_html_never_cuts_inside_a_tag_or_an_entity():
    text = ('<a href="https://example.com/a b c">x</a> &amp;&lt;&#128512;&#x1F600;' * 200)
    for limit in (60, 61, 62, 63, 64, 97, 100):
        parts = split_text(text, "HTML", limit=limit)
        check_html_parts(text, parts, limit)


def test_html_whitespace_inside_tags_is_not_a_break():
    text = "<tg-emoji emoji-id=\"1\n\n2\">👍</tg-emoji>" + "x" * 100
    parts = split_text(text, "HTML", limit=60)
    check_html_parts(text, parts, 60)
    assert parts[0].startswith('<tg-emoji emoji-id="1\n\n2">👍</tg-emoji>')


def test_html_random_documents():
    rng = random.Random(2024)
    for _ in range(25):
        text = random_html(rng, rng.randint(500, 4000))
        limit = rng.randint(150, 600)
        if utf16_len(text) <= limit:
            continue
        check_html_parts(text, split_text(text, "HTML", limit=limit), limit)


def test_html_moderate_nesting_still_splits():
    text = "<b>" * 100 + "x" * 10000 + "</b>" * 100
    check_html_parts(text, split_text(text, "HTML"), 4096)


def test_html_tag_longer_than_the_limit_goes_out_without_it():
    text = 'see <a href="https://example.com/' + "x" * 5000 + '">link</a> ' + "word " * 10
    assert split_text(text, "HTML") == ["see link " + "word " * 10]


def test_html_nesting_too_deep_to_reopen_drops_tags_until_it_splits():
    text = "<b>" * 1000 + "x" * 5000 + "</b>" * 1000
    check_html_parts(text, split_text(text, "HTML"), 4096)


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        split_text("abc", limit=0)


def test_megabyte_texts_split_quickly():
    plain = "Lorem ipsum dolor sit amet, consectetur 😀 adipiscing elit.\n" * 17000
    html = ("Some <b>bold</b> text, a <a href='https://example.com/?q=1&amp;r=2'>link</a> "
            "and <tg-spoiler>a secret</tg-spoiler> 😀.\n") * 9000
    for text, mode in [(plain, None), (html, "HTML"), ("x" * 1_000_000, "MarkdownV2")]:
        assert len(text) >= 1_000_000
        started = time.perf_counter()
        parts = split_text(text, mode)
        # about 0.2 s here alone; a quadratic split of a megabyte would take minutes, and a
        # machine running two suites at once has stretched 0.2 s past 1 s
        assert time.perf_counter() - started < 3.0
        assert all(utf16_len(part) <= 4096 for part in parts)
