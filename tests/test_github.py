"""The GitHub client over loopback HTTP: the token never leaves the API's origin, and rate limits
and server errors are retried as GitHub asks."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from soa_git.github import GitHub, GitHubError

TOKEN = "ghp-loopback-token-0f9e"


class Server:
    """Answers each request with the next (status, headers, JSON); records what it got."""

    def __init__(self, *answers: tuple[int, dict, object]) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.requests.append({"path": self.path, "at": time.monotonic(),
                                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, headers, data = (server.answers.pop(0) if server.answers
                                         else (200, {}, {"ok": True}))
                payload = json.dumps(data).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(*answers) -> Server:
        server = Server(*answers)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_to_another_host_does_not_carry_the_token(servers, status):
    elsewhere = servers((200, {}, {"number": 1}))
    api = servers((status, {"Location": f"{elsewhere.url}/repos/o/r/pulls"}, {}))
    assert GitHub(TOKEN, api.url).request("GET", "/repos/o/r/pulls") == {"number": 1}
    assert api.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "authorization" not in elsewhere.requests[0]["headers"]


def test_a_redirect_within_the_api_keeps_the_token(servers):
    api = servers((301, {"Location": "/repositories/42/pulls"}, {}), (200, {}, []))
    assert GitHub(TOKEN, api.url).request("GET", "/repos/o/old-name/pulls") == []
    assert [r["path"] for r in api.requests] == ["/repos/o/old-name/pulls",
                                                 "/repositories/42/pulls"]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in api.requests)


def test_server_errors_are_retried(servers):
    api = servers((502, {}, {}), (503, {}, {}), (200, {}, {"number": 7}))
    assert GitHub(TOKEN, api.url, backoff_s=0.01).request("GET", "/x") == {"number": 7}
    assert len(api.requests) == 3


@pytest.mark.parametrize("headers", [{"Retry-After": "1"},
                                     {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "+"}])
def test_rate_limits_wait_as_github_asks(servers, headers):
    status = 429 if "Retry-After" in headers else 403
    if "x-ratelimit-reset" in headers:
        headers = {**headers, "x-ratelimit-reset": str(int(time.time()) + 2)}
    api = servers((status, headers, {"message": "API rate limit exceeded"}), (200, {}, {}))
    GitHub(TOKEN, api.url, backoff_s=0.01).request("GET", "/x")
    assert len(api.requests) == 2
    assert api.requests[1]["at"] - api.requests[0]["at"] >= 0.9


def test_a_long_rate_limit_is_reported_not_waited(servers):
    api = servers((429, {"Retry-After": "3600"}, {"message": "slow down"}))
    with pytest.raises(GitHubError, match="rate limit stopped GET /x.*try again later"):
        GitHub(TOKEN, api.url).request("GET", "/x")
    assert len(api.requests) == 1


def test_other_client_errors_are_not_retried(servers):
    api = servers((404, {}, {"message": "Not Found"}))
    with pytest.raises(GitHubError, match="found nothing"):
        GitHub(TOKEN, api.url, backoff_s=0.01).request("GET", "/x")
    assert len(api.requests) == 1
