"""`search --ray` on a real two-node Ray cluster that loses a node mid-search.

The cluster, its PostgreSQL and its tracking server live in a network namespace the test makes
(loopback only: outside one, Ray registers the machine's other address, which tests must not
use); tests/ray_scenario.py runs there and reports what happened. Needs root (for the
namespace), `unshare`, PostgreSQL's server programs, a `postgres` user and the `cluster` extra:
skipped without them on a developer machine, required in CI (CI=true).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def require_cluster_sandbox() -> None:
    import glob
    import pwd

    missing = []
    if os.geteuid() != 0:
        missing.append("root (for a network namespace)")
    if shutil.which("unshare") is None or shutil.which("runuser") is None:
        missing.append("unshare and runuser (util-linux)")
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        missing.append("PostgreSQL's initdb")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing.append("a postgres user")
    if importlib.util.find_spec("ray") is None:
        missing.append('Ray (pip install -e ".[cluster]")')
    if missing:
        reason = "a two-node Ray cluster in a network namespace needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI provides them)")
        pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.faults
def test_a_ray_search_that_loses_a_node_mid_search_ends_with_the_whole_budget(tmp_path):
    require_cluster_sandbox()
    cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    done = subprocess.run(
        [*cmd, sys.executable, str(HERE / "ray_scenario.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    facts_file = tmp_path / "facts.json"
    assert done.returncode == 0 and facts_file.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads(facts_file.read_text())
    log = facts["log"]
    assert facts["exit"] == 0, log[-5000:]
    trials, runs, node2 = facts["trials"], facts["runs"], facts["node2"]
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    # the whole budget, on both nodes, and the trial the lost node was training settled
    assert len(finished) == facts["n_trials"]
    nodes = {t["node"] for t in finished}
    assert len(nodes) == 2 and node2 in nodes, trials
    assert facts["killed_trials"], "the node was killed while it trained nothing"
    for number in facts["killed_trials"]:
        lost = next(t for t in trials if t["number"] == number)
        assert lost["state"] == "FAIL" and "died" in lost["fail_reason"], lost
        assert [t["retry_of"] for t in finished].count(number) == 1  # queued again, once
    assert not [t for t in trials if t["state"] == "RUNNING"]
    # MLflow: one parent, one champion, nothing RUNNING, no finished trial trained twice
    kinds = [r["tags"].get("pipeline.kind") for r in runs]
    assert kinds.count("study") == 1 and kinds.count("champion") == 1, kinds
    assert not [r for r in runs if r["status"] == "RUNNING"]
    trial_runs = [r for r in runs if "pipeline.trial" in r["tags"]]
    done_runs = [int(r["tags"]["pipeline.trial"]) for r in trial_runs if r["status"] == "FINISHED"]
    assert sorted(done_runs) == sorted(t["number"] for t in finished)  # one run each
    lost_runs = [r for r in trial_runs if r["status"] != "FINISHED"]
    assert [int(r["tags"]["pipeline.trial"]) for r in lost_runs] == facts["killed_trials"]
    # each trial run names where it ran
    for r in trial_runs:
        trial = next(t for t in trials if t["number"] == int(r["tags"]["pipeline.trial"]))
        assert r["tags"]["pipeline.ray_node"] == trial["node"] and r["tags"]["pipeline.host"]
    parent = next(r for r in runs if r["tags"].get("pipeline.kind") == "study")
    assert {r["tags"]["mlflow.parentRunId"] for r in trial_runs} == {parent["run_id"]}
    # one champion registered, once
    assert len(facts["versions"]) == 1 and facts["versions"][0]["champion"]
    assert "champion = best trial" in log and "marked FAIL (queued again)" in log
