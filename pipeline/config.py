"""Params: YAML file -> validated, frozen object, plus --set overrides and flattening for logging.

One section per stage (data, split, model, train, search, tracking), each read only by its own
stage. Unknown keys are rejected with a did-you-mean, values are range- and name-checked once
here, so a typo fails in milliseconds instead of after TensorFlow has loaded.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

Activation = Literal[
    "relu", "elu", "selu", "tanh", "sigmoid", "leaky_relu", "gelu", "swish", "softplus", "linear"
]
Initializer = Literal[
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "random_normal",
    "random_uniform",
]
DecayKind = Literal["none", "inverse_time", "exponential", "step", "cosine"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str = "digits"
    target: str | int | None = None
    header: Literal["auto"] | bool = "auto"
    task: Literal["auto", "classification", "regression"] = "auto"
    # A CSV in the same layout as `source`: the one-time test split (source is then train/val).
    test_source: str | None = None

    @field_validator("test_source")
    @classmethod
    def _test_source_is_a_path(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("give a CSV path, or null to split the test rows off data.source")
        return v


class SplitParams(_Section):
    policy: Literal["holdout", "reuse_all"] = "holdout"
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    stratify: bool = True
    # k-fold cross-validation of every search trial over the non-test rows (0 or 1: off).
    folds: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "val_fraction + test_fraction must be below 0.9 so that training rows remain"
            )
        if self.folds >= 2 and self.policy == "reuse_all":
            raise ValueError(
                "folds (cross-validation) needs policy: holdout; reuse_all scores on the "
                "training rows themselves, so there is nothing to cross-validate"
            )
        return self

    @property
    def cross_validated(self) -> bool:
        """True when trials are scored by k-fold cross-validation (folds >= 2)."""
        return self.folds >= 2


class ModelParams(_Section):
    hidden: tuple[int, ...] = (256, 256)
    activation: Activation = "relu"
    output_activation: Literal["auto", "sigmoid", "softmax", "linear"] = "auto"
    initializer: Initializer = "he_normal"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False

    @field_validator("hidden")
    @classmethod
    def _positive_units(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(units < 1 for units in v):
            raise ValueError("every hidden layer needs at least 1 unit")
        return v


class LrDecayParams(_Section):
    kind: DecayKind = "none"
    rate: float = Field(0.01, ge=0.0)
    step_every: int = Field(10, ge=1)


class EarlyStoppingParams(_Section):
    patience: int = Field(10, ge=0)
    monitor: str = "val_loss"
    restore_best_weights: bool = True


class TrainParams(_Section):
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw", "nadam"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    lr_decay: LrDecayParams = LrDecayParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()


# The one rule for which way a metric is better, by its name without `val_`/`test_`.
# n_params (the network's parameter count) is a second objective of a multi-objective search.
_MINIMIZE = ("loss", "mse", "rmse", "mae", "n_params")
_MAXIMIZE = ("accuracy", "f1", "precision", "recall", "roc_auc", "r2")
Direction = Literal["maximize", "minimize"]


def direction_of(metric: str) -> Direction | None:
    """`minimize` for losses, errors and size (loss, mse, rmse, mae, n_params), `maximize` for
    scores (accuracy, f1, precision, recall, roc_auc, r2); None for a name the rule does not
    know."""
    name = metric.removeprefix("val_").removeprefix("test_")
    if name in _MINIMIZE:
        return "minimize"
    if name in _MAXIMIZE:
        return "maximize"
    return None


class SearchParams(_Section):
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)
    # auto: val_accuracy for classification, val_rmse for regression (set once the task is known);
    # a list (e.g. [val_accuracy, n_params]) makes the study multi-objective (a Pareto front).
    metric: str | list[str] = "auto"
    direction: Literal["auto"] | Direction | list[Direction] = "auto"  # auto: from the metric(s)
    # Multi-objective: which Pareto trial is the champion. first = best on the first metric.
    champion: Literal["first"] = "first"
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(5, ge=0)
    # A new study's first trial trains the searched keys' configured values (the params as
    # written), unless it warm-starts or samples a grid.
    baseline_first: bool = True
    retries: int = Field(1, ge=0)
    recycle_after: int = Field(50, ge=0)  # trials per worker process before a fresh one (0: never)
    top_k: int = Field(5, ge=1)
    # Resources of one worker under `search --ray` (Ray places each worker where they are free).
    worker_cpus: float = Field(1.0, gt=0)
    worker_gpus: float = Field(0.0, ge=0)
    # An earlier study (same storage) whose best top_k complete param sets are tried first.
    warm_start: str | None = None
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objective(s), primary first (the one pruning, progress and `champion` use)."""
        return tuple(self.metric) if isinstance(self.metric, list) else (self.metric,)

    @property
    def directions(self) -> tuple[str, ...]:
        """One direction per metric (`auto` only while the metric is `auto`)."""
        if isinstance(self.direction, list):
            return tuple(self.direction)
        return (self.direction,) * len(self.metrics)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @model_validator(mode="before")
    @classmethod
    def _direction_from_the_metric(cls, data: Any) -> Any:
        """direction: auto becomes the metric's own as soon as the metric is named (it stays
        auto only while the metric does: that waits for the data's task)."""
        if isinstance(data, dict) and data.get("direction", "auto") == "auto":
            metric = data.get("metric", "auto")
            names = metric if isinstance(metric, list) else [metric]
            natural = [direction_of(m) if isinstance(m, str) else None for m in names]
            if natural and None not in natural:
                data = {**data, "direction": natural if isinstance(metric, list) else natural[0]}
        return data

    @model_validator(mode="after")
    def _direction_suits_the_metric(self) -> SearchParams:
        metrics = self.metrics
        if isinstance(self.metric, list):
            if not metrics or "auto" in metrics or len(set(metrics)) != len(metrics):
                raise ValueError(
                    "a list of metrics needs distinct named metrics, e.g. [val_accuracy, n_params]"
                )
            if not isinstance(self.direction, list) and self.direction != "auto":
                raise ValueError(
                    f"search.metric is a list of {len(metrics)}: give search.direction as a list "
                    "of as many (or auto)"
                )
        if isinstance(self.direction, list) and len(self.direction) != len(metrics):
            raise ValueError(
                f"search.direction has {len(self.direction)} entries for {len(metrics)} metric(s)"
            )
        for metric, direction in zip(metrics, self.directions, strict=True):
            natural = direction_of(metric)
            if direction != "auto" and natural is not None and natural != direction:
                raise ValueError(
                    f"search.direction {direction} contradicts search.metric {metric} "
                    f"(it is better {'lower' if natural == 'minimize' else 'higher'}); set "
                    f"direction: {natural}, or auto"
                )
        return self


