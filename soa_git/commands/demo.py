"""`soa-git demo`: the whole product on a sample repository, with a real model on this machine
(`--model local`), or with `scripted` answers for an instant look.

The sample ships inside the package (`soa_git/demo`), so the demo works from any install. It is
copied into a new git repository; every model call goes through the real OpenAI client to a
server on 127.0.0.1 (llama.cpp in this process, or the scripted server), so nothing leaves this
machine and no key is needed. Everything else (git, workspaces, tests) is the production path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError
from ..gitrepo import GitRepo
from ..summary import AgentView, RunSummary
from ..scripted import Script, ScriptedServer
from ..weights import ProgressCallback, quiet
from .run import run

SAMPLES = Path(__file__).resolve().parents[1] / "demo"
SAMPLE = "pipeline"
TARGETS = ("pipeline/records.py", "pipeline/stats.py", "pipeline/report.py")
SCRIPTED_KEY_ENV = "SOA_GIT_DEMO_KEY"


def demo(directory: Path | None, *, model: str = "local",
         on_event: Callable[[AgentView], None] = lambda view: None,
         on_progress: ProgressCallback = quiet) -> tuple[Path, list[RunSummary]]:
    """Fill the sample's skeletons with `model` ("local", "local:NAME" or "scripted") in a new
    repository at `directory` (default: a new temporary directory)."""
    source = SAMPLES / SAMPLE
    if not source.is_dir():
        raise ConfigError(f"the sample repository {source} is missing from this installation "
                          "of soa-git; reinstall it")
    target = directory or Path(tempfile.mkdtemp(prefix="soa-git-demo-"))
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} is not empty; give the demo a new or empty directory")
    shutil.copytree(source, target, dirs_exist_ok=True)
    GitRepo.create(target, "the pipeline sample, with three skeletons")
    with _endpoint(model) as (flags, environ):
        # One run per skeleton, all sharing one model: the local one is loaded once.
        summaries = run(list(TARGETS), cwd=target, flags=flags, on_event=on_event,
                        environ=environ, on_progress=on_progress)
    return target, summaries


@contextlib.contextmanager
def _endpoint(model: str) -> Iterator[tuple[dict[str, Any], dict[str, str]]]:
    """The settings flags and environment that point the runs at the demo's model."""
    if model != "scripted":
        # The three runs at once: their agents' requests share the model's parallel slots.
        yield ({"model": model, "parallel_runs": len(TARGETS)},
               dict(os.environ))  # the cache directory may be set there
        return
    script = Script.from_json(json.loads((SAMPLES / f"{SAMPLE}.scripted-model.json").read_text()))
    with ScriptedServer(script) as server:
        yield ({"base_url": server.base_url, "model": "scripted", "api_key_env": SCRIPTED_KEY_ENV},
               {SCRIPTED_KEY_ENV: "scripted-no-key"})
