"""The logged model's wrapper: raw features in, decoded labels (or values) out.

What `mlflow.pyfunc.load_model(uri).predict(rows)` and `mlflow models serve` run: the training
split's scaler, the Keras network (a v3 file, loaded in safe mode) and the label decoding, so a
champion scores raw, unscaled rows. MLflow builds it from code (pipeline/serving_entry.py), not
from a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PREPROCESS = "preprocess"  # the artifact names the wrapper loads
KERAS_MODEL = "keras_model"


class ServingModel:
    """Raw features in, decoded labels (or values) out: scaler + Keras net + label decoding."""

    def load_from(self, keras_path: str, preprocess_path: str) -> None:
        from pipeline import model as keras_model
        from pipeline.data import Scaler, TargetScaler

        meta = json.loads(Path(preprocess_path).read_text())
        self.net = keras_model.load(keras_path)
        self.scaler = Scaler.from_dict(meta["scaler"])
        # A regression model's outputs are in standardized units (absent: models logged before)
        target = meta.get("target_scaler")
        self.target_scaler = TargetScaler.from_dict(target) if target else None
        self.features = tuple(meta["features"])
        self.classes = list(meta["classes"])
        self.task = meta["task"]
        self.target = meta.get("target")

    def load_context(self, context: Any) -> None:
        self.load_from(context.artifacts[KERAS_MODEL], context.artifacts[PREPROCESS])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        # No type hints here on purpose: MLflow would try to derive a signature from them.
        import pandas as pd

        from pipeline import model as keras_model
        from pipeline.data import features_from_frame

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        X = self.scaler.transform(features_from_frame(frame, self.features))
        scores = keras_model.predict_scores(self.net, X, target=self.target_scaler)
        codes = keras_model.to_labels(scores, self.task)
        if self.task == "regression":
            return pd.DataFrame({"prediction": codes.astype(float)})
        return pd.DataFrame({"prediction": [self.classes[int(c)] for c in codes]})
