"""soa-git as hooks: `soa-git check`, `soa-git fill`, the PRE_COMMIT guard, `init --hooks`,
and the real `pre-commit` framework and a real `git commit` running them."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from soa_git.cli import main
from soa_git.commands.accept import accept
from soa_git.commands.check import check, is_marked
from soa_git.commands.hooks import fill, hook_text
from soa_git.commands.run import run
from soa_git import pycode

from .helpers.repos import GIT_ENV, ROOT, git, isolated, make_repo, snapshot
from .helpers.shapes import KEY, SHAPES_SKELETON, fill_scripted, shapes_repo, shapes_script

MARKED = '''"""Geometry."""


# soa-git: fill
def perimeter(width: float, height: float) -> float:
    """Perimeter of a rectangle.

    >>> perimeter(2, 3)
    10
    """
    ...
'''
AREA = "shapes/area_report__area.py"
AREA_TESTS = "tests/soa/test_area_report__area.py"
BIN = Path(sys.executable).parent


def soa_branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/soa/").split()


def break_area(repo: Path) -> None:
    path = repo / AREA
    path.write_text(path.read_text().replace("return width * height", "return width + height"))


@pytest.fixture(scope="module")
def accepted_template(tmp_path_factory) -> Path:
    """A repository where a run filled shapes/report.py::area_report and was accepted."""
    with isolated(tmp_path_factory), pytest.MonkeyPatch.context() as mp:
        repo = shapes_repo(tmp_path_factory.mktemp("accepted") / "shapes", readme=False)
        [summary] = fill_scripted(repo, shapes_script())
        assert summary.state == "done", summary.message
        for key, value in GIT_ENV.items():     # `accept` commits as the user
            mp.setenv(key, value)
        accept(summary.run, cwd=repo)
    assert (repo / AREA).exists() and (repo / AREA_TESTS).exists()
    return repo


@pytest.fixture
def accepted(accepted_template, tmp_path) -> Path:
    target = tmp_path / "shapes"
    shutil.copytree(accepted_template, target, symlinks=True)
    return target


# ---- the marker -------------------------------------------------------------------------


@pytest.mark.parametrize("source, marked", [
    (MARKED, True),
    ('# soa-git: fill\n@decorate\ndef f():\n    """Doc."""\n', True),
    ('# a note\n# soa-git: fill\ndef f():\n    pass\n', True),
    ('def f():\n    """Doc.\n\n    soa-git: fill\n    """\n', True),
    ('# soa-git: fill\n\nx = 1\ndef f():\n    ...\n', False),
    ('def f():\n    """Mentions soa-git: fill in prose."""\n', False),
    ('def f():\n    ...\n', False),
])
def test_the_marker_is_a_comment_above_the_def_or_a_docstring_line(source, marked):
    [fn] = pycode.functions(source)
    assert is_marked(source, fn) is marked


# ---- soa-git check ------------------------------------------------------------------------


def test_check_fails_for_a_marked_skeleton_and_names_it(tmp_path):
    repo = make_repo(tmp_path / "r", {"geo.py": MARKED, "plain.py": SHAPES_SKELETON})
    result = check(["geo.py", "plain.py"], cwd=repo)
    assert [p.message for p in result.problems] == [
        "geo.py::perimeter is marked for soa-git but still a skeleton; "
        "run `soa-git run geo.py::perimeter`"]
    implemented = MARKED.replace("    ...\n", "    return 2 * (width + height)\n")
    (repo / "geo.py").write_text(implemented)
    assert check(["geo.py"], cwd=repo).ok


def test_check_passes_on_accepted_code_and_runs_its_agents_tests(accepted):
    result = check([AREA, "shapes/report.py", "shapes/area_report__fmt.py"], cwd=accepted)
    assert result.ok, result.problems
    assert {(t.function, t.tests) for t in result.tested} == {
        ("area", AREA_TESTS), ("fmt", "tests/soa/test_area_report__fmt.py"),
        ("area_report", "tests/soa/test_area_report.py")}
    assert all(t.ok and "passed" in t.result for t in result.tested)


def test_check_fails_when_an_accepted_module_breaks_its_tests(accepted):
    break_area(accepted)
    result = check([AREA], cwd=accepted)
    [problem] = result.problems
    assert problem.kind == "tests"
    assert problem.message.startswith(f"{AREA}::area: its tests {AREA_TESTS} fail: 2 failed "
                                      "(test_docstring_example_1: assert 5 == 6")
    assert check(["shapes/area_report__fmt.py"], cwd=accepted).ok   # another agent


def test_a_marked_skeleton_not_yet_committed_points_to_fill(tmp_path):
    """The hint said `soa-git run FILE::func`, which refuses a file that is not committed."""
    repo = make_repo(tmp_path / "r", {"plain.py": "x = 1\n"})
    (repo / "geo.py").write_text(MARKED)
    git(repo, "add", "geo.py")
    [problem] = check(["geo.py"], cwd=repo).problems
    assert "run `soa-git fill geo.py`" in problem.message


def test_a_module_missing_from_the_hook_environment_names_additional_dependencies(accepted):
    module = accepted / AREA
    module.write_text(module.read_text() + "\nimport no_such_package_here\n")
    [problem] = check([AREA], cwd=accepted).problems
    assert "No module named 'no_such_package_here'" in problem.message
    assert "additional_dependencies" in problem.message


def test_the_hook_names_are_short():
    """The check hook's name was 84 characters: pre-commit pads its output to the longest."""
    import yaml

    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert [h["name"] for h in hooks] == ["soa-git check", "soa-git fill"]


