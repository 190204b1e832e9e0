"""A small shop API on 127.0.0.1 for the pipeline's request step: orders, slow and failing answers."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ORDERS = {"42": "shipped", "7": "packing"}


class ShopServer:
    def __init__(self) -> None:
        self.requests: list[str] = []
        self.bodies: list[tuple[str, dict, bytes]] = []  # (method, headers, body) of each request
        self.slow_seconds = 3.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.requests.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                outer.bodies.append((self.command, dict(self.headers), self.rfile.read(length)))
                if self.path.startswith("/slow"):
                    time.sleep(outer.slow_seconds)
                if self.path.startswith("/trickle"):
                    return self._trickle()
                if self.path.startswith("/fail"):
                    return self._send(500, {"error": "down"})
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 2 and parts[0] in ("orders", "slow") and parts[1] in ORDERS:
                    return self._send(200, {"id": parts[1], "status": ORDERS[parts[1]]})
                return self._send(404, {"error": "no such order"})

            do_POST = do_GET  # noqa: N815 - http.server's name

            def _trickle(self):
                """Headers at once, then a byte every 0.3 s for 6 s: each read is quick."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "20")
                self.end_headers()
                for _ in range(20):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.3)

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ShopServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
