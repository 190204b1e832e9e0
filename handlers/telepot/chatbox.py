"""Chatbox: people leave messages with the bot; its owner reads them later.

    chatdaemon telepot chatbox.py TOKEN OWNER_ID

The owner's commands: `/unread` (who wrote, how many) and `/next` (read the next sender's
messages). A newcomer is greeted once. Unread messages are kept in memory, as in
telepot's example: a restart forgets the ones the owner has not read.
"""

import sys
import threading

import telepot
from telepot.delegate import call, create_open, pave_event_space, per_chat_id_except, per_chat_id_in


class UnreadStore:
    def __init__(self):
        self._lock = threading.Lock()
        self._db = {}

    def put(self, msg):
        with self._lock:
            self._db.setdefault(msg['chat']['id'], []).append(msg)

    def pull(self, chat_id):
        with self._lock:
            messages = self._db.pop(chat_id, [])
        return sorted(messages, key=lambda m: (m['date'], m['message_id']))

    def unread_per_chat(self):
        with self._lock:
            return [(chat_id, len(messages)) for chat_id, messages in self._db.items()]


class OwnerHandler(telepot.helper.ChatHandler):
    def __init__(self, seed_tuple, store, **kwargs):
        super().__init__(seed_tuple, **kwargs)
        self._store = store

    def on_chat_message(self, msg):
        content_type, chat_type, chat_id = telepot.glance(msg)
        if content_type != 'text':
            self.sender.sendMessage("I don't understand")
            return
        command = msg['text'].strip().lower()
        if command == '/unread':
            lines = [f'ID: {chat_id}\n{count} unread'
                     for chat_id, count in self._store.unread_per_chat()]
            self.sender.sendMessage('\n'.join(lines) if lines else 'No unread messages')
        elif command == '/next':
            results = self._store.unread_per_chat()
            if not results:
                self.sender.sendMessage('No unread messages')
                return
            sender_id = results[0][0]
            self.sender.sendMessage(f'From ID: {sender_id}')
            for unread in self._store.pull(sender_id):
                self.sender.sendMessage(unread['text'])
        else:
            self.sender.sendMessage("I don't understand")


class MessageSaver(telepot.helper.ChatHandler):
    def __init__(self, seed_tuple, store, **kwargs):
        super().__init__(seed_tuple, **kwargs)
        self._store = store

    def on_chat_message(self, msg):
        content_type, chat_type, chat_id = telepot.glance(msg)
        if content_type != 'text':
            self.sender.sendMessage('Only text, please.')
            return
        self._store.put(msg)
        self.sender.sendMessage('Saved. The owner will read it soon.')


class ChatBox(telepot.DelegatorBot):
    def __init__(self, token, owner_id):
        self._owner_id = owner_id
        self._seen = set()
        self._store = UnreadStore()
        super().__init__(token, [
            (self._is_newcomer, call(self._send_welcome)),
            pave_event_space()(
                per_chat_id_in([owner_id]), create_open, OwnerHandler, self._store, timeout=20),
            pave_event_space()(
                per_chat_id_except([owner_id]), create_open, MessageSaver, self._store, timeout=20),
        ])

    def _is_newcomer(self, msg):
        chat_id = msg['chat']['id']
        if chat_id == self._owner_id or chat_id in self._seen:
            return None
        self._seen.add(chat_id)
        return chat_id

    def _send_welcome(self, seed_tuple):
        chat_id = seed_tuple[1]['chat']['id']
        self.sendMessage(chat_id, 'Hello! Leave a message, the owner reads them all.')


TOKEN = sys.argv[1]
OWNER_ID = int(sys.argv[2])

bot = ChatBox(TOKEN, OWNER_ID)
bot.message_loop(run_forever='Listening ...')
