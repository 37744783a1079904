"""Nothing soa-git writes into a repository carries the API key or any environment value."""

from __future__ import annotations

import os
import subprocess
import sys

from .helpers.repos import git
from .helpers.shapes import respond, shapes_repo

PLANTED_KEY = "sk-planted-4f1c9a7e2b"
PLANTED_TOKEN = "tok-planted-83d2e6"


def test_no_key_and_no_environment_value_reaches_the_repository(tmp_path, serve):
    repo = shapes_repo(tmp_path / "shapes", readme=False)
    server = serve(respond)
    env = {**os.environ, "OPENAI_API_KEY": PLANTED_KEY, "GITHUB_TOKEN": PLANTED_TOKEN,
           "SOA_GIT_PLANTED": PLANTED_TOKEN}
    done = subprocess.run([sys.executable, "-c", "from soa_git.cli import main; main()", "run",
                           "shapes/report.py::area_report", "--base-url", server.base_url, "--json"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The key was used: the server saw it, and only there.
    assert all(r["headers"]["authorization"] == f"Bearer {PLANTED_KEY}" for r in server.requests)

    objects = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch-all-objects", "--batch"],
                             capture_output=True, check=True).stdout
    assert b"soa-git task:" in objects, "the transcripts should be in the object database"
    written = [objects, git(repo, "for-each-ref").encode(), done.stdout.encode(), done.stderr.encode()]
    written += [p.read_bytes() for p in (repo / ".git" / "soa").rglob("*") if p.is_file()]
    for secret in (PLANTED_KEY, PLANTED_TOKEN):
        assert not any(secret.encode() in blob for blob in written), secret
