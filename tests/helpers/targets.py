"""The many-targets scenario: a repository with two packages that each hold a skeleton (both named
`total`) and a module with none, run against the scale benchmark's simulated model."""

from __future__ import annotations

from pathlib import Path

from benchmarks import scale_shape
from soa_git.commands.run import run
from soa_git.scripted import ScriptedServer

from .repos import git

KEY = {"OPENAI_API_KEY": "sk-test"}
SKELETON = scale_shape.root_skeleton()


def two_targets(path: Path) -> Path:
    """Two packages with a skeleton each (both named `total`), and a module with none."""
    template = scale_shape.make_template(path, 10)
    (template / "calc").mkdir()
    (template / "calc" / "__init__.py").write_text("")
    (template / "calc" / "sums.py").write_text(SKELETON)
    (template / "calc" / "plain.py").write_text("def one() -> int:\n    return 1\n")
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "calc")
    return template


def fill_targets(repo: Path, specs, latency_s: float = 0.0, **flags) -> tuple[list, object]:
    """`soa-git run specs` against a one-agent simulated model: (the summaries, the responder)."""
    shape = scale_shape.build_shape(1, 1)
    responder = scale_shape.Responder(shape, latency_s)
    with ScriptedServer(responder) as server:
        summaries = run(specs, cwd=repo, environ=KEY,
                        flags={"base_url": server.base_url, "max_depth": 1, **flags})
    return summaries, responder