class TrackingParams(_Section):
    experiment: str | None = None
    uri: str | None = None
    register_model: bool = True
    model_name: str | None = None


class Params(_Section):
    seed: int = 42
    data: DataParams = DataParams()
    split: SplitParams = SplitParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    search: SearchParams = SearchParams()
    tracking: TrackingParams = TrackingParams()
    name: str = "default"


def parse_override(text: str) -> tuple[str, Any]:
    """Split a `--set dotted.key=value` into the key and the value parsed as a YAML scalar."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set {text!r}: expected dotted.key=value, e.g. --set model.dropout=0.3"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    return key, value


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of `raw` with each dotted key set to its value."""
    out: dict[str, Any] = copy.deepcopy(dict(raw))
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, dotted + "."))
    return keys


def _did_you_mean(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _format_errors(exc: ValidationError, origin: str) -> str:
    known = _known_keys(Params)
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {key!r}.{_did_you_mean(key, known)}")
        else:
            got = err.get("input")
            hint = ""
            if isinstance(got, str) and "expected" in err.get("ctx", {}):
                options = [o.strip(" '") for o in str(err["ctx"]["expected"]).split(",")]
                options = [o.replace("or ", "").strip(" '") for o in options]
                hint = _did_you_mean(got, options)
            lines.append(f"{key} = {got!r}: {err['msg']}.{hint}")
    return f"{origin}: invalid params - " + "; ".join(lines) + " Fix the value and run again."


def validate(raw: Mapping[str, Any], *, origin: str = "params") -> Params:
    """Validate a raw mapping into frozen `Params`, or raise ConfigError naming every bad key."""
    try:
        params = Params.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from None
    _check_space(params, origin)
    return params


def load(
    path: str | Path, overrides: Iterable[str] = (), *, extra: Mapping[str, Any] | None = None
) -> Params:
    """Read a params YAML file, apply `--set` overrides, validate, and return frozen Params."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found. Pass an existing file with -p/--params.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix the file and run again.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, split, model, ...).")
    raw.setdefault("name", path.stem)
    parsed = dict(parse_override(o) for o in overrides)
    parsed.update(extra or {})
    origin = str(path) + (" with --set " + ", ".join(overrides) if overrides else "")
    return validate(apply_overrides(raw, parsed), origin=origin)


def from_logged(
    logged: Mapping[str, str],
    overrides: Iterable[str] = (),
    *,
    extra: Mapping[str, Any] | None = None,
) -> Params:
    """The Params a run logged (`flatten`'s keys, each value as MLflow keeps it: text), with
    `--set` overrides and `extra` on top: what `train --from-run` trains again."""
    raw = apply_overrides({}, {k: _logged_value(v) for k, v in logged.items()})
    parsed = dict(parse_override(o) for o in overrides)
    parsed.update(extra or {})
    given = " with --set " + ", ".join(overrides) if overrides else ""
    origin = f"the run's logged params{given}"
    return validate(apply_overrides(raw, parsed), origin=origin)


def _logged_value(text: str) -> Any:
    """A param value back from its logged text (str() of a scalar, JSON of a list)."""
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML reads 1e-05 (how Python writes 0.00001) as text
        try:
            return float(value)
        except ValueError:
            return value
    return value


def flatten(params: Params | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params to dotted keys (lists kept as-is) - the keys MLflow logs."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "space":
            out.update(flatten(value, dotted + "."))
        elif key != "space":
            out[dotted] = value
    return out


def with_values(params: Params, values: Mapping[str, Any], *, origin: str = "trial") -> Params:
    """Return a copy of `params` with dotted keys replaced (used for search trials)."""
    raw = apply_overrides(params.model_dump(mode="python"), values)
    return validate(raw, origin=origin)


# -- search space ---------------------------------------------------------------------------

_SPACE_KEYS = {"choices", "low", "high", "log", "step"}


def _check_space(params: Params, origin: str) -> None:
    """Check every search-space entry names a real param and only admits valid values."""
    known = set(flatten(params))
    base = params.model_dump(mode="python")
    for key, spec in params.search.space.items():
        where = f"{origin}: search.space.{key}"
        if key not in known or key.startswith("search.") or key.startswith("tracking."):
            raise ConfigError(
                f"{where}: {key!r} is not a searchable param.{_did_you_mean(key, known)}"
            )
        if not isinstance(spec, dict) or not spec or set(spec) - _SPACE_KEYS:
            raise ConfigError(
                f"{where}: expected {{choices: [...]}} or {{low: .., high: .., log: false}}, "
                f"got {spec!r}."
            )
        if "choices" in spec:
            values = spec["choices"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: choices must be a non-empty list.")
        else:
            low, high = spec.get("low"), spec.get("high")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in (low, high)):
                raise ConfigError(f"{where}: low and high must both be finite numbers.")
            if low >= high:
                raise ConfigError(f"{where}: low ({low}) must be below high ({high}).")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log-scale range needs low > 0.")
            values = [low, high]
        for value in values:
            try:
                Params.model_validate(apply_overrides(base, {key: value}))
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise ConfigError(f"{where}: value {value!r} is not allowed ({msg}).") from None


def space_fingerprint(space: Mapping[str, Mapping[str, Any]]) -> str:
    """A stable text form of the search space, stored with a study to detect changes on resume."""
    return yaml.safe_dump({k: dict(v) for k, v in sorted(space.items())}, sort_keys=True)
