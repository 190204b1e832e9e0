"""Test bot: echoes text; `long N` answers N characters; `html N` answers bold HTML."""

from chatdaemon import ChatHandler


class Echo(ChatHandler):
    def on_chat_message(self, msg):
        text = msg.get("text", "")
        if text.startswith("long "):
            self.sender.sendMessage("word " * (int(text.split()[1]) // 5))
        elif text.startswith("html "):
            self.sender.sendMessage("<b>" + "bold &amp; " * (int(text.split()[1]) // 11) + "</b>",
                                    parse_mode="HTML")
        else:
            self.sender.sendMessage(text or "(no text)")

    def on_callback_query(self, query):
        self.sender.sendMessage("pressed " + query["data"])
