"""The Optuna layer on its own (no Keras, no MLflow): the trial protocol, budgets, seeding,
resume, locks and dead workers' trials."""

import os
import socket
import time

import optuna
import pytest
from conftest import require_postgres

from pipeline import search, storage
from pipeline.config import SearchParams
from pipeline.errors import SearchError
from pipeline.storage import find_study_id, make_storage

SPACE = {
    "model.activation": {"choices": ["relu", "tanh"]},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.lr_decay.rate": {"low": 1e-4, "high": 1.0, "log": True},
}
# The params as written, for the baseline trial (a rate outside the space's range).
CONFIGURED = {"model.activation": "tanh", "model.dropout": 0.2, "train.lr_decay.rate": 5.0}


def params(**kw):
    kw.setdefault("metric", "val_accuracy")
    return SearchParams(space=kw.pop("space", SPACE), n_startup_trials=2, **kw)


def study_at(tmp_path, p=None, name="s", **kw):
    storage = make_storage(str(tmp_path / "journal.log"))
    return search.open_study(name, storage, p or params(), seed=0, max_epochs=10, **kw)


def drive(study, n_trials, fn=lambda t: 1.0 - t.values["model.dropout"]):
    """The smallest ask/tell loop: what pipeline.study does, minus MLflow."""
    seen = []
    while True:
        c = study.counts()
        if search.budget_left(c.finished, c.running, n_trials) <= 0:
            return seen
        trial = study.ask(n_trials)
        if trial is None:
            return seen
        seen.append(trial.values)
        study.tell_complete(trial, fn(trial))


def test_budget_rule_counts_finished_and_in_flight_trials():
    assert search.budget_left(finished=3, in_flight=0, n_trials=5) == 2
    assert search.budget_left(finished=3, in_flight=2, n_trials=5) == 0
    assert search.budget_left(finished=6, in_flight=0, n_trials=5) == -1


