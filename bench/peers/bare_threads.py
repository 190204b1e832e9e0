"""chatdaemon's model with nothing else: the per-chat counter in the standard library alone.

Usage: bare_threads.py API_URL TOKEN POLL_TIMEOUT STATE_DIR

One thread long-polls and stores each batch in SQLite (fsync'd) before the next getUpdates
acknowledges it; 64 threads, each owning a share of the chats, answer with http.client over
at most 8 keep-alive connections and commit the chat's count with the update's done mark,
queued commits taken together in one transaction. At start-up it answers what a killed
run left unanswered. What it leaves out is what chatdaemon adds: checking what the Bot API
sends and answers, handlers and templates, retries, rate limits, errors answered to the
chat, reloads, metrics. It measures how fast the model itself goes in Python on this
machine; it is no bot to run."""

import http.client
import json
import queue
import socket
import sqlite3
import sys
import threading
import urllib.parse

THREADS = 64
CONNECTIONS = 8


class Api:
    """Bot API calls over at most CONNECTIONS keep-alive connections."""

    def __init__(self, url: str, token: str):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.prefix = f"{parts.path.rstrip('/')}/bot{token}/"
        self.permits: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(CONNECTIONS):
            self.permits.put(None)
        self.idle: list[http.client.HTTPConnection] = []

    def call(self, method: str, params: dict, timeout: float = 10) -> object:
        body = json.dumps(params).encode()
        self.permits.get()
        try:
            try:
                conn = self.idle.pop()
            except IndexError:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
                conn.connect()
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(timeout)
            conn.request("POST", self.prefix + method, body, {"Content-Type": "application/json"})
            data = conn.getresponse().read()
            self.idle.append(conn)
        finally:
            self.permits.put(None)
        return json.loads(data)["result"]


class Store:
    """The inbox and each chat's count; finishes queued behind the lock commit together."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS inbox(update_id INTEGER PRIMARY KEY,"
                        " chat_id INTEGER, payload TEXT, done INTEGER)")
        self.db.execute("CREATE TABLE IF NOT EXISTS counts(chat_id INTEGER PRIMARY KEY, n INTEGER)")
        self.lock = threading.Lock()
        self.queued: list[tuple[int, int, int]] = []

    def add(self, rows: list[tuple[int, int, str, int]]) -> list[tuple[int, int, str, int]]:
        """Store a batch; the rows that were new (Telegram sends again what it was not told
        of, after a kill)."""
        with self.lock:
            self.db.execute("PRAGMA synchronous=FULL")   # on disk before it is acknowledged
            self.db.execute("BEGIN IMMEDIATE")
            new = [row for row in rows if self.db.execute(
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?)", row).rowcount]
            self.db.execute("COMMIT")
            self.db.execute("PRAGMA synchronous=NORMAL")
        return new

    def finish(self, update_id: int, chat_id: int, count: int) -> None:
        self.queued.append((update_id, chat_id, count))
        with self.lock:
            if not self.queued:
                return   # a finish before ours committed it
            batch, self.queued = self.queued, []
            self.db.execute("BEGIN IMMEDIATE")
            for uid, chat, n in batch:
                self.db.execute("UPDATE inbox SET done = 1 WHERE update_id = ?", (uid,))
                self.db.execute("INSERT OR REPLACE INTO counts VALUES (?, ?)", (chat, n))
            self.db.execute("COMMIT")

    def unanswered(self) -> list[tuple[int, int]]:
        return self.db.execute("SELECT update_id, chat_id FROM inbox WHERE done = 0"
                               " ORDER BY update_id").fetchall()

    def counts(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT chat_id, n FROM counts").fetchall())


def answer(api: Api, store: Store, counts: dict[int, int], inbox: queue.SimpleQueue) -> None:
    while True:
        update_id, chat_id = inbox.get()
        count = counts.get(chat_id, 0) + 1
        counts[chat_id] = count   # each chat has one thread: no other writes this key
        api.call("sendMessage", {"chat_id": chat_id, "text": str(count)})
        store.finish(update_id, chat_id, count)


def main() -> None:
    url, token, timeout, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    api, store = Api(url, token), Store(f"{state}/bare.sqlite3")
    counts = store.counts()
    inboxes = [queue.SimpleQueue() for _ in range(THREADS)]
    for inbox in inboxes:
        threading.Thread(target=answer, args=(api, store, counts, inbox), daemon=True).start()
    for update_id, chat_id in store.unanswered():
        inboxes[chat_id % THREADS].put((update_id, chat_id))
    offset = 0
    while True:
        updates = api.call("getUpdates", {"offset": offset, "timeout": timeout}, timeout + 10)
        if not updates:
            continue
        rows = [(u["update_id"], u["message"]["chat"]["id"], json.dumps(u), 0) for u in updates]
        for update_id, chat_id, _, _ in store.add(rows):
            inboxes[chat_id % THREADS].put((update_id, chat_id))
        offset = updates[-1]["update_id"] + 1


if __name__ == "__main__":
    main()
