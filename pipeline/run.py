"""The command line: parse, set up logging and signals, dispatch to pipeline.commands.

`python -m pipeline.run [search|train|predict|report|ui] [flags]`; the bare form means `search`.
Only the standard library and the command modules (which import frameworks lazily) load at
start-up, so `--help` and params errors answer at once.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from pipeline import interrupts
from pipeline.commands.common import load_params
from pipeline.errors import PipelineError

COMMANDS = ("search", "train", "predict", "report", "ui")
# A full, read-only or forbidden disk is the user's to fix, not a bug: one paragraph, exit 2.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

__all__ = ["build_parser", "load_params", "main", "parse_args"]


def _command(name: str):  # noqa: ANN202 - a module
    return importlib.import_module(f"pipeline.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Staged Keras training with Optuna searches tracked in MLflow. "
        "With no command, runs `search`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        _command(name).add_parser(sub)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "search")
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as parsed (--workers children repeat it)
    return args


def _quiet_frameworks(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("mlflow", "alembic", "optuna", "absl", "urllib3", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices between trials
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A tracking server's client prints two "View run" lines per run: the pipeline says where.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # `mlflow ui` (the ui command) would start seven job-runner processes for GenAI features
    # (online scoring, trace archival) that a training pipeline never uses: ~2 GB and a slow start.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # MLflow's schema hints and source-guessing warnings are noise for a CLI user.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet_frameworks(args.verbose)
    with interrupts.handled():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        return _command(args.command).main(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        print(
            f"error: cannot write {exc.filename or 'a file the command needs'}: {exc.strerror}. "
            "Free some space or make that folder writable (or point --tracking-uri / --storage "
            "elsewhere), then run the same command again; what was written before is kept.",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: runs ended KILLED.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