def test_check_runs_a_changed_test_file_and_names_its_module(accepted):
    tests = accepted / AREA_TESTS
    tests.write_text(tests.read_text().replace("== 6", "== 7"))
    [problem] = check([AREA_TESTS], cwd=accepted).problems
    assert problem.file == AREA and problem.function == "area"


def test_check_without_files_looks_at_the_staged_ones(accepted):
    break_area(accepted)
    assert check(None, cwd=accepted).ok          # not staged: not this commit's business
    git(accepted, "add", AREA)
    result = check(None, cwd=accepted)
    assert result.files == (AREA,) and not result.ok and result.notes == ()
    (accepted / AREA).write_text((accepted / AREA).read_text() + "\n")
    assert check(None, cwd=accepted).notes == (
        f"checked the working-tree version of {AREA}, which has unstaged changes",)


def test_check_cli_prints_each_problem_and_exits_1(accepted, monkeypatch):
    break_area(accepted)
    (accepted / "geo.py").write_text(MARKED)
    monkeypatch.chdir(accepted)
    done = CliRunner().invoke(main, ["check", AREA, "geo.py"])
    assert done.exit_code == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("geo.py::perimeter is marked for soa-git")
    assert lines[1].startswith(f"{AREA}::area: its tests {AREA_TESTS} fail: 2 failed")
    done = CliRunner().invoke(main, ["check", "--json", "shapes/area_report__fmt.py"])
    assert done.exit_code == 0, done.output
    assert '"ok": true' in done.output


# ---- PRE_COMMIT=1: no branch, no commit, no model call ------------------------------------


def test_under_pre_commit_run_refuses_before_any_model_call(tmp_path, serve, monkeypatch):
    repo = make_repo(tmp_path / "shapes", {"shapes/__init__.py": "",
                                           "shapes/report.py": SHAPES_SKELETON})
    before = snapshot(repo)
    server = serve(shapes_script())
    monkeypatch.setenv("PRE_COMMIT", "1")
    monkeypatch.chdir(repo)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    done = CliRunner().invoke(main, ["run", "shapes/report.py::area_report",
                                     "--base-url", server.base_url])
    assert done.exit_code == 1
    assert ("Error: soa-git makes no branches or commits while PRE_COMMIT=1 is set (inside a "
            "pre-commit hook); run `soa-git run` yourself, or the manual-stage hook "
            "soa-git-fill") in done.output
    assert server.requests == [] and soa_branches(repo) == [] and snapshot(repo) == before
    monkeypatch.setenv("SOA_GIT_ALLOW_IN_HOOK", "1")
    [summary] = run("shapes/report.py::area_report", cwd=repo,
                    flags={"base_url": server.base_url}, environ=KEY)
    assert summary.state == "done"


# ---- soa-git fill ---------------------------------------------------------------------------


