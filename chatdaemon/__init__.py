"""chatdaemon: a Telegram chat-bot daemon that never loses a message.

The public handler API, telepot-style: subclass `ChatHandler`, use `glance()`.
"""

from .chathandler import ChatHandler, glance
from .errors import WaitTooLong

__all__ = ["ChatHandler", "glance", "WaitTooLong", "__version__"]
__version__ = "0.1.0"
