"""`chatdaemon check`: every error of a run, each with its file and line, and exit 78.

Mistakes that used to surface only when a user triggered them (an emoji that does not
exist, a regex group the pattern does not define, a misspelt Telegram field) are load
errors now; files no YAML reader should choke on are errors, never tracebacks.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from chatdaemon.bots import load_bot
from chatdaemon.errors import ConfigError, ConfigErrors
from chatdaemon.templates import EMOJI, EMOJI_NAMES


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def check(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatdaemon", "check", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


def errors_of(result: subprocess.CompletedProcess) -> list[str]:
    """The error lines `check` printed (without the count line)."""
    return [line.removeprefix("chatdaemon: ") for line in result.stderr.splitlines()
            if line.startswith("chatdaemon: ") and not line.endswith("error(s)")]


def load_errors(directory: Path, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_bot(str(directory), environ=environ or {})
    errors = info.value.errors if isinstance(info.value, ConfigErrors) else [info.value]
    return [str(error) for error in errors]


# -- every error, not the first ----------------------------------------------------------------

def test_a_file_with_three_errors_reports_three(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        handlers:
          - name: start
            pattern: '^(unclosed'
            response: "hi"
          - name: price
            response: "{{ oops"
          - name: bye
            response: "bye {{ emoji.thumbs_up }}"
    """)
    result = check("--handlers", str(tmp_path / "bot"))
    assert result.returncode == 78, result.stderr
    errors = errors_of(result)
    assert len(errors) == 3, errors
    assert re.match(r".*bot\.yaml:3: handler start: pattern does not compile", errors[0])
    assert re.match(r".*bot\.yaml:6: template error", errors[1])
    assert re.match(r".*bot\.yaml:8: emoji.thumbs_up is not one of", errors[2])
    assert "3 error(s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_errors_of_several_files_and_the_config_are_all_reported(tmp_path):
    write(tmp_path / "bot" / "a.yaml", """
        handlers:
          - {name: a, response: "{{ usr.name }}"}
    """)
    write(tmp_path / "bot" / "b.yaml", """
        fallback: "ok"
        handlrs: []
    """)
    config = write(tmp_path / "c.yaml", """
        polling: {timeout: soon}
        delegates: {max: many}
        log_level: 5
    """)
    result = check("--config", str(config), "--handlers", str(tmp_path / "bot"))
    assert result.returncode == 78
    errors = errors_of(result)
    assert len(errors) == 5, errors
    assert any("a.yaml:2: template uses unknown name(s): usr" in e for e in errors), errors
    assert any("b.yaml:2: unknown key 'handlrs'" in e for e in errors), errors
    assert any("c.yaml:1: polling.timeout must be an integer, not 'soon'" in e for e in errors)
    assert any("c.yaml:2: delegates.max must be an integer, not 'many'" in e for e in errors)
    assert any("c.yaml:3: log_level must be a string" in e for e in errors), errors


def test_a_handler_left_out_for_an_error_does_not_cause_a_second_one(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        handlers:
          - name: start
            response: "{{ oops"
            target_state: menu
          - name: menu
            source_states: [menu]
            response: "menu"
    """)
    errors = load_errors(tmp_path / "bot")
    assert len(errors) == 1 and "template error" in errors[0], errors


# -- ${VAR} ------------------------------------------------------------------------------------

def test_a_missing_variable_is_an_error_naming_it_and_its_line(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        env:
          api: "${SHOP_URL:-http://127.0.0.1:8080}"
          user: "${SHOP_USER}"
        handlers:
          - {name: a, response: "x"}
        hooks:
          - name: door
            key: "${DOOR_HOOK_KEY}"
            recipients: [1]
            response: "door"
    """)
    errors = load_errors(tmp_path / "bot")
    assert len(errors) == 2, errors
    assert errors[0].endswith("bot.yaml:3: env.user: environment variable SHOP_USER is not set "
                              "(set it, or give a default: ${SHOP_USER:-value})")
    assert "bot.yaml:8: hooks.door.key: environment variable DOOR_HOOK_KEY is not set" in errors[1]
    bot = load_bot(str(tmp_path / "bot"),
                   environ={"SHOP_USER": "ann", "DOOR_HOOK_KEY": "k" * 20})
    assert bot.definitions.env == {"api": "http://127.0.0.1:8080", "user": "ann"}
    assert bot.hooks["door"].key == "k" * 20


