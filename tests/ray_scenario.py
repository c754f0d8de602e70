"""A search on a real two-node Ray cluster that loses a node mid-search, for test_cluster.py.

    unshare --net --pid --fork --mount-proc --kill-child python tests/ray_scenario.py OUT

Run inside a fresh network namespace (loopback only, so Ray registers 127.0.0.1 and nothing
else), it starts everything the search needs there: a private PostgreSQL (initdb + pg_ctl as
user postgres), an `mlflow server` with proxied artifacts (no shared filesystem), a Ray head
node and a second Ray node (one CPU each, fast health checks). It runs `search --ray` with two
workers, waits until the second node has finished a trial and is training another, then
SIGKILLs that node's raylet and every process under it at once (the machine is gone), and lets
the search end. What happened is written to OUT/facts.json for the test to judge: the search's
exit code and output, every Optuna trial (state, node, retry), every MLflow run of the study,
the model versions. Everything it started dies with the namespace.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_PORT, MLFLOW_PORT, RAY_PORT, NODE2_PORT = 55432, 55000, 56379, 56400
RAY = str(Path(sys.executable).parent / "ray")  # the CLI of the Python running this
STUDY = "ray-node-loss"
N_TRIALS = 8
HEALTH = {  # a dead node noticed in ~2 s rather than Ray's default 30 s
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
SEARCH = [
    *("--trials", str(N_TRIALS), "--workers", "2", "--new"),
    *("--set", "train.epochs=15", "--set", "model.hidden=[32]"),
    *("--set", "search.n_startup_trials=2", "--set", "search.pruner=none"),
]


def sh(*cmd: str, user: str | None = None, **kw) -> subprocess.CompletedProcess:
    if user:
        cmd = ("runuser", "-u", user, "--", *cmd)
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        raise SystemExit(
            f"ray_scenario: {' '.join(cmd)} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def wait_until(what: str, ready, timeout: float = 180.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"ray_scenario: {what} did not happen within {timeout:.0f} s")


def start_postgres(base: Path) -> str:
    data = base / "pg"
    sh(pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", user="postgres")
    opts = f"-p {PG_PORT} -k {base} -c listen_addresses=127.0.0.1"
    sh(
        pg_bin("pg_ctl"),
        "-D",
        str(data),
        "-o",
        opts,
        "-l",
        str(base / "pg.log"),
        "-w",
        "start",
        user="postgres",
    )
    return f"postgresql://postgres@127.0.0.1:{PG_PORT}/postgres"


def start_mlflow(out: Path) -> str:
    """The tests' own `mlflow server` (conftest.mlflow_server: artifacts proxied, SQLite in
    `out`, no job runners), once it answers."""
    from conftest import mlflow_server, wait_for_http  # this script's directory is tests/

    uri = f"http://127.0.0.1:{MLFLOW_PORT}"
    mlflow_server(out, MLFLOW_PORT)
    if wait_for_http(f"{uri}/health") != 200:
        raise SystemExit("ray_scenario: the tracking server answers, but not healthy")
    return uri


def start_ray() -> None:
    """Two nodes, each with its own session directory (as two machines would: one node's log
    monitor does not also forward the other's workers' lines)."""
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    sh(
        RAY,
        "start",
        "--head",
        "--port",
        str(RAY_PORT),
        "--include-dashboard=false",
        "--system-config",
        json.dumps(HEALTH),
        *common,
    )
    sh(
        RAY,
        "start",
        "--address",
        f"127.0.0.1:{RAY_PORT}",
        "--node-manager-port",
        str(NODE2_PORT),
        "--temp-dir",
        tempfile.mkdtemp(prefix="ray2-"),  # short: Ray's socket paths must fit 107 bytes
        *common,
    )


def processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of every process (of the namespace: /proc is its own)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            found[int(entry.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return found


def node2() -> tuple[str, int]:
    """The second node's Ray id and its raylet's pid."""
    code = (
        f"import json, ray; ray.init(address='127.0.0.1:{RAY_PORT}', logging_level='ERROR');"
        "print(json.dumps([n['NodeID'] for n in ray.nodes()"
        f" if n['NodeManagerPort'] == {NODE2_PORT}]))"
    )
    ids = json.loads(sh(sys.executable, "-c", code).stdout.strip().splitlines()[-1])
    raylets = [
        pid
        for pid, (_, argv) in processes().items()
        if argv and argv[0].endswith("raylet") and f"--node_manager_port={NODE2_PORT}" in argv
    ]
    assert len(ids) == 1 and len(raylets) == 1, (ids, raylets)
    return ids[0], raylets[0]


def trials(storage: str) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(study_name=STUDY, storage=storage)
    except KeyError:
        return []
    return [
        {
            "number": t.number,
            "state": t.state.name,
            **{k: t.user_attrs.get(k) for k in ("node", "worker", "retry_of", "fail_reason")},
        }
        for t in study.get_trials(deepcopy=False)
    ]


def kill_node(raylet: int) -> list[int]:
    """SIGKILL the raylet and every process under it in one go: the node's machine is gone."""
    procs, doomed = processes(), {raylet}
    while True:
        more = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        if not more:
            break
        doomed |= more
    for pid in doomed:
        os.kill(pid, signal.SIGKILL)
    return sorted(doomed)


