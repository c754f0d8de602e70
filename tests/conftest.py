"""Shared fixtures: every test that tracks gets its own temporary store and working directory,
so nothing is ever written into the repository's own mlruns/."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# The search commands here run in one process unless a test asks for --workers (the tests of
# the `auto` default remove this); their CLI subprocesses inherit it.
os.environ["PIPELINE_WORKERS"] = "1"

REPO = Path(__file__).resolve().parent.parent

# The five knobs of the mission, as flattened param keys (what every tracked run must log).
MISSION_KEYS = (
    "model.activation",
    "model.initializer",
    "model.dropout",
    "train.batch_size",
    "train.lr_decay.kind",
    "train.lr_decay.rate",
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory made the cwd, so the default store (`./mlruns/`) lands in it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def store_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"


PG_URL = os.environ.get("PIPELINE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def require_postgres() -> str:
    """The PostgreSQL URL for tests that need a server: skip without one on a developer
    machine, fail in CI (CI=true), where .ci/run makes sure one is running."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception:  # noqa: BLE001 - any connection failure means "not available"
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable at {PG_URL} in CI")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set PIPELINE_TEST_PG_URL)")
    return PG_URL


def require_jax() -> None:
    """For tests of the JAX backend: skip without `jax` on a developer machine, fail in CI
    (CI=true), where .ci/run installs the `jax` extra."""
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("jax is not installed in CI (.ci/run installs the `jax` extra)")
        pytest.skip('jax not installed (pip install -e ".[jax]")')


def wait_for_http(url: str, timeout: float = 120.0) -> int:
    """Poll `url` until it answers; return its HTTP status, fail the test after `timeout` s."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            return urllib.request.urlopen(url, timeout=2).status
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{url} did not answer within {timeout:.0f} s")
            time.sleep(1)


def mlflow_server(
    workdir: Path, port: int, backend_uri: str | None = None, *, admin_password: str | None = None
) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port (a SQLite file in workdir unless
    `backend_uri`), artifacts in workdir; its own session, so its uvicorn workers stop with it
    (`os.killpg(server.pid, signal.SIGTERM)`). With `admin_password`: MLflow's basic-auth app
    (needs mlflow[auth]), user `admin` with that password, READ for everyone else."""
    import secrets
    import sys

    # No GenAI job runners (seven processes, ~2 GB): the README's recipe turns them off too.
    env, app = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, []
    if admin_password is not None:
        ini = workdir / "auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
            f"admin_username = admin\nadmin_password = {admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)
        app = ["--app-name", "basic-auth"]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            *app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_uri or f"sqlite:///{workdir / 'server.db'}",
            "--artifacts-destination",
            str(workdir / "server-artifacts"),
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the fault-injection suite's closing line ------------------------------------------------
# Tests marked `faults` report what each scenario left behind through `fault_audit`; the closing
# line sums what the tests that actually ran reported (so a failing scenario shows its count).

# The counts travel on each test's report (user_properties), so the line is also right when
# tests run in parallel worker processes (pytest-xdist): the summing happens where reports land.

_FAULTS: dict[str, int] = {"scenarios": 0, "lost": 0, "running": 0, "leaked": 0}
_AUDIT = "fault_audit"  # the user_properties key of a scenario's counts


class FaultAudit:
    """What one fault scenario left behind: trials lost (trained without a matching run, or a
    run without its trial), runs still RUNNING, secrets leaked. Record, then assert zero."""

    def __init__(self, node: pytest.Item) -> None:
        self._counts = {"lost": 0, "running": 0, "leaked": 0}
        node.user_properties.append((_AUDIT, self._counts))  # the same dict: filled below

    def record(self, *, lost: int = 0, running: int = 0, leaked: int = 0) -> None:
        self._counts["lost"] += lost
        self._counts["running"] += running
        self._counts["leaked"] += leaked

    def running_runs(self, store_uri: str) -> list[str]:
        """Names of the runs still RUNNING in every experiment of a store; recorded."""
        import mlflow

        client = mlflow.MlflowClient(store_uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(ids, "attributes.status = 'RUNNING'") if ids else []
        names = [r.info.run_name for r in runs]
        self.record(running=len(names))
        return names


@pytest.fixture
def fault_audit(request: pytest.FixtureRequest) -> FaultAudit:
    return FaultAudit(request.node)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    if report.passed and "faults" in report.keywords:
        _FAULTS["scenarios"] += 1
    for key, counts in report.user_properties:
        if key == _AUDIT:
            for name, n in counts.items():
                _FAULTS[name] += n
            _FAULTS.setdefault("audited", 0)
            _FAULTS["audited"] += 1


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    if _FAULTS["scenarios"] or _FAULTS.get("audited"):
        f = _FAULTS
        terminalreporter.write_line(
            f"faults: {f['scenarios']} scenarios passed, {f['lost']} lost trials, "
            f"{f['running']} RUNNING, {f['leaked']} leaked"
        )