def test_check_exits_78_on_a_missing_variable(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        env: {token: "${PAYMENT_TOKEN}"}
        handlers:
          - {name: a, response: "x"}
    """)
    result = check("--handlers", str(tmp_path / "bot"), env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 78
    assert "bot.yaml:1: env.token: environment variable PAYMENT_TOKEN is not set" in result.stderr


# -- names a template may use ------------------------------------------------------------------

def test_unknown_emoji_pattern_groups_and_telegram_fields_fail_at_load(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        handlers:
          - name: greet
            pattern: '^hi (?P<who>\\w+)$'
            response: "{{ emoji.thumbs_up }} {{ pattern.whom }}"
          - name: name
            pattern: '^name$'
            response: "{{ user.frist_name }} in {{ message.chat.titel }}"
          - name: press
            pattern: '^(\\d)$'
            response: "{{ pattern[2] }} {{ callback.dta }}"
        fallback: "{{ pattern.who }}"
    """)
    errors = load_errors(tmp_path / "bot")
    assert [error.split(": ", 1)[1] for error in errors] == [
        "emoji.thumbs_up is not one of the 61 emoji names; did you mean thumbsup?",
        "pattern.whom: the pattern '^hi (?P<who>\\\\w+)$' has no group named 'whom' "
        "(its named groups: who); did you mean who?",
        "user.frist_name is not a field of a Telegram User; did you mean first_name?",
        "message.chat.titel is not a field of a Telegram Chat; did you mean title?",
        "pattern[2]: the pattern '^(\\\\d)$' has no group 2",
        "callback.dta is not a field of a Telegram CallbackQuery; did you mean data?",
        "pattern.who is always empty here: only a handler's own pattern fills `pattern`",
    ], errors
    assert [error.split(": ", 1)[0].rsplit(":", 1)[1] for error in errors] == \
        ["4", "4", "7", "7", "10", "10", "11"]


