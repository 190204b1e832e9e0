"""The per-chat counter in pyTelegramBotAPI's idiom: a threaded TeleBot, a message_handler,
the count in a dict (memory). Usage: telebot_counter.py API_URL TOKEN POLL_TIMEOUT"""

import sys
import threading

import telebot
from telebot import apihelper

counts: dict[int, int] = {}
lock = threading.Lock()


def main() -> None:
    api_url, token, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    apihelper.API_URL = api_url + "/bot{0}/{1}"
    bot = telebot.TeleBot(token)

    @bot.message_handler(func=lambda message: True)
    def count(message):
        with lock:
            counts[message.chat.id] = counts.get(message.chat.id, 0) + 1
            total = counts[message.chat.id]
        bot.send_message(message.chat.id, str(total))

    bot.infinity_polling(timeout=timeout + 5, long_polling_timeout=timeout,
                         allowed_updates=["message"])


if __name__ == "__main__":
    main()
