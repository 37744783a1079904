"""`soa-git trust`: let this repository's configuration choose the endpoint and key variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import config
from ..gitrepo import GitRepo


def trust(cwd: Path) -> tuple[Path, dict[str, Any]]:
    """Trust the repository's file with what it sets now; returns the file and those values."""
    repo = GitRepo.open(cwd, allow_empty=True)
    return config.config_path(repo.root), config.trust(repo.root)
