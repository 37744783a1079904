"""`soa-git init`: write this repository's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .. import config
from ..gitrepo import GitRepo


def init(cwd: Path, flags: Mapping[str, Any]) -> tuple[Path, bool]:
    """Write the resolved settings (defaults < environment < flags); keep an existing config.

    The user wrote this file, so the repository is trusted with the endpoint and key variable
    it names (`soa-git trust`)."""
    repo = GitRepo.open(cwd, allow_empty=True)
    settings = config.resolve(repo.root, flags)
    path, written = config.write_config(repo.root, settings)
    if written:
        config.trust(repo.root)
    return path, written
