"""Test bot: `/start` starts a 5-second schedule, `/stop` stops it, each tick says "tick"."""

from chatdaemon import ChatHandler


class Ticker(ChatHandler):
    def on_chat_message(self, msg):
        text = (msg.get("text") or "").strip()
        if text == "/start":
            self.start_schedule("t", 5)
            self.sender.sendMessage("started")
        elif text == "/stop":
            self.stop_schedule()
            self.sender.sendMessage("stopped")
        else:
            self.sender.sendMessage(f"schedules: {sorted(self.schedules)}")

    def on_schedule(self, tick):
        self.sender.sendMessage("tick")
