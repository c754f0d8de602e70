"""The project's small exception hierarchy.

Every error a user can cause (bad params, bad data, an unreachable store) is a `PipelineError`
whose message already says what is wrong and what to do; the CLI prints it as one paragraph and
exits non-zero, without a traceback. Anything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """A user-facing failure with a complete, actionable message."""

    exit_code = 2


class ConfigError(PipelineError):
    """A params file, a --set override or a search space is invalid."""


class DataError(PipelineError):
    """A data source cannot be loaded, split or used for the configured task."""


class TrackingError(PipelineError):
    """The MLflow tracking store or a logged model cannot be used."""


class SearchError(PipelineError):
    """The Optuna study or its storage cannot be used as asked."""


class TrainingDiverged(Exception):  # noqa: N818 - it is a result, not a bug
    """Training produced a NaN or infinite loss or metric; the trial counts as failed."""


class TrialPruned(Exception):  # noqa: N818 - mirrors optuna.TrialPruned without importing it
    """The pruner stopped a trial early; search.py turns it into Optuna's own signal."""
