"""A loopback stand-in for GitHub's REST API: answers each request with the next scripted answer
and records what it got. The GitHub client's tests and `soa-git pr`'s both talk to it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# What the fake answers once its script is used up: a test that asks more than it scripted fails.
UNSCRIPTED = (500, {"message": "no answer scripted"})


class FakeGitHub:
    """Each answer is (status, JSON) or (status, JSON, headers). Each request is recorded as
    method, path, query, headers (lower-case names), JSON body and monotonic arrival time."""

    def __init__(self, *answers: tuple) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                fake.requests.append({
                    "method": self.command, "path": url.path, "query": parse_qs(url.query),
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": json.loads(raw) if raw else None, "at": time.monotonic()})
                status, data, *headers = fake.answers.pop(0) if fake.answers else UNSCRIPTED
                payload = json.dumps(data).encode()
                self.send_response(status)
                for name, value in (headers[0] if headers else {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
