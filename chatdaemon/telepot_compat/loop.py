"""telepot.loop: MessageLoop starts the daemon with the program's handler."""

from __future__ import annotations

from typing import Any

from .exception import Unsupported


class MessageLoop:
    """`MessageLoop(bot, handle).run_as_thread()`, or `.run_forever()`."""

    def __init__(self, bot: Any, handle: Any = None):
        self._bot = bot
        self._handle = handle

    def run_as_thread(self, relax: float = 0.1, offset: Any = None, timeout: int = 20,
                      allowed_updates: Any = None) -> None:
        self._bot.runtime.start_loop(self._bot, self._handle, allowed_updates, block=False)

    def run_forever(self, relax: float = 0.1, offset: Any = None, timeout: int = 20,
                    allowed_updates: Any = None) -> None:
        self._bot.runtime.start_loop(self._bot, self._handle, allowed_updates, block=True)


class Webhook:
    """Not provided: chatdaemon polls Telegram itself, and keeps every update durable first."""

    def __init__(self, *args: Any, **kwargs: Any):
        raise Unsupported("telepot.loop.Webhook: use MessageLoop; chatdaemon polls Telegram")


OrderedWebhook = Webhook
