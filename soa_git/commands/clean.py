"""`soa-git clean`: remove what runs left in the repository, and nothing else.

For a run: its branches soa/<run>/*, its workspace folders, the notes
on commits that only its branches reach, and its lock file. Notes on commits that anything
else reaches (your branch, after `soa-git accept`) are kept. Scratch notes refs
(refs/notes/soa-pending/*) left by a killed process go too, when no soa-git process is at work
in the repository, since only a live process can still be using one.

A run whose lock holder lives is never touched. While cleaning a run, clean holds the run's
lock itself, so a process cannot start working on a run that is half removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import runformat
from ..errors import RepositoryError
from ..gitrepo import GitRepo, RunLocked
from .accept import check_run_id


@dataclass(frozen=True)
class RunPlan:
    run: str
    branches: tuple[str, ...]
    workspaces: tuple[str, ...]
    notes: tuple[str, ...]          # shas of the commits whose notes go
    lock: str | None                # the lock file, when there is one


@dataclass(frozen=True)
class CleanPlan:
    """What clean removes (dry_run: would remove). `kept`: runs left alone, and why."""

    dry_run: bool
    runs: tuple[RunPlan, ...]
    orphan_notes: tuple[str, ...] = ()
    pending_refs: tuple[str, ...] = ()
    kept: tuple[tuple[str, str], ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.runs or self.orphan_notes or self.pending_refs)


def clean(run: str | None, *, cwd: Path, all_runs: bool = False,
          dry_run: bool = False) -> CleanPlan:
    if (run is None) == (not all_runs):
        raise ValueError("give exactly one of a run id and all_runs")
    repo = GitRepo.open(cwd)
    if run is not None:
        return _clean_one(repo, check_run_id(run), dry_run)
    return _clean_all(repo, dry_run)


def _clean_one(repo: GitRepo, run: str, dry_run: bool) -> CleanPlan:
    if run not in repo.runs_with_traces():
        raise RepositoryError(f"there is no run {run} in this repository")
    _refuse_live(repo, run)
    if dry_run:
        pending = _pending_refs(repo)
        return CleanPlan(dry_run=True, runs=(_plan(repo, run, going=()),), pending_refs=pending)
    done = _remove_run(repo, run)
    pending = _pending_refs(repo)
    for ref in pending:
        repo.delete_ref(ref)
    return CleanPlan(dry_run=False, runs=(done,), pending_refs=pending)


def _clean_all(repo: GitRepo, dry_run: bool) -> CleanPlan:
    kept, runs = [], []
    for run in repo.runs_with_traces():
        holder = repo.run_lock_holder(run)
        outside = repo.foreign_checkouts(repo.list_branches(runformat.run_branches(run)))
        if holder is not None and holder.alive:
            kept.append((run, f"in use by process {holder.pid} on {holder.host}"))
        elif outside:
            branch, path = next(iter(outside.items()))
            kept.append((run, f"its branch {branch} is checked out at {path}"))
        else:
            runs.append(run)
    if dry_run:
        going = [b for run in runs for b in repo.list_branches(runformat.run_branches(run))]
        plans = tuple(_plan(repo, run, going=going) for run in runs)
        ours = {sha for plan in plans for sha in plan.notes}
        orphans = [] if kept else [sha for sha in repo.unshared_notes(going, orphans=True)
                                   if sha not in ours]
        return CleanPlan(dry_run=True, runs=plans, orphan_notes=tuple(orphans),
                         pending_refs=_pending_refs(repo), kept=tuple(kept))
    done = []
    for run in runs:
        try:
            done.append(_remove_run(repo, run))
        except RunLocked as exc:     # a process took the run between listing and locking
            kept.append((run, str(exc)))
    orphans = repo.unshared_notes([], orphans=True) if not kept else []
    repo.remove_notes(orphans)
    pending = _pending_refs(repo)
    for ref in pending:
        repo.delete_ref(ref)
    return CleanPlan(dry_run=False, runs=tuple(done), orphan_notes=tuple(orphans),
                     pending_refs=pending, kept=tuple(kept))


def _refuse_live(repo: GitRepo, run: str) -> None:
    holder = repo.run_lock_holder(run)
    if holder is not None and holder.alive:
        raise RunLocked(f"run {run} is in use by process {holder.pid} on {holder.host} since "
                        f"{holder.started}; clean it when that process has ended")


def _plan(repo: GitRepo, run: str, going) -> RunPlan:
    branches = sorted(repo.list_branches(runformat.run_branches(run)))
    outside = repo.foreign_checkouts(branches)
    if outside:
        branch, path = next(iter(outside.items()))
        raise RepositoryError(f"branch {branch} is checked out at {path}; switch that working "
                              f"tree to another branch before cleaning run {run}")
    lock = repo.run_lock_file(run)
    return RunPlan(run=run, branches=tuple(branches),
                   workspaces=tuple(str(p) for p in repo.run_workspaces(run)),
                   notes=tuple(repo.unshared_notes(branches, going=going)),
                   lock=str(lock) if lock else None)


def _remove_run(repo: GitRepo, run: str) -> RunPlan:
    """Workspaces, then notes, then branches (so a killed clean never strands a note), then
    the lock."""
    _refuse_live(repo, run)
    had_lock = repo.run_lock_file(run)
    repo.lock_run(run)
    try:
        plan = _plan(repo, run, going=())
        repo.remove_workspaces(run)
        repo.remove_notes(plan.notes)
        for branch in plan.branches:
            repo.delete_branch(branch)
    finally:
        repo.unlock_run(run)
    return RunPlan(run=plan.run, branches=plan.branches, workspaces=plan.workspaces,
                   notes=plan.notes, lock=str(had_lock) if had_lock else None)


def _pending_refs(repo: GitRepo) -> tuple[str, ...]:
    """Scratch notes refs, when no live process can be using one (every writer holds a lock)."""
    for run in repo.runs_with_traces():
        holder = repo.run_lock_holder(run)
        if holder is not None and holder.alive:
            return ()
    return tuple(repo.pending_note_refs())
