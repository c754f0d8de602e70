"""Storage scaling: how many worker processes one study carries. P processes (1, 4, 16, 64)
start through one barrier and run the real search layer (pipeline.study: open, parent
election, reconciliation, the budget rule, ask/tell, progress) with a stub trainer that
trains nothing, so the time is all coordination. Storages: the default journal file,
PostgreSQL (a fresh database per case), and Optuna's gRPC storage proxy in front of it.

Prints, per case: trials per second (study-wide), coordination seconds per trial (process
seconds spent per trial, i.e. what each trial costs a worker beyond its training), and how the
per-trial cost grows from the first to the last quarter of the study (1.0 = flat).

    python bench/scaling.py [--procs 1 4 16 64] [--trials 400] [--storages journal postgres grpc]
                            [--tracking none|server]

`--sampler random` takes TPE's own per-trial cost (it reads every trial) out of the figures.
`--tracking server` adds one MLflow run per trial through a real `mlflow server` on PostgreSQL.
Needs PostgreSQL on 127.0.0.1:5432 (PIPELINE_BENCH_PG_URL overrides) for the RDB cases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from pipeline.storage import make_storage

PG = os.environ.get(
    "PIPELINE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


SERVER_POOL = {  # and no GenAI job runners, as in the README's recipe
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "4",
    "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "0",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


# -- the worker ---------------------------------------------------------------------------------


class NullTracker:
    """pipeline.study.StudyTracker doing nothing, so the bench measures coordination alone."""

    experiment_id = "0"

    def __init__(self) -> None:
        self._n = 0

    def create_run(self, name: str, **_: object) -> str:
        self._n += 1
        return f"{os.getpid()}-{self._n}"

    @contextlib.contextmanager
    def run(self, name: str, **kw: object) -> Iterator[str]:
        yield str(kw.get("resume_id") or self.create_run(name))

    @contextlib.contextmanager
    def live_metrics(self, run_id: str) -> Iterator[SimpleNamespace]:
        yield SimpleNamespace(run_id=run_id, final_tags={}, add_params=lambda params: None)

    def exists(self, run_id: str | None) -> bool:
        return bool(run_id)

    def running_trial_runs(self, parent_id: str) -> list:
        return []

    def trial_result(self, run_id: str) -> None:
        return None

    def set_tags(self, run_id: str, tags: object) -> None:
        return None

    def end_run(self, run_id: str, status: str) -> None:
        return None

    def log_params(self, run_id: str, params: object) -> None:
        return None

    def log_text(self, run_id: str, text: str, name: str) -> None:
        return None

    def log_dataset(self, run_id: str, dataset: object, **_: object) -> None:
        return None


def worker(a: argparse.Namespace) -> None:
    from pipeline import config, stages
    from pipeline.study import TrackedStudy
    from pipeline.tracking import LiveMetrics, Tracker
    from pipeline.trainers import Trained

    params = config.validate(
        config.apply_overrides(
            {},
            {
                "name": "scale",
                "data": {"source": "iris"},
                "search": {
                    "n_trials": a.trials,
                    "sampler": a.sampler,
                    "pruner": "none",
                    "space": {
                        "model.dropout": {"low": 0.0, "high": 0.5},
                        "model.activation": {"choices": ["relu", "tanh", "elu"]},
                    },
                },
            },
        )
    )
    prep = stages.prepare(params)

    def stub(p: config.Params, live: LiveMetrics, on_epoch: object) -> Trained:
        return Trained({"val_accuracy": 1.0 - p.model.dropout}, 1, False)

    times: list[tuple[int, float]] = []
    gate = Path(a.gate)
    (gate / f"{a.name}.ready").touch()
    while not (gate / "go").exists():
        time.sleep(0.001)
    started = time.perf_counter()
    tracker = Tracker(a.tracking_uri, "scale") if a.tracking_uri else NullTracker()
    storage = make_storage(a.storage)
    phases = {"storage": time.perf_counter() - started}
    study = TrackedStudy.open(
        params,
        prep,
        tracker,  # type: ignore[arg-type]
        name="scale",
        storage=storage,
        storage_display="bench",
        trainer=stub,
    )
    phases["study"] = time.perf_counter() - started
    study.reconcile()
    opened = time.perf_counter() - started
    last = [time.perf_counter()]

    def tick(s: object) -> None:
        now = time.perf_counter()
        times.append((s.number, now - last[0]))  # type: ignore[attr-defined]
        last[0] = now

    study.run_trials(tick)
    Path(a.out).write_text(json.dumps({"open": opened, "phases": phases, "trials": times}))


# -- the driver ---------------------------------------------------------------------------------


def fresh_pg() -> str:
    import psycopg

    name = f"scale_{os.getpid()}_{os.urandom(3).hex()}"
    with psycopg.connect(PG.replace("+psycopg", ""), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return PG.rsplit("/", 1)[0] + "/" + name


def drop_pg(url: str) -> None:
    import psycopg

    base, name = url.replace("+psycopg", "").rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit("a helper server died at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)


@contextlib.contextmanager
def store(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "journal":
        yield str(tmp / "journal.log")
        return
    url = fresh_pg()
    server = None
    try:
        if kind == "grpc":
            port = free_port()
            code = (
                "import sys, optuna; from optuna.storages import get_storage, RDBStorage\n"
                "s = get_storage(RDBStorage(sys.argv[1], engine_kwargs={'pool_pre_ping': True}))\n"
                "optuna.storages.run_grpc_proxy_server(s, host='127.0.0.1', port=int(sys.argv[2]))"
            )
            server = subprocess.Popen([sys.executable, "-c", code, url, str(port)])
            wait_port(port, server)
            yield f"grpc://127.0.0.1:{port}"
        else:
            yield url
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        drop_pg(url)


class PeakConnections:
    """The most client connections PostgreSQL served at once while the case ran (sampled every
    50 ms from pg_stat_activity; the sampler's own connection not counted)."""

    def __enter__(self) -> PeakConnections:
        import threading

        import psycopg

        self.peak, self._stop = 0, threading.Event()
        self._conn = psycopg.connect(PG.replace("+psycopg", ""), autocommit=True)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        while not self._stop.wait(0.05):
            (n,) = self._conn.execute(sql).fetchone()
            self.peak = max(self.peak, n - 1)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


@contextlib.contextmanager
def tracking_server(tmp: Path) -> Iterator[str]:
    url, port = fresh_pg(), free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", url, "--artifacts-destination", str(tmp / "art")]
    # The README's sizing: 4 server workers x a pool of 4 = at most 16 of PostgreSQL's 100.
    env = {**os.environ, **SERVER_POOL}
    server = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_port(port, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
        drop_pg(url)


def case(kind: str, procs: int, trials: int, tracking: str, sampler: str) -> dict:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        gate = tmp / "gate"
        gate.mkdir()
        with contextlib.ExitStack() as stack:
            storage = stack.enter_context(store(kind, tmp))
            uri = stack.enter_context(tracking_server(tmp)) if tracking == "server" else ""
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # as the pipeline's CLI
            cmd = [sys.executable, __file__, "--worker", storage, "--trials", str(trials)]
            cmd += ["--sampler", sampler]
            cmd += ["--gate", str(gate)] + (["--tracking-uri", uri] if uri else [])
            ps = [
                subprocess.Popen(
                    [*cmd, "--name", f"w{i}", "--out", str(tmp / f"w{i}.json")], env=env
                )
                for i in range(procs)
            ]
            while len(list(gate.glob("*.ready"))) < procs:
                if any(p.poll() not in (None, 0) for p in ps):
                    raise SystemExit(f"{kind} x{procs}: a worker died before the barrier")
                time.sleep(0.05)
            peak = stack.enter_context(PeakConnections()) if kind != "journal" else None
            t0 = time.perf_counter()
            (gate / "go").touch()
            codes = [p.wait() for p in ps]
            wall = time.perf_counter() - t0
        results = [
            json.loads((tmp / f"w{i}.json").read_text()) for i in range(procs) if codes[i] == 0
        ]
    per_trial = sorted(x for r in results for x in r["trials"])  # (trial number, seconds)
    secs = [s for _, s in per_trial]
    q = max(1, len(secs) // 4)
    early, late = statistics.median(secs[:q]), statistics.median(secs[-q:])
    return {
        "storage": kind,
        "procs": procs,
        "crashed": sum(c != 0 for c in codes),
        "trials": len(secs),
        "wall": wall,
        "trials_per_s": len(secs) / wall,
        "coord_s_per_trial": sum(secs) / len(secs),
        "open_s_max": max(r["open"] for r in results),
        "storage_s_max": max(r["phases"]["storage"] for r in results),
        "study_s_max": max(r["phases"]["study"] for r in results),
        "growth": late / early,
        "peak_pg": peak.peak if peak is not None else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--gate")
    ap.add_argument("--name")
    ap.add_argument("--out")
    ap.add_argument("--tracking-uri", default="")
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--storages", nargs="+", default=["journal", "postgres", "grpc"])
    ap.add_argument("--tracking", choices=["none", "server"], default="none")
    ap.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    a = ap.parse_args()
    if a.worker:
        a.storage = a.worker
        worker(a)
        return
    print(f"{a.trials} trials per case, stub trainer, sampler {a.sampler}, tracking: {a.tracking}")
    head = "storage   procs  crashed  trials/s  coord s/trial  open s (max)  growth q1->q4"
    head += "  peak PG conns"
    print(head)
    for kind in a.storages:
        for procs in a.procs:
            r = case(kind, procs, a.trials, a.tracking, a.sampler)
            print(
                f"{r['storage']:<9} {r['procs']:>5}  {r['crashed']:>7}  {r['trials_per_s']:>8.1f}"
                f"  {r['coord_s_per_trial']:>13.4f}  {r['open_s_max']:>12.2f}"
                f"  {r['growth']:>13.2f}  {r['peak_pg'] if r['peak_pg'] is not None else '-':>13}",
                flush=True,
            )


if __name__ == "__main__":
    main()
