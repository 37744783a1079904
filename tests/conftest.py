"""Shared fixtures: real git repositories in tmp dirs and a scripted model on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from soa_git.scripted import Script, ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "soa_git" / "demo"
GIT_ENV = {"GIT_AUTHOR_NAME": "Test User", "GIT_AUTHOR_EMAIL": "user@example.com",
           "GIT_COMMITTER_NAME": "Test User", "GIT_COMMITTER_EMAIL": "user@example.com"}


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, env={**_base_env(), **GIT_ENV})
    return done.stdout


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A real repository with one commit holding `files`."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text, encoding="utf-8")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def snapshot(repo: Path) -> dict:
    """Everything of the user's that soa-git must leave alone: HEAD, branch, index, files."""
    files = {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(repo.rglob("*")) if p.is_file() and ".git" not in p.parts}
    return {"head": git(repo, "rev-parse", "HEAD"), "branch": git(repo, "symbolic-ref", "HEAD"),
            "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
            "index": hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest(),
            "files": files}


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    target = tmp_path / "pipeline"
    shutil.copytree(SAMPLES / "pipeline", target)
    return make_repo(target, {})


@pytest.fixture
def sample_script() -> list[dict]:
    return json.loads((SAMPLES / "pipeline.scripted-model.json").read_text())


@pytest.fixture
def serve():
    """serve(JSON rules, a Script, or any responder) -> a started server, stopped after the test."""
    servers = []

    def start(responder) -> ScriptedServer:
        server = ScriptedServer(Script.from_json(responder) if isinstance(responder, list)
                                else responder).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No developer's git config or key leaks into a test, and nothing reaches a real endpoint."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
