"""Test bot: telepot's guess-a-number example ported to a chatdaemon ChatHandler with only
its imports changed. The answer is the chat id modulo 100, so that a test knows it.

/photo sends PHOTO (an environment variable naming a file) as an upload; a photo message
is saved with download_file into SAVE_DIR.
"""

import os

from chatdaemon import ChatHandler, WaitTooLong, glance


class Player(ChatHandler):
    def __init__(self, seed_tuple, **kwargs):
        super().__init__(seed_tuple, **kwargs)
        _bot, self._initial, _seed = seed_tuple
        self._answer = self.id % 100
        self._tries = 0

    def _hint(self, answer, guess):
        return "larger" if answer > guess else "smaller"

    def open(self, initial_msg, seed):
        if initial_msg.get("text") in ("/photo", None):
            return False  # not a game: on_chat_message handles it
        self.sender.sendMessage("Guess my number")
        return True  # prevent on_chat_message() from being called on the initial message

    def on_chat_message(self, msg):
        content_type, chat_type, chat_id = glance(msg)
        if content_type == "photo":
            path = os.path.join(os.environ["SAVE_DIR"], "saved.bin")
            self.bot.download_file(msg["photo"][-1]["file_id"], path)
            self.sender.sendMessage(os.path.getsize(path))
            return
        if msg.get("text") == "/photo":
            with open(os.environ["PHOTO"], "rb") as photo:
                self.sender.sendPhoto(photo, caption="from disk")
            return
        try:
            guess = int(msg["text"])
        except ValueError:
            self.sender.sendMessage("Give me a number, please.")
            return
        self._tries += 1
        if guess != self._answer:
            self.bot.sendMessage(chat_id, self._hint(self._answer, guess))  # telepot's order
        else:
            self.sender.sendMessage("Correct!")
            self.sender.sendMessage(self._tries)  # an int, as telepot's counter sends it
            self.close()
            self.sender.sendMessage("not sent: close() ends the handler here")

    def on_close(self, ex):
        if isinstance(ex, WaitTooLong):
            self.sender.sendMessage(f"Game expired. The answer is {self._answer}")
        self.vars["ends"] = self.vars.get("ends", []) + [str(ex)]
