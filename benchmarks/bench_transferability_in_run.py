"""LogME + LEEP as a target run pays for them (issue 15): the ``transferability_estimate_seconds`` metric of
a finetune of the demo recipe's target data, against `estimate_transferability` called alone on the same
model and data in the same process (the baseline).

The estimate's time depends on the target training set (the demo's 1,527 images at 32 px) and the
architecture, not on the source's weights, so the source here trains one epoch on 100 images and the
target one epoch: everything else is the demo recipe. A throw-away sqlite store in a temporary folder.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_transferability_in_run.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["data.source.size=100", "source.epochs=1", "target.epochs=1"]


def main() -> None:
    import mlflow
    import torch
    from mlflow import MlflowClient

    from mlflow_transfer.config import load_recipe
    from mlflow_transfer.diagnostics.transferability import estimate_transferability
    from mlflow_transfer.tracking.context import prepare_data
    from mlflow_transfer.tracking.lookup import load_logged_model, resolve_source_run
    from mlflow_transfer.tracking.runs import finetune, train_source

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        mlflow.set_experiment(experiment_id=MlflowClient().create_experiment(
            "bench", artifact_location=Path(tmp, "artifacts").as_uri()))
        recipe = load_recipe(REPO / "recipes" / "digits.yaml", OVERRIDES)
        data = prepare_data(recipe)
        source_id = train_source(recipe, data=data)
        target_id = finetune(recipe, source_id, data=data)
        metrics = MlflowClient().get_run(target_id).data.metrics
        model = load_logged_model(resolve_source_run(source_id))
        started = time.perf_counter()
        alone = estimate_transferability(model, data.target.train)
        wall = time.perf_counter() - started
    in_run = metrics["transferability_estimate_seconds"]
    print(f"# recipe digits.yaml + {','.join(OVERRIDES)}; {alone['n']} target training images; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.1f}")
    print(f"in the target run: transferability_estimate_seconds {in_run:.2f} s (LogME {metrics['logme']:.4f}, "
          f"LEEP {metrics['leep']:.4f})")
    print(f"alone, same model and data: {wall:.2f} s (LogME {alone['logme']:.4f}, LEEP {alone['leep']:.4f})")
    print(f"in-run / alone: {in_run / wall:.2f}; in-run against the 5 s goal: {in_run / 5:.2f} x")


if __name__ == "__main__":
    sys.exit(main())
