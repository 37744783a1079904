"""`soa-git demo`: the whole product on a sample repository, against a SCRIPTED model.

The sample is copied into a new git repository and every model call goes through the real
OpenAI client to a scripted server on 127.0.0.1, so nothing leaves this machine and no key
is needed. The answers are canned; everything else (git, workspaces, tests) is the real path.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from ..gitrepo import GitRepo
from ..organizer import AgentView, RunSummary
from ..scripted import Script, ScriptedServer
from .run import run

SAMPLES = Path(__file__).resolve().parents[2] / "sample_repos"
SAMPLE = "pipeline"
TARGETS = ("pipeline/records.py", "pipeline/stats.py", "pipeline/report.py")


def demo(directory: Path | None, on_event: Callable[[AgentView], None] = lambda view: None,
         ) -> tuple[Path, list[RunSummary]]:
    source = SAMPLES / SAMPLE
    if not source.is_dir():
        raise ConfigError(f"the sample repository {source} is missing; run the demo from a "
                          "checkout of soa-git (pip install -e .)")
    target = directory or Path(tempfile.mkdtemp(prefix="soa-git-demo-"))
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} is not empty; give the demo a new or empty directory")
    shutil.copytree(source, target, dirs_exist_ok=True)
    GitRepo.create(target, "the pipeline sample, with three skeletons")
    script = Script.from_json(json.loads((SAMPLES / f"{SAMPLE}.scripted-model.json").read_text()))
    with ScriptedServer(script) as server:
        flags = {"base_url": server.base_url, "model": "scripted",
                 "api_key_env": "SOA_GIT_DEMO_KEY"}
        environ = {"SOA_GIT_DEMO_KEY": "scripted-no-key"}
        summaries = [summary for path in TARGETS
                     for summary in run(path, cwd=target, flags=flags, on_event=on_event,
                                        environ=environ)]
    return target, summaries
