"""`message.text` in a template is the text the handlers matched: the message's text, or a
photo's or document's caption, or empty (a sticker, a location). It was undefined without a
text, so `echo: {{ message.text }}` answered a captioned photo or a sticker with the error text."""

from __future__ import annotations

from test_pipeline import CHAT, Chat, bot


def send(chat: Chat, **message: object) -> str | None:
    before = len(chat.sender.texts())
    chat.handler.on_update("message", {"message_id": 1, "chat": {"id": CHAT, "type": "private"},
                                       "from": {"id": 5, "first_name": "Ada"}, **message})
    texts = chat.sender.texts()
    return texts[-1] if len(texts) > before else None


def echo_bot() -> Chat:
    return Chat(bot([{"name": "question", "pattern": "(?s)^(?!/).+",
                      "response": "noted: {{ message.text }}",
                      "save": {"question": "{{ message.text }}"}}],
                    fallback="echo: [{{ message.text }}]"))


def test_a_captioned_photo_is_read_by_its_caption():
    chat = echo_bot()
    photo = [{"file_id": "AgAD", "file_unique_id": "u", "width": 1, "height": 1}]
    assert send(chat, photo=photo, caption="my printer is broken") == "noted: my printer is broken"
    assert chat.conversation.vars == {"question": "my printer is broken"}


def test_a_sticker_is_empty_text_and_gets_the_fallback():
    chat = echo_bot()
    assert send(chat, sticker={"file_id": "CAAD", "emoji": "👍"}) == "echo: []"


def test_a_text_that_is_not_a_string_is_read_as_no_text():
    chat = echo_bot()
    assert send(chat, text=12345) == "echo: []"
    assert send(chat, text=None, caption="fine") == "noted: fine"


def test_a_message_with_text_keeps_it_as_it_came():
    chat = echo_bot()
    assert chat.say("hello") == "noted: hello"
