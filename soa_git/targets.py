"""What can be a run's target: a skeleton in a file committed at HEAD, unchanged, that parses and
that agents' tests can import. Checked before any model call, so a bad target costs nothing.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from pathlib import Path

from . import layout, pycode
from .errors import TargetError
from .gitrepo import GitRepo


@dataclass(frozen=True)
class Target:
    file: str        # posix path from the repository root
    function: str


def committed_source(repo: GitRepo, file: Path) -> tuple[str, str]:
    """(path from the root, text at HEAD) of a file that is committed, unchanged, and parses.

    Every run starts from HEAD, so a file with uncommitted edits would silently lose them.
    """
    try:
        relative = file.resolve().relative_to(repo.root.resolve()).as_posix()
    except ValueError:
        raise TargetError(f"{file} is outside the repository {repo.root}") from None
    source = repo.read_file(repo.head(), relative)
    if source is None:
        raise TargetError(f"{relative} is not a file committed at HEAD")
    on_disk = repo.root / relative
    if on_disk.exists() and on_disk.read_text(encoding="utf-8", errors="replace") != source:
        raise TargetError(f"{relative} has uncommitted changes; commit them first, "
                          "because soa-git works from HEAD")
    pycode.check_parses(source, relative)
    return relative, source


def find_target(repo: GitRepo, file: Path, function: str) -> Target:
    return find_targets(repo, file, [function])[0]


def find_targets(repo: GitRepo, file: Path, names: list[str] | None) -> list[Target]:
    """The skeletons `names` of a file at HEAD, or every one of its skeletons for `soa-git run
    file.py`; the file is read and parsed once, whatever their number."""
    relative, source = committed_source(repo, file)
    check_importable(repo, relative)
    functions = pycode.functions(source)
    # The last definition of a name wins, as it does when Python runs the module.
    last = {f.name: f for f in functions}
    if names is None:
        names = list(dict.fromkeys(f.name for f in functions if f.is_skeleton))
        if not names:
            raise TargetError(f"{relative} has no skeletons (functions whose body is only a "
                              "docstring and `...`, `pass` or `raise NotImplementedError`)")
    for name in names:
        if name not in last:
            raise TargetError(f"{relative} has no top-level function named '{name}'")
        if not last[name].is_skeleton:
            raise TargetError(f"{relative}::{name} is not a skeleton (its body must be only a "
                              "docstring and `...`, `pass` or `raise NotImplementedError`)")
    return [Target(relative, name) for name in names]


def check_importable(repo: GitRepo, relative: str) -> None:
    """Agents' tests import the target by its module name: a file named `dash-mod.py` or
    `my calc.py` has none, and no answer could make its tests import it."""
    head = repo.head()
    root = layout.import_root(relative, lambda p: repo.file_exists(head, p))
    module = layout.files_for("", relative, root, is_root=True).import_name
    bad = next((part for part in module.split(".")
                if not part.isidentifier() or keyword.iskeyword(part)), None)
    if bad is not None:
        raise TargetError(f"{relative} cannot be imported as a Python module ('{bad}' is not a "
                          "valid module name), so no test could import it; rename it with "
                          "letters, digits and underscores only")
