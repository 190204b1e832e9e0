"""The read side for people: `chatdaemon status` and `chatdaemon chats`, straight from the database.

The database is opened read-only (a `mode=ro` URI, no write lock of any kind), so both
commands work while the daemon runs and can never change what it stores. Queries go
through sqlite-utils; tables are printed the way its own CLI prints them (tabulate), or
as JSON.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils
import tabulate

from .dbfile import lock_holder
from .errors import ConfigError
from .inbox import decode_payload
from .store import LOCAL_BASE

FAR_FUTURE = "beyond the year 9999"
FAR_PAST = "before the year 1"
LATEST = 5          # quarantined and rejected updates shown by `status`
NAME_WIDTH = 40     # a chat's name is cut to this many characters


def open_read_only(path: str) -> sqlite_utils.Database:
    """The database at `path`, read-only; a clear error when there is none."""
    file = Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f"no database at {file}")
    try:
        connection = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, timeout=5.0)
        db = sqlite_utils.Database(connection, execute_plugins=False)
        if "inbox" not in db.table_names():
            raise ConfigError(f"{file} is not a chatdaemon database (no inbox table)")
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"cannot read database {file}: {exc}") from None
    return db


def read_status(db: sqlite_utils.Database) -> dict[str, Any]:
    """What the database says about the bot: backlog, chats, failures, schedules, last update."""
    inbox = db["inbox"]
    columns = inbox.columns_dict
    quarantine = "quarantined" in columns       # schema 4 and later
    pending = "done = 0" + (" AND quarantined IS NULL" if quarantine else "")
    # a schedule's next tick waits in the inbox before it falls due: not yet a backlog
    pending += " AND (kind != 'schedule' OR received <= (julianday('now') - 2440587.5) * 86400.0)"
    last = next(db.query("SELECT MAX(received) AS last FROM inbox WHERE update_id < ?",
                         [LOCAL_BASE]))["last"]
    path = db.conn.execute("PRAGMA database_list").fetchone()[2]
    return {
        "database": path,
        "daemon_pid": lock_holder(path),   # None: no process holds the database now
        "schema": db.conn.execute("PRAGMA user_version").fetchone()[0],
        "owner": _meta(db),
        "backlog": inbox.count_where(pending),
        "failing": inbox.count_where(pending + " AND attempts > 0") if "attempts" in columns else None,
        "chats": db["conversations"].count if "conversations" in db.table_names() else 0,
        "quarantined": inbox.count_where("quarantined IS NOT NULL") if quarantine else None,
        "latest_quarantined": _latest_quarantined(db) if quarantine else [],
        "rejected": db["rejected"].count if "rejected" in db.table_names() else None,
        "latest_rejected": _latest_rejected(db),
        "schedules": db["schedules"].count if "schedules" in db.table_names() else 0,
        "next_schedule": _next_schedule(db),
        "last_update_received": _when(last),
    }


def _meta(db: sqlite_utils.Database) -> dict[str, str]:
    if "meta" not in db.table_names():
        return {}
    return {row["key"]: row["value"] for row in db["meta"].rows_where(order_by="key")}


def _latest_quarantined(db: sqlite_utils.Database) -> list[dict]:
    rows = db["inbox"].rows_where("quarantined IS NOT NULL", order_by="received DESC", limit=LATEST,
                                  select="update_id, chat_id, kind, attempts, quarantined, received")
    return [{**row, "received": _when(row["received"])} for row in rows]


def _latest_rejected(db: sqlite_utils.Database) -> list[dict]:
    if "rejected" not in db.table_names():
        return []
    rows = db["rejected"].rows_where(order_by="id DESC", limit=LATEST, select="id, received, reason")
    return [{**row, "received": _when(row["received"])} for row in rows]


def _next_schedule(db: sqlite_utils.Database) -> dict | None:
    if "schedules" not in db.table_names():
        return None
    for row in db["schedules"].rows_where(order_by="next_at", limit=1,
                                          select="chat_id, name, every, next_at"):
        return {**row, "next_at": _when(row["next_at"])}
    return None


CHATS_SQL = """
WITH ranked AS (
    SELECT chat_id, received, payload,
           ROW_NUMBER() OVER (PARTITION BY chat_id ORDER BY received DESC, update_id DESC) AS n
    FROM inbox WHERE chat_id IS NOT NULL AND update_id < :local
), last AS (
    SELECT chat_id, received, payload FROM ranked WHERE n = 1
), ids AS (
    SELECT chat_id FROM conversations UNION SELECT chat_id FROM last {members}
)
SELECT ids.chat_id AS id, c.state AS state,
       COALESCE(last.received, c.updated) AS last_seen, last.payload AS payload,
       (SELECT COUNT(*) FROM inbox i WHERE i.chat_id = ids.chat_id AND i.done = 0
        AND (i.kind != 'schedule' OR i.received <= (julianday('now') - 2440587.5) * 86400.0))
        AS pending