def test_fill_runs_the_staged_marked_skeleton_and_leaves_a_run_branch(tmp_path, serve):
    repo = make_repo(tmp_path / "shapes", {"shapes/__init__.py": "", "README.md": "x\n"})
    marked = SHAPES_SKELETON.replace("def area_report", "# soa-git: fill\ndef area_report")
    (repo / "shapes/report.py").write_text(marked)
    git(repo, "add", "shapes/report.py")          # staged, never committed
    before = snapshot(repo)
    server = serve(shapes_script())
    targets, [summary] = fill(None, cwd=repo, flags={"base_url": server.base_url}, environ=KEY)
    assert targets == ["shapes/report.py::area_report"]
    assert summary.state == "done", summary.message
    assert snapshot(repo) == before               # branch, index, files: as they were
    root = f"soa/{summary.run}/area_report"
    assert root in soa_branches(repo)
    assert "return" in git(repo, "show", f"{root}:shapes/report.py").split("def area_report")[1]
    head = before["head"].strip()
    assert git(repo, "merge-base", "--is-ancestor", head, root) == ""
    # The run's base is the staged snapshot: HEAD plus the staged file.
    first = git(repo, "rev-list", "--reverse", f"{head}..{root}").split()[0]
    assert git(repo, "show", f"{first}:shapes/report.py") == marked


def test_fill_with_nothing_marked_does_nothing(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "r", {"plain.py": SHAPES_SKELETON})
    monkeypatch.chdir(repo)
    done = CliRunner().invoke(main, ["fill", "plain.py"])
    assert done.exit_code == 0 and "nothing to fill" in done.output
    assert soa_branches(repo) == []


# ---- init --hooks and the plain git hook ------------------------------------------------


def test_hooks_pre_commit_is_what_init_installs():
    assert (ROOT / "hooks" / "pre-commit").read_text() == hook_text()
    assert os.access(ROOT / "hooks" / "pre-commit", os.X_OK)


def test_init_hooks_installs_rewrites_its_own_and_refuses_a_foreign_hook(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "r", {"a.py": "x = 1\n"})
    monkeypatch.chdir(repo)
    hook = repo / ".git" / "hooks" / "pre-commit"
    done = CliRunner().invoke(main, ["init", "--hooks"])
    assert done.exit_code == 0, done.output
    assert f"installed the pre-commit hook {hook}" in done.output
    assert "# installed by soa-git" in hook.read_text() and hook.stat().st_mode & stat.S_IXUSR
    done = CliRunner().invoke(main, ["init", "--hooks"])
    assert f"kept the pre-commit hook {hook}" in done.output
    hook.write_text("#!/bin/sh\necho mine\n")
    config = list(repo.glob(".soa-git.toml")) + list(repo.glob("pyproject.toml"))
    for path in config:
        path.unlink()
    done = CliRunner().invoke(main, ["init", "--hooks"])
    assert done.exit_code == 1
    assert "was not written by soa-git" in done.output
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    assert not list(repo.glob(".soa-git.toml"))   # a refusal writes nothing


def test_init_hooks_respects_core_hooks_path(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "r", {"a.py": "x = 1\n"})
    git(repo, "config", "core.hooksPath", "githooks")
    monkeypatch.chdir(repo)
    done = CliRunner().invoke(main, ["init", "--hooks"])
    assert done.exit_code == 0, done.output
    assert (repo / "githooks" / "pre-commit").is_file()
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()


def commit(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_ENV, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(["git", "commit", "-q", *args], cwd=repo, env=env,
                          capture_output=True, text=True)


def test_plain_git_hook_runs_the_check_on_a_real_commit(accepted, monkeypatch):
    monkeypatch.chdir(accepted)
    assert CliRunner().invoke(main, ["init", "--hooks"]).exit_code == 0
    (accepted / "geo.py").write_text(MARKED)
    git(accepted, "add", "geo.py")
    done = commit(accepted, "-m", "a marked skeleton")
    assert done.returncode != 0
    assert "geo.py::perimeter is marked for soa-git but still a skeleton" in done.stderr
    git(accepted, "reset", "-q", "geo.py")
    break_area(accepted)
    git(accepted, "add", AREA)
    done = commit(accepted, "-m", "broken")
    assert done.returncode != 0
    assert f"{AREA}::area: its tests {AREA_TESTS} fail: 2 failed" in done.stderr
    (accepted / AREA).write_text((accepted / AREA).read_text().replace(
        "return width + height", "return height * width"))
    git(accepted, "add", AREA)
    done = commit(accepted, "-m", "still right")
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the real pre-commit framework ----------------------------------------------------------


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory) -> tuple[Path, str]:
    """This checkout's files as they are now, committed in a repository pre-commit can clone."""
    target = tmp_path_factory.mktemp("hook-repo") / "soa-git"
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in sorted({os.fsdecode(n) for n in listed.split(b"\0") if n}):
        source = ROOT / name
        if source.is_file() and "__pycache__" not in source.parts:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    make_repo(target, {})
    return target, git(target, "rev-parse", "HEAD").strip()


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory, hook_repo) -> Path:
    """One PRE_COMMIT_HOME for the module, its hook environment installed once (timed)."""
    home = tmp_path_factory.mktemp("pre-commit-home")
    repo = _framework_repo(tmp_path_factory.mktemp("warm") / "r", hook_repo, {"a.py": "x = 1\n"})
    started = time.monotonic()
    done = pre_commit(repo, home, "install-hooks")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\npre-commit hook environment installed in {time.monotonic() - started:.1f} s")
    return home


