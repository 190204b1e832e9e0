"""The per-chat counter in aiogram's idiom: a Dispatcher, a message handler, the count in the
chat's FSM data (MemoryStorage). Usage: aiogram_counter.py API_URL TOKEN POLL_TIMEOUT [sequential]

By default aiogram handles each update as a task of its own, so a chat's replies can come
out of order; `sequential` (handle_as_tasks=False) handles one update after the other, which
keeps the order, as chatdaemon does."""

import asyncio
import sys

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.fsm.context import FSMContext
from aiogram.types import Message

dispatcher = Dispatcher()


@dispatcher.message()
async def count(message: Message, state: FSMContext) -> None:
    data = await state.get_data()
    total = data.get("count", 0) + 1
    await state.update_data(count=total)
    await message.answer(str(total))


async def main() -> None:
    api_url, token, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sequential = sys.argv[4:] == ["sequential"]
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_url))
    bot = Bot(token, session=session)
    await dispatcher.start_polling(bot, polling_timeout=timeout, allowed_updates=["message"],
                                   handle_as_tasks=not sequential)


if __name__ == "__main__":
    asyncio.run(main())
