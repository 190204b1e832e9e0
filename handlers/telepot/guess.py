"""Guess a number, written against telepot's API.

    chatdaemon telepot guess.py TOKEN [TIMEOUT]

The first message of a chat opens a game (`open`); every guess gets "larger" or
"smaller"; the right one ends the game (`close()`). A game left alone for TIMEOUT
seconds (default 10) expires: `on_close` receives telepot.exception.WaitTooLong.
"""

import random
import sys
import time

import telepot
import telepot.helper
from telepot.delegate import create_open, pave_event_space, per_chat_id
from telepot.loop import MessageLoop


class Player(telepot.helper.ChatHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._answer = random.randint(0, 99)

    def _hint(self, answer, guess):
        return 'larger' if answer > guess else 'smaller'

    def open(self, initial_msg, seed):
        self.sender.sendMessage('Guess my number (0 to 99)')
        return True  # the first message only opens the game

    def on_chat_message(self, msg):
        content_type, chat_type, chat_id = telepot.glance(msg)
        if content_type != 'text':
            self.sender.sendMessage('Give me a number, please.')
            return
        try:
            guess = int(msg['text'])
        except ValueError:
            self.sender.sendMessage('Give me a number, please.')
            return
        if guess != self._answer:
            self.sender.sendMessage(self._hint(self._answer, guess))
        else:
            self.sender.sendMessage('Correct!')
            self.close()

    def on_close(self, ex):
        if isinstance(ex, telepot.exception.WaitTooLong):
            self.sender.sendMessage(f'Game expired. The answer is {self._answer}')


TOKEN = sys.argv[1]
TIMEOUT = float(sys.argv[2]) if len(sys.argv) > 2 else 10

bot = telepot.DelegatorBot(TOKEN, [
    pave_event_space()(
        per_chat_id(), create_open, Player, timeout=TIMEOUT),
])
MessageLoop(bot).run_as_thread()
print('Listening ...')

while 1:
    time.sleep(10)
