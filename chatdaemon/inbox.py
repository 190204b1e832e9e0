"""The inbox: what an incoming update is to chatdaemon, and the table that keeps it.

Parsing turns Telegram's update dicts into inbox rows (kind, seed = the chat it belongs
to), or into rejections with a reason. An update is untrusted input: every field is
checked before it is used, and nothing here raises on any JSON value.

The table's SQL lives here too, as functions of a connection the store hands in inside
its transaction (`Store.add_updates`, `pending`, `finish`, … call them); this module opens
no transaction and takes no lock of its own. Telegram's updates are kept deflated
(`encode_payload`), the rows the daemon makes as JSON text (`LOCAL_FIELD` reads them in SQL).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Rows the daemon makes itself (hook notifications, schedule ticks) take ids from here up,
# far above Telegram's update ids, so they share the inbox's order and guarantees.
LOCAL_BASE = 1 << 40

# Done inbox rows are kept this long so re-deliveries are still recognised: Telegram keeps
# an unconfirmed update for at most 24 hours.
KEEP_DONE_SECONDS = 48 * 3600

# Telegram re-sends only an update whose batch was never acknowledged, and the poller
# acknowledges a batch with its next getUpdates, seconds after the batch's commit. A
# database over its size cap may lose handled rows down to this age: a re-delivery then
# needs the daemon to have been cut off from Telegram for longer and to restart.
KEEP_DONE_AT_LEAST_SECONDS = 3600


# Telegram's updates are stored deflated, with a preset dictionary of their usual keys: a
# 300-byte text message keeps about 60 bytes, so several more rows share each page a commit
# writes to the SD card. The first byte names the format. A row written in a format stays
# readable: PAYLOAD_DICTIONARY never changes (a better one takes a new format byte). Rows
# the daemon makes itself (hooks, ticks, handoffs) stay JSON text: SQL reads their fields.
DEFLATED = b"\x01"
PAYLOAD_WINDOW_BITS = -10   # raw deflate, a 1 KiB window: updates are small, and so is the state
PAYLOAD_DICTIONARY = (
    b'"entities":[{"offset":0,"length":,"type":"bot_command"}],"reply_to_message":'
    b'{"photo":[{"file_id":"","file_unique_id":"","file_size":,"width":,"height":}],"caption":"'
    b'"edit_date":,"my_chat_member":{"old_chat_member":{"status":"member","user":'
    b'"new_chat_member":{"status":"kicked","until_date":0},"is_premium":true,'
    b'"group","supergroup","title":"","all_members_are_administrators":true},'
    b'{"update_id":,"callback_query":{"id":"","chat_instance":"","data":"",'
    b'"message":{"message_id":,"from":{"id":,"is_bot":false,"first_name":"","last_name":"",'
    b'"username":"","language_code":"en"},"chat":{"id":,"first_name":"","last_name":"",'
    b'"username":"","type":"private"},"date":1700000000,"text":"'
)


# made once: json.dumps with arguments builds an encoder per call
_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_payload(update: dict) -> bytes:
    """An update as the inbox stores it: compact JSON, deflated (see DEFLATED)."""
    text = _COMPACT_JSON.encode(update).encode()
    deflate = zlib.compressobj(2, zlib.DEFLATED, PAYLOAD_WINDOW_BITS, 1, zlib.Z_DEFAULT_STRATEGY,
                               PAYLOAD_DICTIONARY)
    return DEFLATED + deflate.compress(text) + deflate.flush()


def without_lone_surrogates(value: Any) -> Any:
    """A copy of a JSON value whose strings (keys too) have U+FFFD for each lone surrogate.

    JSON may escape half of a pair ("\\ud83d" alone): Python reads it, UTF-8 cannot hold it,
    so such an update could never be stored. Walked one container at a time (no recursion).
    """
    def copied(child: Any) -> Any:
        if isinstance(child, str):
            return child.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return {} if isinstance(child, dict) else [] if isinstance(child, list) else child

    top = copied(value)
    todo = [(value, top)] if isinstance(value, dict | list) else []
    while todo:
        source, target = todo.pop()
        for key, child in (source.items() if isinstance(source, dict) else enumerate(source)):
            new = copied(child)
            if isinstance(target, dict):
                target[copied(key)] = new
            else:
                target.append(new)
            if isinstance(child, dict | list):
                todo.append((child, new))
    return top


def copied(value: Any) -> Any:
    """A handler's own copy of a payload (JSON: dicts and lists over immutable leaves), at a
    quarter of copy.deepcopy's cost; the depth is bounded at intake (MAX_DEPTH)."""
    if isinstance(value, dict):
        return {key: copied(child) for key, child in value.items()}
    if isinstance(value, list):
        return [copied(child) for child in value]
    return value


