"""Shared fixtures: every test that tracks gets its own temporary store and working directory,
so nothing is ever written into the repository's own mlruns/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parent.parent

# The five knobs of the mission, as flattened param keys (what every tracked run must log).
MISSION_KEYS = (
    "model.activation",
    "model.initializer",
    "model.dropout",
    "train.batch_size",
    "train.lr_decay.kind",
    "train.lr_decay.rate",
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cwd with its own sqlite tracking store URI in PIPELINE_TEST_URI."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def store_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
