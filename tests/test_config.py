from pathlib import Path

import pytest
from conftest import MISSION_KEYS

from pipeline import config
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("preset", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_validates_and_comments_every_key(preset: Path) -> None:
    params = config.load(preset)
    assert params.name == preset.stem
    for line in preset.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            assert "#" in stripped or stripped.endswith(":") or "{" in stripped, line


def test_params_are_frozen() -> None:
    params = config.Params()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        params.seed = 1  # type: ignore[misc]


def test_misspelt_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  activaton: relu\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    msg = str(err.value)
    assert "model.activaton" in msg and "did you mean 'model.activation'" in msg.lower()
    assert str(path) in msg


def test_unknown_activation_suggests_the_right_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(write(tmp_path, "model:\n  activation: relux\n"))
    assert "model.activation" in str(err.value) and "'relu'" in str(err.value)


def test_dropout_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.dropout = 1\.5"):
        config.load(write(tmp_path, "model:\n  dropout: 1.5\n"))


def test_set_overrides_are_parsed_as_yaml_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "{}")
    params = config.load(
        path, ["model.dropout=0.3", "model.hidden=[8, 4]", "train.lr_decay.kind=step"]
    )
    assert params.model.dropout == 0.3
    assert params.model.hidden == (8, 4)
    assert params.train.lr_decay.kind == "step"
    with pytest.raises(ConfigError, match="train.batchsize"):
        config.load(path, ["train.batchsize=3"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        config.load(path, ["model.dropout"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path, "model: [unclosed\n"))


def test_search_space_is_checked_against_params(tmp_path: Path) -> None:
    bad_key = "search:\n  space:\n    model.activaton: {choices: [relu]}\n"
    with pytest.raises(ConfigError, match="Did you mean 'model.activation'"):
        config.load(write(tmp_path, bad_key))
    bad_choice = "search:\n  space:\n    model.activation: {choices: [relu, relux]}\n"
    with pytest.raises(ConfigError, match="relux"):
        config.load(write(tmp_path, bad_choice))
    bad_range = "search:\n  space:\n    model.dropout: {low: 0.0, high: 1.5}\n"
    with pytest.raises(ConfigError, match="1.5"):
        config.load(write(tmp_path, bad_range))
    inverted = "search:\n  space:\n    model.dropout: {low: 0.4, high: 0.1}\n"
    with pytest.raises(ConfigError, match="must be below"):
        config.load(write(tmp_path, inverted))


def test_flatten_gives_dotted_keys_without_the_space() -> None:
    flat = config.flatten(config.Params())
    for key in (*MISSION_KEYS, "seed", "data.source"):
        assert key in flat
    assert not any(k.startswith("search.space") for k in flat)


def test_with_values_applies_trial_values() -> None:
    params = config.Params()
    trial = config.with_values(params, {"model.activation": "tanh", "train.batch_size": 32})
    assert trial.model.activation == "tanh" and trial.train.batch_size == 32
    assert params.model.activation == "relu"  # the original is untouched


def test_space_fingerprint_changes_with_the_space() -> None:
    a = config.space_fingerprint({"model.dropout": {"low": 0.0, "high": 0.5}})
    b = config.space_fingerprint({"model.dropout": {"low": 0.0, "high": 0.6}})
    assert a != b
    assert a == config.space_fingerprint({"model.dropout": {"high": 0.5, "low": 0.0}})


def test_direction_follows_the_metric_and_a_contradiction_is_refused(tmp_path: Path) -> None:
    assert [config.direction_of(m) for m in ("val_loss", "val_rmse", "val_mae", "val_mse")] == [
        "minimize"
    ] * 4
    assert {
        config.direction_of(m) for m in ("val_accuracy", "val_f1", "val_r2", "val_roc_auc")
    } == {"maximize"}
    params = config.Params()
    assert (params.search.metric, params.search.direction) == ("auto", "auto")
    assert config.load(write(tmp_path, "search: {metric: val_r2}\n")).search.direction == "maximize"
    with pytest.raises(ConfigError, match="contradicts search.metric val_rmse"):
        config.load(write(tmp_path, "search: {metric: val_rmse, direction: maximize}\n"))


def test_a_list_of_metrics_needs_matching_directions(tmp_path: Path) -> None:
    two = "search: {metric: [val_accuracy, n_params]}\n"
    sp = config.load(write(tmp_path, two)).search
    assert sp.multi_objective and sp.directions == ("maximize", "minimize")
    assert sp.champion == "first"
    with pytest.raises(ConfigError, match="give search.direction as a list"):
        config.load(write(tmp_path, two.replace("]}", "], direction: maximize}")))
    with pytest.raises(ConfigError, match="contradicts search.metric n_params"):
        config.load(write(tmp_path, two.replace("]}", "], direction: [maximize, maximize]}")))
    with pytest.raises(ConfigError, match="2 entries for 3 metric"):
        config.load(
            write(
                tmp_path,
                "search: {metric: [val_f1, val_loss, n_params], direction: [maximize, minimize]}\n",
            )
        )


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["split.folds=-2"], "split.folds = -2: Input should be greater than or equal to 0"),
        (["split.folds=3", "split.policy=reuse_all"], "folds (cross-validation) needs policy"),
    ],
)
def test_bad_folds_are_refused_naming_the_key(overrides, needle) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(REPO / "params" / "default.yaml", overrides)
    assert needle in str(err.value)


def test_folds_zero_and_one_mean_no_cross_validation() -> None:
    on = [config.load(REPO / "params" / "default.yaml", [f"split.folds={k}"]) for k in (0, 1, 2)]
    assert [p.split.cross_validated for p in on] == [False, False, True]
