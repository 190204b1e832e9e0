"""YAML's .nan and .inf are numbers to a YAML parser but never a setting: every comparison with
NaN is false, so a "must be positive" check would pass it and the setting would mean nothing
(a NaN rate limit turned limiting off), and int(.inf) would crash the load."""

from __future__ import annotations

import pytest

from chatdaemon.config import load_config
from chatdaemon.errors import ConfigError


def config_file(tmp_path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("text", "named"), [
    ("rate_limits: {per_second: .nan}\n", "rate_limits.per_second"),
    ("rate_limits: {per_chat_per_second: .inf}\n", "rate_limits.per_chat_per_second"),
    ("rate_limits: {per_group_per_minute: -.inf}\n", "rate_limits.per_group_per_minute"),
    ("delegates: {idle_timeout: .inf}\n", "delegates.idle_timeout"),
    ("delegates: {update_timeout: .nan}\n", "delegates.update_timeout"),
    ("stop_timeout: .nan\n", "stop_timeout"),
    ("hooks: {callback_expiry: .nan}\n", "hooks.callback_expiry"),
])
def test_a_setting_that_is_not_a_finite_number_is_refused_by_name(tmp_path, text, named):
    with pytest.raises(ConfigError) as refused:
        load_config(config_file(tmp_path, text))
    assert named in str(refused.value) and "finite" in str(refused.value)


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_database_cap_that_is_not_finite_is_refused_not_a_crash(tmp_path, value):
    with pytest.raises(ConfigError, match="max_database_mb"):
        load_config(config_file(tmp_path, f"retention: {{max_database_mb: {value}}}\n"))


def test_finite_numbers_still_load(tmp_path):
    config = load_config(config_file(tmp_path, "rate_limits: {per_second: 20.5}\n"
                                               "delegates: {idle_timeout: 60}\n"
                                               "retention: {max_database_mb: 0.5}\n"))
    assert config.limits.per_second == 20.5 and config.idle_timeout == 60.0


@pytest.mark.parametrize("switch", ["remove_keyboard", "one_time_keyboard",
                                    "disable_web_page_preview"])
def test_a_response_switch_written_as_a_string_is_refused_with_its_line(tmp_path, switch):
    """YAML reads `no` as false but `"no"` as a string, which would count as true."""
    from chatdaemon.bots import load_bot
    from chatdaemon.errors import ConfigErrors
    bot = tmp_path / "bot"
    bot.mkdir()
    (bot / "bot.yaml").write_text(
        "handlers:\n"
        "  - name: hide\n"
        "    pattern: ^/hide$\n"
        "    response:\n"
        "      text: gone\n"
        f"      {switch}: \"no\"\n")
    with pytest.raises((ConfigError, ConfigErrors)) as refused:
        load_bot(str(bot))
    assert f"{switch} must be true or false" in str(refused.value)
    assert "bot.yaml:6" in str(refused.value)
    (bot / "bot.yaml").write_text(
        "handlers:\n  - name: hide\n    pattern: ^/hide$\n    response:\n      text: gone\n"
        f"      {switch}: no\n")
    load_bot(str(bot))   # YAML's own false is fine
