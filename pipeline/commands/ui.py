"""`ui`: the MLflow UI on 127.0.0.1 for the project's store."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from typing import TYPE_CHECKING

from pipeline.commands.common import add_common, load_params, make_tracker

if TYPE_CHECKING:
    from pipeline import config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the project's store")
    add_common(p)
    p.add_argument("--port", type=int, default=5000)


def main(args: argparse.Namespace) -> int:
    import subprocess

    from pipeline import tracking

    params = load_params(args)
    tracker = make_tracker(params)  # creates the store (and the experiment) if missing
    if tracker.served:  # a tracking server serves its own UI
        print(f"MLflow UI of the tracking server: {tracker.ui_url(best_first=_best_first(params))}")
        return 0
    cmd = tracking.ui_command(tracker.uri, port=args.port)
    url = tracker.ui_url(port=args.port, best_first=_best_first(params))
    print(f"MLflow UI for {tracker.display_uri}: {url}")
    print("  (the trials, best first, in MLflow's model-training mode)")
    print("(Ctrl-C to stop)")
    # Its own process group: `mlflow ui` starts uvicorn and job-runner children that outlive a
    # SIGTERM to the parent alone, so stopping means signalling the whole group.
    server = subprocess.Popen(cmd, start_new_session=True)
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop the server too, that is the normal end
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        print("MLflow UI stopped.")
        return 0


def _best_first(params: config.Params) -> str | None:
    """The direction the runs table sorts the trials' objective by (None: multi-objective)."""
    sp = params.search
    if sp.multi_objective:
        return None
    if sp.direction != "auto":
        return sp.directions[0]
    # `auto`: the preset's task decides (regression metrics minimize)
    return "minimize" if params.data.task == "regression" else "maximize"
