"""What every command shares: the common flags, params loading and the tracker."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import config
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.tracking import Tracker

# The presets ship inside the package (params/ at the repo top is a link to this folder), so an
# installed wheel finds them from any directory and `-p NAME` picks one by name.
PRESETS = Path(__file__).resolve().parents[1] / "presets"
DEFAULT_PRESET = "default"


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--params",
        type=Path,
        default=None,
        help="params YAML file, or a shipped preset by name: default (the default), "
        + ", ".join(name for name in presets() if name != DEFAULT_PRESET),
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set model.dropout=0.3 (repeatable; YAML values)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default sqlite:///mlruns/mlflow.db)")
    parser.add_argument("--seed", type=int, help="random seed (overrides params seed)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def presets() -> list[str]:
    """Names of the shipped presets (`-p NAME`)."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def params_path(given: Path | None) -> Path:
    """The params file `-p` means: an existing file as given, else a shipped preset by name.

    `-p xor`, `-p xor.yaml` and `-p params/xor.yaml` (the spelling in a checkout) all find the
    shipped `xor` preset from any directory; no `-p` means the shipped default preset.
    """
    if given is None:
        return PRESETS / f"{DEFAULT_PRESET}.yaml"
    if given.is_file():
        return given
    by_name = given.parent in (Path("."), Path("params")) and given.suffix in ("", ".yaml")
    if by_name and (PRESETS / f"{given.stem}.yaml").is_file():
        return PRESETS / f"{given.stem}.yaml"
    raise ConfigError(
        f"-p {given}: params file not found, and not the name of a shipped preset "
        f"({', '.join(presets())}). Pass an existing YAML file or a preset name, e.g. -p xor."
    )


def load_params(args: argparse.Namespace) -> config.Params:
    """The params file (or shipped preset) with the flags applied on top."""
    path = params_path(args.params)
    extra: dict[str, Any] = {}
    if args.seed is not None:
        extra["seed"] = args.seed
    if getattr(args, "trials", None) is not None:
        extra["search.n_trials"] = args.trials
    if getattr(args, "timeout", None) is not None:
        extra["search.timeout"] = args.timeout
    if getattr(args, "warm_start", None):
        extra["search.warm_start"] = args.warm_start
    if args.tracking_uri:
        extra["tracking.uri"] = args.tracking_uri
    return config.load(path, args.overrides, extra=extra)


def make_tracker(params: config.Params) -> Tracker:
    from pipeline.stages import experiment_name
    from pipeline.tracking import Tracker

    tracker = Tracker(params.tracking.uri, experiment_name(params))
    tracker.close_dead_runs()  # train/champion runs a killed process (or a full disk) left open
    return tracker
