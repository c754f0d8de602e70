"""`predict`: score a CSV of raw features with a logged or registered model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands.common import add_common, load_params
from pipeline.errors import PipelineError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="score a CSV of raw features with a logged model")
    add_common(p)
    p.add_argument("--model", required=True, help="runs:/<id>/model, models:/<name>@champion ...")
    p.add_argument("--data", required=True, type=Path, help="CSV of raw feature rows")
    p.add_argument("--out", type=Path, help="write predictions here (default: print them)")


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipeline import data, tracking

    params = load_params(args)
    tracking.set_uri(params.tracking.uri)
    if not args.data.is_file():
        raise PipelineError(f"--data {args.data}: file not found. Pass a CSV of raw feature rows.")
    if args.out is not None and not args.out.parent.is_dir():
        raise PipelineError(
            f"--out {args.out}: the folder {args.out.parent} does not exist. Create it or write "
            "the predictions elsewhere."
        )
    loaded = tracking.load_model(args.model)
    served = loaded.unwrap_python_model()
    if not hasattr(served, "features"):
        raise PipelineError(
            f"--model {args.model}: not a model this pipeline logged (no feature list or "
            "scaler in it). Use a model from `train` or `search`: runs:/<run_id>/model, "
            "models:/<name>@champion or models:/m-<id>."
        )
    frame = data.read_csv(args.data, header="auto")
    frame.columns = [str(c) for c in frame.columns]
    try:
        X = data.features_from_frame(frame, served.features)
    except PipelineError as exc:
        raise PipelineError(f"--data {args.data}: {exc}") from None
    rows = pd.DataFrame(X.astype("float64"), columns=list(served.features))
    try:
        out = loaded.predict(rows)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow's schema enforcement errors
        raise PipelineError(
            f"--data {args.data}: the rows do not fit the model ({str(exc)[:400]}). "
            f"The model needs the columns {data.preview(served.features)}."
        ) from None
    target = getattr(served, "target", None)
    if target in frame.columns and served.task == "classification":
        truth = frame[target].astype(str).to_numpy()
        acc = float((out["prediction"].astype(str).to_numpy() == truth).mean())
        print(f"accuracy against column {target!r}: {acc:.4f} ({len(frame)} rows)", file=sys.stderr)
    if args.out:
        # Written beside the target, then renamed: a failed write never leaves half a file.
        partial = args.out.with_name(f".{args.out.name}.partial")
        try:
            pd.DataFrame(out).to_csv(partial, index=False)
            partial.replace(args.out)
        finally:
            partial.unlink(missing_ok=True)
        print(f"wrote {len(out)} predictions to {args.out}", file=sys.stderr)
    else:
        pd.DataFrame(out).to_csv(sys.stdout, index=False)
    return 0
