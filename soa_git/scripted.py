"""A scripted OpenAI-compatible chat server on loopback, standing in for a real model.

The tests and `soa-git demo` point the real `openai` client at it, so everything from HTTP
to retries and usage accounting runs exactly as it would against a real endpoint.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from soa_git.errors import ConfigError

__all__ = ["Responder", "Script", "Scripted", "ScriptedServer"]


@dataclass
class Scripted:
    """One scripted response: an answer, or an HTTP error with an OpenAI-style body."""

    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    usage: bool = True
    cached_tokens: int = 0      # reported as prompt_tokens_details.cached_tokens when not 0


Responder = Callable[[dict], Scripted | str]

# (type, code) of the OpenAI error body, so clients that inspect them see what a real server sends.
_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _tokens(chars: int) -> int:
    """Approximate tokens the way the client estimates them: about four characters each."""
    return math.ceil(chars / 4)


def _text_of(content: Any) -> str:
    """The text of a message's content, which may be a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict)
        )
    return ""


def _last_user_message(request: dict) -> str:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _as_scripted(reply: Scripted | str) -> Scripted:
    return reply if isinstance(reply, Scripted) else Scripted(text=reply)


class Script:
    """Rules: first rule whose regex matches (re.search, with re.S|re.M) the request's LAST user
    message and still has replies left answers with its next reply, consumed in order. No match ->
    status 400 with a message naming the first line of the prompt (so a test fails clearly)."""

    def __init__(self, rules: list[tuple[str, list[Scripted | str]]]) -> None:
        self._rules: list[tuple[re.Pattern[str], list[Scripted]]] = []
        for index, (pattern, replies) in enumerate(rules, start=1):
            try:
                regex = re.compile(pattern, re.S | re.M)
            except re.error as exc:
                raise ConfigError(
                    f"the script's rule {index} has an invalid regex: {exc}"
                ) from None
            self._rules.append((regex, [_as_scripted(reply) for reply in replies]))
        # Sibling agents call the server concurrently; each reply must go to exactly one of them.
        self._lock = threading.Lock()

    @classmethod
    def from_json(cls, data: list[dict]) -> Script:
        """Build a script from `[{"when": regex, "replies": [text | {Scripted fields}]}]`."""
        if not isinstance(data, list):
            raise ConfigError("a script must be a JSON list of rules")
        fields = set(Scripted.__dataclass_fields__)
        rules: list[tuple[str, list[Scripted | str]]] = []
        for index, rule in enumerate(data, start=1):
            if not isinstance(rule, dict) or not isinstance(rule.get("when"), str):
                raise ConfigError(f"the script's rule {index} has no 'when' regex")
            replies = rule.get("replies")
            if not isinstance(replies, list):
                raise ConfigError(f"the script's rule {index} has no 'replies' list")
            parsed: list[Scripted | str] = []
            for reply in replies:
                if isinstance(reply, str):
                    parsed.append(reply)
                elif isinstance(reply, dict) and set(reply) <= fields:
                    parsed.append(Scripted(**reply))
                else:
                    raise ConfigError(
                        f"the script's rule {index} has a reply that is neither text "
                        f"nor an object with only the fields {', '.join(sorted(fields))}"
                    )
            rules.append((rule["when"], parsed))
        return cls(rules)

    def __call__(self, request: dict) -> Scripted:
        prompt = _last_user_message(request)
        with self._lock:
            for regex, replies in self._rules:
                if replies and regex.search(prompt):
                    return replies.pop(0)
        first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
        return Scripted(
            text=f"no scripted reply left for the prompt starting {first_line!r}", status=400
        )


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay silent: a client that hung up (e.g. after its timeout) is not our problem."""


class ScriptedServer:
    """Serves POST /v1/chat/completions and GET /v1/models on 127.0.0.1 from a responder.

    `requests` holds every POST in order as {"body": parsed JSON, "headers": {lower-case
    name: value}, "path": ...}.
    """

    def __init__(self, responder: Responder, *, model: str = "scripted") -> None:
        self.responder = responder
        self.model = model
        self.requests: list[dict] = []
        self._requests_lock = threading.Lock()
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def start(self) -> ScriptedServer:
        if self._server is not None:
            return self
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        # A short poll interval: stop() waits for the loop to notice, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"scripted-server-{port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, entry: dict) -> None:
        with self._requests_lock:
            self.requests.append(entry)

    def _answer(self, request: dict) -> Scripted:
        try:
            return _as_scripted(self.responder(request))
        except Exception as exc:  # the responder is test code; its bug must reach the client
            return Scripted(text=f"the scripted responder failed: {exc!r}", status=500)

    def _completion(self, request: dict, reply: Scripted) -> dict:
        """The Chat Completions body for a successful reply."""
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": "stop",
                }
            ],
        }
        if reply.usage:
            prompt_chars = sum(
                len(_text_of(m.get("content")))
                for m in request.get("messages") or []
                if isinstance(m, dict)
            )
            prompt_tokens = _tokens(prompt_chars)
            completion_tokens = _tokens(len(reply.text or ""))
            body["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if reply.cached_tokens:
                body["usage"]["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        return body


def _error_body(status: int, message: str | None, *, route: bool = False) -> dict:
    default = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = _ERROR_KINDS.get(status, default)
    if route:
        code = "unknown_url"
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    return {"error": {"message": message or phrase, "type": kind, "param": None, "code": code}}


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Stay silent: tests and the demo own the terminal."""

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                # One request per connection: no idle keep-alive thread outlives stop().
                self.send_header("Connection", "close")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout); nothing left to tell it
            self.close_connection = True

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                model = {"id": server.model, "object": "model", "created": 0, "owned_by": "soa-git"}
                self._send(200, {"object": "list", "data": [model]})
            else:
                self._send(404, _error_body(404, f"no route GET {self.path}", route=True))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                request = json.loads(raw or b"{}")
            except ValueError:
                request = None
            # Lower-case names: clients send mixed case, and tests should not have to guess it.
            headers = {name.lower(): value for name, value in self.headers.items()}
            server._record({"body": request, "headers": headers, "path": self.path})
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, _error_body(404, f"no route POST {self.path}", route=True))
                return
            if not isinstance(request, dict):
                self._send(400, _error_body(400, "the request body is not a JSON object"))
                return
            reply = server._answer(request)
            if reply.delay_s > 0:
                time.sleep(reply.delay_s)
            if reply.status >= 400:
                self._send(reply.status, _error_body(reply.status, reply.text), reply.headers)
            else:
                self._send(reply.status, server._completion(request, reply), reply.headers)

    return Handler
