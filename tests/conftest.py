"""Shared fixtures: real git repositories in tmp dirs and a scripted model on loopback. What they
are built from, and the scenarios tests share, is in tests/helpers/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from soa_git.cli import main
from soa_git.scripted import Script, ScriptedServer

from .helpers.github import FakeGitHub
from .helpers.repos import SAMPLES, isolate, make_repo
from .helpers.shapes import shapes_repo


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    target = tmp_path / "pipeline"
    shutil.copytree(SAMPLES / "pipeline", target)
    return make_repo(target, {})


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    """The shapes scenario's repository (tests/helpers/shapes.py)."""
    return shapes_repo(tmp_path / "shapes")


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


@pytest.fixture
def cli(monkeypatch):
    """cli(cwd, *args, ok=True) -> the output of `soa-git ARGS` run in cwd; asserts it exited 0
    (or, with ok=False, that it did not)."""
    runner = CliRunner()

    def invoke(cwd: Path, *args: str, ok: bool = True) -> str:
        monkeypatch.chdir(cwd)
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    return invoke


@pytest.fixture
def fake_github():
    """fake_github(*answers) -> a started FakeGitHub (tests/helpers/github.py), closed after the
    test."""
    fakes = []

    def start(*answers) -> FakeGitHub:
        fake = FakeGitHub(*answers)
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        fake.close()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No developer's git config or key leaks into a test, and nothing reaches a real endpoint."""
    isolate(monkeypatch, tmp_path_factory.mktemp("home"))