def test_ask_samples_every_key_and_tell_records_states(tmp_path):
    study = study_at(tmp_path)
    seen = drive(study, 3)
    assert len(seen) == 3 and all(set(v) == set(SPACE) for v in seen)
    pruned, failed = study.ask(10), study.ask(10)
    pruned.should_prune(0, 0.1)
    study.tell_pruned(pruned)
    study.tell_failed(failed, "RuntimeError: boom")
    c = study.counts()
    assert (c.complete, c.pruned, c.failed, c.running, c.finished) == (3, 1, 1, 0, 4)
    reasons = [t.user_attrs.get(search.REASON_ATTR) for t in study._trials()]
    assert reasons[-1] == "RuntimeError: boom"
    assert study.best().number in (0, 1, 2)


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """The classic objective's way to sample a space (suggest_* per param): the reference the
    study's `ask(fixed_distributions=...)` must match."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif all(isinstance(spec[b], int) for b in ("low", "high")) and not spec.get("log"):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"])
        else:
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return values


def test_same_seed_proposes_the_same_trials(tmp_path):
    runs = [drive(study_at(tmp_path / str(i)), 5) for i in range(2)]
    assert runs[0] == runs[1]


def test_a_lone_process_keeps_its_stream_and_simultaneous_openers_get_distinct_ones(tmp_path):
    """The seed rule: seed + history + 7919 x (openers at that history before this one)."""
    lone = study_at(tmp_path / "lone")
    first = lone.ask(10).values
    reference = optuna.samplers.TPESampler(seed=0, n_startup_trials=2)
    ref = optuna.create_study(sampler=reference, direction="maximize")
    assert suggest(ref.ask(), SPACE) == first  # exactly what seed 0 proposes

    a, b = study_at(tmp_path / "two"), study_at(tmp_path / "two")  # both see history 0
    assert a.ask(10).values != b.ask(10).values


def test_a_lone_process_proposes_what_optunas_own_loop_proposes_for_the_seed(tmp_path):
    """The ask/tell protocol changes nothing for one process: the same trials, in order, as
    `study.optimize` with the same sampler and seed (what the CLI did before)."""
    objective = lambda values: 1.0 - values["model.dropout"]  # noqa: E731
    ours = drive(study_at(tmp_path), 8, lambda t: objective(t.values))
    reference = optuna.create_study(
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2), direction="maximize"
    )
    reference.optimize(lambda t: objective(suggest(t, SPACE)), n_trials=8)
    assert ours == [t.params for t in reference.trials]


def test_resume_continues_to_the_total_without_replaying(tmp_path):
    drive(study_at(tmp_path), 2)
    again = study_at(tmp_path)
    drive(again, 4)
    assert again.counts().finished == 4
    proposals = [tuple(sorted(t.params.items())) for t in again._trials()]
    assert len(set(proposals)) == 4


def test_changed_space_refuses_to_resume_and_new_starts_over(tmp_path):
    drive(study_at(tmp_path), 1)
    changed = params(space={**SPACE, "model.dropout": {"low": 0.0, "high": 0.3}})
    with pytest.raises(SearchError, match="--new"):
        study_at(tmp_path, changed)
    with pytest.raises(SearchError, match="maximize"):
        study_at(tmp_path, params(metric="val_loss", direction="minimize"))
    fresh = study_at(tmp_path, changed, new=True)
    assert fresh.counts().finished == 0


def test_grid_sampler_needs_choices(tmp_path):
    with pytest.raises(SearchError, match="grid sampler"):
        study_at(tmp_path, params(sampler="grid"))


def test_a_trial_asked_after_the_budget_is_covered_steps_aside(tmp_path):
    study = study_at(tmp_path)
    first, second = study.ask(2), study.ask(2)  # two workers mid-trial fill a budget of 2
    assert first is not None and second is not None
    assert study.ask(2) is None  # a third steps aside before anything runs
    c = study.counts()
    assert (c.running, c.skipped, c.failed) == (2, 1, 0)  # skipped is not a failure
    study.tell_complete(first, 0.5)
    study.tell_failed(second, "boom")
    assert study.ask(2) is not None  # a failure frees budget again


def test_dead_workers_trial_is_failed_and_requeued_or_adopted(tmp_path):
    study = study_at(tmp_path)
    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above pid_max: no such process
    gone, done, alive = study.ask(10), study.ask(10), study.ask(10)
    for t in (gone, done):
        t.remember(search.WORKER_ATTR, f"{host}:{dead_pid}")
        t.remember(search.RUN_ATTR, f"run-{t.number}")
    assert alive._trial.user_attrs[search.WORKER_ATTR] == f"{host}:{os.getpid()}"
    dead = {d.number: d for d in study.dead_trials()}
    assert set(dead) == {gone.number, done.number}
    assert dead[gone.number].run_id == f"run-{gone.number}"
    assert study.fail_dead(dead[gone.number], retries=1) is True
    study.adopt(dead[done.number], "COMPLETE", 0.75)
    states = study.trial_states()
    assert states[gone.number] == "FAIL" and states[alive.number] == "RUNNING"
    assert states[done.number] == "COMPLETE" and study.best().value == 0.75
    retry = study.ask(10)  # the queued retry comes first, with the same params
    assert retry.values == gone.values
    assert retry._trial.user_attrs["retry_of"] == gone.number


def test_a_trial_on_another_host_is_dead_only_without_a_heartbeat(tmp_path, monkeypatch):
    study = study_at(tmp_path)
    t = study.ask(10)
    t.remember(search.WORKER_ATTR, "elsewhere:123")
    assert study.dead_trials() == []  # just started: alive until the grace period passes
    monkeypatch.setattr(search, "STALE_AFTER_SECONDS", -1.0)
    assert [d.number for d in study.dead_trials()] == [t.number]


def test_the_storage_lock_excludes_other_processes(tmp_path):
    """A second process cannot take the lock while this one holds it."""
    import subprocess
    import sys

    storage = make_storage(str(tmp_path / "journal.log"))
    probe = (
        "import sys; from pipeline.storage import _slug, make_storage\n"
        "s = make_storage(sys.argv[1])\n"
        "import fcntl\n"
        "path = s.url + '.pipeline-' + _slug('x') + '.lock'\n"
        "f = open(path, 'a')\n"
        "try:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
        "except BlockingIOError:\n    print('held')\n"
    )
    run = [sys.executable, "-c", probe, str(tmp_path / "journal.log")]
    with storage.lock("x"):
        held = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    free = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert (held.strip(), free.strip()) == ("held", "free")


@pytest.mark.postgres
def test_postgresql_storage_shares_one_study():
    """Needs PostgreSQL on 127.0.0.1:5432 (or PIPELINE_TEST_PG_URL): see require_postgres."""
    pg_url = require_postgres()
    name = f"pipeline-test-{os.getpid()}"
    try:
        a = search.open_study(name, make_storage(pg_url), params(), seed=0, max_epochs=10)
        drive(a, 2)
        b = search.open_study(name, make_storage(pg_url), params(), seed=0, max_epochs=10)
        drive(b, 3)
        assert b.counts().complete == 3
    finally:
        optuna.delete_study(study_name=name, storage=pg_url)


def test_storage_error_masks_the_password():
    with pytest.raises(SearchError) as err:
        make_storage("postgresql://bob:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


@pytest.fixture
def sigint_raises():
    """SIGINT raising KeyboardInterrupt, as the CLI sets it (pipeline.run), whatever this test
    process inherited: under a CI runner or `pytest &` in a script SIGINT starts ignored."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_a_journal_write_waits_for_the_write_and_stays_a_ctrl_c(
    tmp_path, monkeypatch, sigint_raises
):
    """Optuna's journal lock turns an interrupt during its lock handling into another error
    and can leave the lock held; interrupts are held until the append (and its lock) is done,
    then delivered as a KeyboardInterrupt."""
    import signal

    study = study_at(tmp_path)
    trial = study.ask(10)
    real_rename = os.rename

    def ctrl_c_then_rename(src, dst):  # noqa: ANN001, ANN202 - Optuna releasing its lock file
        monkeypatch.setattr(os, "rename", real_rename)
        os.kill(os.getpid(), signal.SIGINT)  # lands before the rename, inside the release
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", ctrl_c_then_rename)
    with pytest.raises(KeyboardInterrupt):
        study.tell_complete(trial, 0.5)
    assert study.counts().complete == 1  # the write went through whole
    assert study.ask(10) is not None  # and the lock was released: the journal still works


