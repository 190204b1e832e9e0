"""The per-chat counter in python-telegram-bot's idiom: an Application, a MessageHandler,
the count in context.chat_data (memory). Usage: ptb_counter.py API_URL TOKEN POLL_TIMEOUT"""

import sys

from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters


async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    context.chat_data["count"] = context.chat_data.get("count", 0) + 1
    await update.effective_chat.send_message(str(context.chat_data["count"]))


def main() -> None:
    api_url, token, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    application = (Application.builder().token(token).base_url(f"{api_url}/bot")
                   .base_file_url(f"{api_url}/file/bot").build())
    application.add_handler(MessageHandler(filters.ALL, count))
    application.run_polling(timeout=timeout, allowed_updates=["message"])


if __name__ == "__main__":
    main()
