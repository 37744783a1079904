"""Runs read back: branch tips, commits with their trailers and notes, files, diffs. Each a fixed
number of git calls, whatever the size of the run (history.py builds the records).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .. import runformat
from ..errors import RepositoryError
from ..runformat import NOTES_REF
from .core import Author, Core, checked_rev, join_names, posix, reason


@dataclass(frozen=True)
class BranchTip:
    branch: str         # without refs/heads/
    sha: str
    date: str           # the tip's committer date, ISO 8601


@dataclass(frozen=True)
class LoggedCommit:
    """One commit as `commits` reads it: its message, trailers, and its note under NOTES_REF."""

    sha: str
    parents: tuple[str, ...]
    author: Author
    date: str           # author date, ISO 8601
    subject: str
    body: str           # without the trailer block
    trailers: dict[str, str]
    note: str | None


class RunReading(Core):
    """What history and report read."""

    def branch_tips(self, folder: str) -> list[BranchTip]:
        """Every branch under `folder` (e.g. "soa/"), with its tip and the tip's date: one call."""
        if not folder.endswith("/") or folder.startswith("-"):
            raise ValueError(f"{folder!r} is not a folder of branches (it must end with /)")
        r = self._git("for-each-ref",
                      "--format=%(objectname) %(committerdate:iso-strict) %(refname)",
                      f"refs/heads/{folder}")
        tips = []
        for line in r.text.splitlines():
            sha, date, name = line.split(" ", 2)
            tips.append(BranchTip(branch=name.removeprefix("refs/heads/"), sha=sha, date=date))
        return tips

    def commits(self, revs: Iterable[str], *, containing: str | None = None) -> list[LoggedCommit]:
        """Commits reachable from any of `revs`, newest first, each with its note: one git log.

        `containing` keeps only commits whose message (or note) contains that exact text; git
        still walks the whole history, but prints only those.
        """
        revs = [checked_rev(rev) for rev in dict.fromkeys(revs)]
        if not revs:
            return []
        fields = ("%H", "%P", "%an", "%ae", "%aI", "%s", "%b", runformat.TRAILERS_FORMAT, "%N")
        grep = ("--fixed-strings", f"--grep={containing}") if containing else ()
        # --no-notes first: a notes.displayRef in the user's config would add other notes to %N.
        r = self._git("log", "-z", "--no-show-signature", "--no-notes", f"--notes={NOTES_REF}",
                      f"--format={'%x00'.join(fields)}", *grep, "--stdin", "--",
                      stdin="".join(f"{rev}\n" for rev in revs).encode("utf-8"), check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot read the history of {join_names(revs)}: {reason(r.err)}")
        values = r.out.decode("utf-8", errors="replace").split("\0")
        commits = []
        for i in range(0, len(values) - len(fields) + 1, len(fields)):
            sha, parents, name, email, date, subject, body, raw_trailers, note = (
                values[i:i + len(fields)])
            trailers = runformat.parse_trailers(raw_trailers)
            commits.append(LoggedCommit(
                sha=sha.strip(), parents=tuple(parents.split()), author=Author(name, email),
                date=date, subject=subject, body=runformat.strip_trailers(body, trailers),
                trailers=trailers,
                note=note.strip("\n") or None))
        return commits

    def read_blobs(self, specs: Iterable[tuple[str, str]]) -> list[str | None]:
        """The text of each (rev, path); None where that file does not exist: one cat-file call."""
        specs = [f"{checked_rev(rev)}:{posix(path)}" for rev, path in specs]
        if not specs:
            return []
        if any("\n" in spec for spec in specs):
            raise ValueError("a path with a line break cannot be read in a batch")
        out = self._git("cat-file", "--batch", stdin="".join(f"{s}\n" for s in specs).encode()).out
        texts: list[str | None] = []
        at = 0
        for _ in specs:
            end = out.index(b"\n", at)
            header = out[at:end].split()
            at = end + 1
            if len(header) == 3 and header[2].isdigit():
                size = int(header[2])
                content = out[at:at + size]
                at += size + 1
                is_blob = header[1] == b"blob"
                texts.append(content.decode("utf-8", errors="replace") if is_blob else None)
            else:
                texts.append(None)      # "<spec> missing" or "<spec> ambiguous"
        return texts

    def diff(self, old: str, new: str, paths: Iterable[str]) -> str:
        """`git diff old new -- paths` as plain text, whatever the user's diff settings."""
        r = self._git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative",
                      "--src-prefix=a/", "--dst-prefix=b/", checked_rev(old), checked_rev(new),
                      "--",
                      *(posix(p) for p in paths), check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot compare {old} with {new}: {reason(r.err)}")
        return r.out.decode("utf-8", errors="replace")

    def diff_stat(self, base: str, rev: str) -> str:
        """`git diff --stat base rev`: one line per changed file and a total, at a fixed width
        (the terminal's does not matter), whatever the user's diff settings."""
        r = self._git("diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative",
                      "--stat=100,70", "--stat-graph-width=20", checked_rev(base),
                      checked_rev(rev), "--",
                      check=False)
        if r.status != 0:
            raise RepositoryError(f"cannot compare {base} with {rev}: {reason(r.err)}")
        return r.out.decode("utf-8", errors="replace")
