"""What a bot author's mistakes, a hostile user and a bad upstream do to the YAML pipeline:
aliases that expand a file past any size."""

from __future__ import annotations

import time

import pytest

from chatdaemon import yamlfile
from chatdaemon.errors import ConfigError

WAIT = 10.0   # seconds any step here may take at most


# -- YAML aliases ----------------------------------------------------------------------------

def laughs(levels: int) -> str:
    """A request body of ten lists of ten aliases, `levels` deep: 10**levels templates."""
    lines = ["a0: &a0 ['{{ message.text }}', x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    lines += ["handlers:", "  - name: h", "    pattern: x", "    request:",
              "      url: http://example.com/", "      method: POST", f"      json: *a{levels}",
              "    response: hi"]
    return "\n".join(lines) + "\n"


def test_aliases_expanding_past_the_bound_are_refused_at_once(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(laughs(8))   # 10**8 templates to compile: hours, before this bound
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        yamlfile.load(str(path))
    assert time.monotonic() - started < WAIT
    assert "aliases" in str(refused.value) and refused.value.where == f"{path}:1"


def test_aliases_within_the_bound_still_load_as_shared_values(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(laughs(3))   # 1,111 lists and 10,000 strings: an author may do this
    data = yamlfile.load(str(path))
    assert data["a3"][0] is data["a2"]


def test_an_alias_inside_itself_stays_a_clear_error(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text("a: &a [1, *a]\n")   # counted once, then refused by the constructor
    with pytest.raises(ConfigError) as refused:
        yamlfile.load(str(path))
    assert "recursive" in str(refused.value)
