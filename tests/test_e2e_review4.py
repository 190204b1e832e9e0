"""Through the real daemon: a group addresses commands to a bot by its @username."""

from __future__ import annotations

from test_e2e_pipeline import Chat, text_of, write_bot

USERNAME = "test_bot"   # what the Bot API double's getMe answers


def test_a_group_command_for_this_bot_is_answered_and_one_for_another_bot_is_not(
        telegram, start_daemon, tmp_path):
    bot = write_bot(tmp_path, """
        handlers:
          - name: start
            pattern: '^/start$'
            response: {text: "welcome"}
        fallback: {text: "pardon?"}
    """)
    daemon = start_daemon(bot)
    group = Chat(telegram, -1001)
    assert text_of(group.say(f"/start@{USERNAME}")) == ["welcome"]
    telegram.push_message(-1001, "/start@other_bot", first_name="Ann")
    # per-chat order: the sentinel's answer comes after whatever the message before it got
    assert text_of(group.say("sentinel")) == ["pardon?"]
    assert daemon.stop() == 0
    assert "a command for another bot" in daemon.log()