FROM ids
LEFT JOIN conversations c ON c.chat_id = ids.chat_id
LEFT JOIN last ON last.chat_id = ids.chat_id
ORDER BY last_seen DESC, id
LIMIT :limit
"""


def list_chats(db: sqlite_utils.Database, limit: int = 100) -> list[dict[str, Any]]:
    """Conversations, the most recently active first: id, name, state, last seen, pending updates.

    The name comes from the chat's last update still in the inbox (handled updates are kept
    48 h), so a chat quiet for longer is listed without one.
    """
    # a group whose bot keeps a conversation per member may have none of its own
    members = "UNION SELECT chat_id FROM member_conversations" \
        if "member_conversations" in db.table_names() else ""
    rows = db.query(CHATS_SQL.format(members=members), {"local": LOCAL_BASE, "limit": limit})
    return [{"id": row["id"], "name": chat_name(row["payload"]), "state": row["state"],
             "last_seen": _when(row["last_seen"]), "pending": row["pending"]} for row in rows]


def chat_name(payload: str | bytes | None) -> str:
    """The chat's title or person's name from a stored update (untrusted: checked, cut, printable)."""
    try:
        update = decode_payload(payload) if payload else {}
    except ValueError:
        return ""
    for value in update.values() if isinstance(update, dict) else ():
        if not isinstance(value, dict):
            continue
        chat = value.get("chat")
        if not isinstance(chat, dict) and isinstance(value.get("message"), dict):
            chat = value["message"].get("chat")
        if isinstance(chat, dict):
            return _printable(_name_of(chat))
    return ""


def _name_of(chat: dict) -> str:
    parts = [chat.get(key) for key in ("title", "first_name", "last_name")]
    name = " ".join(part for part in parts if isinstance(part, str) and part)
    if not name and isinstance(chat.get("username"), str):
        name = "@" + chat["username"]
    return name


def _printable(text: str) -> str:
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= NAME_WIDTH else text[:NAME_WIDTH - 1] + "…"


def _when(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    try:
        return datetime.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        # a schedule every 10^12 days (or a clock once set wildly wrong) lies past the
        # calendar: said so, rather than ending `status` in a traceback
        return FAR_FUTURE if epoch > 0 else FAR_PAST


# -- output ---------------------------------------------------------------------------------

def as_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def format_status(status: dict[str, Any]) -> str:
    """The status as a key/value table, then the latest quarantined and rejected updates."""
    owner = ", ".join(f"{key}={value}" for key, value in status["owner"].items()) or "-"
    schedule = status["next_schedule"]
    rows = [
        ("database", status["database"]),
        ("schema", status["schema"]),
        ("owner", owner),
        ("daemon", f"running as pid {status['daemon_pid']}" if status["daemon_pid"] else "not running"),
        ("backlog", f"{status['backlog']} update(s) waiting"),
        ("failing", _count(status["failing"], "waiting update(s) that failed at least once")),
        ("chats", status["chats"]),
        ("quarantined", _count(status["quarantined"], "update(s) set aside after failing again and again")),
        ("rejected", _count(status["rejected"], "update(s) too malformed to handle")),
        ("schedules", status["schedules"]),
        ("next schedule", f"{schedule['name']} for chat {schedule['chat_id']} at {schedule['next_at']}"
                          if schedule else "-"),
        ("last update received", _ago(status["last_update_received"])),
    ]
    parts = [tabulate.tabulate(rows, tablefmt="plain")]
    if status["latest_quarantined"]:
        parts.append("latest quarantined:\n" + tabulate.tabulate(status["latest_quarantined"],
                                                                  headers="keys"))
    if status["latest_rejected"]:
        parts.append("latest rejected:\n" + tabulate.tabulate(status["latest_rejected"], headers="keys"))
    return "\n\n".join(parts)


def format_chats(chats: list[dict[str, Any]]) -> str:
    if not chats:
        return "no conversations yet"
    return tabulate.tabulate(chats, headers="keys")


def _count(value: int | None, what: str) -> str:
    return "n/a (older schema)" if value is None else f"{value} {what}"


def _ago(iso: str | None) -> str:
    if iso is None:
        return "never"
    if iso in (FAR_FUTURE, FAR_PAST):
        return iso
    seconds = time.time() - datetime.datetime.fromisoformat(iso).timestamp()
    if seconds < -60:   # stored before the clock was set back (or while it ran ahead)
        return f"{iso} ({_duration(-seconds)} in the future: the clock was set back since)"
    return f"{iso} ({_duration(seconds)} ago)"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"