def _framework_repo(path: Path, hook_repo: tuple[Path, str], files: dict[str, str]) -> Path:
    repo_path, rev = hook_repo
    config = (f"repos:\n- repo: {repo_path}\n  rev: {rev}\n  hooks:\n"
              "  - id: soa-git-check\n  - id: soa-git-fill\n")
    return make_repo(path, {".pre-commit-config.yaml": config, **files})


def pre_commit(repo: Path, home: Path, *args: str, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    full.update(GIT_ENV, PRE_COMMIT_HOME=str(home), **(env or {}))
    full["PATH"] = f"{BIN}{os.pathsep}{full.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "pre_commit", *args], cwd=repo, env=full,
                          capture_output=True, text=True, timeout=600)


def test_pre_commit_framework_check_fails_a_marked_skeleton(pre_commit_home, hook_repo, tmp_path):
    repo = _framework_repo(tmp_path / "r", hook_repo, {"geo.py": MARKED})
    done = pre_commit(repo, pre_commit_home, "run", "--all-files")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "geo.py::perimeter is marked for soa-git but still a skeleton" in done.stdout
    assert "soa-git fill" not in done.stdout      # the manual hook did not run


def test_pre_commit_framework_on_a_real_commit_of_accepted_code(pre_commit_home, hook_repo,
                                                                 accepted):
    repo_path, rev = hook_repo
    (accepted / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {repo_path}\n  rev: {rev}\n  hooks:\n  - id: soa-git-check\n")
    git(accepted, "add", ".pre-commit-config.yaml")
    git(accepted, "commit", "-q", "-m", "hooks")
    assert pre_commit(accepted, pre_commit_home, "install").returncode == 0
    env = {"PRE_COMMIT_HOME": str(pre_commit_home)}
    break_area(accepted)
    git(accepted, "add", AREA)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        done = commit(accepted, "-m", "broken")
        assert done.returncode != 0
        assert f"{AREA}::area: its tests {AREA_TESTS} fail: 2 failed" in done.stdout + done.stderr
        git(accepted, "checkout", "HEAD", "--", AREA)
        (accepted / "notes.py").write_text("NOTE = 1\n")
        git(accepted, "add", "notes.py")
        done = commit(accepted, "-m", "fine")
        assert done.returncode == 0, done.stdout + done.stderr


def test_pre_commit_framework_fill_is_manual_and_leaves_a_run_branch(pre_commit_home, hook_repo,
                                                                     tmp_path, serve):
    repo = _framework_repo(tmp_path / "r", hook_repo, {"shapes/__init__.py": ""})
    (repo / "shapes/report.py").write_text(
        SHAPES_SKELETON.replace("def area_report", "# soa-git: fill\ndef area_report"))
    git(repo, "add", "shapes/report.py")
    before = snapshot(repo)
    server = serve(shapes_script())
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test-key"}
    done = pre_commit(repo, pre_commit_home, "run", "soa-git-fill", "--hook-stage", "manual",
                      env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    [root] = [b for b in soa_branches(repo) if b.endswith("/area_report")]
    assert f"review the branch {root}" in done.stdout
    after = snapshot(repo)
    # pre-commit itself refreshes the index's stat data; what is staged is the same.
    assert {**after, "index": ""} == {**before, "index": ""}
    # At commit time the fill hook does not run, so no model is called.
    calls = len(server.requests)
    done = pre_commit(repo, pre_commit_home, "run", env=env)
    hooks_run = [line.split(".")[0] for line in done.stdout.splitlines() if "..." in line]
    assert "soa-git fill" not in hooks_run and len(server.requests) == calls