def test_the_cli_makes_sigint_and_sigterm_interrupts_even_when_it_starts_with_them_ignored():
    """A script's background job starts with SIGINT ignored; the command must still stop on
    it (and restore what it found when it returns, since tests call it in-process)."""
    import signal

    from pipeline import interrupts

    seen = {}
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.handled():
            seen = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    assert set(seen.values()) == {interrupts._interrupt}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
def test_a_ctrl_c_swallowed_inside_a_gc_callback_is_raised_again_at_the_next_check():
    """Python prints and drops an exception raised in a garbage-collector callback (JAX has
    one): the interrupt must still stop the search at its next epoch or trial."""
    import gc
    import signal

    from pipeline import interrupts

    def callback(phase: str, info: dict) -> None:  # where the Ctrl-C lands
        if phase == "start":
            os.kill(os.getpid(), signal.SIGINT)

    with interrupts.handled():
        gc.callbacks.append(callback)
        try:
            gc.collect()  # the KeyboardInterrupt raised in the callback is swallowed
        finally:
            gc.callbacks.remove(callback)
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    interrupts.check()  # a new command starts clean


def test_a_journal_record_torn_by_a_killed_writer_is_cut_off_before_the_next_append(
    tmp_path, caplog
):
    """SIGKILL in the middle of a journal write leaves a last line without its newline;
    Optuna's reader skips it, but an append would glue the next record onto it and the
    journal would no longer parse. The torn tail is cut off first."""
    study = study_at(tmp_path)
    drive(study, 2)
    journal = tmp_path / "journal.log"
    whole = journal.read_bytes()
    with journal.open("ab") as f:
        f.write(b'{"op_code":4,"worker_id":"dead","trial_id":')  # a record cut short
    study = study_at(tmp_path)  # the next start
    drive(study, 3)
    assert "torn last record" in caplog.text
    assert journal.read_bytes().startswith(whole)
    reread = study_at(tmp_path)  # a fresh reader parses the whole journal again
    assert reread.counts().complete == 3


