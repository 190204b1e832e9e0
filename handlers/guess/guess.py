"""Guess-a-number, one secret per chat."""

import random

from chatdaemon import ChatHandler, glance

LOWEST, HIGHEST = 0, 100


class Guesser(ChatHandler):
    def on_chat_message(self, msg):
        content_type, _, _ = glance(msg)
        if content_type != "text":
            self.sender.sendMessage("Send me a number, please.")
            return
        text = msg["text"].strip()
        if text in ("/start", "/new") or "secret" not in self.vars:
            self.vars["secret"] = random.randint(LOWEST, HIGHEST)
            self.vars["tries"] = 0
            if text in ("/start", "/new"):
                self.sender.sendMessage(f"I'm thinking of a number from {LOWEST} to {HIGHEST}. Guess!")
                return
        try:
            guess = int(text)
        except ValueError:
            self.sender.sendMessage(f"That's not a number. Guess one from {LOWEST} to {HIGHEST}.")
            return
        self.vars["tries"] += 1
        secret = self.vars["secret"]
        if guess < secret:
            self.sender.sendMessage("higher")
        elif guess > secret:
            self.sender.sendMessage("lower")
        else:
            tries = self.vars["tries"]
            self.sender.sendMessage(f"correct! ({tries} {'try' if tries == 1 else 'tries'}) "
                                    "I'm thinking of a new number.")
            self.vars["secret"] = random.randint(LOWEST, HIGHEST)
            self.vars["tries"] = 0
