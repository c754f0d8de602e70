"""Servable models: a pyfunc "model from code" logged and registered, loaded back for
`predict`; the MLflow UI command."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import TrackingError
from pipeline.failures import guard
from pipeline.protocol import (
    RunStatus,
)
from pipeline.provenance import version
from pipeline.tracking.store import _artifact_root, _bound_client_retries, _Store, default_uri
from pipeline.uris import is_server, mask_secret

log = logging.getLogger("pipeline.tracking")


class _Models(_Store):
    """The dataset a run used and the servable model it made."""

    def log_dataset(
        self,
        run_id: str,
        sample: Any,
        *,
        rows: int,
        digest: str,
        name: str,
        source: str,
        target: str,
        context: str = "training",
    ) -> None:
        """Data as an MLflow dataset input (name, digest, schema, profile, source); `context`
        says what it was used for (training, or test for a separate test file).

        Only a `sample` of the rows (a data frame with every column) is handed to MLflow, to
        infer the schema; the digest (of all the data, computed by the caller) and the profile
        (`rows` rows) are given. MLflow's own digest of a whole frame would need it built in
        memory (float64: 376 MB at MNIST scale) and then maps every cell to its Python type
        (peaking near 2.4 GB and 30 s there), and it hashes only the first 10 000 rows.
        """
        import mlflow.data
        from mlflow.entities import Dataset, DatasetInput, InputTag

        logged = mlflow.data.from_pandas(
            sample, source=source, name=name, targets=target, digest=digest
        )._to_mlflow_entity()
        profile = {"num_rows": rows, "num_elements": rows * sample.shape[1]}  # as from_pandas
        entity = Dataset(
            name=logged.name,
            digest=logged.digest,
            source_type=logged.source_type,
            source=logged.source,
            schema=logged.schema,
            profile=json.dumps(profile),
        )
        tags = [InputTag("mlflow.data.context", context)]
        self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags)])

    def log_model(
        self,
        run_id: str,
        *,
        code: Path,
        artifacts: Mapping[str, Path],
        input_example: Any,
        output_example: Any,
        register_as: str | None = None,
    ) -> tuple[str, str | None]:
        """Log a pyfunc "model from code": `code` is the file MLflow runs to build the model
        (its package goes along), `artifacts` the files it loads, the examples give the
        signature. Pickle-free. Registered under `register_as` with the alias `champion`.
        Returns (model URI, registered version)."""
        import mlflow
        from mlflow.models import infer_signature

        with guard(self.display_uri, "logging the model", self._db_path):
            signature = infer_signature(input_example, output_example)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(code),
                    artifacts={k: str(v) for k, v in artifacts.items()},
                    code_paths=[str(code.parent)],
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=_pip_requirements(),
                )
            # fluent end_run above marked it FINISHED; the caller's context sets the real end.
            self.client.update_run(run_id, status=RunStatus.RUNNING)
        version = None
        if register_as:
            with (
                guard(self.display_uri, "registering the model", self._db_path),
                _without_registry_chatter(),
            ):
                mv = mlflow.register_model(info.model_uri, register_as)
            version = str(mv.version)
            self.client.set_registered_model_alias(register_as, "champion", version)
        return info.model_uri, version


# What mlflow.register_model prints on its own; the command's `model: ...` line says it already.
_REGISTRY_CHATTER = ("Successfully registered model ", "Created version ")


@contextlib.contextmanager
def _without_registry_chatter() -> Iterator[None]:
    """Hold back MLflow's registry messages (it prints them to stderr, not through logging);
    anything else it writes meanwhile goes to stderr as usual, also when the block raises."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        lines = held.getvalue().splitlines(keepends=True)
        sys.stderr.write("".join(x for x in lines if not x.startswith(_REGISTRY_CHATTER)))


def _pip_requirements() -> list[str]:
    names = ("tensorflow", "keras", "mlflow", "pandas", "numpy", "scikit-learn", "pyyaml")
    return [f"{n}=={version(n)}" for n in names if version(n) != "absent"]


def ui_command(uri: str, port: int = 5000) -> list[str]:
    """The `mlflow ui` command for a store, bound to 127.0.0.1."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port)]
    if not is_server(uri):
        cmd += ["--backend-store-uri", uri]
        root = _artifact_root(uri)
        if root:
            cmd += ["--default-artifact-root", root]
    return cmd


def load_model(uri: str) -> Any:
    """Load a logged or registered model (`runs:/...`, `models:/name@champion`, `models:/m-...`).

    Pickled (cloudpickle) models are refused unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is set
    explicitly: unpickling runs whatever code the file names, and the project's own models are
    pickle-free (models from code + a Keras file loaded in safe mode).
    """
    _bound_client_retries()
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    import mlflow

    try:
        with guard(mask_secret(mlflow.get_tracking_uri()), f"loading --model {uri}"):
            return mlflow.pyfunc.load_model(uri)
    except TrackingError:
        raise  # the store is unreachable or unusable: said as such, not as a bad model
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(
            f"--model {uri}: cannot load it ({type(exc).__name__}: {mask_secret(str(exc))[:300]})."
            " Use runs:/<run_id>/model, models:/<name>@champion or models:/m-<id>, and the same "
            "--tracking-uri the model was logged to."
        ) from None


def set_uri(uri: str | None) -> str:
    import mlflow

    uri = uri or default_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def serve_from_code(wrapper: type) -> None:
    """Hand MLflow's models-from-code loader an instance of `wrapper` as a pyfunc model (its
    `load_context` and `predict` do the work). Called by pipeline/serving_entry.py only."""
    import mlflow.pyfunc
    from mlflow.models import set_model

    set_model(type("PipelineModel", (wrapper, mlflow.pyfunc.PythonModel), {})())


def register_for_serving() -> None:
    """What models logged by earlier releases call (their copy of the code file names it)."""
    from pipeline.serving import ServingModel

    serve_from_code(ServingModel)
