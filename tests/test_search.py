"""The search engine with a stand-in trial function (no Keras): budgets, failures, pruning,
seeding, resume and reaping of dead workers' trials."""

import math
import os
import socket

import optuna
import pytest
from conftest import require_postgres

from pipeline import search
from pipeline.config import SearchParams
from pipeline.errors import SearchError

SPACE = {
    "model.activation": {"choices": ["relu", "tanh"]},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.lr_decay.rate": {"low": 1e-4, "high": 1.0, "log": True},
}


def params(**kw):
    return SearchParams(space=kw.pop("space", SPACE), n_startup_trials=2, **kw)


def study_at(tmp_path, p=None, name="s", **kw):
    storage = search.make_storage(str(tmp_path / "journal.log"), retries=1)
    return search.open_study(name, storage, p or params(), seed=0, max_epochs=10, **kw)


def value_of(ctx):
    return 1.0 - ctx.values["model.dropout"]


def test_suggest_samples_every_key_and_budget_counts_finished(tmp_path):
    study = study_at(tmp_path)
    seen = []
    search.optimize(
        study, lambda c: seen.append(c.values) or value_of(c), params(), n_trials=4, timeout=None
    )
    assert len(seen) == 4 and all(set(v) == set(SPACE) for v in seen)
    assert search.counts(study)["COMPLETE"] == 4


def test_same_seed_proposes_the_same_trials(tmp_path):
    runs = []
    for i in range(2):
        study = study_at(tmp_path / str(i))
        search.optimize(study, value_of, params(), n_trials=5, timeout=None)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]


def test_failures_and_non_finite_values_fail_without_using_the_budget(tmp_path):
    study = study_at(tmp_path)

    def flaky(ctx):
        if ctx.number == 1:
            raise RuntimeError("boom")
        if ctx.number == 2:
            return math.nan
        if ctx.number == 3:
            return math.inf
        return value_of(ctx)

    search.optimize(study, flaky, params(), n_trials=3, timeout=None)
    c = search.counts(study)
    assert (c["COMPLETE"], c["FAIL"]) == (3, 3)
    reasons = [
        t.user_attrs.get(search.REASON_ATTR, "") for t in study.trials if t.state.name == "FAIL"
    ]
    assert "boom" in reasons[0] and "nan" in reasons[1] and "inf" in reasons[2]


def test_resume_continues_to_the_total_and_a_new_seed_offset_avoids_replays(tmp_path):
    study = study_at(tmp_path)
    search.optimize(study, value_of, params(), n_trials=2, timeout=None)
    again = study_at(tmp_path)
    search.optimize(again, value_of, params(), n_trials=4, timeout=None)
    assert search.counts(again)["finished"] == 4
    proposals = [tuple(sorted(t.params.items())) for t in again.trials]
    assert len(set(proposals)) == 4  # the resumed sampler did not replay trials 0 and 1


def test_changed_space_refuses_to_resume_and_new_starts_over(tmp_path):
    study = study_at(tmp_path)
    search.optimize(study, value_of, params(), n_trials=1, timeout=None)
    changed = params(space={**SPACE, "model.dropout": {"low": 0.0, "high": 0.3}})
    with pytest.raises(SearchError, match="--new"):
        study_at(tmp_path, changed)
    fresh = study_at(tmp_path, changed, new=True)
    assert len(fresh.trials) == 0


def test_pruned_trials_count_as_finished(tmp_path):
    p = params(pruner="median")
    study = study_at(tmp_path, p)

    def curve(ctx):
        from pipeline.errors import TrialPruned

        quality = 1.0 - ctx.values["model.dropout"] if ctx.number < 3 else 0.0
        for epoch in range(10):
            if ctx.should_prune(epoch, quality * epoch):
                raise TrialPruned
        return quality

    search.optimize(study, curve, p, n_trials=6, timeout=None)
    c = search.counts(study)
    assert c["finished"] == 6 and c["PRUNED"] >= 1


def test_grid_sampler_needs_choices(tmp_path):
    with pytest.raises(SearchError, match="grid sampler"):
        study_at(tmp_path, params(sampler="grid"))


def test_dead_workers_running_trial_is_failed_and_requeued(tmp_path):
    study = study_at(tmp_path)
    trial = study.ask()
    trial.set_user_attr(
        search.WORKER_ATTR, f"{socket.gethostname()}:{2**22 + 12345}"
    )  # no such pid
    trial.set_user_attr(search.RUN_ATTR, "run-abc")
    alive = study.ask()
    alive.set_user_attr(search.WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    reaped = search.reap_stale_trials(study, retries=1)
    assert reaped == [(trial.number, "run-abc")]
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[trial.number] == "FAIL" and states[alive.number] == "RUNNING"
    assert states[max(states)] == "WAITING"  # the retry, queued with the same params
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))[0]
    assert waiting.params == study.trials[trial.number].params


def test_trial_states_map_run_ids(tmp_path):
    study = study_at(tmp_path)

    def fn(ctx):
        ctx.remember(search.RUN_ATTR, f"run-{ctx.number}")
        return value_of(ctx)

    search.optimize(study, fn, params(), n_trials=2, timeout=None)
    assert search.trial_states(study) == {"run-0": "COMPLETE", "run-1": "COMPLETE"}
    assert search.best(study)[0] in (0, 1)
    frame = search.trials_frame(study)
    assert {"number", "value", "state", "params_model.dropout", "seconds"} <= set(frame.columns)


@pytest.mark.postgres
def test_postgresql_storage_shares_one_study(tmp_path):
    """Needs PostgreSQL on 127.0.0.1:5432 (or PIPELINE_TEST_PG_URL): see require_postgres."""
    pg_url = require_postgres()
    name = f"pipeline-test-{os.getpid()}"
    storage = search.make_storage(pg_url, retries=1)
    try:
        a = search.open_study(name, storage, params(), seed=0, max_epochs=10, new=True)
        search.optimize(a, value_of, params(), n_trials=2, timeout=None)
        b = search.open_study(
            name, search.make_storage(pg_url, retries=1), params(), seed=0, max_epochs=10, worker=1
        )
        search.optimize(b, value_of, params(), n_trials=3, timeout=None)
        assert search.counts(b)["COMPLETE"] == 3
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_storage_error_masks_the_password():
    with pytest.raises(SearchError) as err:
        search.make_storage("postgresql://bob:hunter2@127.0.0.1:1/none", retries=1)
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


def test_a_trial_created_after_the_budget_is_covered_steps_aside(tmp_path):
    study = study_at(tmp_path)
    first, second, third = study.ask(), study.ask(), study.ask()  # three workers mid-trial
    assert not search._surplus(study, second.number, n_trials=2)  # only `first` is ahead
    assert search._surplus(study, third.number, n_trials=2)  # first + second fill the budget
    study.tell(first, 0.5)
    study.tell(second, 0.6)
    fn_calls = []
    search.optimize(study, lambda c: fn_calls.append(c) or 1.0, params(), n_trials=2, timeout=None)
    assert fn_calls == []  # budget met: nothing more runs
    third.set_user_attr(search.REASON_ATTR, search.SURPLUS)
    study.tell(third, state=optuna.trial.TrialState.FAIL)
    c = search.counts(study)
    assert (c["finished"], c["FAIL"], c["SKIPPED"]) == (2, 0, 1)  # not reported as a failure
