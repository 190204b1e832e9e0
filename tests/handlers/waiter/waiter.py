"""Test bot in telepot's blocking style: asks two questions with listener.wait()."""

from chatdaemon import ChatHandler, WaitTooLong


class Waiter(ChatHandler):
    def on_chat_message(self, msg):
        self.sender.sendMessage("first?")
        try:
            first = self.listener.wait(timeout=10)["text"]
            self.sender.sendMessage("second?")
            second = self.listener.wait(timeout=10)["text"]
        except WaitTooLong:
            self.sender.sendMessage("too slow")
            return
        self.sender.sendMessage(f"{first}+{second}")
