import numpy as np
import pytest

from pipeline import data
from pipeline.config import DataParams, SplitParams
from pipeline.errors import DataError


def csv(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def load_csv(tmp_path, text, **kw):
    return data.load(DataParams(source=csv(tmp_path, text), **kw))


@pytest.mark.parametrize("name", data.BUILTINS)
def test_builtins_load_offline(name):
    ds = data.load(DataParams(source=name))
    assert ds.X.dtype == np.float32 and len(ds.X) == len(ds.y) and ds.task == "classification"
    assert ds.n_classes >= 2


def test_digits_is_the_default_and_iris_has_text_labels():
    assert data.load(DataParams()).X.shape == (1797, 64)
    iris = data.load(DataParams(source="iris"))
    assert iris.classes == ("setosa", "versicolor", "virginica")


def test_header_with_target_named_first_digit_recognizer_layout(tmp_path):
    rows = "\n".join(f"{i % 2},{i},{i * 2}" for i in range(10))
    ds = load_csv(tmp_path, "label,pixel0,pixel1\n" + rows + "\n", target="label")
    assert ds.feature_names == ("pixel0", "pixel1") and ds.target_name == "label"
    assert ds.X[3].tolist() == [3.0, 6.0] and ds.classes == (0, 1)


def test_no_header_target_last_pima_layout(tmp_path):
    rows = "\n".join(f"{i},{i + 1},{i % 2}" for i in range(10))
    ds = load_csv(tmp_path, rows + "\n")
    assert ds.feature_names == ("col0", "col1") and len(ds.y) == 10  # first row is data
    assert ds.task == "classification"


def test_text_labels_are_encoded_and_decodable(tmp_path):
    text = "a,b,Species\n1,2,Iris-setosa\n2,3,Iris-virginica\n3,4,Iris-setosa\n"
    ds = load_csv(tmp_path, text)
    assert ds.classes == ("Iris-setosa", "Iris-virginica")
    assert [ds.classes[c] for c in ds.y] == ["Iris-setosa", "Iris-virginica", "Iris-setosa"]


def test_target_by_index_and_regression_inferred(tmp_path):
    rows = "\n".join(f"{i * 0.37:.3f},{i},{i * 1.5 + 0.25}" for i in range(60))
    ds = load_csv(tmp_path, "x,z,y\n" + rows + "\n", target=-1)
    assert ds.task == "regression" and ds.classes == () and ds.y.dtype == np.float32


@pytest.mark.parametrize(
    ("text", "kw", "needle"),
    [
        ("", {}, "empty"),
        ("a,b,y\n", {}, "no data rows"),
        ("a,b,y\n1,2,0\n1,2,3,4\n", {}, "ragged rows"),
        ("a,b,y\n1,2,0\n3,4,1\n", {"target": "label"}, "target column 'label' not found"),
        ("a,b,y\n1,x,0\n3,4,1\n", {}, "non-numeric feature column(s) b"),
        ("a,b,y\n1,,0\n3,4,1\n", {}, "missing values in column(s) b"),
        ("a,b,y\n1,2,0\n3,4,0\n", {}, "single class"),
        ("a,b,y\n1,2,0\n3,4,1\n", {"target": 5}, "out of range"),
    ],
    ids=[
        "empty",
        "header-only",
        "ragged",
        "no-target",
        "text-feature",
        "missing",
        "one-class",
        "bad-index",
    ],
)
def test_bad_csv_inputs_name_the_file_and_problem(tmp_path, text, kw, needle):
    with pytest.raises(DataError) as err:
        load_csv(tmp_path, text, **kw)
    assert needle in str(err.value)
    assert "d.csv" in str(err.value)


def test_missing_file_and_unknown_source(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        data.load(DataParams(source=str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match="not a built-in"):
        data.load(DataParams(source="mnistt"))


def test_split_is_stratified_seeded_and_disjoint():
    ds = data.load(DataParams(source="iris"))
    a = data.split(ds, SplitParams(), seed=1)
    b = data.split(ds, SplitParams(), seed=1)
    assert np.array_equal(a.X_test, b.X_test)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 150
    assert np.bincount(a.y_test).tolist() == [10, 10, 10]  # stratified: 30 test rows
    ids = data.Dataset(
        "ids",
        np.arange(150, dtype=np.float32)[:, None],
        ds.y,
        ("i",),
        "y",
        "classification",
        ds.classes,
    )
    parts = data.split(ids, SplitParams(), seed=1)
    train, val, test = (set(p.ravel().tolist()) for p in (parts.X_train, parts.X_val, parts.X_test))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 150


def test_too_few_rows_for_split(tmp_path):
    ds = load_csv(tmp_path, "a,y\n1,0\n2,1\n3,0\n4,1\n")
    with pytest.raises(DataError, match="too few"):
        data.split(ds, SplitParams(), seed=0)
    reused = data.split(ds, SplitParams(policy="reuse_all"), seed=0)
    assert np.array_equal(reused.X_train, reused.X_test)


def test_normalize_fits_on_train_only_and_constant_columns_map_to_zero():
    X_train = np.array([[0.0, 5.0, 1.0], [10.0, 5.0, 3.0]], dtype=np.float32)
    X_val = np.array([[20.0, 7.0, 2.0]], dtype=np.float32)
    y = np.array([0, 1])
    splits = data.Splits(X_train, y, X_val, y[:1], X_val, y[:1])
    scaled, scaler = data.normalize(splits)
    assert scaled.X_train.tolist() == [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]
    assert scaled.X_val.tolist() == [[2.0, 0.0, 0.5]]  # train range, not refitted: no leakage
    assert not np.isnan(scaled.X_val).any()
    again = data.Scaler.from_dict(scaler.to_dict())
    assert np.array_equal(again.transform(X_val), scaled.X_val)


def test_features_from_frame_by_name_or_position():
    import pandas as pd

    named = pd.DataFrame({"b": [2.0], "a": [1.0], "target": [0]})
    assert data.features_from_frame(named, ("a", "b")).tolist() == [[1.0, 2.0]]
    positional = pd.DataFrame({"col0": [1.0], "col1": [2.0]})
    assert data.features_from_frame(positional, ("a", "b")).tolist() == [[1.0, 2.0]]
    with pytest.raises(DataError, match="missing feature column"):
        data.features_from_frame(pd.DataFrame({"a": [1.0]}), ("a", "b"))


def train_test_pair(tmp_path, train_labels, test_labels, test_header="a,b,Species"):
    """Two CSVs in the Iris layout (text labels last); features encode the row number."""
    train = "a,b,Species\n" + "".join(
        f"{i},{i * 2},{label}\n" for i, label in enumerate(train_labels)
    )
    test = f"{test_header}\n" + "".join(
        f"{100 + i},{-i},{label}\n" for i, label in enumerate(test_labels)
    )
    return csv(tmp_path, train, "train.csv"), csv(tmp_path, test, "test.csv")


def test_a_test_file_is_the_test_split_and_its_labels_get_the_training_codes(tmp_path):
    # Training classes sort as (cat, dog, eel); the test file only has dog and eel, in an order
    # of its own, so codes made from the test file alone would differ (dog=0, eel=1).
    labels = ["cat", "dog", "eel"] * 6
    train, test = train_test_pair(tmp_path, labels, ["eel", "dog", "eel", "dog"])
    ds = data.load(DataParams(source=train, test_source=test))
    assert ds.classes == ("cat", "dog", "eel")
    assert ds.test.y.tolist() == [2, 1, 2, 1]
    parts = data.split(ds, SplitParams(val_fraction=0.2, test_fraction=0.5), seed=0)
    assert parts.X_test[:, 0].tolist() == [100, 101, 102, 103]  # the file's rows, in order
    assert len(parts.y_train) + len(parts.y_val) == 18  # all training rows; test_fraction unused
    assert len(parts.y_val) == 4 and np.bincount(parts.y_val).min() >= 1  # stratified
    assert parts.X_train[:, 0].max() < 100 and parts.X_val[:, 0].max() < 100


def test_a_test_file_with_columns_in_another_order_is_reordered(tmp_path):
    train, _ = train_test_pair(tmp_path, ["x", "y"] * 5, [])
    test = csv(tmp_path, "Species,b,a\nx,20,10\ny,40,30\n", "test.csv")
    ds = data.load(DataParams(source=train, test_source=test))
    assert ds.test.X.tolist() == [[10, 20], [30, 40]] and ds.test.y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("test_text", "needle"),
    [
        ("a,b,Species\n1,2,cat\n3,4,wolf\n", "label(s) wolf that data.source never has"),
        ("a,c,Species\n1,2,cat\n", "feature columns differ"),
        ("a,b,Kind\n1,2,cat\n", "target column 'Species' not found"),
        ("a,b,Species\n1,,cat\n", "missing values"),
    ],
    ids=["unseen-label", "other-columns", "no-target", "missing"],
)
def test_a_bad_test_file_is_a_clear_error_naming_it(tmp_path, test_text, needle):
    train, _ = train_test_pair(tmp_path, ["cat", "dog"] * 5, [])
    test = csv(tmp_path, test_text, "holdout.csv")
    with pytest.raises(DataError) as err:
        data.load(DataParams(source=train, target="Species", test_source=test))
    assert needle in str(err.value) and "holdout.csv" in str(err.value)


def test_a_test_file_needs_a_csv_source_and_a_holdout_split(tmp_path):
    _, test = train_test_pair(tmp_path, [], ["setosa"])
    with pytest.raises(DataError, match="not the built-in 'iris'"):
        data.load(DataParams(source="iris", test_source=test))
    train, test = train_test_pair(tmp_path, ["a", "b"] * 5, ["a"])
    ds = data.load(DataParams(source=train, test_source=test))
    with pytest.raises(DataError, match="reuse_all"):
        data.split(ds, SplitParams(policy="reuse_all"), seed=0)


def ids_dataset(n: int = 90, n_classes: int = 3) -> data.Dataset:
    """Rows that carry their own number as feature 0 (and a spread feature 1), so any split's
    rows can be told apart; classes cycle 0, 1, 2, ..."""
    i = np.arange(n, dtype=np.float32)
    X = np.column_stack([i, (i * 7) % 13])
    y = np.arange(n) % n_classes
    classes = tuple(f"c{k}" for k in range(n_classes))
    return data.Dataset("ids", X, y, ("i", "z"), "y", "classification", classes)


def test_cross_validation_folds_are_disjoint_cover_the_non_test_rows_and_skip_the_test_rows():
    ds = ids_dataset()
    params = SplitParams(folds=3)
    cv = data.cross_validation(ds, params, seed=4)
    holdout = data.split(ds, params, seed=4)
    test = set(holdout.X_test[:, 0].tolist())
    assert set(cv.X_test[:, 0].tolist()) == test  # the very test rows of the holdout split
    vals = [set(cv.fold(i).X_val[:, 0].tolist()) for i in range(cv.k)]
    assert cv.k == 3 and sum(map(len, vals)) == 90 - len(test) == 72
    assert set().union(*vals) == set(range(90)) - test  # cover every non-test row...
    assert all(not (a & b) for n, a in enumerate(vals) for b in vals[n + 1 :])  # ...once
    for i in range(cv.k):
        fold = cv.fold(i)
        train = set(fold.X_train[:, 0].tolist())
        assert train == set().union(*vals) - vals[i]  # trains on the other folds
        assert not (train | vals[i]) & test and len(fold.y_test) == 0  # never a test row
        assert np.bincount(fold.y_val).tolist() == [8, 8, 8]  # stratified: 72 rows / 3 / 3
    again = data.cross_validation(ds, params, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(cv.val, again.val, strict=True))  # seeded
    refit = cv.all_rows()
    assert set(refit.X_train[:, 0].tolist()) == set(range(90)) - test and len(refit.y_val) == 0


def test_each_fold_scales_with_a_scaler_fitted_on_its_own_training_part():
    from pipeline import stages

    ds = ids_dataset()
    raw = data.split(ds, SplitParams(folds=3), seed=4)
    cv = data.cross_validation(ds, SplitParams(folds=3), seed=4)
    scaled, scaler = data.normalize(raw)
    prep = stages.Prepared(ds, raw, scaled, scaler, folds=cv)
    lows = set()
    for i in range(cv.k):
        fold, part = prep.fold(i), cv.fold(i)
        assert np.array_equal(fold.scaler.minimum, part.X_train.min(axis=0))
        assert np.array_equal(fold.scaler.span, part.X_train.max(axis=0) - part.X_train.min(0))
        assert np.allclose(fold.scaled.X_val, fold.scaler.transform(part.X_val))
        lows.add(float(fold.scaler.minimum[0]))
    assert len(lows) > 1  # not one scaler for all: the smallest non-test row is in one val part
    whole = prep.refit()  # the champion's: fitted on every non-test row, test rows apart
    assert np.array_equal(whole.scaler.minimum, cv.X.min(axis=0))
    assert np.array_equal(whole.raw.X_test, raw.X_test)


@pytest.mark.parametrize(
    ("folds", "stratify", "needle"),
    [
        (1000, True, "split.folds=1000 is too many: class"),
        (1000, False, "split.folds=1000 is too many for"),
    ],
)
def test_more_folds_than_rows_of_a_class_is_a_clear_error(folds, stratify, needle):
    ds = ids_dataset()
    with pytest.raises(DataError, match=needle) as err:
        data.cross_validation(ds, SplitParams(folds=folds, stratify=stratify), seed=0)
    assert "Use split.folds between 2 and" in str(err.value)
