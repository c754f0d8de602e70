"""Workers placed by Ray: `search --ray ADDRESS --workers K` (the only module that imports ray).

Ray is the engine that places, restarts and feeds the workers; the study still coordinates
itself through its storage, so a Ray worker is the ordinary worker loop (TrackedStudy.run_trials)
in a Ray task. The driver (the `search` command) prepares the data once and puts it in Ray's
object store, so no node reads the data files; each task opens the study in the shared storage
(PostgreSQL), logs its trials to the tracking server (artifacts proxied by it), and returns.
Ray retries a task lost with its node (`max_retries`); the study's reconciliation settles the
trial it was training, at once, because the trial carries its Ray node and Ray says the node
is dead. Each task runs in a fresh Ray worker process (`max_calls=1`): the `recycle_after`
memory rule for free. The driver trains nothing: it elects the champion once every task has
ended (workers.supervise_remote), and a driver that dies is just a worker gone: the same
command resumes the study.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline import interrupts
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline import config
    from pipeline.stages import Prepared
    from pipeline.workers import WorkerPlan

log = logging.getLogger("pipeline")

NODE_RETRIES = 3  # times Ray runs a task again after losing it with its node


@dataclass(frozen=True)
class RayJob:
    """What every Ray worker of one search is told (the data travels apart, by reference)."""

    params: config.Params  # `auto` metrics already resolved by the driver
    study: str
    storage: str  # the study's storage URL (a password in it stays in the object store)
    storage_display: str  # ... masked, for tags and messages
    max_trials: int | None  # recycle_after: trials per task before a fresh one takes its slot
    deadline: float | None  # seconds since the epoch: no trial starts after it


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (`auto`, HOST:PORT, ray://HOST:10001), or a clear
    error: Ray is an optional extra, and a wrong address must not start a local cluster."""
    # Ray folds log lines that differ only in numbers ("[repeated 3x across cluster]"): each
    # worker's progress line is what the user reads, so every one is shown (read at import).
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray
    except ImportError:
        raise PipelineError(
            'search --ray needs Ray: pip install -e ".[cluster]" (on every node of the cluster)'
        ) from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise PipelineError(
            f"--ray {address}: cannot join a Ray cluster there ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}). Start one with `ray start --head` or pass its "
            "address (HOST:PORT of the head node, or ray://HOST:10001)."
        ) from None


def default_workers(cpus_per_worker: float) -> int:
    """As many workers as the cluster's CPUs hold (at least one)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))


class RayWorkers:
    """The workers.Executor on a Ray cluster: each worker is one Ray task."""

    def __init__(self, job: RayJob, prep: Prepared, *, cpus: float, gpus: float) -> None:
        import ray

        self._job = job
        self._data = ray.put(prep)  # once, however many tasks read it
        self._task = ray.remote(max_calls=1)(_work).options(  # a fresh process per task
            num_cpus=cpus,
            num_gpus=gpus,
            max_retries=NODE_RETRIES,  # system failures only: a lost node or worker process
            retry_exceptions=False,  # an error of the search itself is not retried
            name="pipeline-worker",
        )
        self._running: list[ray.ObjectRef] = []
        self._ended: list[int] = []

    def start(self, plan: WorkerPlan, k: int) -> None:
        self._running += [self._task.remote(self._job, self._data) for _ in range(k)]

    def ended(self) -> list[int]:
        self._collect(timeout=0)
        codes, self._ended = self._ended, []
        return codes

    def wait(self) -> bool:
        while self._running:
            if self._collect(timeout=1.0):
                return True
            interrupts.check()
        return bool(self._ended)

    def stop(self) -> None:
        """Cancel every task: Ray raises KeyboardInterrupt in it, so its trial is marked FAIL
        and its run ends KILLED as on Ctrl-C; those that do not end within a minute are
        killed (their trials are settled by the next start's reconciliation)."""
        import ray

        for ref in self._running:
            ray.cancel(ref)
        _, late = ray.wait(self._running, num_returns=len(self._running), timeout=60)
        for ref in late:
            ray.cancel(ref, force=True)
        self._running = []

    def _collect(self, timeout: float) -> bool:
        import ray

        if not self._running:
            return False
        done, self._running = ray.wait(self._running, num_returns=1, timeout=timeout)
        for ref in done:
            self._ended.append(_exit_code(ref))
        return bool(done)


def _exit_code(ref: object) -> int:
    """A finished task's exit code, as a worker process's would be (1: it raised)."""
    import ray

    try:
        return int(ray.get(ref))
    except ray.exceptions.TaskCancelledError:
        return 130
    except ray.exceptions.RayError as exc:
        log.warning("a Ray worker ended with an error: %s", str(exc).splitlines()[0][:300])
        return 1


def lost_nodes() -> set[str]:
    """Ray's ids of the cluster's nodes that are gone (their workers with them)."""
    import ray

    return {n["NodeID"] for n in ray.nodes() if not n.get("Alive", False)}


def _work(job: RayJob, prep: Prepared) -> int:
    """One worker, in a Ray worker process: the ordinary worker loop on the shared study."""
    import ray

    from pipeline import stages, workers
    from pipeline.commands.search import _progress
    from pipeline.run import _quiet_frameworks
    from pipeline.storage import make_storage
    from pipeline.study import TrackedStudy
    from pipeline.tracking import Tracker

    _quiet_frameworks(verbose=False)
    os.environ.pop("MLFLOW_RUN_ID", None)
    cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(cpus))  # the task's CPUs, not the node's
    stages.start_keras(workers=1 if cpus > 1 else 2)  # 2: one thread, as a --workers child
    node = ray.get_runtime_context().get_node_id()
    params = job.params
    tracker = Tracker(params.tracking.uri, stages.experiment_name(params))
    tracked = TrackedStudy.open(
        params,
        prep,
        tracker,
        name=job.study,
        storage=make_storage(job.storage),
        storage_display=job.storage_display,
    )
    tracked.place(node, lost_nodes)
    log.info("worker %s:%d on Ray node %s", socket.gethostname(), os.getpid(), node[:12])
    with tracker.run(f"study-{tracked.name}", resume_id=tracked.parent_id):
        tracked.reconcile()
        progress = _progress(params.search.n_trials, params.search.metrics[0])
        ran = tracked.run_trials(progress, max_trials=job.max_trials, deadline=job.deadline)
        tracked.reconcile()
    return workers.RECYCLED if job.max_trials is not None and ran >= job.max_trials else 0
