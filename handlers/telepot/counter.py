"""The message counter from telepot's README, unchanged telepot code.

    chatdaemon telepot counter.py TOKEN

Each chat gets its own MessageCounter; it counts that chat's messages in a plain
attribute, so the count starts again after 10 idle seconds (or a restart), as in telepot.
"""

import sys
import time

import telepot
from telepot.delegate import create_open, pave_event_space, per_chat_id
from telepot.loop import MessageLoop


class MessageCounter(telepot.helper.ChatHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._count = 0

    def on_chat_message(self, msg):
        self._count += 1
        self.sender.sendMessage(self._count)


TOKEN = sys.argv[1]

bot = telepot.DelegatorBot(TOKEN, [
    pave_event_space()(
        per_chat_id(), create_open, MessageCounter, timeout=10),
])
MessageLoop(bot).run_as_thread()

while 1:
    time.sleep(10)