def decode_payload(stored: str | bytes) -> dict:
    """A stored payload back as the object it was: deflated bytes or JSON text.

    Raises ValueError for bytes that do not inflate (a damaged row) or text that is not JSON.
    """
    if isinstance(stored, bytes) and stored[:1] == DEFLATED:
        inflate = zlib.decompressobj(PAYLOAD_WINDOW_BITS, zdict=PAYLOAD_DICTIONARY)
        try:
            stored = inflate.decompress(stored[1:]) + inflate.flush()
        except zlib.error as exc:
            raise ValueError(f"a stored update does not inflate: {exc}") from None
    if isinstance(stored, bytes):   # ours, in UTF-8: json.loads would guess the encoding
        stored = stored.decode()    # (a UnicodeDecodeError is a ValueError)
    value = json.loads(stored)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class InboxRow:
    update_id: int
    chat_id: int | None
    kind: str
    payload: dict
    attempts: int = 0   # times handling it was cut short by a crash, a kill or a hang

# Update kinds that carry a chat: the chat id is the seed that picks the delegate.
_CHAT_KINDS = (
    "message", "edited_message", "channel_post", "edited_channel_post",
    "business_message", "edited_business_message", "my_chat_member", "chat_member",
    "chat_join_request", "message_reaction", "message_reaction_count", "chat_boost",
    "removed_chat_boost",
)

# What the poller asks Telegram for on the first getUpdates of every run.
DEFAULT_ALLOWED_UPDATES = ("message", "edited_message", "callback_query", "my_chat_member")

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1   # what SQLite's INTEGER holds
MAX_DEPTH = 64   # real updates nest about 6 deep; the templates and the store recurse
MAX_REJECTED_TEXT = 64 * 1024   # how much of a rejected update is kept for a person to read


@dataclass(frozen=True)
class Rejection:
    """An update that cannot be an inbox row: why, and the update as it came."""

    reason: str
    update: object
    update_id: int | None   # its usable id, when it has one (the offset may still move past it)

    def payload_text(self) -> str:
        """The update as JSON for the `rejected` table, cut at MAX_REJECTED_TEXT characters."""
        try:
            text = json.dumps(self.update)
        except (ValueError, TypeError, RecursionError):
            text = f"<a {type(self.update).__name__} that cannot be written as JSON>"
        if len(text) > MAX_REJECTED_TEXT:
            text = text[:MAX_REJECTED_TEXT] + f"... <{len(text) - MAX_REJECTED_TEXT} more characters>"
        return text


class _Malformed(Exception):
    """Raised inside this module while reading an update; becomes a Rejection."""


def kind_of(update: dict) -> str:
    """The update's kind: the one key besides update_id ('message', 'callback_query', …)."""
    for key in update:
        if key != "update_id":
            return str(key)
    return "empty"


