"""A plain message_loop(handle) program: keyboards, a photo from disk, file downloads.

    chatdaemon telepot photo.py TOKEN PHOTO SAVE_DIR

/start shows a reply keyboard; /photo sends PHOTO (uploaded from disk); /menu shows
inline buttons, and a press edits that message; a photo sent to the bot is saved in
SAVE_DIR. Anything else is counted back as a number.
"""

import os
import sys
import time

import telepot
from telepot.namedtuple import InlineKeyboardButton, InlineKeyboardMarkup, KeyboardButton, ReplyKeyboardMarkup

TOKEN, PHOTO, SAVE_DIR = sys.argv[1], sys.argv[2], sys.argv[3]


def on_chat_message(msg):
    content_type, chat_type, chat_id = telepot.glance(msg)
    if content_type == 'photo':
        biggest = msg['photo'][-1]
        path = os.path.join(SAVE_DIR, biggest['file_id'] + '.png')
        bot.download_file(biggest['file_id'], path)
        bot.sendMessage(chat_id, f'Saved {os.path.getsize(path)} bytes')
        return
    if content_type != 'text':
        bot.sendMessage(chat_id, 'Send /photo')
        return
    text = msg['text']
    if text == '/start':
        keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text='/photo'),
                                                  KeyboardButton(text='/menu')]],
                                       one_time_keyboard=True)
        bot.sendMessage(chat_id, 'What shall I do?', reply_markup=keyboard)
    elif text == '/photo':
        with open(PHOTO, 'rb') as f:
            bot.sendPhoto(chat_id, f, caption='A picture from disk')
    elif text == '/menu':
        markup = InlineKeyboardMarkup(inline_keyboard=[[
            InlineKeyboardButton(text='Red', callback_data='red'),
            InlineKeyboardButton(text='Blue', callback_data='blue'),
        ]])
        bot.sendMessage(chat_id, 'Pick a colour', reply_markup=markup)
    else:
        bot.sendMessage(chat_id, len(text))


def on_callback_query(msg):
    query_id, from_id, data = telepot.glance(msg, flavor='callback_query')
    bot.answerCallbackQuery(query_id, text=f'You chose {data}')
    bot.editMessageText(telepot.origin_identifier(msg), f'Colour: {data}')


bot = telepot.Bot(TOKEN)
me = bot.getMe()
print(f"I am @{me['username']}")
bot.message_loop({'chat': on_chat_message, 'callback_query': on_callback_query})
print('Listening ...')

while 1:
    time.sleep(10)
