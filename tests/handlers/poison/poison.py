"""Test bot: `die` kills the whole process, `hang` never returns; anything else is echoed."""

import os
import signal
import threading

from chatdaemon import ChatHandler


class Poison(ChatHandler):
    def on_chat_message(self, msg):
        text = msg.get("text")
        if text == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if text == "hang":
            threading.Event().wait()
        self.sender.sendMessage(f"echo: {text}")
