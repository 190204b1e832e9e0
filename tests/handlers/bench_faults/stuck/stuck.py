"""Counts each chat's messages; `hang` never returns and `die` ends the process (os._exit)."""

import os
import threading

from chatdaemon import ChatHandler

DIE_STATUS = 70  # what a crashing extension module might leave: no cleanup, no clean stop


class StuckCounter(ChatHandler):
    def on_chat_message(self, msg):
        text = msg.get("text")
        if text == "hang":
            threading.Event().wait()
        if text == "die":
            os._exit(DIE_STATUS)
        self.vars["count"] = self.vars.get("count", 0) + 1
        self.sender.sendMessage(str(self.vars["count"]))