def usable_update_id(update: object) -> int | None:
    """The update's id when it can acknowledge it: an int (not a bool), 0 ≤ id < 2**63 - 1.

    A negative offset means "keep only the last N updates" to Telegram, and id + 1 must
    still fit in int64, so ids outside that range can never be acknowledged one by one.
    """
    update_id = update.get("update_id") if isinstance(update, dict) else None
    if isinstance(update_id, int) and not isinstance(update_id, bool) \
            and 0 <= update_id < INT64_MAX:
        return update_id
    return None


def chat_of(update: dict) -> int | None:
    """The chat id an update belongs to, or None when it belongs to no chat (or is malformed)."""
    try:
        return _chat_id(update)
    except _Malformed:
        return None


def parse_update(update: object) -> InboxRow | Rejection:
    """An inbox row for an update that can be one; otherwise a Rejection saying why."""
    update_id = usable_update_id(update)
    try:
        if not isinstance(update, dict):
            raise _Malformed(f"the update is a {type(update).__name__}, not an object")
        if update_id is None:
            raise _Malformed(f"update_id {_show(update.get('update_id'))} is not an id")
        if update_id >= LOCAL_BASE:   # the inbox numbers its own rows (hooks, schedules) from here
            raise _Malformed(f"update_id {update_id} is in the range kept for local rows")
        _check_depth(update)
        return InboxRow(update_id, _chat_id(update), kind_of(update), update)
    except _Malformed as exc:
        return Rejection(str(exc), update, update_id)


def to_row(update: object) -> InboxRow | None:
    """An inbox row for a well-formed update; None when it cannot be one."""
    parsed = parse_update(update)
    return parsed if isinstance(parsed, InboxRow) else None


def payload_of(row: InboxRow) -> dict:
    """The object a handler receives: the message, callback query, … inside the update."""
    body = row.payload.get(row.kind)
    return body if isinstance(body, dict) else {}


def _chat_id(update: dict) -> int | None:
    kind = kind_of(update)
    if kind in _CHAT_KINDS:
        chat = _object(update.get(kind), kind).get("chat")
        where = f"{kind}.chat"
    elif kind == "callback_query":
        query = _object(update.get(kind), kind)
        message = query.get("message")
        if message is None:   # a press on an inline message: the chat is the user's
            chat, where = query.get("from"), "callback_query.from"
        else:
            chat = _object(message, "callback_query.message").get("chat")
            where = "callback_query.message.chat"
    else:
        return None
    if chat is None:
        return None
    return _id_in(_object(chat, where), where)


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _Malformed(f"{where} is a {type(value).__name__}, not an object")
    return value


def _id_in(chat: dict, where: str) -> int:
    chat_id = chat.get("id")
    if isinstance(chat_id, bool) or not isinstance(chat_id, int) \
            or not INT64_MIN <= chat_id <= INT64_MAX:
        raise _Malformed(f"{where}.id {_show(chat_id)} is not a chat id")
    return chat_id


def _check_depth(update: dict) -> None:
    """Refuse nesting deeper than MAX_DEPTH, walking one level at a time (no recursion)."""
    level: list[dict | list] = [update]
    for _ in range(MAX_DEPTH):
        below: list[dict | list] = []
        for value in level:
            for child in value.values() if isinstance(value, dict) else value:
                if isinstance(child, dict | list):
                    below.append(child)
        if not below:
            return
        level = below
    raise _Malformed(f"the update is nested deeper than {MAX_DEPTH} levels")


