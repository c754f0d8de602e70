"""The package as users get it: presets ship inside it, `-p NAME` finds one by name, and a wheel
installed outside the repository runs from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import run
from pipeline.commands import common
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_the_top_level_params_folder_mirrors_the_shipped_presets():
    shipped = {p.name: p.read_bytes() for p in (REPO / "pipeline" / "presets").glob("*.yaml")}
    top = {p.name: p.read_bytes() for p in (REPO / "params").glob("*.yaml")}
    assert shipped and top == shipped  # one home: params/ must never drift from the package


@pytest.mark.parametrize("spelling", ["xor", "xor.yaml", "params/xor.yaml"])
def test_a_preset_is_found_by_name_from_any_directory(workdir, spelling):
    params = run.load_params(run.parse_args(["train", "-p", spelling]))
    assert params.name == "xor" and params.data.source == "xor"


def test_no_p_means_the_shipped_default_and_a_local_file_wins_over_a_preset_name(workdir):
    assert common.params_path(None) == common.PRESETS / "default.yaml"
    (workdir / "xor").write_text("data: {source: iris}\n")  # a file named like a preset
    assert run.load_params(run.parse_args(["train", "-p", "xor"])).data.source == "iris"


def test_an_unknown_preset_lists_the_shipped_ones(workdir):
    with pytest.raises(ConfigError) as err:
        common.params_path(Path("nosuch"))
    assert "nosuch" in str(err.value) and "xor" in str(err.value) and "default" in str(err.value)


def _pip(*argv: str, cwd: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_an_installed_wheel_runs_presets_by_name_from_another_directory(tmp_path):
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pip("wheel", "--no-deps", str(REPO), "-w", str(wheels), cwd=tmp_path)
    (wheel,) = wheels.glob("pipeline-*.whl")
    _pip("install", "--no-deps", "--target", str(target), str(wheel), cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1"}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.run", *argv],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import pipeline.run; print(pipeline.run.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target))  # the wheel's copy, not the checkout

    # The bare command finds the shipped default preset (a params error proves it was read).
    bare = cli("--trials", "0")
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert f"{target}/pipeline/presets/default.yaml" in bare.stderr, bare.stderr

    trained = cli("train", "-p", "xor", "--set", "train.epochs=2")
    assert trained.returncode == 0, trained.stderr[-3000:]
    model_uri = trained.stdout.split("model: ")[1].split()[0]
    (elsewhere / "rows.csv").write_text("x1,x2\n0,1\n1,1\n")
    scored = cli("predict", "--model", model_uri, "--data", "rows.csv")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert scored.stdout.splitlines()[0] == "prediction" and len(scored.stdout.splitlines()) == 3
    assert (elsewhere / "mlruns" / "mlflow.db").is_file()  # the store lands in the cwd