def test_the_heartbeat_survives_a_storage_blip_and_stops_once_the_trial_is_told(monkeypatch):
    """A failed heartbeat write (a dropped connection) must not end the heartbeat: a live
    trial would then look dead to other hosts after STALE_AFTER_SECONDS and be run twice."""
    import threading

    import optuna

    monkeypatch.setattr(storage, "HEARTBEAT_SECONDS", 0.01)
    calls, third = [], threading.Event()

    class Flaky:
        def set_trial_user_attr(self, trial_id, key, value):
            calls.append(key)
            if len(calls) == 1:
                raise ConnectionError("server closed the connection unexpectedly")
            if len(calls) == 3:
                third.set()
                raise optuna.exceptions.UpdateFinishedTrialError("trial is finished")

    beat = storage.Heartbeat(Flaky(), trial_id=7)
    assert third.wait(timeout=60)  # it beat again after the blip, until the trial was told
    beat._thread.join(timeout=60)
    assert not beat._thread.is_alive() and calls == [storage.HEARTBEAT_ATTR] * 3


def test_warm_start_queues_an_earlier_studys_best_params_once_and_drops_drifted_keys(
    tmp_path, caplog
):
    """The best top_k complete param sets of the earlier study come first, cut to the new space
    (a key no longer searched, a value outside its new range: dropped and named); four openers
    at the same instant, and a resume, still queue them once."""
    import threading

    first = study_at(tmp_path, name="first")
    drive(first, 4)  # objective 1 - dropout: the lowest dropouts are best
    best = sorted(first._trials(), key=lambda t: -t.value)[:2]
    cut = (best[0].params["model.dropout"] + best[1].params["model.dropout"]) / 2
    space = {
        "model.activation": SPACE["model.activation"],
        "model.dropout": {"low": 0.0, "high": cut},
    }
    p = params(space=space, top_k=2, warm_start="first")
    gate = threading.Barrier(4)
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            gate.wait()
            search.open_study(
                "second",
                make_storage(str(tmp_path / "journal.log")),
                p,
                seed=0,
                max_epochs=10,
                configured=CONFIGURED,  # no baseline: the earlier study's best go first
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with caplog.at_level("INFO", logger="pipeline.search"):
        threads = [threading.Thread(target=opener) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        second = study_at(tmp_path, p, name="second")  # a resume: nothing queued again
    assert errors == []
    waiting = second._study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs[search.WARM_ATTR] for t in waiting] == [f"first#{t.number}" for t in best]
    drive(second, 2)
    tried = [t.params for t in second._trials()]
    assert tried[0] == {k: best[0].params[k] for k in space}
    assert tried[1]["model.activation"] == best[1].params["model.activation"]
    assert tried[1]["model.dropout"] <= cut  # sampled in the new range, not the old value
    text = caplog.text
    assert "dropped train.lr_decay.rate (not in search.space)" in text
    assert f"dropped model.dropout ({best[1].params['model.dropout']!r} outside" in text
    with pytest.raises(SearchError, match="no such study in this storage"):
        study_at(tmp_path, params(warm_start="nope"), name="third")
    assert find_study_id(second._storage.backend, "third") is None  # nothing written


def test_a_multi_objective_study_keeps_the_pareto_front_and_never_prunes(tmp_path, caplog):
    """Two objectives (maximize, minimize): best() is the Pareto trial best on the first,
    pareto() the whole front, and the pruner is off (with a warning, as one was set)."""
    p = params(metric=["val_accuracy", "n_params"], pruner="median")
    with caplog.at_level("WARNING", logger="pipeline.search"):
        study = study_at(tmp_path, p)
    assert "search.pruner median is off" in caplog.text
    # (accuracy, size) per trial number: 0 is dominated by 3 (same accuracy, larger), 2 by 1.
    table = {0: [0.9, 500.0], 1: [0.8, 100.0], 2: [0.7, 300.0], 3: [0.9, 400.0], 4: [0.6, 50.0]}
    seen = []
    while (trial := study.ask(5)) is not None:
        assert not trial.should_prune(3, 0.0)  # nothing reported, nothing pruned
        seen.append(trial.number)
        study.tell_complete(trial, table[trial.number])
    assert seen == [0, 1, 2, 3, 4]
    assert [b.number for b in study.pareto()] == [3, 1, 4]  # 0 and 2 are dominated
    best = study.best()
    assert (best.number, best.value, best.values) == (3, 0.9, (0.9, 400.0))
    assert study._study.trials[0].intermediate_values == {}
    assert "Pareto front" in study.figures()


@pytest.mark.parametrize("max_epochs, first_judged", [(30, 10), (8, 3)])
def test_the_median_pruner_judges_a_trial_after_a_third_of_its_epochs(
    tmp_path, max_epochs, first_judged
):
    """A trial far behind the median is left alone for the first third of the epoch budget
    (at least 3 epochs: a slow start is not a bad end) and stopped at the first step after."""
    storage = make_storage(str(tmp_path / "journal.log"))
    study = search.open_study(
        "warmup", storage, params(pruner="median"), seed=0, max_epochs=max_epochs
    )
    for _ in range(2):  # n_startup_trials=2 complete trials set the median: 0.9 every epoch
        trial = study.ask(10)
        for epoch in range(max_epochs):
            assert not trial.should_prune(epoch, 0.9)
        study.tell_complete(trial, 0.9)
    behind = study.ask(10)
    judged = [epoch for epoch in range(max_epochs) if behind.should_prune(epoch, 0.1)]
    assert judged[0] == first_judged


def test_a_new_study_trains_the_configured_values_first_once(tmp_path):
    """The searched keys' configured values are trial 0 (a value outside the space is left
    to the sampler), queued once however often the study is opened, and trial 1 on is
    sampled."""
    storage = make_storage(str(tmp_path / "journal.log"))

    def opened():
        return search.open_study(
            "s", storage, params(), seed=0, max_epochs=10, configured=CONFIGURED
        )

    study, again = opened(), opened()  # a second worker starting together, or a resume
    first = study.ask(5)
    assert first.number == 0 and first.baseline
    assert first.values["model.activation"] == "tanh" and first.values["model.dropout"] == 0.2
    assert first.values["train.lr_decay.rate"] != 5.0  # outside [1e-4, 1]: sampled
    study.tell_complete(first, 0.5)
    second = again.ask(5)
    assert (second.number, second.baseline) == (1, False)
    study.tell_complete(second, 0.5)
    assert (
        search.open_study("s", storage, params(), seed=0, max_epochs=10, configured=CONFIGURED)
        .ask(5)
        .baseline
        is False
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"baseline_first": False},
        {"sampler": "grid", "space": {"model.activation": {"choices": ["relu", "tanh"]}}},
    ],
)
def test_no_baseline_trial_when_turned_off_or_on_a_grid(tmp_path, kw):
    """Off, or on a grid (which visits every point anyway, and would visit a queued one twice),
    nothing is queued: the first trial is the sampler's."""
    study = study_at(tmp_path, params(**kw), configured=CONFIGURED)
    assert study._study.get_trials(states=(optuna.trial.TrialState.WAITING,)) == []
    assert not study.ask(5).baseline