def _show(value: object) -> str:
    """A short, safe rendering of a bad value for a log line."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"(a {value.bit_length()}-bit int)"
    text = repr(value) if isinstance(value, int | float | str | bool | None) \
        else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# -- the table ----------------------------------------------------------------------------
# Every function below runs on the store's connection, inside the transaction (or under the
# lock) the store holds for it.

def insert_updates(db: sqlite3.Connection, rows: Sequence[InboxRow], done: Iterable[int],
                   now: float) -> list[InboxRow]:
    """Insert a getUpdates batch; return the rows that were new.

    Duplicates are recognised by their exact update_id (the primary key), never by a
    high-water mark: update ids may jump backwards after a quiet week.
    """
    done = set(done)
    new: list[InboxRow] = []
    for row in rows:
        is_done = row.update_id in done
        cur = db.execute(
            "INSERT OR IGNORE INTO inbox(update_id, chat_id, kind, payload, done,"
            " received, handled) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.update_id, row.chat_id, row.kind, encode_payload(row.payload),
             int(is_done), now, now if is_done else None),
        )
        if cur.rowcount:
            new.append(row)
    return new


def insert_rejected(db: sqlite3.Connection, rejected: Sequence[tuple[str, str]], now: float) -> None:
    """Keep each rejected update once: a batch Telegram sends again (it was not acknowledged
    before a restart) brings the same ones back, as it brings back inbox rows."""
    if not rejected:
        return   # the usual batch: no statement at all
    db.executemany(
        "INSERT INTO rejected(received, reason, payload) SELECT ?, ?, ? WHERE NOT EXISTS"
        " (SELECT 1 FROM rejected WHERE reason = ? AND payload = ?)",
        [(now, reason, payload, reason, payload) for reason, payload in rejected])


def next_local_id(db: sqlite3.Connection) -> int:
    (top,) = db.execute("SELECT MAX(update_id) FROM inbox WHERE update_id >= ?",
                        (LOCAL_BASE,)).fetchone()
    return LOCAL_BASE if top is None else top + 1


def insert_local(db: sqlite3.Connection, items: Sequence[tuple[int, str, dict]],
                 now: float) -> list[int]:
    """Queue (chat_id, kind, payload) rows the daemon made, numbered after the last one."""
    first = next_local_id(db)
    ids = list(range(first, first + len(items)))
    db.executemany(
        "INSERT INTO inbox(update_id, chat_id, kind, payload, done, received)"
        " VALUES (?, ?, ?, ?, 0, ?)",
        [(uid, chat_id, kind, json.dumps({kind: payload}), now)
         for uid, (chat_id, kind, payload) in zip(ids, items, strict=True)],
    )
    return ids


def last_update_id(db: sqlite3.Connection) -> int | None:
    """The highest Telegram-style update id stored (daemon-made rows excluded)."""
    (top,) = db.execute("SELECT MAX(update_id) FROM inbox WHERE update_id < ?",
                        (LOCAL_BASE,)).fetchone()
    return top


# A field of a daemon-made row's payload (JSON text), for SQL; NULL for a stored update (deflated
# bytes, which json_extract would refuse), whatever order SQLite tests a query's conditions in.
LOCAL_FIELD = "CASE WHEN typeof(payload) = 'text' THEN json_extract(payload, ?) END"

# A schedule's next tick waits in the inbox before it falls due, `received` set to when it
# does (schedules.py); until then it is no pending row. Only ticks: a row from Telegram or
# a hook is pending whatever the clock says, so a clock set back hides none of them.
DUE = "(kind != 'schedule' OR received <= ?)"


def pending_chats(db: sqlite3.Connection, now: float) -> list[int]:
    """Chats with unhandled updates, the chat with the oldest one first."""
    rows = db.execute(
        f"SELECT chat_id FROM inbox WHERE done = 0 AND chat_id IS NOT NULL AND {DUE}"
        " GROUP BY chat_id ORDER BY MIN(received), MIN(update_id)", (now,)
    ).fetchall()
    return [chat_id for (chat_id,) in rows]


def pending(db: sqlite3.Connection, chat_id: int, limit: int, now: float) -> list[InboxRow]:
    """The chat's unhandled updates in update_id order."""
    rows = db.execute(
        "SELECT update_id, kind, payload, attempts FROM inbox WHERE chat_id = ? AND done = 0"
        f" AND {DUE} ORDER BY update_id LIMIT ?",
        (chat_id, now, limit),
    ).fetchall()
    return [InboxRow(uid, chat_id, kind, decode_payload(payload), attempts)
            for uid, kind, payload, attempts in rows]


