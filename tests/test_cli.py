"""Unit tests of chatdaemon.cli, in-process: argument errors, --help texts, exit statuses."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from chatdaemon import cli, errors

ROOT = Path(__file__).resolve().parent.parent


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name, as `chatdaemon` builds them."""
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("chatdaemon has no subcommands")


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def exit_statuses() -> dict[str, int]:
    return {name: value for name, value in vars(errors).items()
            if name.startswith("EXIT_") and isinstance(value, int)}


def test_there_are_subcommands_to_check():
    assert {"run", "check", "chat", "init", "files", "stop", "status", "chats", "telepot"} \
        <= set(subcommands())


@pytest.mark.parametrize("argv", [
    ["no-such-command"],
    ["run", "--no-such-option"],
    ["run", "--rate-limits", "sometimes"],
    ["run", "--log-level", "LOUD"],
    ["run", "--start-timeout", "soon"],
    ["stop"],                        # --pidfile is required
    ["status"],                      # --db is required
    ["chats", "--db", "x", "--limit", "many"],
    ["files", "elsewhere"],
    ["init"],                        # DIR is required
])
def test_an_argument_error_exits_2_with_a_usage_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == errors.EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: chatdaemon")
    assert "error:" in err


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == errors.EXIT_USAGE
    assert "COMMAND" in capsys.readouterr().out


def test_the_log_level_names_what_it_accepts():
    with pytest.raises(argparse.ArgumentTypeError, match="DEBUG, INFO, WARNING, ERROR"):
        cli._log_level("loud")
    assert cli._log_level("debug") == "DEBUG"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_help_has_an_example(name, capsys):
    text = help_of(capsys, name)
    assert re.search(r"^Examples?:", text, re.M) or "Example: chatdaemon" in " ".join(text.split()), text
    assert f"chatdaemon {name}" in " ".join(text.split()), f"the example does not run {name}"


def test_top_level_help_has_examples_and_lists_every_exit_status(capsys):
    text = help_of(capsys)
    assert "Examples:" in text
    listed = text.split("exit statuses:", 1)[1]
    for name, status in exit_statuses().items():
        assert re.search(rf"\b{status}\b", listed), f"{name} = {status} is not listed"


def test_run_help_lists_every_exit_status(capsys):
    listed = help_of(capsys, "run").split("exit statuses:", 1)[1]
    for name, status in exit_statuses().items():
        assert re.search(rf"\b{status}\b", listed), f"{name} = {status} is not listed"


def test_every_error_class_exits_with_a_listed_status():
    listed = set(exit_statuses().values())
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, errors.ChatdaemonError)]
    assert len(classes) > 3
    for error in classes:
        assert error.exit_status in listed, error


def test_a_library_error_becomes_its_exit_status_and_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CHATDAEMON_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text("databse: x\n")
    assert cli.main(["check", "--config", str(config)]) == errors.EXIT_CONFIG
    assert "unknown key 'databse'" in capsys.readouterr().err


def test_a_token_in_an_error_is_redacted(capsys, monkeypatch):
    token = "123456:SECRET-token_abcdefghijklmnop"

    def failing_check(args: argparse.Namespace) -> int:
        raise errors.ConfigError(f"bad thing near bot{token}/getMe")

    monkeypatch.setattr(cli, "cmd_check", failing_check)
    assert cli.main(["check"]) == errors.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.startswith("chatdaemon: ")
    assert "SECRET" not in err


def test_a_token_that_does_not_look_like_one_is_refused_without_echo(monkeypatch):
    monkeypatch.delenv("CHATDAEMON_TOKEN", raising=False)
    args = cli.build_parser().parse_args(["run", "not-a-token-at-all"])
    with pytest.raises(errors.ConfigError) as info:
        cli.read_token(args)
    assert "not-a-token" not in str(info.value)


def test_the_token_comes_from_the_environment_and_leaves_it(monkeypatch):
    monkeypatch.setenv("CHATDAEMON_TOKEN", " 123456:abcdefghijklmnop\n")
    args = cli.build_parser().parse_args(["run"])
    assert cli.read_token(args) == "123456:abcdefghijklmnop"
    assert "CHATDAEMON_TOKEN" not in os.environ


def test_no_token_anywhere_is_a_config_error(monkeypatch):
    monkeypatch.delenv("CHATDAEMON_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    args = cli.build_parser().parse_args(["run"])
    with pytest.raises(errors.ConfigError) as info:
        cli.read_token(args)
    assert info.value.exit_status == errors.EXIT_CONFIG


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_is_documented_in_the_readme(name):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"chatdaemon {name}" in readme, f"README.md never shows `chatdaemon {name}`"