def test_the_trials_table_lists_started_trials_and_copes_with_running_ones(tmp_path):
    """A queued trial (baseline, warm start) is not in the table yet, and a running trial's
    missing duration is NaN seconds: a study with nothing finished still makes its table."""
    study = study_at(tmp_path, configured=CONFIGURED)  # queues the baseline
    assert len(study.frame()) == 0
    running = study.ask(5)
    frame = study.frame()
    assert frame["number"].tolist() == [running.number] and frame["seconds"].isna().all()
    study.tell_complete(running, 0.5)
    assert study.frame()["seconds"].notna().all()


def test_the_optuna_internals_the_project_relies_on_are_still_there(tmp_path):
    """Each is named once (search.OPTUNA_INTERNALS); a release that moves one fails here, not
    in a user's search. The journal backend's lock and file attributes are checked on a live
    instance."""
    import importlib

    for dotted in search.OPTUNA_INTERNALS:
        module, _, attr = dotted.rpartition(".")
        try:
            owner = importlib.import_module(module)
        except ModuleNotFoundError:
            module, _, cls = module.rpartition(".")
            owner = getattr(importlib.import_module(module), cls)
        assert hasattr(owner, attr), f"{dotted} is gone ({search.OPTUNA_INTERNALS[dotted]})"
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(tmp_path / "journal.log"))
    assert hasattr(backend, "_lock") and hasattr(backend, "_file_path")


