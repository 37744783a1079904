"""The scripted server: rule matching and consumption, and the HTTP it speaks."""

from __future__ import annotations

import http.client
import json
import math
import threading
from urllib.parse import urlsplit

import pytest

from soa_git.errors import ConfigError
from soa_git.scripted import Script, Scripted, ScriptedServer


def ask(prompt: str, *earlier: dict) -> dict:
    return {"model": "m", "messages": [*earlier, {"role": "user", "content": prompt}]}


def call(
    server: ScriptedServer, method: str, path: str, body: object = None
) -> tuple[int, dict, dict]:
    """One raw HTTP exchange (http.client, so no proxy settings can interfere)."""
    url = urlsplit(server.base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_first_matching_rule_answers_in_order() -> None:
    script = Script(
        [
            (r"^def parse", ["parse one", Scripted(text="parse two")]),
            (r"parse|emit", ["fallback"]),
        ]
    )
    prompt = "Write this function.\ndef parse(text):\n    ..."
    assert script(ask(prompt)).text == "parse one"
    assert script(ask("def emit(tree): ...")).text == "fallback"
    assert script(ask(prompt)).text == "parse two"
    # Both rules used up: the prompt is named in a 400 so the failing test says which one.
    missed = script(ask(prompt))
    assert missed.status == 400
    assert missed.text == "no scripted reply left for the prompt starting 'Write this function.'"


def test_dot_matches_newlines() -> None:
    script = Script([(r"start.*end", ["matched"])])
    assert script(ask("start\nmiddle\nend")).text == "matched"


def test_only_the_last_user_message_is_matched() -> None:
    script = Script([(r"old", ["wrong"]), (r"new", ["right"])])
    request = ask(
        "new question",
        {"role": "system", "content": "old system"},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
    )
    assert script(request).text == "right"


def test_content_parts_are_matched_as_text() -> None:
    script = Script([(r"hello world", ["parts"])])
    request = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hello "}, {"type": "text", "text": "world"},
    ]}]}
    assert script(request).text == "parts"


def test_replies_go_to_one_caller_each() -> None:
    script = Script([(".*", [str(i) for i in range(200)])])
    answers: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(50):
            text = script(ask("x")).text
            with lock:
                answers.append(text or "")

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers, key=int) == [str(i) for i in range(200)]


def test_from_json() -> None:
    script = Script.from_json(
        [
            {"when": "plan", "replies": [
                "a plan",
                {"status": 429, "headers": {"Retry-After": "0"}},
                {"text": "raw", "usage": False, "delay_s": 0.0},
            ]},
        ]
    )
    assert script(ask("plan it")) == Scripted(text="a plan")
    assert script(ask("plan it")) == Scripted(status=429, headers={"Retry-After": "0"})
    assert script(ask("plan it")) == Scripted(text="raw", usage=False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"when": "x"}, "a script must be a JSON list of rules"),
        ([{"replies": []}], "the script's rule 1 has no 'when' regex"),
        ([{"when": "x", "replies": []}, {"when": "y"}], "the script's rule 2 has no 'replies'"),
        ([{"when": "x", "replies": [{"txt": "typo"}]}], "the script's rule 1 has a reply that"),
        ([{"when": "(", "replies": []}], "the script's rule 1 has an invalid regex"),
    ],
)
def test_from_json_rejects_bad_scripts(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}".replace("(", r"\(")):
        Script.from_json(data)  # type: ignore[arg-type]


def test_completion_shape_and_usage() -> None:
    request = ask("four", {"role": "system", "content": "12345678"})
    with ScriptedServer(lambda r: "hello", model="fake-1") as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.base_url.endswith("/v1")
        status, headers, body = call(server, "POST", "/v1/chat/completions", request)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "fake-1"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ]
    assert body["usage"] == {
        "prompt_tokens": math.ceil(12 / 4),
        "completion_tokens": math.ceil(5 / 4),
        "total_tokens": 3 + 2,
    }
    assert server.requests == [
        {"body": request, "headers": server.requests[0]["headers"], "path": "/v1/chat/completions"}
    ]
    assert server.requests[0]["headers"]["content-type"] == "application/json"


def test_usage_can_be_omitted() -> None:
    with ScriptedServer(lambda r: Scripted(text="x", usage=False)) as server:
        _, _, body = call(server, "POST", "/v1/chat/completions", ask("q"))
    assert "usage" not in body


def test_error_replies_have_openai_bodies_and_headers() -> None:
    reply = Scripted(status=429, headers={"Retry-After": "7"})
    with ScriptedServer(lambda r: reply) as server:
        status, headers, body = call(server, "POST", "/v1/chat/completions", ask("q"))
    assert status == 429
    assert headers["Retry-After"] == "7"
    assert body == {"error": {
        "message": "Too Many Requests", "type": "requests", "param": None,
        "code": "rate_limit_exceeded",
    }}


def test_responder_failure_is_a_500_naming_it() -> None:
    def broken(request: dict) -> str:
        raise KeyError("missing")

    with ScriptedServer(broken) as server:
        status, _, body = call(server, "POST", "/v1/chat/completions", ask("q"))
    assert status == 500
    assert body["error"]["type"] == "server_error"
    assert body["error"]["message"] == "the scripted responder failed: KeyError('missing')"


def test_models_and_unknown_routes() -> None:
    with ScriptedServer(lambda r: "x", model="fake-2") as server:
        status, _, models = call(server, "GET", "/v1/models")
        missing_get, _, _ = call(server, "GET", "/v1/nothing")
        missing_post, _, body = call(server, "POST", "/v1/completions", {"prompt": "x"})
    assert status == 200
    assert [m["id"] for m in models["data"]] == ["fake-2"]
    assert (missing_get, missing_post) == (404, 404)
    assert body["error"]["message"] == "no route POST /v1/completions"
    assert server.requests[0]["path"] == "/v1/completions"


def test_body_that_is_not_json_is_a_400() -> None:
    with ScriptedServer(lambda r: "x") as server:
        url = urlsplit(server.base_url)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5)
        connection.request("POST", "/v1/chat/completions", body="not json")
        response = connection.getresponse()
        body = json.loads(response.read())
        connection.close()
    assert response.status == 400
    assert body["error"]["message"] == "the request body is not a JSON object"
    assert server.requests[0]["body"] is None


def test_stop_frees_the_port_and_is_idempotent() -> None:
    server = ScriptedServer(lambda r: "x").start()
    url = urlsplit(server.base_url)
    server.stop()
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection(url.hostname, url.port, timeout=5).connect()
