"""Test bot: says hi, and says why when its delegate closes; echoes edits."""

from chatdaemon import ChatHandler


class Closer(ChatHandler):
    def on_chat_message(self, msg):
        self.state = "greeted"
        self.sender.sendMessage("hi")

    def on_edited_chat_message(self, msg):
        self.sender.sendMessage(f"edited to {msg['text']} in state {self.state}")

    def on_close(self, reason):
        self.sender.sendMessage(f"closed: {reason}")
