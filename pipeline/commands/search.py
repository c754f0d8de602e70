"""`search` (also the bare command): the staged pipeline with a tracked Optuna study.

Any number of processes may run this same command on the same study at once, on this machine
or many; `--workers K` simply starts K-1 more of them here. The study itself (parent run,
trials, champion) is pipeline.study's job; this module parses, starts workers and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline import machine, protocol
from pipeline.commands.common import add_common, load_params, make_tracker
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline import config
    from pipeline.study import Outcome, TrackedStudy, TrialSummary

log = logging.getLogger("pipeline")

RECYCLED = 75  # a spawned worker's exit code: it ran its `recycle_after` trials, replace it
WORKERS_ENV = "PIPELINE_WORKERS"  # the --workers default when the flag is not given
# What `auto` budgets per worker: a digits worker holds ~1.0 GiB resident after 20 trials
# (`python bench/memory.py`: 1038.7 MiB), so a machine with little free memory gets fewer.
WORKER_MEMORY = 1.25 * 2**30


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="Optuna study over search.space, then the champion model")
    add_common(p)
    p.add_argument("--trials", type=int, help="finished trials wanted in total (n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
    p.add_argument("--study", help="study name (default: the experiment name)")
    p.add_argument("--storage", help="Optuna storage URL (default: journal file in mlruns/)")
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="worker processes on this machine, or `auto` (the default; $PIPELINE_WORKERS "
        "changes it): one single-threaded worker per CPU core, as many as free memory holds; "
        "`--workers 1` gives a reproducible trial sequence",
    )
    p.add_argument("--new", action="store_true", help="discard a study of the same name")
    p.add_argument(
        "--warm-start",
        metavar="STUDY",
        help="first try the best search.top_k param sets of an earlier study in the same storage",
    )
    p.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)  # a --workers child
    p.add_argument("--max-trials", type=int, default=None, help=argparse.SUPPRESS)
    # --timeout as one moment (seconds since the epoch) for every process of this command.
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)


def _workers(text: str) -> int:
    """A --workers value: a number, or `auto` (see auto_workers)."""
    if text == "auto":
        return auto_workers()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or `auto`") from None


def auto_workers() -> int:
    """One single-threaded worker per core this process may use (on 2 cores, two such
    processes train 1.32-1.38x more trials per minute than one: README, "Measured"), but no
    more than the free memory holds at WORKER_MEMORY each, and always at least one."""
    cores = machine.usable_cores()
    free = machine.available_memory()
    fit = cores if free is None else int(free // WORKER_MEMORY)
    return max(1, min(cores, fit))


def default_workers() -> int:
    """The worker count when --workers is not given: $PIPELINE_WORKERS, else `auto`."""
    text = os.environ.get(WORKERS_ENV, "auto")
    try:
        workers = _workers(text.strip())
    except argparse.ArgumentTypeError:
        workers = 0
    if workers < 1:
        raise PipelineError(
            f"{WORKERS_ENV}={text!r}: give a number of worker processes (1 or more) or "
            "`auto`, or unset it for `auto`."
        )
    return workers


def main(args: argparse.Namespace) -> int:
    from pipeline import stages
    from pipeline.storage import default_storage, make_storage
    from pipeline.study import TrackedStudy
    from pipeline.uris import mask_secret

    params = load_params(args)
    if args.workers is None:
        args.workers = default_workers()
    if args.workers < 1:
        raise PipelineError(f"--workers {args.workers}: give 1 or more worker processes.")
    prep = stages.prepare(params)
    params = stages.resolve_metric(params, prep)  # `auto` made concrete; a wrong one refused
    # A --workers child is sized by its parent: the thread settings reach it in its environment.
    stages.start_keras(workers=args.workers)
    tracker = make_tracker(params)
    name = args.study or stages.experiment_name(params)
    storage_url = args.storage or default_storage()
    tracked = TrackedStudy.open(
        params,
        prep,
        tracker,
        name=name,
        storage=make_storage(storage_url),
        storage_display=mask_secret(storage_url),
        new=args.new and not args.spawned,
    )
    tracked.reconcile()
    n_trials = params.search.n_trials
    before = tracked.study.counts()
    ds = prep.dataset
    log.log(
        logging.DEBUG if args.spawned else logging.INFO,  # said once, by the parent
        "study %r: %d/%d trials finished before this run; data %s (%d rows, %s)",
        name,
        before.finished,
        n_trials,
        ds.name,
        len(ds.y),
        ds.task,
    )
    progress = _progress(n_trials, params.search.metrics[0])
    workers: list[subprocess.Popen[bytes]] = []
    recycled = False
    if args.deadline is None and params.search.timeout is not None:
        args.deadline = time.time() + params.search.timeout
    with tracker.run(f"study-{name}", resume_id=tracked.parent_id):
        try:
            if args.spawned:
                ran = tracked.run_trials(
                    progress, max_trials=args.max_trials, deadline=args.deadline
                )
                recycled = args.max_trials is not None and ran >= args.max_trials
            else:
                _run_with_workers(tracked, args, progress, workers)
            tracked.reconcile()  # closes trial runs the store could not close while it was away
            # A recycled child leaves the study open: a fresh process takes its slot, and the
            # last worker standing logs the study and makes the champion (once, for the best
            # of all trials, not of those so far).
            outcome = None if recycled else tracked.finish()
        except BaseException:
            _stop(workers)
            tracked.reconcile()
            if not args.spawned:
                _print_study(tracked, params)
            raise
    if args.spawned or outcome is None:  # only a spawned child is ever recycled
        return RECYCLED if recycled else 0
    _print_study(tracked, params)
    _print_outcome(outcome, params, tracker.ui_url())
    return 0


def _run_with_workers(
    tracked: TrackedStudy,
    args: argparse.Namespace,
    progress: Callable[[TrialSummary], None],
    workers: list[subprocess.Popen[bytes]],
) -> None:
    """Trials here and in `--workers - 1` child processes until the budget is met.

    Keras/TensorFlow memory grows a little with every trial a process trains, so with
    `search.recycle_after: N` no process trains more than N trials: this one runs its first
    N, and every process that has run its N (this one included) is replaced by a fresh child
    while trials remain. A child that stopped for any other reason (its own failures, a
    signal) is not replaced; this process tops the budget up at the end instead.
    `workers` is filled in place so the caller can stop them on Ctrl-C. No process, first or
    replacement, starts a trial after `args.deadline` (the command's --timeout).
    """
    recycle = tracked.params.search.recycle_after or None
    k = min(args.workers, tracked.budget_left())  # no process starts without a trial to run
    if k > 1 and not _past(args.deadline):
        log.info(
            "%d worker processes on this machine (`--workers 1` for a reproducible trial order)", k
        )
        workers += _spawn_workers(args.argv, k - 1, recycle, args.deadline)
    ran = tracked.run_trials(progress, max_trials=recycle, deadline=args.deadline)
    replace = 1 if recycle and ran >= recycle else 0  # this process's own slot
    done: set[int] = set()
    while True:
        for w in workers:
            if w.poll() is not None and w.pid not in done:
                done.add(w.pid)
                replace += w.returncode == RECYCLED
        while replace and tracked.budget_left() > 0 and not _past(args.deadline):
            workers += _spawn_workers(args.argv, 1, recycle, args.deadline)
            replace -= 1
        replace = 0
        if all(w.poll() is not None for w in workers):
            break
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # until a child exits (not reaped)
    # Tops up if a worker's last trials failed or it died.
    tracked.run_trials(progress, deadline=args.deadline)


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def _spawn_workers(
    argv: list[str], k: int, max_trials: int | None, deadline: float | None
) -> list[subprocess.Popen[bytes]]:
    """K more starters of this very command (same argv), each running at most `max_trials`
    trials before it exits and none after `deadline`; they inherit this process's backend
    thread settings (set in its environment by model.configure_threads for the whole
    --workers count)."""
    argv = [a for a in argv if a != "--new"] + ["--workers", "1", "--spawned"]
    if max_trials:
        argv += ["--max-trials", str(max_trials)]
    if deadline is not None:
        argv += ["--deadline", repr(deadline)]
    cmd = [sys.executable, "-m", "pipeline.run", *argv]
    return [subprocess.Popen(cmd) for _ in range(k)]


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for w in workers:
        w.terminate()  # SIGTERM: they end their runs KILLED and mark their trials
    for w in workers:
        w.wait()


def _progress(n_trials: int, metric: str) -> Callable[[TrialSummary], None]:
    def show(s: TrialSummary) -> None:
        value = f"{s.value:.4f}" if s.value is not None else "-"
        best = f"{s.best.value:.4f} (#{s.best.number})" if s.best is not None else "-"
        log.info(
            "trial %d %-8s %s=%s  | finished %d/%d, best %s, pruned %d, failed %d  %.1fs",
            s.number,
            s.state,
            metric,
            value,
            s.counts.finished,
            n_trials,
            best,
            s.counts.pruned,
            s.counts.failed,
            s.seconds,
        )

    return show


def _print_study(tracked: TrackedStudy, params: config.Params) -> None:
    from pipeline import report

    c = tracked.study.counts()
    frame = tracked.study.frame()
    print(f"\nstudy: {c.complete} complete, {c.pruned} pruned, {c.failed} failed")
    if frame.empty:
        return
    sp = params.search
    done = protocol.ranked(frame, sp.directions[0])
    cols = ["number", "value", *sp.metrics[1:], *[f"params_{k}" for k in sp.space]]
    rows = [
        {c.replace("params_", ""): r[c] for c in cols if c in r}
        for _, r in done.head(sp.top_k).iterrows()
    ]
    if rows:
        print(report.table(rows, [c.replace("params_", "") for c in cols]))
    if sp.multi_objective:
        front = tracked.study.pareto()
        goals = ", ".join(f"{m} {d}" for m, d in zip(sp.metrics, sp.directions, strict=True))
        print(f"\nPareto front ({goals}):")
        print(
            report.table(
                [
                    {"trial": b.number, **dict(zip(sp.metrics, b.values, strict=True))}
                    for b in front
                ],
                ["trial", *sp.metrics],
            )
        )


def _print_outcome(outcome: Outcome, params: config.Params, ui_url: str) -> None:
    from pipeline import report

    if outcome.champion is None or outcome.best is None:
        print(f"\nno champion yet: {outcome.pending}")
        return
    best, champ = outcome.best, outcome.champion
    own = (
        "its params trained once more on all non-test rows (split.folds), evaluated once on "
        "the test split:"
        if params.split.cross_validated
        else "its own model (no retraining), evaluated once on the test split:"
    )
    how = (
        own
        if outcome.made_here
        else "already evaluated for this best trial (the test split is not used again):"
    )
    sp = params.search
    rule = f", {sp.champion} on the Pareto front" if sp.multi_objective else ""
    print(f"\nchampion = best trial {best.number} ({sp.metrics[0]} {best.value:.4f}{rule}), {how}")
    rows = [{"metric": k, "value": v} for k, v in champ.test.items()]
    print(report.table(rows, ["metric", "value"]))
    print(f"\nmodel: {champ.model}")
    print(f"open the UI:  python -m pipeline.run ui    then  {ui_url}")
