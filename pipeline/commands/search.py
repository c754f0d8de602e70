"""`search` (also the bare command): the staged pipeline with a tracked Optuna study.

Any number of processes may run this same command on the same study at once, on this machine
or many; `--workers K` simply starts K-1 more of them here. The study itself (parent run,
trials, champion) is pipeline.study's job; this module parses, starts workers and prints.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipeline import machine, protocol, workers
from pipeline.commands.common import add_common, load_params, make_tracker
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline import config
    from pipeline.champion import Outcome
    from pipeline.study import TrackedStudy, TrialSummary

log = logging.getLogger("pipeline")


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
    p.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the workers as Ray tasks on the cluster at ADDRESS (auto, HOST:PORT or "
        "ray://HOST:10001): --workers of them (default: the cluster's CPUs / "
        "search.worker_cpus); needs a --storage and --tracking-uri every node reaches and "
        'pip install -e ".[cluster]"',
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
        return machine.auto_workers()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number or `auto`") from None


def main(args: argparse.Namespace) -> int:
    from pipeline import champion

    params = load_params(args)
    if args.ray:
        from pipeline import cluster

        cluster.connect(args.ray)
        if args.workers is None:
            args.workers = cluster.default_workers(params.search.worker_cpus)
    if args.workers is None:
        args.workers = machine.default_workers()
    if args.workers < 1:
        raise PipelineError(f"--workers {args.workers}: give 1 or more worker processes.")
    tracked = _open(args, params)
    params = tracked.params  # `auto` metrics made concrete for the study's data
    progress = _progress(params.search.n_trials, params.search.metrics[0])
    deadline = args.deadline
    if deadline is None and params.search.timeout is not None:
        deadline = time.time() + params.search.timeout  # one moment for every worker
    plan = workers.WorkerPlan(
        tuple(args.argv), args.workers, params.search.recycle_after or None, deadline
    )
    executor = _ray_workers(args, tracked, plan) if args.ray else workers.LocalProcesses()
    recycled = False
    with tracked.tracker.run(f"study-{tracked.name}", resume_id=tracked.parent_id):
        try:
            if args.spawned:
                ran = tracked.run_trials(progress, max_trials=args.max_trials, deadline=deadline)
                recycled = args.max_trials is not None and ran >= args.max_trials
            elif args.ray:
                workers.supervise_remote(tracked, plan, executor)
            else:
                workers.supervise(tracked, plan, executor, progress)
            tracked.reconcile()  # closes trial runs the store could not close while it was away
            # A recycled worker leaves the study open: a fresh process takes its slot, and the
            # last worker standing logs the study and makes the champion (once, for the best
            # of all trials, not of those so far).
            outcome = None if recycled else champion.finish(tracked)
        except BaseException:
            executor.stop()
            tracked.reconcile()
            if not args.spawned:
                _print_study(tracked, params)
            raise
    if args.spawned or outcome is None:  # only a spawned worker is ever recycled
        return workers.RECYCLED if recycled else 0
    _print_study(tracked, params)
    best_first = None if params.search.multi_objective else params.search.directions[0]
    _print_outcome(outcome, params, tracked.tracker.ui_hint(best_first=best_first))
    return 0


def _ray_workers(
    args: argparse.Namespace, tracked: TrackedStudy, plan: workers.WorkerPlan
) -> workers.Executor:
    """The plan's workers as Ray tasks, each told the study's resolved params, its storage and
    tracking store by absolute address (a task's working directory is Ray's own)."""
    from pipeline import cluster, config
    from pipeline.storage import default_storage

    storage = args.storage or default_storage()
    for given, what in ((storage, "--storage"), (tracked.tracker.uri, "--tracking-uri")):
        if not given.startswith(("postgresql", "grpc://", "http://", "https://")):
            log.warning("%s is a local file: every Ray node must see it at the same path", what)
    sp = tracked.params.search
    job = cluster.RayJob(
        config.with_values(tracked.params, {"tracking.uri": tracked.tracker.uri}),
        tracked.name,
        storage,
        tracked.storage,
        plan.recycle_after,
        plan.deadline,
    )
    tracked.place(None, cluster.lost_nodes)  # the driver settles lost nodes' trials too
    return cluster.RayWorkers(job, tracked.prep, cpus=sp.worker_cpus, gpus=sp.worker_gpus)


def _open(args: argparse.Namespace, params: config.Params) -> TrackedStudy:
    """Data prepared once, Keras started for the worker count, the study opened (or resumed)
    and reconciled with the store; says where it stands."""
    from pipeline import stages
    from pipeline.storage import default_storage, make_storage
    from pipeline.study import TrackedStudy
    from pipeline.uris import mask_secret

    prep = stages.prepare(params)
    params = stages.resolve_metric(params, prep)  # `auto` made concrete; a wrong one refused
    # A --workers child is sized by its parent: the thread settings reach it in its environment.
    stages.start_keras(workers=args.workers)
    name = args.study or stages.experiment_name(params)
    storage_url = args.storage or default_storage()
    tracked = TrackedStudy.open(
        params,
        prep,
        make_tracker(params),
        name=name,
        storage=make_storage(storage_url),
        storage_display=mask_secret(storage_url),
        new=args.new and not args.spawned,
    )
    tracked.reconcile()
    before, ds = tracked.study.counts(), prep.dataset
    log.log(
        logging.DEBUG if args.spawned else logging.INFO,  # said once, by the parent
        "study %r: %d/%d trials finished before this run; data %s (%d rows, %s)",
        name,
        before.finished,
        params.search.n_trials,
        ds.name,
        len(ds.y),
        ds.task,
    )
    return tracked


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
    tie = [] if sp.multi_objective else [f"user_attrs_{protocol.TIEBREAK}"]  # the second key
    cols = ["number", "value", *sp.metrics[1:], *tie, *[f"params_{k}" for k in sp.space]]
    rows = [{_column(c): r[c] for c in cols if c in r} for _, r in done.head(sp.top_k).iterrows()]
    if rows:
        print(report.table(rows, [_column(c) for c in cols]))
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


def _column(frame_column: str) -> str:
    """A trials-table column's name in the console's table (`params_x` -> `x`)."""
    return frame_column.removeprefix("params_").removeprefix("user_attrs_")


def _print_outcome(outcome: Outcome, params: config.Params, ui_hint: str) -> None:
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
    print(ui_hint)