def test_the_names_that_exist_load(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        handlers:
          - name: greet
            pattern: '^hi (?P<who>\\w+)( now)?$'
            response:
              text: >-
                {{ emoji.wave }} {{ emoji['100'] }} {{ pattern.who }} {{ pattern[2] }}
                {{ pattern['who'] }} {{ user.first_name }} {{ message.chat.id }}
                {{ message.from.username }} {{ callback.data }} {{ message.get('text') }}
                {% for user in vars.people %}{{ user.anything }}{% endfor %}
            save: {who: "{{ pattern.who }}"}
    """)
    bot = load_bot(str(tmp_path / "bot"), environ={})
    assert [h.name for h in bot.definitions.handlers] == ["greet"]


def test_the_emoji_names_are_exported():
    assert len(EMOJI_NAMES) == len(EMOJI) == 61
    assert list(EMOJI_NAMES) == sorted(EMOJI) and "thumbsup" in EMOJI_NAMES


def test_an_optional_group_that_did_not_match_renders_as_empty_text(tmp_path):
    write(tmp_path / "bot" / "bot.yaml", """
        handlers:
          - name: hi
            pattern: '^hi(?P<name> \\w+)?( please)?$'
            response: "Hello{{ pattern.name }}{{ pattern[2] }}!"
    """)
    result = subprocess.run([sys.executable, "-m", "chatdaemon", "chat", "--handlers",
                             str(tmp_path / "bot")], input="hi\nhi bob please\n",
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "bot: Hello!" in result.stdout and "None" not in result.stdout
    assert "bot: Hello bob please!" in result.stdout


# -- files no reader should choke on -----------------------------------------------------------

ODD_FILES = [
    ("latin-1", b'handlers:\n  - name: a\n    response: "caf\xe9"\n', 3, "not UTF-8: byte 0xe9"),
    ("list key", b"handlers:\n  - name: a\n    ? [x, y]\n    : 1\n", 3,
     "a key must be a plain value, not a list"),
    ("deep", b"handlers:\n  - " + b"[" * 5000 + b"]" * 5000 + b"\n", 2,
     "nested more than 64 levels deep"),
    ("deep blocks", b"handlers:\n" + b"".join(b" " * i + b"- \n" for i in range(1, 200)), 65,
     "nested more than 64 levels deep"),
    ("tag", b"handlers: !include more.yaml\n", 1, "could not determine a constructor"),
    ("int tag", b"handlers:\n  - name: a\n    priority: !!int nine\n", 3,
     "cannot read this int value"),
    ("NUL", b"handlers:\n  - name: a\x00\n", 2, "is not allowed in YAML"),
    ("quote", b'handlers:\n  - name: a\n    response:\n      parse_mode: HTML\n'
              b'      text: "unterminated\n\n\n', 5, "while scanning a quoted scalar"),
]


@pytest.mark.parametrize(("what", "content", "line", "message"), ODD_FILES,
                         ids=[case[0] for case in ODD_FILES])
def test_odd_yaml_is_an_error_at_its_line_not_a_traceback(tmp_path, what, content, line, message):
    write(tmp_path / "bot" / "bot.yaml", content)
    result = check("--handlers", str(tmp_path / "bot"))
    assert result.returncode == 78, result.stderr
    assert f"bot.yaml:{line}: " in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_config_that_is_not_a_mapping_says_which_file(tmp_path):
    config = write(tmp_path / "c.yaml", "just some words\n")
    result = check("--config", str(config))
    assert result.returncode == 78
    assert f"{config}:1: the daemon config must be a mapping of `key: value` lines, not a string" \
        in result.stderr
    assert "the bot was not checked" in result.stderr


def test_relative_paths_in_a_config_are_relative_to_its_directory(tmp_path):
    write(tmp_path / "bots" / "hello" / "bot.yaml", """
        handlers:
          - {name: a, response: "hello"}
    """)
    config = write(tmp_path / "etc" / "chatdaemon.yaml", """
        handlers: ../bots/hello
        database: state/bot.sqlite3
    """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = check("--config", str(config), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert f"bot in {tmp_path / 'etc' / '..' / 'bots' / 'hello'}" in result.stdout
    assert f"database: {tmp_path / 'etc' / 'state' / 'bot.sqlite3'};" in result.stdout
    # on the command line a relative path is relative to the current directory, as usual
    result = check("--config", str(config), "--handlers", "../bots/hello", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert "bot in ../bots/hello" in result.stdout


def test_a_handlers_directory_that_does_not_exist_names_the_config_line(tmp_path):
    config = write(tmp_path / "etc" / "chatdaemon.yaml", """
        log_level: INFO
        handlers: ../nowhere
    """)
    result = check("--config", str(config))
    assert result.returncode == 78
    assert f"{config}:2: handlers directory {tmp_path / 'etc' / '..' / 'nowhere'} does not exist" \
        in result.stderr
    result = check("--config", str(config), "--handlers", "gone", cwd=tmp_path)
    assert "chatdaemon: handlers directory gone does not exist" in result.stderr  # not the config's


@pytest.mark.parametrize("ending", ["raise SystemExit(3)", "raise KeyboardInterrupt"])
def test_check_on_a_module_that_exits_at_import_is_exit_78(tmp_path, ending):
    write(tmp_path / "bot" / "bot.yaml", "python: mod:Bot\n")
    write(tmp_path / "bot" / "mod.py", f"import os\n{ending}\n")
    result = check("--handlers", str(tmp_path / "bot"))
    assert result.returncode == 78, result.stderr
    assert "mod.py:2: cannot import mod: " in result.stderr and "Traceback" not in result.stderr
