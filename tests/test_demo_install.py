"""`soa-git demo` from a normal (non-editable) install: the sample repository is package data."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_scripted_demo_runs_from_a_wheel_install(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("soa_git-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "soa_git/demo/pipeline/pipeline/stats.py" in names
    assert "soa_git/demo/pipeline.scripted-model.json" in names
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                                "--target", str(site), str(wheel)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    # The installed copy, not this checkout: the target directory comes first on the path and
    # the command runs outside the checkout.
    env = {**os.environ, "PYTHONPATH": str(site)}
    demo = subprocess.run(
        [sys.executable, "-c", "import sys, soa_git, soa_git.cli; "
         "assert soa_git.__file__.startswith(sys.argv[1]), soa_git.__file__; "
         "sys.argv[1:] = sys.argv[2:]; soa_git.cli.main()",
         str(site), "demo", "--scripted", "--dir", str(tmp_path / "sample")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.count(": done: ") == 3, demo.stdout
    assert (tmp_path / "sample" / "pipeline" / "stats.py").is_file()
