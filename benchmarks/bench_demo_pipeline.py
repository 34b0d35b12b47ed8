"""Times the default digits recipe end to end (source + target + diagnose) and reports the domain gap.

Runs `mlflow-transfer main` on recipes/digits.yaml into a fresh temporary sqlite store, in a
subprocess (as `make demo` does, minus `mlflow run`'s own start-up), then reads the numbers back from
the logged metrics. Prints wall time against the 4-minute goal (a ratio) and the three accuracies the
foundation issue asks for.

    .venv/bin/python benchmarks/bench_demo_pipeline.py [--recipe recipes/digits.yaml]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 240.0           # source + target (foundation issue)
DIAGNOSE_GOAL_S = 180.0  # diagnose with the default caps (diagnostics issue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/digits.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(leaked, None)
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "mlflow-transfer"), "main", "--recipe", args.recipe],
                       cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start

        import mlflow

        from mlflow_transfer.tags import TAGS

        mlflow.set_tracking_uri(uri)
        runs = {r.data.tags[TAGS.role]: r for r in
                mlflow.search_runs(search_all_experiments=True, output_format="list")}
        src, tgt = runs["source"].data.metrics, runs["target"].data.metrics
        train = sum((runs[r].info.end_time - runs[r].info.start_time) / 1000 for r in ("source", "target"))
        print(f"recipe {args.recipe}: whole `main` (source, target, diagnose) in {wall:.1f} s")
        print(f"  source + target runs: {train:.1f} s (goal {GOAL_S:.0f} s; ratio {train / GOAL_S:.2f} of the budget)")
        if "diagnostics" in runs:
            d = runs["diagnostics"]
            seconds = (d.info.end_time - d.info.start_time) / 1000
            print(f"  diagnose run: {seconds:.1f} s (goal {DIAGNOSE_GOAL_S:.0f} s; ratio "
                  f"{seconds / DIAGNOSE_GOAL_S:.2f}); stages: " + ", ".join(
                      f"{k[8:]} {v:.1f} s" for k, v in sorted(d.data.metrics.items()) if k.startswith("seconds_")))
        print(f"  source model, own validation (printed):     {src['final_acc_source_val']:.3f}  (goal >= 0.90)")
        print(f"  target model, handwritten validation:       {tgt['final_acc_target_val']:.3f}  (goal >= 0.95)")
        print(f"  source model, handwritten validation:       {src['final_acc_target_val']:.3f}")
        gap = tgt["final_acc_target_val"] - src["final_acc_target_val"]
        print(f"  domain gap (target - source on handwritten): {100 * gap:.1f} points  (goal >= 30)")
        best = tgt["best_acc_target_val"] - src["best_acc_target_val"]
        print(f"  transferability score (best target - best source, target val): {best:+.3f}")


if __name__ == "__main__":
    main()