def test_a_trial_whose_asker_died_before_naming_itself_is_dead_at_once(tmp_path):
    """A trial reaches the study RUNNING, then its owner in a second write: a worker killed
    (or refused by a full disk) between the two leaves an ownerless RUNNING trial. Asks hold
    the study lock across both writes, so such a trial is known dead at once: it must not
    hold up the champion ("other workers' trials are still running") for minutes."""
    study = study_at(tmp_path)
    orphan = study._study.ask()  # as if its asker died right after Optuna's ask
    dead = [d.number for d in study.dead_trials()]
    assert dead == [orphan.number] and not study.others_running()
    live = study.ask(10)  # a live worker's trial names its owner: neither dead nor another's
    assert [d.number for d in study.dead_trials()] == [orphan.number]
    assert live is not None and not study.others_running()


@pytest.mark.postgres
def test_a_process_holds_at_most_two_postgresql_connections_while_it_searches(monkeypatch):
    """Needs PostgreSQL (require_postgres). 64 processes on PostgreSQL's default 100
    connections: each opens the study's storage, then asks and tells trials under the study
    lock while its heartbeat thread stamps the running trial, on at most two connections at
    any moment (one once the storage is open, and no new one per trial). Counted at every
    connection the process opens."""
    import psycopg
    import sqlalchemy

    pg_url = require_postgres()
    db = f"conn_{os.getpid()}_{os.urandom(3).hex()}"
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    url = pg_url.rsplit("/", 1)[0] + "/" + db
    make_storage(url)  # the schema, made by the first of them (on three connections, once)
    live: set[int] = set()
    most: list[int] = []

    def opened(dbapi, record):  # noqa: ANN001 - SQLAlchemy's pool event signature
        live.add(id(dbapi))
        most.append(len(live))

    def closed(dbapi, record):  # noqa: ANN001
        live.discard(id(dbapi))

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", opened)
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "close", closed)
    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "close_detached", closed)
    monkeypatch.setattr(storage, "HEARTBEAT_SECONDS", 0.005)
    try:
        study = search.open_study("conn", make_storage(url), params(), seed=0, max_epochs=10)
        opened_while_opening = len(most)

        def beaten(trial: search.Trial) -> float:
            """Return once the heartbeat thread has stamped this trial (it runs meanwhile)."""
            trial_id = study._trial_id(trial.number)
            deadline = time.monotonic() + 60
            while (
                storage.HEARTBEAT_ATTR not in study._storage.backend.get_trial(trial_id).user_attrs
            ):
                assert time.monotonic() < deadline, "the heartbeat never beat"
                time.sleep(0.01)  # leave the one connection free between reads
            return 0.5

        drive(study, 4, beaten)
        assert study.counts().complete == 4
        opened_by_trials = most[opened_while_opening:]
    finally:
        for event, fn in (("connect", opened), ("close", closed), ("close_detached", closed)):
            sqlalchemy.event.remove(sqlalchemy.pool.Pool, event, fn)
        with psycopg.connect(pg_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    assert 1 <= max(most) <= 2, most
    assert opened_by_trials == [] and len(live) == 1  # the one pooled connection did it all
