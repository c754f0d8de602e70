"""The on-disk cache of prepared data (pipeline/cache.py via stages.prepare): a rerun reads the
arrays back memory-mapped without parsing the CSV, an edited or damaged cache is rebuilt, and
processes starting together parse the file once and share one entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import config, data, stages

REPO = Path(__file__).resolve().parent.parent


def write_csv(path: Path, rows: int = 60, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)).round(3), columns=["a", "b", "c", "d"])
    frame["label"] = np.array(["cat", "dog", "eel"])[np.arange(rows) % 3]
    frame.to_csv(path, index=False)


def params_for(workdir: Path) -> config.Params:
    return config.load(
        REPO / "params" / "default.yaml",
        [
            f"data.source={workdir / 'data.csv'}",
            f"tracking.uri=sqlite:///{workdir / 'mlruns' / 'mlflow.db'}",
        ],
    )


def entries(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "mlruns" / "cache").iterdir() if p.is_dir())


def assert_same(a: stages.Prepared, b: stages.Prepared) -> None:
    for name in ("X", "y"):
        np.testing.assert_array_equal(getattr(a.dataset, name), getattr(b.dataset, name))
    assert (a.dataset.classes, a.dataset.feature_names, a.dataset.task) == (
        b.dataset.classes,
        b.dataset.feature_names,
        b.dataset.task,
    )
    for part in ("raw", "scaled"):
        for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
            left, right = getattr(getattr(a, part), name), getattr(getattr(b, part), name)
            assert left.dtype == right.dtype, (part, name)
            np.testing.assert_array_equal(left, right, err_msg=f"{part}.{name}")
    np.testing.assert_array_equal(a.scaler.minimum, b.scaler.minimum)
    np.testing.assert_array_equal(a.scaler.span, b.scaler.span)


def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the CSV was parsed again")

    monkeypatch.setattr(data, "read_csv", refuse)


def uncached(params: config.Params) -> stages.Prepared:
    dataset = data.load(params.data)
    raw = data.split(dataset, params.split, seed=params.seed)
    scaled, scaler = data.normalize(raw)
    return stages.Prepared(dataset, raw, scaled, scaler)


def test_a_rerun_memory_maps_the_prepared_arrays_without_parsing_the_csv(workdir, monkeypatch):
    write_csv(workdir / "data.csv")
    params = params_for(workdir)
    first = stages.prepare(params)
    assert_same(first, uncached(params))
    no_parsing(monkeypatch)
    again = stages.prepare(params)
    assert_same(again, first)
    assert isinstance(again.scaled.X_train, np.memmap) and not again.scaled.X_train.flags.writeable
    assert again.dataset.classes == ("cat", "dog", "eel")
    (entry,) = entries(workdir)
    assert json.loads((entry / "meta.json").read_text())["digest"] == first.dataset.digest()
    # other split params or another seed: another entry, built from the file
    monkeypatch.undo()
    other = config.with_values(params, {"seed": 7, "split.val_fraction": 0.3})
    assert_same(stages.prepare(other), uncached(other))
    assert len(entries(workdir)) == 2


def test_an_edited_csv_is_prepared_again_and_its_stale_entry_removed(workdir):
    write_csv(workdir / "data.csv", seed=0)
    params = params_for(workdir)
    stages.prepare(params)
    write_csv(workdir / "data.csv", seed=1)  # same size and layout, other numbers
    assert_same(stages.prepare(params), uncached(params))
    assert len(entries(workdir)) == 1


def test_a_damaged_entry_is_rebuilt(workdir, monkeypatch):
    write_csv(workdir / "data.csv")
    params = params_for(workdir)
    stages.prepare(params)
    (entry,) = entries(workdir)
    biggest = max(entry.glob("*.npy"), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:-16])  # a short file, as after a crash
    expected = uncached(params)
    assert_same(stages.prepare(params), expected)
    no_parsing(monkeypatch)
    assert_same(stages.prepare(params), expected)  # the rebuilt entry reads back


def test_a_cache_that_cannot_be_written_costs_only_the_speed_up(workdir, monkeypatch):
    write_csv(workdir / "data.csv")
    params = params_for(workdir)

    def full_disk(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    assert_same(stages.prepare(params), uncached(params))
    assert entries(workdir) == [] and os.listdir(workdir / "mlruns" / "cache") != []


PREPARE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_cache
from pipeline import data, stages
parsed = []
real = data.read_csv
data.read_csv = lambda *a, **k: parsed.append(1) or real(*a, **k)
workdir = Path({workdir!r})
params = test_cache.params_for(workdir)
(workdir / sys.argv[1]).touch()
while not (workdir / "go").exists():
    time.sleep(0.001)
prep = stages.prepare(params)
print(len(parsed), prep.dataset.digest(), float(prep.scaled.X_train.sum()))
"""


def test_processes_starting_together_parse_once_and_share_one_entry(workdir, monkeypatch):
    write_csv(workdir / "data.csv", rows=30000)  # big enough that the two really overlap
    code = PREPARE.format(tests=str(Path(__file__).parent), workdir=str(workdir))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"ready{i}"], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    start = time.monotonic()
    while not all((workdir / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() - start < 120 and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    (workdir / "go").touch()
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == [0, 1]  # one parsed, the other read the cache
    assert outs[0][1:] == outs[1][1:]  # the same data
    cache = workdir / "mlruns" / "cache"
    assert len(entries(workdir)) == 1 and not list(cache.glob(".tmp-*"))
    expected = uncached(params_for(workdir))
    no_parsing(monkeypatch)
    assert_same(stages.prepare(params_for(workdir)), expected)
