"""The project's only MLflow user (this package): store, runs, live metrics, models, registry.

Runs are created with an explicit `MlflowClient` and passed around by id instead of MLflow's
per-thread "active run", so trial runs keep their parent under several threads or processes.
Every run is opened as a context that always ends it with an explicit status: FINISHED,
FAILED (with the reason as a tag) or KILLED (Ctrl-C / SIGTERM) - never left RUNNING; a run
created outside such a context and never ended (a crash in between) is ended FAILED at exit.

`store` creates and locks the local store, `runs` holds the Tracker, `live` a run's batched
metrics, `models` the servable model and the UI command.
"""

from pipeline.tracking.live import LIVE_SECONDS, WRITE_SHARE_FACTOR, LiveMetrics
from pipeline.tracking.models import (
    load_model,
    register_for_serving,
    serve_from_code,
    set_uri,
    ui_command,
)
from pipeline.tracking.runs import LoggedRun, Tracker, logged_run
from pipeline.tracking.store import DEFAULT_HOME, default_uri, store_home

__all__ = [
    "DEFAULT_HOME",
    "LIVE_SECONDS",
    "WRITE_SHARE_FACTOR",
    "LiveMetrics",
    "LoggedRun",
    "Tracker",
    "default_uri",
    "load_model",
    "logged_run",
    "register_for_serving",
    "serve_from_code",
    "set_uri",
    "store_home",
    "ui_command",
]
