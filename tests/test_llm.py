"""OpenAIChat driven through the real `openai` client against the loopback scripted server."""

from __future__ import annotations

import math
import socket
import threading
import time

import pytest

from soa_git.errors import BudgetExhausted, ModelError
from soa_git.llm import Reply, TokenLedger, Usage
from soa_git.openai_chat import OpenAIChat
from soa_git.scripted import Script, Scripted, ScriptedServer

KEY = "sk-test-secret-key-123"
PROMPT = [
    {"role": "system", "content": "You write Python."},
    {"role": "user", "content": "Implement add(a, b)."},
]
PROMPT_CHARS = sum(len(m["content"]) for m in PROMPT)


def chat(
    server: ScriptedServer | str, ledger: TokenLedger | None = None, **options: object
) -> OpenAIChat:
    base_url = server if isinstance(server, str) else server.base_url
    settings: dict = {"max_attempts": 5, "backoff_s": 0.01, "timeout_s": 5.0, **options}
    return OpenAIChat(
        model="test-model",
        base_url=base_url,
        api_key=settings.pop("api_key", KEY),
        ledger=ledger or TokenLedger(),
        **settings,
    )


def replies(*items: Scripted | str) -> Script:
    return Script([(".*", list(items))])


def free_port() -> int:
    """A port nothing listens on: bound to get a number, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_success_records_usage_per_agent() -> None:
    ledger = TokenLedger()
    with ScriptedServer(replies("def add(a, b):\n    return a + b\n", "second")) as server:
        model = chat(server, ledger)
        reply = model.complete(PROMPT, agent="solve")
        model.complete(PROMPT, agent="solve.add")

    expected = Usage(math.ceil(PROMPT_CHARS / 4), math.ceil(len(reply.text) / 4))
    code = "def add(a, b):\n    return a + b\n"
    assert reply == Reply(text=code, usage=expected, model="scripted")
    assert model.name == "test-model"
    assert ledger.for_agent("solve") == expected
    assert ledger.for_agent("solve.add").total > 0
    assert ledger.for_agent("nobody") == Usage()
    assert ledger.total == expected + ledger.for_agent("solve.add")
    body = server.requests[0]["body"]
    assert body["model"] == "test-model"
    assert body["messages"] == PROMPT
    assert "temperature" not in body
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_temperature_is_sent_when_set() -> None:
    with ScriptedServer(replies("ok")) as server:
        chat(server, temperature=0.2).complete(PROMPT, agent="a")
    assert server.requests[0]["body"]["temperature"] == 0.2


def test_missing_usage_is_estimated_from_characters() -> None:
    ledger = TokenLedger()
    with ScriptedServer(replies(Scripted(text="x" * 10, usage=False))) as server:
        reply = chat(server, ledger).complete(PROMPT, agent="a")
    assert reply.usage == Usage(math.ceil(PROMPT_CHARS / 4), 3, estimated=True)
    assert ledger.total.estimated


def test_rate_limit_then_success_is_retried() -> None:
    script = replies(Scripted(status=429, headers={"Retry-After": "0"}), "ok")
    with ScriptedServer(script) as server:
        reply = chat(server).complete(PROMPT, agent="a")
    assert reply.text == "ok"
    assert len(server.requests) == 2


def test_server_error_then_success_is_retried() -> None:
    with ScriptedServer(replies(Scripted(status=500), Scripted(status=503), "ok")) as server:
        assert chat(server).complete(PROMPT, agent="a").text == "ok"
    assert len(server.requests) == 3


def test_retry_after_header_sets_the_pause() -> None:
    script = replies(Scripted(status=429, headers={"Retry-After": "0.3"}), "ok")
    with ScriptedServer(script) as server:
        started = time.monotonic()
        chat(server, backoff_s=0.0).complete(PROMPT, agent="a")
    assert time.monotonic() - started >= 0.3


def test_timeout_is_retried() -> None:
    with ScriptedServer(replies(Scripted(text="late", delay_s=1.0), "ok")) as server:
        assert chat(server, timeout_s=0.2).complete(PROMPT, agent="a").text == "ok"
    assert len(server.requests) == 2


def test_timeout_every_time_names_the_limit() -> None:
    script = replies(*[Scripted(text="late", delay_s=1.0)] * 2)
    with ScriptedServer(script) as server:
        with pytest.raises(ModelError) as caught:
            chat(server, timeout_s=0.2, max_attempts=2).complete(PROMPT, agent="a")
    assert str(caught.value) == (
        f"the model endpoint {server.base_url} did not answer within 0.2 seconds, "
        "2 attempts in a row"
    )


def test_rate_limit_forever_gives_up_after_max_attempts() -> None:
    with ScriptedServer(lambda request: Scripted(status=429)) as server:
        with pytest.raises(ModelError) as caught:
            chat(server, max_attempts=3).complete(PROMPT, agent="a")
    assert str(caught.value) == (
        "the model endpoint kept answering 429 Too Many Requests after 3 attempts"
    )
    assert len(server.requests) == 3


def test_server_error_forever_gives_up() -> None:
    with ScriptedServer(lambda request: Scripted(status=502)) as server:
        with pytest.raises(ModelError, match="kept answering 502 Bad Gateway after 2 attempts"):
            chat(server, max_attempts=2).complete(PROMPT, agent="a")


def test_unreachable_endpoint() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ModelError) as caught:
        chat(base_url, max_attempts=2).complete(PROMPT, agent="a")
    assert str(caught.value) == (
        f"the model endpoint {base_url} is unreachable (connection refused)"
    )


def test_rejected_key_is_not_retried_and_not_revealed() -> None:
    refusal = Scripted(text=f"Incorrect API key provided: {KEY}", status=401)
    with ScriptedServer(replies(refusal, "never reached")) as server:
        with pytest.raises(ModelError) as caught:
            chat(server).complete(PROMPT, agent="a")
    assert str(caught.value) == "the model endpoint refused the API key (401)"
    assert len(server.requests) == 1
    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value.__cause__) and KEY not in repr(caught.value.__context__)


def test_key_is_sent_as_bearer_token() -> None:
    with ScriptedServer(replies("ok", "ok")) as server:
        chat(server).complete(PROMPT, agent="a")
        chat(server, api_key=None).complete(PROMPT, agent="a")
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert KEY not in server.requests[1]["headers"]["authorization"]


def test_unknown_model() -> None:
    with ScriptedServer(replies(Scripted(status=404))) as server:
        with pytest.raises(ModelError) as caught:
            chat(server).complete(PROMPT, agent="a")
    assert str(caught.value) == "the model endpoint has no model named 'test-model' (404)"


def test_bad_request_quotes_the_server_and_masks_the_key() -> None:
    with ScriptedServer(Script([])) as server:
        with pytest.raises(ModelError) as caught:
            chat(server).complete(PROMPT, agent="a")
    assert str(caught.value) == (
        "the model endpoint rejected the request (400 Bad Request): "
        "no scripted reply left for the prompt starting 'Implement add(a, b).'"
    )
    assert len(server.requests) == 1

    with ScriptedServer(replies(Scripted(text=f"bad key {KEY} in\nbody", status=422))) as server:
        with pytest.raises(ModelError) as caught:
            chat(server).complete(PROMPT, agent="a")
    assert str(caught.value) == (
        "the model endpoint rejected the request (422 Unprocessable Entity): bad key *** in"
    )


def test_empty_answer_is_an_error_but_its_tokens_count() -> None:
    ledger = TokenLedger()
    with ScriptedServer(replies(Scripted(text=None), Scripted(text="  \n"))) as server:
        model = chat(server, ledger)
        for _ in range(2):
            with pytest.raises(ModelError, match="^the model returned an empty answer$"):
                model.complete(PROMPT, agent="a")
    assert ledger.for_agent("a").prompt_tokens == 2 * math.ceil(PROMPT_CHARS / 4)


def test_run_budget() -> None:
    ledger = TokenLedger(run_limit=5)
    with ScriptedServer(replies("ok", "never reached")) as server:
        model = chat(server, ledger)
        model.complete(PROMPT, agent="a")
        with pytest.raises(BudgetExhausted) as caught:
            model.complete(PROMPT, agent="b")
    assert str(caught.value) == "the run's token budget of 5 tokens is spent"
    assert len(server.requests) == 1


def test_agent_budget() -> None:
    ledger = TokenLedger(agent_limit=5)
    with ScriptedServer(replies("ok", "other agent", "never reached")) as server:
        model = chat(server, ledger)
        model.complete(PROMPT, agent="solve.parse")
        with pytest.raises(BudgetExhausted) as caught:
            model.complete(PROMPT, agent="solve.parse")
        assert model.complete(PROMPT, agent="solve.emit").text == "other agent"
    assert str(caught.value) == "agent 'solve.parse' spent its token budget of 5 tokens"
    assert len(server.requests) == 2


def test_concurrency_limit_is_honored() -> None:
    lock = threading.Lock()
    in_flight = 0
    most = 0

    def slow(request: dict) -> str:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.15)
        with lock:
            in_flight -= 1
        return "ok"

    ledger = TokenLedger()
    with ScriptedServer(slow) as server:
        model = chat(server, ledger, max_concurrency=2)
        threads = [
            threading.Thread(target=model.complete, args=(PROMPT,), kwargs={"agent": f"a{i}"})
            for i in range(6)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert most == 2
    assert len(server.requests) == 6
    assert ledger.total.total == sum(ledger.for_agent(f"a{i}").total for i in range(6))


def test_usage_arithmetic() -> None:
    total = Usage(1, 2) + Usage(3, 4, estimated=True)
    assert total == Usage(4, 6, estimated=True)
    assert total.total == 10
    assert (Usage(1, 1) + Usage(1, 1)).estimated is False
    assert (Usage(9, 1, cached_tokens=5) + Usage(4, 1, cached_tokens=2)).cached_tokens == 7


def test_prompt_tokens_the_server_cached_are_counted_and_kept() -> None:
    ledger = TokenLedger()
    with ScriptedServer(replies(Scripted(text="x = 1", cached_tokens=7), "y = 2")) as server:
        model = chat(server, ledger)
        cached = model.complete(PROMPT, agent="a")
        model.complete(PROMPT, agent="a")
    assert cached.usage.cached_tokens == 7
    assert ledger.total.cached_tokens == 7 and ledger.total.prompt_tokens > 7
    assert Usage.from_record(cached.usage.record()) == cached.usage
    assert "cached_tokens" not in Usage(3, 4).record()     # notes written before stay the same


def test_ledger_is_thread_safe() -> None:
    ledger = TokenLedger()

    def spend() -> None:
        for _ in range(1000):
            ledger.record("a", Usage(1, 1))

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.for_agent("a") == Usage(8000, 8000)
    assert ledger.total.total == 16000


class _RawServer:
    """A loopback HTTP server that answers every request with `answer(connection)`."""

    def __init__(self, answer) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), b"0"))
            while len(body) < length:
                body += connection.recv(65536)
            try:
                self._answer(connection)
            except OSError:
                pass

    def close(self) -> None:
        # Wake the accept first: a socket closed under a blocked accept keeps listening, and the
        # next test's server could be handed its port.
        self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._sock.close()


def _drip(data: bytes):
    def answer(connection: socket.socket) -> None:
        for byte in data:
            connection.sendall(bytes([byte]))
            time.sleep(0.2)
    return answer


def _completion_bytes(text: str, chunked: bool) -> bytes:
    import json
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}).encode()
    if chunked:
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                          for i in range(0, len(body), 4096))
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_server_sending_a_byte_at_a_time_is_cut_off_by_the_call_deadline(where: str) -> None:
    answer = _completion_bytes("def f():\n    return 1\n", chunked=False)
    head, _, body = answer.partition(b"\r\n\r\n")
    slow = _drip(answer) if where == "headers" else (
        lambda c: (c.sendall(head + b"\r\n\r\n"), _drip(body)(c)))
    server = _RawServer(slow)
    started = time.monotonic()
    try:
        with pytest.raises(ModelError, match="did not answer within 1 seconds"):
            chat(server.base_url, timeout_s=1.0).complete(PROMPT, agent="a")
    finally:
        server.close()
    # Every read came within the timeout; the whole call still ended by its deadline.
    assert time.monotonic() - started < 3 * 1.0 + 1.5


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_over_the_size_cap_is_refused_unread(chunked: bool) -> None:
    from soa_git import openai_chat
    huge = "x = 1\n" * (openai_chat.MAX_ANSWER_BYTES // 6 + 10)
    server = _RawServer(lambda c: c.sendall(_completion_bytes(huge, chunked)))
    try:
        with pytest.raises(ModelError, match="larger than 256 KB"):
            chat(server.base_url).complete(PROMPT, agent="a")
        fits = _RawServer(lambda c: c.sendall(_completion_bytes("x = 1\n" * 1000, chunked)))
        assert chat(fits.base_url).complete(PROMPT, agent="a").text == "x = 1\n" * 1000
        fits.close()
    finally:
        server.close()
