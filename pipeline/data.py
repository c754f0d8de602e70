"""Stages load -> split -> normalize: pure functions of (data, their params section) -> data.

No stage prints, tracks or trains. Every user mistake in the data (missing file, ragged rows,
text in a feature column, a single class...) becomes a DataError that names the file and column
and says what to do, so the CLI never shows a pandas traceback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.config import DataParams, SplitParams
from pipeline.errors import DataError

Task = Literal["classification", "regression"]
BUILTINS = ("digits", "iris", "breast_cancer", "wine", "xor")
_MAX_CLASSES_FOR_AUTO = 50
# Features travel as float32 (Keras); anything beyond its range becomes inf, and MinMax then NaN.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class TestRows:
    """The rows of `data.test_source`: features in the training column order and the target
    encoded with the training file's codes."""

    X: np.ndarray
    y: np.ndarray
    source: str


@dataclass(frozen=True)
class Dataset:
    """Features and an encoded target. `classes[i]` is the original label of code i.

    `test` holds a separate test file's rows (data.test_source); without one, the test split
    is cut from X and y.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    target_name: str
    task: Task
    classes: tuple = ()
    test: TestRows | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def digest(self) -> str:
        """A short content hash: the same data gives the same digest on every machine."""
        parts = (self.X, self.y, *((self.test.X, self.test.y) if self.test else ()))
        return content_digest(*parts, about=(self.feature_names, self.target_name, self.classes))


def content_digest(*arrays: np.ndarray, about: object = ()) -> str:
    """A short hash of the arrays' bytes and `repr(about)` (names, classes): equal data gives
    equal digests on every machine, and any changed value changes it.

    The arrays are hashed in place, a slice of rows at a time: a memory-mapped data set is
    never copied whole (MNIST's features are 188 MB).
    """
    h = hashlib.sha256()
    for part in arrays:
        rows = max(1, (1 << 24) // max(1, part[:1].nbytes))  # ~16 MB per update
        for start in range(0, len(part), rows):
            h.update(np.ascontiguousarray(part[start : start + rows]))
    h.update(repr(about).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    """Train / validation / test arrays. With policy reuse_all all three are the same rows."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    policy: str = "holdout"


@dataclass(frozen=True)
class Scaler:
    """MinMax scaling learned from the training split: x' = (x - minimum) / span."""

    minimum: np.ndarray
    span: np.ndarray

    def transform(self, X: np.ndarray) -> np.ndarray:
        # Constant training columns have span 0: they map to 0, never NaN.
        safe = np.where(self.span > 0, self.span, 1.0)
        out = (np.asarray(X, dtype=np.float64) - self.minimum) / safe
        out[:, self.span == 0] = 0.0
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"minimum": self.minimum.tolist(), "span": self.span.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Scaler:
        return cls(np.asarray(d["minimum"], dtype=np.float64), np.asarray(d["span"], np.float64))


@dataclass(frozen=True)
class TargetScaler:
    """Standardization of a regression target learned from the training split:
    y' = (y - mean) / scale.

    The network fits the standardized target (a raw target such as 25-346 is far from the
    unit-scale outputs its initializers and learning rates are made for); every metric, plot and
    prediction maps its outputs back with `inverse`, so they are in the target's own units.
    """

    mean: float
    scale: float

    def transform(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) * self.scale + self.mean

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> TargetScaler:
        return cls(float(d["mean"]), float(d["scale"]))


# -- load -----------------------------------------------------------------------------------


def load(params: DataParams) -> Dataset:
    """Load a built-in data set by name or a CSV file by path, encode its target."""
    if params.source in BUILTINS:
        frame, target = _builtin(params.source)
        name = params.source
    else:
        path = Path(params.source)
        if not path.suffix and not path.exists():
            raise DataError(
                f"data.source {params.source!r}: not a built-in data set "
                f"({', '.join(BUILTINS)}) and no such file. Give a built-in name or a CSV path."
            )
        frame = read_csv(path, params.header)
        target = _target_column(frame, params.target, path)
        name = path.stem
    if params.source in BUILTINS and params.target is not None:
        target = _target_column(frame, params.target, Path(params.source))
    dataset = _to_dataset(frame, target, name, params.task, params.source)
    if params.test_source is None:
        return dataset
    if params.source in BUILTINS:
        raise DataError(
            f"data.test_source {params.test_source!r}: a separate test file needs data.source "
            f"to be a CSV in the same layout, not the built-in {params.source!r}. Give both as "
            "CSV paths, or drop data.test_source to split the test rows off data.source."
        )
    return replace(dataset, test=load_test_rows(params, dataset))


def load_test_rows(params: DataParams, train: Dataset) -> TestRows:
    """Read data.test_source with data.source's rules (header, target) and encode its target
    with the training codes; a label the training file never had is an error."""
    path = Path(str(params.test_source))
    frame = read_csv(path, params.header)
    # Without data.target, the training file's target column by name (its last column), so a
    # test file with its columns in another order still finds it.
    by_name = train.target_name if train.target_name in map(str, frame.columns) else None
    target = _target_column(frame, params.target if params.target is not None else by_name, path)
    features = _feature_frame(frame, target, str(path))
    names = tuple(str(c) for c in features.columns)
    if set(names) != set(train.feature_names):
        missing = [n for n in train.feature_names if n not in names]
        extra = [n for n in names if n not in train.feature_names]
        raise DataError(
            f"{path}: its feature columns differ from data.source's (missing: "
            f"{preview(missing) or 'none'}; extra: {preview(extra) or 'none'}). "
            "data.test_source needs the same layout as data.source."
        )
    X = features.rename(columns=str)[list(train.feature_names)].to_numpy(dtype=np.float32)
    raw_y = frame[target]
    if train.task == "regression":
        if not pd.api.types.is_numeric_dtype(raw_y):
            raise DataError(
                f"{path}: target column {str(target)!r} holds text; the training target is "
                "numeric (regression). Give the test file the same target."
            )
        check_finite(frame[[target]], str(path))
        return TestRows(X, raw_y.to_numpy(dtype=np.float32), str(path))
    codes = {label: code for code, label in enumerate(train.classes)}
    labels = [_plain(v) for v in raw_y]
    unseen = sorted({str(v) for v in labels if v not in codes})
    if unseen:
        raise DataError(
            f"{path}: target column {str(target)!r} has label(s) {preview(unseen)} that "
            f"data.source never has (it has {preview([str(c) for c in train.classes])}). The "
            "model cannot predict a class it never saw: fix the labels or add such rows to the "
            "training file."
        )
    return TestRows(X, np.asarray([codes[v] for v in labels], dtype=np.int64), str(path))


def _feature_frame(frame: pd.DataFrame, target: str, where: str) -> pd.DataFrame:
    """The feature columns, after refusing missing values anywhere and text in a feature."""
    missing = frame.columns[frame.isna().any()].tolist()
    if missing:
        rows = frame.index[frame.isna().any(axis=1)].tolist()
        raise DataError(
            f"{where}: missing values in column(s) {', '.join(map(str, missing[:5]))} "
            f"(first at data row {rows[0] + 1}, {len(rows)} row(s) in all). "
            "Fill or drop them before training."
        )
    features = frame.drop(columns=[target])
    text_cols = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text_cols:
        raise DataError(
            f"{where}: non-numeric feature column(s) {', '.join(text_cols[:5])}. "
            "Encode them as numbers or drop them; only the target may hold text."
        )
    check_finite(features, where)
    return features


def _builtin(name: str) -> tuple[pd.DataFrame, str]:
    if name == "xor":
        frame = pd.DataFrame({"x1": [0, 0, 1, 1], "x2": [0, 1, 0, 1], "y": [0, 1, 1, 0]})
        return frame, "y"
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }[name]
    bunch = loader(as_frame=True)
    frame = bunch.frame
    target = "target"
    if name == "iris":  # text labels, as in the classic Iris.csv
        frame = frame.assign(target=np.asarray(bunch.target_names)[bunch.target])
    return frame, target


