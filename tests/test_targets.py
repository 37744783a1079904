"""Finding a run's targets: once per file whatever their number, and only importable ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from soa_git import pycode
from soa_git.commands.run import run
from soa_git.errors import TargetError
from soa_git.gitrepo import GitRepo
from soa_git.targets import find_targets

from .helpers.repos import git, make_repo, snapshot

SKELETON = 'def add(a: int, b: int) -> int:\n    """Sum. ünï"""\n    ...\n'


def test_every_skeleton_of_a_file_is_found_with_one_parse(tmp_path, monkeypatch):
    """Each skeleton used to be found by parsing the whole file again: n squared."""
    text = "\n\n".join(SKELETON.replace("add", f"add{i}") for i in range(200))
    repo = make_repo(tmp_path / "r", {"many.py": text})
    parses = []
    real = pycode._Source.__init__

    def counted(self, source):
        parses.append(len(source))
        real(self, source)

    monkeypatch.setattr(pycode._Source, "__init__", counted)
    found = find_targets(GitRepo.open(repo), repo / "many.py", None)
    assert [t.function for t in found] == [f"add{i}" for i in range(200)]
    assert sum(1 for size in parses if size >= len(text)) <= 3


def test_character_offsets_stay_right_after_non_ascii_text():
    source = "# ünïcödé 🎉\n" + SKELETON + "\n\n" + SKELETON.replace("add", "sub")
    for fn in pycode.functions(source):
        assert source[fn.start:fn.end] == fn.source
        assert fn.source.startswith(f"def {fn.name}(")


@pytest.mark.parametrize("name", ["dash-mod.py", "my calc.py", "class.py", "pkg-x/calc.py"])
def test_a_file_that_is_no_module_name_is_refused_before_any_model_call(tmp_path, name):
    files = {name: SKELETON}
    if name.startswith("pkg-x/"):
        files["pkg-x/__init__.py"] = ""
    repo = make_repo(tmp_path / "r", files)
    before = snapshot(repo)
    with pytest.raises(TargetError, match="cannot be imported as a Python module"):
        # No endpoint listens there: refusing must come before any model call.
        run(name, cwd=repo, flags={"base_url": "http://127.0.0.1:9/v1"},
            environ={"OPENAI_API_KEY": "k"})
    assert snapshot(repo) == before
    assert not git(repo, "for-each-ref", "refs/heads/soa/")


def test_a_folder_that_is_no_package_is_fine(tmp_path):
    """Only the import path counts: `my tools/calc.py` is imported as `calc`."""
    repo = make_repo(tmp_path / "r", {"my tools/calc.py": SKELETON})
    found = find_targets(GitRepo.open(repo), Path(repo / "my tools/calc.py"), ["add"])
    assert [t.file for t in found] == ["my tools/calc.py"]
