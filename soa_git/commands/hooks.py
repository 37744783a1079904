"""soa-git as git hooks: `soa-git fill` (the manual-stage soa-git-fill hook) and the plain git
`pre-commit` hook that `soa-git init --hooks` installs.

`fill` runs soa-git on the skeletons marked for it in the staged files. A run starts from a
commit, so when the index differs from HEAD the run starts from a snapshot of the index: a
commit (parent HEAD, on no branch of yours) holding exactly your staged files. The result is a
run branch to review; your branch, index and files are never changed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import config
from ..errors import RepositoryError, TargetError
from ..gitrepo import GitRepo
from ..summary import AgentView, RunSummary
from ..targets import find_targets
from ..weights import ProgressCallback, quiet
from .check import repo_relative, marked_skeletons, staged_python_files
from .run import run_targets

HOOK_MARKER = "# installed by soa-git"
# The plain git hook. `hooks/pre-commit` in the soa-git repository is this text as is.
HOOK_TEMPLATE = """#!/bin/sh
{marker} (`soa-git init --hooks`); it may rewrite this file, and
# refuses to replace a hook it did not write.
#
# Before each commit, `soa-git check` looks at the staged Python files (no model, no network):
# it fails when a module an accepted soa-git run wrote no longer passes its agent's tests, or
# when a skeleton marked `# soa-git: fill` is still unimplemented. Skip it once with
# `git commit --no-verify`.
SOA_GIT={soa_git}
if ! command -v "$SOA_GIT" >/dev/null 2>&1; then
    SOA_GIT=soa-git
    if ! command -v "$SOA_GIT" >/dev/null 2>&1; then
        echo "soa-git pre-commit hook: soa-git is not installed or not on PATH" >&2
        exit 1
    fi
fi
if [ -z "$(git diff --cached --name-only --diff-filter=ACMRT -- '*.py')" ]; then
    exit 0
fi
git diff --cached --name-only --diff-filter=ACMRT -z -- '*.py' | xargs -0 "$SOA_GIT" check --
"""


def hook_text(soa_git: str = "soa-git") -> str:
    return HOOK_TEMPLATE.format(marker=HOOK_MARKER, soa_git=_sh_quote(soa_git))


class StagedRepo(GitRepo):
    """A repository whose runs start from a snapshot of the staged files instead of HEAD."""

    base: str | None = None

    def head(self) -> str:
        return self.base or super().head()


def fill(files: Sequence[str] | None, *, cwd: Path, flags: Mapping[str, Any],
         on_event: Callable[[AgentView], None] = lambda view: None,
         environ: Mapping[str, str] | None = None,
         on_progress: ProgressCallback = quiet) -> tuple[list[str], list[RunSummary]]:
    """Fill the marked skeletons of `files` (default: the staged Python files), each in a run of
    its own, from the staged content. Returns the targets and the runs' summaries."""
    environ = os.environ if environ is None else environ
    repo = StagedRepo.open(cwd)
    root = repo.root
    relative = (staged_python_files(repo.user_status()) if files is None
                else [repo_relative(root, cwd, f) for f in files])
    # The files on disk name the candidates; the snapshot is only made when there are some.
    marked = {}
    for file in dict.fromkeys(f for f in relative if f.endswith(".py")):
        if (root / file).is_file():
            names = [fn.name for fn in marked_skeletons((root / file).read_text(
                encoding="utf-8", errors="replace"))]
            if names:
                marked[file] = names
    if not marked:
        return [], []
    repo.base = repo.snapshot_index("soa-git fill: the staged files it starts from")
    targets = []
    for file, names in marked.items():
        staged = repo.read_file(repo.base, file)
        if staged != (root / file).read_text(encoding="utf-8", errors="replace"):
            raise TargetError(f"{file} has unstaged changes; stage or stash them, because "
                              "soa-git fill works from your staged files")
        targets += find_targets(repo, root / file, names)
    summaries = run_targets(repo, config.resolve(root, flags, environ), targets, environ, on_event,
                            on_progress=on_progress)
    return [f"{t.file}::{t.function}" for t in targets], summaries


def install_hook(cwd: Path, *, check_only: bool = False) -> tuple[Path, bool]:
    """Write the plain git pre-commit hook; (its path, False when it was already this text).

    A hook soa-git did not write (no marker line) is never replaced. `check_only`: only refuse
    if it would have to replace one, write nothing.
    """
    repo = StagedRepo.open(cwd, allow_empty=True)
    path = repo.hooks_dir() / "pre-commit"
    text = hook_text(_own_command())
    if path.exists() or path.is_symlink():
        try:
            current = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = ""
        if HOOK_MARKER not in current:
            raise RepositoryError(f"{path} exists and was not written by soa-git; add "
                                  "`soa-git check` to it yourself, or move it away and run "
                                  "`soa-git init --hooks` again")
        if current == text and os.access(path, os.X_OK):
            return path, False
    if check_only:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".pre-commit-")
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.chmod(temp, 0o755)
    os.replace(temp, path)
    return path, True


def _own_command() -> str:
    """The soa-git next to this interpreter (the one installing the hook), else from PATH."""
    beside = Path(sys.executable).parent / "soa-git"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else "soa-git"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
