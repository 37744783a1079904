"""`soa-git init`: write this repository's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .. import config
from ..gitrepo import GitRepo


def init(cwd: Path, flags: Mapping[str, Any]) -> tuple[Path, bool]:
    """Write the resolved settings (defaults < environment < flags); keep an existing config."""
    repo = GitRepo.open(cwd, allow_empty=True)
    settings = config.resolve(repo.root, flags)
    return config.write_config(repo.root, settings)
