"""Run `python -m pipeline.run ARGS` after a barrier, so several processes start the command at
the same instant: import everything first, touch GATE/NAME.ready, wait for GATE/go, then run.

    python tests/barrier_run.py GATE NAME -- ARGS...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __name__ == "__main__":
    gate, name, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: barrier_run.py GATE NAME -- ARGS..."
    import keras  # noqa: F401 - the slow imports happen before the barrier, not after
    import mlflow  # noqa: F401
    import optuna  # noqa: F401

    from pipeline import run

    Path(gate, f"{name}.ready").touch()
    while not Path(gate, "go").exists():
        time.sleep(0.001)
    sys.exit(run.main(argv))
