"""Test bot: counts, then waits in telepot style; `ask` waits for two answers."""

from chatdaemon import ChatHandler


class WaitHook(ChatHandler):
    def on_chat_message(self, msg):
        if msg.get("text") == "ask":
            self.sender.sendMessage("first?")
            first = self.listener.wait(timeout=10)["text"]
            self.sender.sendMessage("second?")
            second = self.listener.wait(timeout=10)["text"]
            self.sender.sendMessage(f"{first}+{second}")
            return
        self.vars["count"] = self.vars.get("count", 0) + 1
        self.sender.sendMessage(str(self.vars["count"]))
        self.listener.wait(timeout=0.3)  # raises WaitTooLong when nothing follows: the handler ends
