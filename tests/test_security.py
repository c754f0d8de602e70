"""Security: no code runs from user-controlled input (YAML, models, pickles), and passwords in
--storage / --tracking-uri never reach the store, the logs or the console."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_postgres
from test_study import drop_database, fresh_database

from pipeline import config, run
from pipeline.errors import ConfigError

PKG = Path(__file__).resolve().parent.parent / "pipeline"

# Calls that run code or unpickle data: `module.attr` or a bare builtin name.
_FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "os.system",
    "os.popen",
    "pickle.load",
    "pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "marshal.loads",
    "shelve.open",
    "joblib.load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "yaml.load_all",
}
_FORBIDDEN_IMPORTS = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_constructs(source: str) -> list[str]:
    """What in `source` could run code from data: eval/exec, pickle, unsafe YAML, shell=True,
    allow_pickle=True, safe_mode=False."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"import {n}" for n in names if n and n.split(".")[0] in _FORBIDDEN_IMPORTS]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in _FORBIDDEN_CALLS:
            found.append(f"{name}()")
        for kw in node.keywords:
            value = kw.value.value if isinstance(kw.value, ast.Constant) else None
            if (kw.arg, value) in (("shell", True), ("allow_pickle", True), ("safe_mode", False)):
                found.append(f"{name}({kw.arg}={value})")
            if kw.arg == "Loader" and _dotted(kw.value) not in ("yaml.SafeLoader", "SafeLoader"):
                found.append(f"{name}(Loader={_dotted(kw.value)})")
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "eval(text)",
        "exec(code)",
        "import pickle",
        "yaml.load(f, Loader=yaml.Loader)",
        "yaml.unsafe_load(f)",
        "subprocess.run(cmd, shell=True)",
        "np.load(path, allow_pickle=True)",
        "keras.saving.load_model(p, safe_mode=False)",
        "pd.read_pickle(path)",
    ],
)
def test_the_checker_catches_each_unsafe_construct(snippet):
    assert unsafe_constructs(snippet)