def read_csv(path: Path, header: str | bool) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check data.source (a CSV path or a built-in).")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty. Point data.source at a CSV with rows.")
    try:
        head = pd.read_csv(path, header=None, nrows=1, dtype=str)
        if header == "auto":
            first = head.iloc[0].tolist()
            has_header = not all(_is_number(v) for v in first)
        else:
            has_header = bool(header)
        frame = pd.read_csv(path, header=0 if has_header else None, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file has no data. Point data.source at a CSV with rows."
        ) from None
    except pd.errors.ParserError as exc:
        raise DataError(
            f"{path}: ragged rows - {exc}. Every row needs the same number of fields; "
            "fix or remove the offending lines."
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file (could not decode it as UTF-8).") from None
    if not has_header:
        frame.columns = [f"col{i}" for i in range(frame.shape[1])]
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no data rows.")
    if frame.shape[1] < 2:
        raise DataError(
            f"{path}: found a single column; a CSV needs feature columns and a target column "
            "(check the delimiter is a comma)."
        )
    return frame


def _is_number(value: object) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _target_column(frame: pd.DataFrame, target: str | int | None, path: Path) -> str:
    columns = [str(c) for c in frame.columns]
    if target is None:
        return frame.columns[-1]
    if isinstance(target, int):
        if not -len(columns) <= target < len(columns):
            raise DataError(
                f"{path}: data.target={target} is out of range; the file has {len(columns)} "
                "columns (indexes from 0, or negative from the end)."
            )
        return frame.columns[target]
    if target not in columns:
        raise DataError(
            f"{path}: target column {target!r} not found. Columns are: {preview(columns, 12)}. "
            "Set data.target to one of them (or to an index)."
        )
    return frame.columns[columns.index(target)]


def _to_dataset(frame: pd.DataFrame, target: str, name: str, task: str, source: str) -> Dataset:
    where = source if source in BUILTINS else str(Path(source))
    features = _feature_frame(frame, target, where)
    X = features.to_numpy(dtype=np.float32)
    raw_y = frame[target]
    task = _infer_task(raw_y) if task == "auto" else task
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(raw_y):
            raise DataError(
                f"{where}: target column {target!r} holds text but data.task is regression. "
                "Use task: classification or a numeric target."
            )
        check_finite(frame[[target]], where)
        y = raw_y.to_numpy(dtype=np.float32)
        classes: tuple = ()
    else:
        codes, uniques = pd.factorize(raw_y, sort=True)
        classes = tuple(_plain(v) for v in uniques)
        if len(classes) < 2:
            raise DataError(
                f"{where}: target column {target!r} has a single class ({classes[0]!r}); "
                "classification needs at least two. Check data.target."
            )
        y = codes.astype(np.int64)
    return Dataset(
        name=name,
        X=X,
        y=y,
        feature_names=tuple(str(c) for c in features.columns),
        target_name=str(target),
        task=task,
        classes=classes,
    )


def check_finite(columns: pd.DataFrame, where: str) -> None:
    """Refuse inf, -inf and values beyond float32's range in numeric columns, naming them.

    Such a value would reach training as inf, and MinMax scaling turns inf into NaN, so the
    run would die later as a diverged training instead of a clear data error now.
    """
    values = columns.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.isinf(values) | (np.abs(values) > _FLOAT32_MAX)
    if not bad.any():
        return
    cols = [str(c) for c, hit in zip(columns.columns, bad.any(axis=0), strict=True) if hit]
    row, col = np.argwhere(bad)[0]
    prefix = f"{where}: " if where else ""
    raise DataError(
        f"{prefix}column(s) {', '.join(cols[:5])} hold infinite or too large values "
        f"(first: {float(values[row, col])} in column {str(columns.columns[col])!r} at data row "
        f"{row + 1}, {int(bad.any(axis=1).sum())} row(s) in all); numbers must be finite and "
        f"below {_FLOAT32_MAX:.3g} in magnitude (float32). Replace or drop those values, or "
        "rescale the column (e.g. take its log), and run again."
    )


def _plain(value: object) -> object:
    """numpy scalars -> Python scalars, so labels serialize to JSON and YAML cleanly."""
    return value.item() if hasattr(value, "item") else value


def _infer_task(y: pd.Series) -> Task:
    if not pd.api.types.is_numeric_dtype(y):
        return "classification"
    values = y.to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf has no remainder; check_finite refuses it
        integral = np.all(np.mod(values, 1) == 0)
    if integral and y.nunique() <= _MAX_CLASSES_FOR_AUTO:
        return "classification"
    return "regression"


# -- split ----------------------------------------------------------------------------------


def split(data: Dataset, params: SplitParams, *, seed: int) -> Splits:
    """Seeded train/val/test split, stratified for classification; `reuse_all` for tiny sets.

    With a separate test file (`data.test`), its rows are the test split and the training
    file is split into train and validation only (test_fraction does not apply).
    """
    from_file = data.test is not None
    if params.policy == "reuse_all":
        if from_file:
            raise DataError(
                f"{data.name}: split.policy reuse_all uses the same rows for train, val and test, "
                "which contradicts a separate data.test_source. Use split.policy: holdout."
            )
        X, y = data.X, data.y
        return Splits(X, y, X, y, X, y, policy="reuse_all")
    from sklearn.model_selection import train_test_split

    n = len(data.y)
    n_test = 0 if from_file else max(1, round(n * params.test_fraction))
    n_val = max(1, round(n * params.val_fraction))
    strat = params.stratify and data.task == "classification"
    per_split = data.n_classes if strat else 1  # a stratified split needs each class in each part
    parts = (n_val, n - n_test - n_val) if from_file else (n_test, n_val, n - n_test - n_val)
    if min(parts) < per_split:
        asked = (
            f"val_fraction={params.val_fraction} (test rows from data.test_source)"
            if from_file
            else f"val_fraction={params.val_fraction} and test_fraction={params.test_fraction}"
        )
        kind = "train/val" if from_file else "train/val/test"
        raise DataError(
            f"{data.name}: {n} rows are too few for a {kind} split with {asked}"
            f"{f' over {data.n_classes} classes' if strat else ''}. Add rows, or for a tiny "
            "demo set use split.policy: reuse_all."
        )
    if strat:
        _check_class_counts(data)
    try:
        if data.test is not None:
            X_rest, y_rest, X_test, y_test = data.X, data.y, data.test.X, data.test.y
        else:
            X_rest, X_test, y_rest, y_test = train_test_split(
                data.X,
                data.y,
                test_size=n_test,
                random_state=seed,
                stratify=data.y if strat else None,
            )
        X_train, X_val, y_train, y_val = train_test_split(
            X_rest, y_rest, test_size=n_val, random_state=seed, stratify=y_rest if strat else None
        )
    except ValueError as exc:
        raise DataError(
            f"{data.name}: cannot split {n} rows as asked ({exc}). Add rows, lower the "
            "fractions, or set split.stratify: false."
        ) from None
    return Splits(X_train, y_train, X_val, y_val, X_test, y_test, policy="holdout")


def _check_class_counts(data: Dataset) -> None:
    """A stratified split puts every class in every part: at least 3 rows of each."""
    counts = np.bincount(data.y, minlength=data.n_classes)
    if counts.min() < 3:
        rare = data.classes[int(counts.argmin())]
        raise DataError(
            f"{data.name}: class {rare!r} has {counts.min()} row(s); a stratified split needs "
            "at least 3 per class. Add rows, or set split.stratify: false."
        )


@dataclass(frozen=True)
class Folds:
    """k-fold cross-validation over the non-test rows `X`, `y`: fold i validates on the rows
    `val[i]` (indices into X) and trains on all the others. The test rows are apart, in no fold:
    they are the champion's one-time test split."""

    X: np.ndarray
    y: np.ndarray
    val: tuple[np.ndarray, ...]
    X_test: np.ndarray
    y_test: np.ndarray

    @property
    def k(self) -> int:
        return len(self.val)

    def train_index(self, i: int) -> np.ndarray:
        """The rows fold i trains on: every non-test row outside its validation part."""
        return np.setdiff1d(np.arange(len(self.y)), self.val[i], assume_unique=True)

    def fold(self, i: int) -> Splits:
        """Fold i as unscaled splits; its test split is empty (trials never see the test rows)."""
        train, val = self.train_index(i), self.val[i]
        X, y = self.X, self.y
        empty_X, empty_y = self.X_test[:0], self.y_test[:0]
        return Splits(X[train], y[train], X[val], y[val], empty_X, empty_y, policy="cv_fold")

    def all_rows(self) -> Splits:
        """Every non-test row as the train split (no validation split) and the test rows: what
        the champion is trained on once the folds have chosen its params and epochs."""
        return Splits(self.X, self.y, self.X[:0], self.y[:0], self.X_test, self.y_test, "cv_refit")


def cross_validation(data: Dataset, params: SplitParams, *, seed: int) -> Folds:
    """Hold the test split out exactly as `split` does (same seed, same rows, or the test file)
    and cut the remaining rows into `params.folds` seeded folds, stratified for classification.

    Too many folds for the data (more folds than rows, or than the rows of a class when
    stratified) is a DataError naming split.folds and the largest value that works.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    k = params.folds
    holdout = split(data, params, seed=seed)
    X = np.concatenate([holdout.X_train, holdout.X_val])
    y = np.concatenate([holdout.y_train, holdout.y_val])
    strat = params.stratify and data.task == "classification"
    if strat:
        counts = np.bincount(y, minlength=data.n_classes)
        rare = int(counts.argmin())
        if counts[rare] < k:
            raise DataError(
                f"{data.name}: split.folds={k} is too many: class {data.classes[rare]!r} has "
                f"{counts[rare]} non-test row(s), and a stratified fold needs every class in "
                f"every validation part. Use split.folds between 2 and {counts[rare]}, or set "
                "split.stratify: false."
            )
        cutter: KFold | StratifiedKFold = StratifiedKFold(k, shuffle=True, random_state=seed)
    else:
        if len(y) < k:
            raise DataError(
                f"{data.name}: split.folds={k} is too many for {len(y)} non-test rows. Use "
                f"split.folds between 2 and {len(y)}."
            )
        cutter = KFold(k, shuffle=True, random_state=seed)
    val = tuple(np.sort(v) for _, v in cutter.split(X, y))
    return Folds(X, y, val, holdout.X_test, holdout.y_test)


# -- normalize ------------------------------------------------------------------------------


def fit_scaler(X_train: np.ndarray) -> Scaler:
    """Learn per-column min and span from the training rows only (no leakage)."""
    X = np.asarray(X_train, dtype=np.float64)
    minimum = X.min(axis=0)
    return Scaler(minimum=minimum, span=X.max(axis=0) - minimum)


def normalize(splits: Splits) -> tuple[Splits, Scaler]:
    """MinMax-scale all splits with a scaler fitted on the train split; return both."""
    scaler = fit_scaler(splits.X_train)
    scaled = Splits(
        scaler.transform(splits.X_train),
        splits.y_train,
        scaler.transform(splits.X_val),
        splits.y_val,
        scaler.transform(splits.X_test),
        splits.y_test,
        policy=splits.policy,
    )
    return scaled, scaler


def fit_target_scaler(y_train: np.ndarray) -> TargetScaler:
    """Learn the regression target's mean and standard deviation from the training rows only
    (no leakage); a constant target keeps scale 1, so it maps to 0, never NaN."""
    y = np.asarray(y_train, dtype=np.float64)
    std = float(y.std())
    return TargetScaler(mean=float(y.mean()), scale=std if std > 0 else 1.0)


def preview(names: Sequence[str], limit: int = 8) -> str:
    """`a, b, c ...`: the first names of a long list, for error messages."""
    names = [str(n) for n in names]
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def features_from_frame(frame: pd.DataFrame, feature_names: tuple[str, ...]) -> np.ndarray:
    """Select and order the model's feature columns from raw rows for prediction."""
    cols = [str(c) for c in frame.columns]
    missing = [f for f in feature_names if f not in cols]
    if missing and len(cols) >= len(feature_names) and all(c.startswith("col") for c in cols):
        # A headerless CSV (read_csv names its columns col0, col1, ...): take them by position.
        frame = frame.iloc[:, : len(feature_names)].set_axis(list(feature_names), axis=1)
        missing = []
    if missing:
        raise DataError(
            f"missing feature column(s) {preview(missing)}; the model needs "
            f"{len(feature_names)} columns named {preview(feature_names)}."
        )
    sub = frame.rename(columns=str)[list(feature_names)]
    bad = [c for c in sub.columns if not pd.api.types.is_numeric_dtype(sub[c])]
    if bad:
        raise DataError(
            f"non-numeric feature column(s) {', '.join(bad[:5])}; features must be numbers."
        )
    if sub.isna().any().any():
        raise DataError("missing values in feature columns; fill or drop those rows first.")
    check_finite(sub, "")
    return sub.to_numpy(dtype=np.float32)
