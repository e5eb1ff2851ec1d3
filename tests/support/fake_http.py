"""A scripted HTTP server on 127.0.0.1, for SDKs that respx cannot intercept (anthropic)."""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHTTPServer:
    """Answers each request with the next scripted (status, headers, body) and records it."""

    def __init__(self):
        self.responses: deque[tuple[int, dict, bytes]] = deque()
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
                )
                status, headers, payload = (
                    server.responses.popleft() if server.responses else (500, {}, b"{}")
                )
                self.send_response(status)
                for name, value in {"content-type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, status: int = 200, body: dict | None = None, **headers: str) -> None:
        self.responses.append((status, headers, json.dumps(body or {}).encode()))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
