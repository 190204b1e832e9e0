"""Counts the messages of each chat."""

from chatdaemon import ChatHandler


class MessageCounter(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["count"] = self.vars.get("count", 0) + 1
        self.sender.sendMessage(str(self.vars["count"]))
