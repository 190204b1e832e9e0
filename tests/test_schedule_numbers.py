"""start_schedule takes a finite number of seconds: NaN used to fail the update's commit (and
be quarantined), infinity to be kept as a schedule that never ticks."""

from __future__ import annotations

import pytest

from chatdaemon.testing import TestBot

TICKER = '''
from chatdaemon import ChatHandler


class Ticker(ChatHandler):
    def on_chat_message(self, msg):
        try:
            self.start_schedule("t", float(msg["text"]))
        except ValueError as exc:
            self.sender.sendMessage(f"refused: {exc}")
            return
        self.sender.sendMessage("started")
'''


@pytest.fixture
def bot(tmp_path):
    (tmp_path / "bot.yaml").write_text("python: ticker:Ticker\n", encoding="utf-8")
    (tmp_path / "ticker.py").write_text(TICKER, encoding="utf-8")
    return TestBot(str(tmp_path))


@pytest.mark.parametrize("every", ["nan", "inf", "-inf"])
def test_a_schedule_that_is_no_finite_number_is_refused_and_nothing_is_kept(bot, every):
    bot.send(every)
    assert bot.replies() == ["refused: a schedule ticks every finite number of seconds, "
                             f"not {float(every)}"]
    bot.send("60")
    assert bot.replies()[-1] == "started"
