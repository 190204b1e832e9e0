"""E2E: human handoff with the daemon as a process, against the Bot API double."""

from __future__ import annotations

from conftest import HANDLERS

PERSON, OPERATOR, OTHER_OPERATOR = 111, 900, 901
SUPPORT = HANDLERS / "support"


def sent_records(telegram, chat_id: int) -> list[dict]:
    with telegram.cond:
        return [record for record in telegram.sent if record["chat_id"] == chat_id]


def wait_text(telegram, chat_id: int, piece: str, timeout: float = 20) -> dict:
    """The first message to `chat_id` containing `piece`, waiting for it (bounded)."""
    def found():
        return next((r for r in telegram._sent_by_chat.get(chat_id, ())
                     if piece in (r["text"] or "")), None)
    assert telegram.wait_for(found, timeout), (piece, telegram.sent_to(chat_id))
    with telegram.cond:
        return found()


def as_replied(telegram, record: dict) -> dict:
    """The bot's message as Telegram puts it into an operator's reply (reply_to_message)."""
    return {"message_id": record["message_id"], "from": telegram.bot,
            "chat": {"id": record["chat_id"], "type": "private"}, "text": record["text"]}


def hand_off(telegram, start_daemon, tmp_path, **config):
    daemon = start_daemon(SUPPORT, config={"operators": [OPERATOR, OTHER_OPERATOR], **config})
    telegram.push_message(PERSON, "/start", first_name="Ann", username="ann_k")
    telegram.push_message(PERSON, "Talk to a person", first_name="Ann")
    return daemon


def test_operators_hear_who_asked_and_the_reply_survives_kill_9(telegram, start_daemon, tmp_path):
    daemon = hand_off(telegram, start_daemon, tmp_path)
    wait_text(telegram, PERSON, "getting a person")
    notice = wait_text(telegram, OPERATOR, "asks for a human")
    assert "Ann" in notice["text"] and "chat 111" in notice["text"]
    assert "Talk to a person" in notice["text"]
    wait_text(telegram, OTHER_OPERATOR, "asks for a human")

    telegram.push_message(PERSON, "my parcel is late", first_name="Ann")
    forwarded = wait_text(telegram, OPERATOR, "my parcel is late")
    assert "chat 111" in forwarded["text"]
    # the bot itself does not answer a person who is with a human (no fallback)
    assert not any("can't answer" in text for text in telegram.sent_to(PERSON))

    daemon.kill()  # kill -9 mid-handoff
    daemon = start_daemon(SUPPORT, config={"operators": [OPERATOR, OTHER_OPERATOR]})
    telegram.push_message(OPERATOR, "We are on it, Ann.",
                          reply_to_message=as_replied(telegram, forwarded))
    wait_text(telegram, PERSON, "We are on it, Ann.")
    wait_text(telegram, OPERATOR, "Sent to Ann")
    wait_text(telegram, OTHER_OPERATOR, "answered Ann")

    telegram.push_message(PERSON, "thanks!", first_name="Ann")
    wait_text(telegram, OPERATOR, "thanks!")
    telegram.push_message(OPERATOR, "/unread")
    listing = wait_text(telegram, OPERATOR, "With a human now")
    assert "chat 111): 1 unread" in listing["text"]

    telegram.push_message(OPERATOR, "/done 111")
    wait_text(telegram, PERSON, "back with the bot")
    telegram.push_message(PERSON, "/start", first_name="Ann")
    assert telegram.wait_for(lambda: sum("How can I help" in t for t in telegram.sent_to(PERSON))
                             == 2, 20)
    assert daemon.stop() == 0


def test_reply_command_next_and_done_as_a_reply(telegram, start_daemon, tmp_path):
    hand_off(telegram, start_daemon, tmp_path)
    wait_text(telegram, OPERATOR, "asks for a human")
    telegram.push_message(PERSON, "first", first_name="Ann")
    telegram.push_message(PERSON, "second", first_name="Ann")
    wait_text(telegram, OPERATOR, "second")
    telegram.push_message(OPERATOR, "/next")
    shown = wait_text(telegram, OPERATOR, "unread:")
    assert "• first" in shown["text"] and "• second" in shown["text"]
    telegram.push_message(OPERATOR, "/unread")
    assert "0 unread" in wait_text(telegram, OPERATOR, "With a human now")["text"]

    telegram.push_message(OPERATOR, "/reply 111 Hello from a person")
    wait_text(telegram, PERSON, "Hello from a person")
    telegram.push_message(OPERATOR, "/done", reply_to_message=as_replied(telegram, shown))
    wait_text(telegram, PERSON, "back with the bot")
    wait_text(telegram, OTHER_OPERATOR, "is back with the bot")
    telegram.push_message(OPERATOR, "/reply 111 too late")
    wait_text(telegram, OPERATOR, "not with a human now")
    assert "too late" not in telegram.sent_to(PERSON)


def test_operator_commands_only_from_operator_chats(telegram, start_daemon, tmp_path):
    hand_off(telegram, start_daemon, tmp_path)
    wait_text(telegram, OPERATOR, "asks for a human")
    stranger = 222
    telegram.push_message(stranger, "/reply 111 I am not an operator")
    wait_text(telegram, stranger, "can't answer that myself")  # the bot's own fallback
    telegram.push_message(stranger, "/done 111")
    assert telegram.wait_for(lambda: len(telegram.sent_to(stranger)) == 2, 20)
    telegram.push_message(PERSON, "still here", first_name="Ann")
    wait_text(telegram, OPERATOR, "still here")
    assert "I am not an operator" not in " ".join(telegram.sent_to(PERSON))


def test_nobody_answering_in_time_hands_back_to_the_bot(telegram, start_daemon, tmp_path):
    hand_off(telegram, start_daemon, tmp_path, handoff_timeout=2)
    wait_text(telegram, OPERATOR, "asks for a human")
    wait_text(telegram, PERSON, "nobody could answer in time", timeout=30)
    wait_text(telegram, OPERATOR, "nobody answered in time")
    telegram.push_message(PERSON, "Opening hours", first_name="Ann")
    wait_text(telegram, PERSON, "Monday to Friday")


def test_no_operators_configured_tells_the_person(telegram, start_daemon, tmp_path):
    start_daemon(HANDLERS / "orders")
    telegram.push_message(PERSON, "/start")
    telegram.push_message(PERSON, "Talk to a human")
    wait_text(telegram, PERSON, "nobody is here to answer")
    telegram.push_message(PERSON, "/start")
    assert telegram.wait_for(lambda: sum("What can I do" in t for t in telegram.sent_to(PERSON))
                             == 2, 20)
