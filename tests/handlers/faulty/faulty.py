"""Test bot: counts like the counter, but `boom` raises after changing its vars."""

from chatdaemon import ChatHandler


class Faulty(ChatHandler):
    def on_chat_message(self, msg):
        self.vars["count"] = self.vars.get("count", 0) + 1
        if msg.get("text") == "boom":
            raise RuntimeError("boom on purpose")
        if msg.get("text") == "set":
            self.vars["tags"] = {"not", "json"}
        self.sender.sendMessage(str(self.vars["count"]))