def has_pending(db: sqlite3.Connection, chat_id: int, kind: str, name_path: str, name: str) -> bool:
    """Whether the chat has an unhandled row of `kind` whose payload names `name` at `name_path`."""
    return db.execute(
        f"SELECT 1 FROM inbox WHERE chat_id = ? AND kind = ? AND done = 0 AND {LOCAL_FIELD} = ?",
        (chat_id, kind, name_path, name)
    ).fetchone() is not None


def is_done(db: sqlite3.Connection, update_id: int) -> bool:
    row = db.execute("SELECT done FROM inbox WHERE update_id = ?", (update_id,)).fetchone()
    return bool(row and row[0])


def backlog(db: sqlite3.Connection, now: float) -> int:
    (count,) = db.execute(f"SELECT COUNT(*) FROM inbox WHERE done = 0 AND {DUE}",
                          (now,)).fetchone()
    return count


def mark_done(db: sqlite3.Connection, update_id: int, now: float) -> None:
    db.execute("UPDATE inbox SET done = 1, handled = ? WHERE update_id = ?", (now, update_id))


def prune(db: sqlite3.Connection, before: float) -> int:
    """Delete handled rows handled before `before`; unhandled rows are never pruned."""
    cur = db.execute("DELETE FROM inbox WHERE done = 1 AND handled < ?", (before,))
    return cur.rowcount


def row_count(db: sqlite3.Connection) -> int:
    (count,) = db.execute("SELECT COUNT(*) FROM inbox").fetchone()
    return count


def prune_oldest(db: sqlite3.Connection, received_before: float, count: int) -> int:
    """Delete up to `count` handled rows received before `received_before`, oldest first."""
    cur = db.execute(
        "DELETE FROM inbox WHERE update_id IN (SELECT update_id FROM inbox"
        " WHERE done = 1 AND received < ? ORDER BY received LIMIT ?)", (received_before, count))
    return cur.rowcount


# each chat's first pending row (a schedule tick waiting for its time is not pending yet)
_FIRST_PENDING = ("SELECT MIN(update_id) FROM inbox WHERE done = 0 AND chat_id IS NOT NULL"
                  f" AND {DUE} GROUP BY chat_id")


def count_interrupted(db: sqlite3.Connection, now: float) -> int:
    """One more attempt for each chat's first pending row (the one in flight at a crash).

    Only at a first unclean end: when one of those rows was counted before, the daemon is
    in a crash loop and counting every chat's first row again would set innocent updates
    aside with the guilty one; then `repeat_suspects` are started one at a time instead,
    each counted as it starts."""
    if repeat_suspects(db, now):
        return 0
    cur = db.execute(f"UPDATE inbox SET attempts = attempts + 1 WHERE update_id IN ({_FIRST_PENDING})",
                     (now,))
    return cur.rowcount


def repeat_suspects(db: sqlite3.Connection, now: float) -> list[int]:
    """First pending rows already cut short before: one of them keeps ending the daemon."""
    return [update_id for (update_id,) in db.execute(
        f"SELECT update_id FROM inbox WHERE update_id IN ({_FIRST_PENDING}) AND attempts > 0"
        " ORDER BY update_id", (now,))]


def add_attempt(db: sqlite3.Connection, update_id: int) -> None:
    db.execute("UPDATE inbox SET attempts = attempts + 1 WHERE update_id = ?", (update_id,))


def quarantine(db: sqlite3.Connection, update_id: int, reason: str, now: float) -> None:
    db.execute("UPDATE inbox SET done = 1, handled = ?, quarantined = ? WHERE update_id = ?",
               (now, reason, update_id))


def quarantined_count(db: sqlite3.Connection) -> int:
    (count,) = db.execute("SELECT COUNT(*) FROM inbox WHERE quarantined IS NOT NULL").fetchone()
    return count