def runs(uri: str) -> tuple[list[dict], list[dict]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("default")
    found = client.search_runs([exp.experiment_id], f"tags.`pipeline.study` = '{STUDY}'")
    facts = [
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "tags": dict(r.data.tags),
            "metrics": dict(r.data.metrics),
        }
        for r in found
    ]
    champion = client.get_model_version_by_alias("default", "champion").version
    versions = [
        {"version": v.version, "run_id": v.run_id, "champion": v.version == champion}
        for v in client.search_model_versions("name = 'default'")
    ]
    return facts, versions


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: the namespace's loopback starts down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, siocgifflags, struct.pack("16sH", b"lo", 0))
        flags = struct.unpack("16sH", got[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian's packages put it."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    if not found:
        raise SystemExit(f"ray_scenario: {name} not found (install PostgreSQL's server)")
    return found if isinstance(found, str) else found[0]


def main(out: Path) -> None:
    loopback_up()
    # Ray's token authentication, as the README's recipe runs it: every node and the driver
    # hold the cluster's token (here through the environment they inherit).
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    base = Path(tempfile.mkdtemp(prefix="ray-pg-"))  # postgres must reach it: not under /root
    os.chmod(base, 0o755)
    sh("chown", "postgres", str(base))
    storage = start_postgres(base)
    uri = start_mlflow(out)
    start_ray()
    node_id, raylet = node2()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "pipeline.run",
        "search",
        "--ray",
        f"127.0.0.1:{RAY_PORT}",
        "--storage",
        storage,
        "--tracking-uri",
        uri,
        "--study",
        STUDY,
        *SEARCH,
    ]
    log = open(out / "search.log", "w")  # noqa: SIM115 - open while the search runs
    search = subprocess.Popen(argv, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)

    def node2_mid_second_trial() -> bool:
        if search.poll() is not None:
            raise SystemExit(f"ray_scenario: the search ended ({search.returncode}) too soon")
        mine = [t for t in trials(storage) if t["node"] == node_id]
        done = [t for t in mine if t["state"] in ("COMPLETE", "PRUNED")]
        return bool(done) and any(t["state"] == "RUNNING" for t in mine)

    wait_until("a second trial on node 2", node2_mid_second_trial, timeout=600, every=0.2)
    killed_at = [
        t["number"] for t in trials(storage) if t["node"] == node_id and t["state"] == "RUNNING"
    ]
    killed = kill_node(raylet)
    try:
        code = search.wait(timeout=900)
    except subprocess.TimeoutExpired:
        search.kill()
        code = "timeout"
    run_facts, versions = runs(uri)
    facts = {
        "exit": code,
        "log": (out / "search.log").read_text()[-20000:],
        "n_trials": N_TRIALS,
        "node2": node_id,
        "killed_trials": killed_at,
        "killed_pids": killed,
        "trials": trials(storage),
        "runs": run_facts,
        "versions": versions,
    }
    (out / "facts.json").write_text(json.dumps(facts, indent=1))
    subprocess.run([RAY, "stop", "--force"], capture_output=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
