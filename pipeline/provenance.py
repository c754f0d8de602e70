"""What produced a run: package versions and the git commit (standard library only)."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

# The packages whose versions go on every run (version.<name> tags).
VERSIONED = ("tensorflow", "keras", "mlflow", "optuna", "pandas", "scikit-learn", "numpy")


@functools.cache
def environment_tags() -> dict[str, str]:
    """Git commit and package versions, so a run says exactly what produced it (read once per
    process: a `git` subprocess per trial run would be pure tracking overhead)."""
    tags = {f"version.{name}": version(name) for name in VERSIONED}
    tags["keras.backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def version(name: str) -> str:
    """An installed distribution's version, or "absent"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"
