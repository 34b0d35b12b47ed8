"""Times the demo pair's whole timeline (issue 14) and prints DVI's fidelity at every epoch.

`timetravel` with its defaults (50 points per class, domain and split; a 200 × 200 grid; the default
`TimeTravelOptions`) over the digits recipe's 8 source and 5 target epochs, against the issue's 2-minute
goal (a ratio), split into the projection (the epochs' own ``seconds``) and the rest (checkpoints,
embeddings, writing and uploading the bundle, metrics). Per epoch: NN@15 on train and validation points,
PPR, temporal correlation and trustworthiness (goal on the late epochs of both models: NN@15 >= 4 and
PPR >= 0.95; the early ones are reported too).

The pair is trained first into a fresh temporary sqlite store (the recipe as `make demo` runs it; its time
is `bench_demo_pipeline.py`'s) and diagnosed cheaply (the run the timeline attaches to). ``--store DIR``
keeps that store in DIR, or reuses the pair already trained there (a fresh cheap diagnosis each time).

    .venv/bin/python benchmarks/bench_timetravel_demo.py [--recipe recipes/digits.yaml] [--store DIR] [--device auto]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 120.0           # the demo pair's whole timeline (issue 14)
EPOCH_GOAL_S = 10.0      # per epoch, for 5,000 points (issue 14)
LATE_NN15, LATE_PPR = 4.0, 0.95


def _pair(recipe_path: str, overrides: list[str]):
    """The newest demo pair in the store MLflow points at (trained now if there is none), freshly diagnosed."""
    import mlflow

    from mlflow_transfer.config import load_recipe
    from mlflow_transfer.diagnostics.options import DiagnoseOptions
    from mlflow_transfer.tags import TAGS
    from mlflow_transfer.tracking import run_pipeline
    from mlflow_transfer.tracking.diagnose import diagnose

    cheap = DiagnoseOptions(sample_per_class=2, n_steps=8, feature_vis_steps=0, robustness=False)
    recipe = load_recipe(recipe_path, overrides)
    targets = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list",
                                             order_by=["attributes.start_time DESC"])
               if r.data.tags.get(TAGS.role) == "target" and r.info.status == "FINISHED"]
    if targets:
        target_id, trained = targets[0].info.run_id, 0.0
    else:
        start = time.perf_counter()
        target_id = run_pipeline(recipe).target_run_id
        trained = time.perf_counter() - start
    diag_id = diagnose(target_run_id=target_id, options=cheap)
    return target_id, diag_id, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe overrides KEY=VALUE")
    parser.add_argument("--store", default="", help="keep (or reuse) the tracking store in this folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sample-per-class", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.store or tmp).resolve()
        root.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRANSFER_CACHE"] = str(root / "cache")
        for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            os.environ.pop(leaked, None)
        import mlflow
        import torch

        from mlflow_transfer.tracking.bundles import fetch_timeline
        from mlflow_transfer.tracking.timetravel import timetravel

        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        mlflow.set_experiment("bench-timetravel")
        os.chdir(REPO)
        target_id, diag_id, trained = _pair(args.recipe, args.overrides)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        timetravel(target_run_id=target_id, diagnostics_run_id=diag_id, sample_per_class=args.sample_per_class,
                   device=args.device)
        wall = time.perf_counter() - start
        timeline = fetch_timeline(diag_id)
        epochs = timeline.epochs()
        n = timeline.meta["n_points"]
        n_train = sum(s == "train" for s in timeline.points()["split"])
        projection = float(sum(epochs["seconds"]))
        code = hashlib.sha256((REPO / "mlflow_transfer/diagnostics/timetravel.py").read_bytes()
                              + (REPO / "mlflow_transfer/diagnostics/dvi_model.py").read_bytes()).hexdigest()[:10]
        print(f"# recipe {args.recipe} {' '.join(args.overrides)} · {os.cpu_count()} cores, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), device {args.device} · load {load:.1f} before · "
              f"diagnostics/timetravel+dvi_model sha256 {code}"
              + (f" · pair trained in {trained:.0f} s (not timed below)" if trained else " · pair reused"))
        print(f"timeline of {timeline.n_positions} positions (source {list(epochs['phase']).count('source')}, "
              f"target {list(epochs['phase']).count('target')}), {n} points ({n_train} train), grid "
              f"{timeline.meta['grid']}: {wall:.1f} s (goal {GOAL_S:.0f} s; ratio {wall / GOAL_S:.2f})")
        print(f"  projection (sum of the epochs' seconds): {projection:.1f} s; the rest (checkpoints, embeddings, "
              f"bundle, upload, metrics): {wall - projection:.1f} s")
        print(f"  per epoch: mean {projection / timeline.n_positions:.1f} s, max {max(epochs['seconds']):.1f} s for "
              f"{n} points (goal {EPOCH_GOAL_S:.0f} s for 5,000; ratio {max(epochs['seconds']) / EPOCH_GOAL_S:.2f})")
        names = ("nn_train_15", "nn_val_15", "ppr", "ppr_train", "ppr_val", "boundary_nn_15", "temporal_corr",
                 "trustworthiness", "accuracy")
        print("  pos phase  epoch seconds " + " ".join(f"{n:>15}" for n in names))
        for p in range(timeline.n_positions):
            print(f"  {p:>3} {epochs['phase'][p]:<6} {int(epochs['epoch'][p]):>5} {float(epochs['seconds'][p]):>7.1f} "
                  + " ".join(f"{float(epochs[n][p]):>15.3f}" for n in names))
        for phase in ("source", "target"):
            rows = [p for p in range(timeline.n_positions) if epochs["phase"][p] == phase]
            if rows:
                last = rows[-1]
                nn15, ppr = float(epochs["nn_train_15"][last]), float(epochs["ppr"][last])
                print(f"  late {phase} epoch {int(epochs['epoch'][last])}: NN@15 train {nn15:.2f} (goal >= {LATE_NN15:.0f}; "
                      f"ratio {nn15 / LATE_NN15:.2f}), PPR {ppr:.3f} (goal >= {LATE_PPR}; ratio {ppr / LATE_PPR:.3f})")


if __name__ == "__main__":
    main()
