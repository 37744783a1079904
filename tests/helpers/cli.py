"""The command line as tests drive it: a repository with a file of every kind, what its working
tree holds, and the one-sentence error every user mistake must end in."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from click.testing import Result

from .repos import make_repo
from .shapes import SHAPES_SKELETON

DONE_PY = '''"""Nothing left to write."""


def ready() -> int:
    """Already implemented."""
    return 1
'''

BROKEN_PY = '''def half(x: int) -> float:
    """Half of x."""
    ...


def oops(:
    pass
'''


def cli_repo(path: Path) -> Path:
    """The shapes repository plus a file without skeletons and one that does not parse."""
    return make_repo(path, {"shapes/__init__.py": "", "shapes/report.py": SHAPES_SKELETON,
                            "shapes/done.py": DONE_PY, "shapes/broken.py": BROKEN_PY,
                            "README.md": "shapes\n"})


def listing(directory: Path) -> dict[str, bytes]:
    """The working-tree files of a directory (soa-git's own files under .git/ are not the
    user's)."""
    files = (p for p in sorted(directory.rglob("*"))
             if ".git" not in p.relative_to(directory).parts)
    return {str(p.relative_to(directory)): p.read_bytes() for p in files if p.is_file()}


def assert_one_error(result: Result, *fragments: str, only_line: bool = True) -> str:
    """A non-zero exit, nothing on stdout, and one `Error: <sentence>` as the last stderr line."""
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    if only_line:
        assert lines == errors, result.stderr
    message = errors[0]
    assert "internal error" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def console_script() -> list[str]:
    """How a user starts soa-git: the installed console script, else the module."""
    installed = Path(sys.executable).parent / "soa-git"
    if installed.exists():
        return [str(installed)]
    found = shutil.which("soa-git")
    if found:
        return [found]
    return [sys.executable, "-c", "from soa_git.cli import main; main()"]
