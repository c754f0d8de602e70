"""Where a search's workers run, behind one seam: an `Executor` starts more workers of a plan,
says which ended, and stops them all.

Every worker is the same command on the same study (the study lives in its storage, so the
workers need nothing from each other): `--workers K` is this process plus K-1 more. Today's
executor, `LocalProcesses`, starts them as processes on this machine; a cluster executor is
another implementation of the same four methods. `supervise` is the loop that keeps the plan's
worker count while the study has trials left, recycling workers that ran their share.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pipeline import interrupts

if TYPE_CHECKING:
    from pipeline.study import TrackedStudy, TrialSummary

log = logging.getLogger("pipeline")

RECYCLED = 75  # a worker's exit code: it ran its `recycle_after` trials, start a fresh one


@dataclass(frozen=True)
class WorkerPlan:
    """What every worker of one command is told: the command line, how many workers in all,
    how many trials each may run before it is replaced, and when to stop starting trials."""

    argv: tuple[str, ...]  # the command as parsed (each worker repeats it)
    workers: int  # processes in all, this one included
    recycle_after: int | None = None  # trials per worker before a fresh one takes its slot
    deadline: float | None = None  # seconds since the epoch: no trial starts after it

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def worker_argv(self) -> list[str]:
        """A worker's command line: the same command as one worker of this plan (`--new`
        dropped: only the first process may discard the study)."""
        argv = [a for a in self.argv if a != "--new"] + ["--workers", "1", "--spawned"]
        if self.recycle_after:
            argv += ["--max-trials", str(self.recycle_after)]
        if self.deadline is not None:
            argv += ["--deadline", repr(self.deadline)]
        return argv


class Executor(Protocol):
    """Runs workers of a plan somewhere; `supervise` drives it."""

    def start(self, plan: WorkerPlan, k: int) -> None:
        """Start `k` more workers of `plan`."""

    def ended(self) -> list[int]:
        """The exit codes of the workers that ended since the last call."""

    def wait(self) -> bool:
        """Block until a worker ends; False (at once) when none is running."""

    def stop(self) -> None:
        """Stop every running worker (each ends its runs KILLED) and wait for them."""


class LocalProcesses:
    """Workers as processes of this machine (`python -m pipeline.run` with the worker argv).

    They inherit this process's backend thread settings, which `model.configure_threads` put
    in its environment for the whole --workers count.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._reported: set[int] = set()

    def start(self, plan: WorkerPlan, k: int) -> None:
        cmd = [sys.executable, "-m", "pipeline.run", *plan.worker_argv()]
        self._procs += [subprocess.Popen(cmd) for _ in range(k)]

    def ended(self) -> list[int]:
        codes = []
        for p in self._procs:
            if p.poll() is not None and p.pid not in self._reported:
                self._reported.add(p.pid)
                codes.append(p.returncode)
        return codes

    def wait(self) -> bool:
        if all(p.poll() is not None for p in self._procs):
            return False
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # until a child exits (not reaped)
        return True

    def stop(self) -> None:
        for p in self._procs:
            p.terminate()  # SIGTERM: they end their runs KILLED and mark their trials
        for p in self._procs:
            p.wait()


def supervise(
    tracked: TrackedStudy,
    plan: WorkerPlan,
    executor: Executor,
    progress: Callable[[TrialSummary], None],
) -> None:
    """Trials here and in `plan.workers - 1` more workers until the budget is met.

    Keras/TensorFlow memory grows a little with every trial a process trains, so with
    `recycle_after: N` no process trains more than N trials: this one runs its first N, and
    every worker that ran its N (this one included) is replaced by a fresh one while trials
    remain. A worker that stopped for any other reason (its own failures, a signal) is not
    replaced; this process tops the budget up at the end instead. Nothing starts a trial
    after the plan's deadline.
    """
    k = min(plan.workers, tracked.budget_left())  # no worker starts without a trial to run
    if k > 1 and not plan.past_deadline():
        log.info(
            "%d worker processes on this machine (`--workers 1` for a reproducible trial order)", k
        )
        executor.start(plan, k - 1)
    ran = tracked.run_trials(progress, max_trials=plan.recycle_after, deadline=plan.deadline)
    replace = 1 if plan.recycle_after and ran >= plan.recycle_after else 0  # this one's slot
    while True:
        interrupts.check()  # a Ctrl-C swallowed while waiting stops the workers here
        replace += _recycled(executor.ended())
        if replace and tracked.budget_left() > 0 and not plan.past_deadline():
            executor.start(plan, replace)
        replace = 0
        if not executor.wait():
            break
    tracked.run_trials(progress, deadline=plan.deadline)  # tops up after failures or deaths


def _recycled(codes: Sequence[int]) -> int:
    return sum(code == RECYCLED for code in codes)


def supervise_remote(tracked: TrackedStudy, plan: WorkerPlan, executor: Executor) -> None:
    """`plan.workers` workers elsewhere (a cluster) until the budget is met; none here.

    A worker that ran its `recycle_after` trials is replaced while trials remain. Once all
    have ended, trials still missing (workers that failed, or trials of lost workers that the
    reconciliation queued again after the others stopped) get a new round of workers, as long
    as the round before finished any trial: a setup that finishes nothing stops here.
    """
    tracked.reconcile()
    finished = tracked.study.counts().finished
    while tracked.budget_left() > 0 and not plan.past_deadline():
        log.info("%d workers on the cluster", min(plan.workers, tracked.budget_left()))
        executor.start(plan, min(plan.workers, tracked.budget_left()))
        while executor.wait():
            interrupts.check()
            recycled = _recycled(executor.ended())
            if recycled and tracked.budget_left() > 0 and not plan.past_deadline():
                executor.start(plan, recycled)
        tracked.reconcile()  # the trials of workers lost with their node, if any are left
        now = tracked.study.counts().finished
        if now == finished:
            log.error("stopping: a round of cluster workers finished no trial (see above)")
            return
        finished = now
