"""The package and the benchmarks pass flake8 (its settings are in setup.cfg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flake8_is_clean():
    done = subprocess.run([sys.executable, "-m", "flake8", "soa_git", "benchmarks"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