@pytest.mark.faults
@pytest.mark.parametrize("module", sorted(PKG.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_evals_execs_unpickles_or_loads_yaml_unsafely(module: Path, fault_audit):
    fault_audit.record()
    assert unsafe_constructs(module.read_text()) == []


@pytest.mark.faults
def test_params_yaml_is_safe_loaded(tmp_path, fault_audit):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(path)
    with pytest.raises(ConfigError):  # --set values are YAML too
        config.parse_override(f"seed=!!python/object/apply:os.system ['touch {marker}']")
    fault_audit.record()
    assert not marker.exists()


@pytest.mark.faults
def test_models_load_in_keras_safe_mode(tmp_path, fault_audit):
    import keras

    from pipeline import model

    marker = tmp_path / "ran"
    net = keras.Sequential(
        [keras.Input(shape=(2,)), keras.layers.Lambda(lambda x: x * 2, name="code")]
    )
    path = tmp_path / "lambda.keras"
    net.save(path)
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        model.load(path)
    fault_audit.record()
    assert not marker.exists()


class _RunsCode:
    """Unpickling this runs `touch MARKER` (what a malicious pickled model could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.faults
def test_predict_refuses_a_pickled_model(workdir, store_uri, capsys, monkeypatch, fault_audit):
    import mlflow

    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)
    marker = workdir / "pwned"

    class Pickled(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
            return model_input

    payload = Pickled()
    payload.code = _RunsCode(marker)
    mlflow.set_tracking_uri(store_uri)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=payload)
    marker.unlink(missing_ok=True)  # MLflow's own load-back check while logging ran it once
    (workdir / "rows.csv").write_text("a,b\n1,2\n")
    argv = ["predict", "--model", info.model_uri, "--data", "rows.csv"]
    code = run.main([*argv, "--tracking-uri", store_uri])
    err = capsys.readouterr().err
    fault_audit.record()
    assert code == 2 and "pickle" in err.lower() and "Traceback" not in err
    assert not marker.exists()  # nothing in the file ran


# -- secrets -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.faults
@pytest.mark.postgres
def test_passwords_in_storage_and_tracking_uri_never_reach_store_logs_or_console(
    workdir, fault_audit
):
    """Both URL forms (`user:pw@` and `?password=`), a search and a train: the secret is in no
    MLflow param, tag or artifact, no Optuna row, no log line and nothing printed.
    PostgreSQL runs with trust auth here, so any password is accepted (and must be hidden)."""
    server = require_postgres()
    secret_a, secret_b = f"pw-a-{os.urandom(4).hex()}", f"pw-b-{os.urandom(4).hex()}"
    optuna_db, mlflow_db = fresh_database(server), fresh_database(server)

    def with_password(url: str, form: str, secret: str) -> str:
        scheme, rest = url.split("://", 1)
        user, host = rest.split("@", 1)
        if form == "userinfo":
            return f"postgresql+psycopg://{user}:{secret}@{host}"
        return f"postgresql+psycopg://{user}@{host}?password={secret}"

    storage = with_password(optuna_db, "userinfo", secret_a)
    tracking = with_password(mlflow_db, "query", secret_b)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    tiny = ["-p", "iris", "--set", "model.hidden=[4]", "--set", "train.epochs=2"]
    commands = [
        ["search", *tiny, "--trials", "2", "--storage", storage, "--tracking-uri", tracking],
        ["train", *tiny, "--tracking-uri", tracking, "-v"],
    ]
    try:
        console = ""
        for argv in commands:
            done = subprocess.run(
                [sys.executable, "-m", "pipeline.run", *argv],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr[-3000:]
            console += done.stdout + done.stderr
        dumps = ""
        for db in (optuna_db, mlflow_db):
            dumps += subprocess.run(
                ["pg_dump", "--data-only", db], capture_output=True, text=True, check=True
            ).stdout
        assert "trial" in dumps and "iris-softmax" in dumps  # the dumps hold the study
        files = [p for p in workdir.rglob("*") if p.is_file()]
        assert any(p.name == "trials.csv" for p in files)  # the artifacts are here to search
        leaks = [
            where
            for where, text in [("console", console), ("databases", dumps)]
            if secret_a in text or secret_b in text
        ]
        leaks += [
            str(p)
            for p in files
            if secret_a.encode() in p.read_bytes() or secret_b.encode() in p.read_bytes()
        ]
        fault_audit.record(leaked=len(leaks))
        assert leaks == []
    finally:
        drop_database(optuna_db)
        drop_database(mlflow_db)


def test_a_tracking_server_with_basic_auth_refuses_in_one_line_and_takes_its_account(
    workdir, fault_audit
):
    """MLflow's basic-auth app (mlflow[auth]), as the README's scale-out recipe runs it: a
    worker with no credentials, or a wrong password, exits 2 with one line that says so and
    trains nothing; with the account's credentials from MLFLOW_TRACKING_USERNAME/PASSWORD the
    same search runs. The password is nowhere in the output, the runs or the files."""
    import signal

    import mlflow
    from conftest import free_port, mlflow_server, wait_for_http

    secret = f"pw-{os.urandom(6).hex()}"
    port = free_port()
    (workdir / "srv").mkdir()
    server = mlflow_server(workdir / "srv", port, admin_password=secret)
    uri = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")} | {
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    argv = [sys.executable, "-m", "pipeline.run", "search", "-p", "iris", "--trials", "1"]
    argv += ["--set", "model.hidden=[4]", "--set", "train.epochs=2", "--tracking-uri", uri]

    def search(**credentials: str) -> subprocess.CompletedProcess:
        env = base | {f"MLFLOW_TRACKING_{k.upper()}": v for k, v in credentials.items()}
        return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True)

    try:
        wait_for_http(f"{uri}/health")
        console = ""
        for refused in (search(), search(username="admin", password="not-it")):
            console += refused.stdout + refused.stderr
            assert refused.returncode == 2, refused.stderr[-2000:]
            lines = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
            assert len(lines) == 1 and "refused the credentials (HTTP 401)" in lines[0]
            assert "Traceback" not in refused.stderr and "MLFLOW_TRACKING_USERNAME" in lines[0]
        assert not list(workdir.glob("mlruns/optuna-journal.log"))  # no study, nothing trained
        accepted = search(username="admin", password=secret)
        console += accepted.stdout + accepted.stderr
        assert accepted.returncode == 0, accepted.stderr[-3000:]
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = (
            "admin",
            secret,
        )
        try:
            client = mlflow.MlflowClient(uri)
            exp = client.get_experiment_by_name("iris-softmax")
            runs = client.search_runs([exp.experiment_id])
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        trials = [r for r in runs if "pipeline.trial" in r.data.tags]
        assert len(trials) == 1 and trials[0].info.status == "FINISHED"
        logged = " ".join(f"{r.data.params} {r.data.tags} {r.data.metrics}" for r in runs)
        files = [p for p in workdir.rglob("*") if p.is_file() and p.name != "auth.ini"]
        leaks = [w for w, text in (("console", console), ("runs", logged)) if secret in text]
        leaks += [str(p) for p in files if secret.encode() in p.read_bytes()]
        fault_audit.record(leaked=len(leaks))
        assert leaks == []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
