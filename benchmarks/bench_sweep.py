"""Ray's overhead in a sweep (issue 15: goal <= 20 % of the sequential time).

The 4-setting test sweep (the tiny digits recipe of the tests, `target.lr` x `target.freeze_depth`) timed
two ways against two baselines, each run into its own fresh sqlite store and each training its one source
run first:

1. As the issue words it, end to end through `mlflow run` (diagnose options sample_per_class 3, n_steps 4,
   feature_vis_steps 1, robustness off; no timeline):
   - sequential: the 4 settings one after another, `mlflow run . -e main -P set=<tiny>,<setting>` each (the
     first trains the source run, the others reuse it);
   - ray: one `mlflow run . -e sweep -P grid=...`, on the local Ray it starts (2 CPUs).
2. In one process (the stricter baseline: no Python start or package import per setting):
   - sequential: `train_source`, then for each setting `finetune` + `diagnose`, one thread (torch and
     openTSNE) — the work a Ray task does (`run_setting` sets one thread), without Ray;
   - ray: `run_sweep` with `max_parallel=2` on a local Ray of 2 CPUs started as `run_sweep` starts it, here
     by the benchmark (so that the Ray processes' CPU time can be read before shutdown); its start, the
     workers' imports and the task scheduling are all in the time. The tests' fast diagnose options.

Ray's overhead = T_ray - T_sequential / 2 (what 2 cores would take with no cost of parallelism; the
source run, trained once in both, is not parallel, so this overstates the overhead by half the source
time), printed as a ratio of T_sequential. The machine may be shared: the load average is printed before
and after, and for the in-process comparison the CPU seconds of every process involved (from /proc) are
printed beside the wall-clock times, as the load-independent overhead.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py [--out benchmarks/results_sweep.txt] [--skip-in-process]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))

from helpers.procs import cpu_seconds, descendants  # noqa: E402
TINY = ("data.source.size=100,data.per_class_cap=12,source.epochs=1,target.epochs=1,"
        "source.batch_size=32,target.batch_size=32")  # tests/helpers/tracking.py's TINY
GRID = {"target.lr": [0.0005, 0.005], "target.freeze_depth": [0, 2]}
GOAL = 0.20


def _store(root: Path, name: str):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / name}.db"
    mlflow.set_tracking_uri(uri)
    experiment = MlflowClient().create_experiment(name, artifact_location=(root / name).as_uri())
    mlflow.set_experiment(experiment_id=experiment)


def sequential(recipe_path: str, options) -> float:
    import torch

    from mlflow_transfer.config import sweep_settings
    from mlflow_transfer.tracking.diagnose import diagnose
    from mlflow_transfer.tracking.runs import finetune, train_source

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # openTSNE's threads too, as in a task
    start = time.perf_counter()
    settings = sweep_settings(recipe_path, GRID, TINY.split(","))
    source = train_source(settings[0].recipe)
    for setting in settings:
        target = finetune(setting.recipe, source)
        diagnose(target_run_id=target, recipe=setting.recipe, options=options, device="cpu")
    return time.perf_counter() - start


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every live descendant (Ray's GCS, raylet and workers are the
    driver's descendants)."""
    return sum(cpu_seconds(descendants(root)).values())


def on_ray(recipe_path: str, options) -> tuple[float, float, float]:
    """(wall s, CPU s of the driver and all Ray processes, Ray's start in s)."""
    from mlflow_transfer.tracking.sweep import LOOPBACK_ONLY, run_sweep

    cpu0 = _tree_cpu_seconds(os.getpid())
    start = time.perf_counter()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault(*LOOPBACK_ONLY)
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             log_to_driver=False, logging_level="WARNING")  # as run_sweep starts it; kept to read its CPU
    started = time.perf_counter() - start
    result = run_sweep(recipe_path, GRID, overrides=tuple(TINY.split(",")), options=options, max_parallel=2,
                       echo=lambda line: None)
    elapsed = time.perf_counter() - start
    cpu = _tree_cpu_seconds(os.getpid()) - cpu0
    ray.shutdown()
    assert result.ran == 4 and not result.failed, [o.line() for o in result.outcomes]
    return elapsed, cpu, started


CLI_OPTIONS = ("-P", "sample_per_class=3", "-P", "n_steps=4", "-P", "feature_vis_steps=1", "-P", "robustness=off")


def _mlflow_run(root: Path, name: str, entry: str, *params: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{root / name}.db", PYTHONPATH=str(REPO),
               MLFLOW_TRANSFER_CACHE=str(root / "cache"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    proc = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "run", str(REPO), "--env-manager", "local",
                           "-e", entry, "--experiment-name", name, *params], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mlflow run -e {entry} failed:\n{proc.stderr[-3000:]}")


def through_mlflow_run(root: Path) -> dict:
    """Wall seconds of the 4 settings one `mlflow run -e main` each, and of one `mlflow run -e sweep` (no CPU
    seconds: Ray's workers are not waited-for children, so getrusage would miss them)."""
    recipe = str(REPO / "recipes" / "digits.yaml")
    out = {}
    start = time.perf_counter()
    for lr in GRID["target.lr"]:
        for depth in GRID["target.freeze_depth"]:
            _mlflow_run(root, "sequential-mlflow-run", "main", "-P", f"recipe={recipe}",
                        "-P", f"set={TINY},target.lr={lr},target.freeze_depth={depth}", *CLI_OPTIONS,
                        "-P", "timetravel=off")
    out["sequential"] = time.perf_counter() - start
    grid = " ".join(f"{k}={','.join(map(str, v))}" for k, v in GRID.items())
    start = time.perf_counter()
    _mlflow_run(root, "sweep-mlflow-run", "sweep", "-P", f"recipe={recipe}", "-P", f"set={TINY}",
                "-P", f"grid={grid}", *CLI_OPTIONS)
    out["ray"] = time.perf_counter() - start
    return out


def _overhead_lines(label: str, t_seq: float, t_ray: float) -> list[str]:
    overhead = t_ray - t_seq / 2
    ratio = overhead / t_seq
    return [f"{label}: Ray's overhead = ray - sequential/2 = {overhead:.1f} s = {ratio:.1%} of the sequential time "
            f"(goal <= {GOAL:.0%}: {'met' if ratio <= GOAL else 'NOT met'}); speed-up over sequential "
            f"{t_seq / t_ray:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results_sweep.txt"))
    parser.add_argument("--skip-in-process", action="store_true", help="only the `mlflow run` comparison")
    args = parser.parse_args()
    from mlflow_transfer.diagnostics.engine import DiagnoseOptions

    options = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3,
                              feature_vis_steps=1, sample_per_class=3, robustness=False)
    recipe = str(REPO / "recipes" / "digits.yaml")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = through_mlflow_run(Path(tmp))
        if not args.skip_in_process:
            _store(Path(tmp), "sequential")
            cpu0 = time.process_time()
            t_seq = sequential(recipe, options)
            cpu_seq = time.process_time() - cpu0
            _store(Path(tmp), "ray")
            t_ray, cpu_ray, t_start = on_ray(recipe, options)
    load_after = os.getloadavg()
    m_seq, m_ray = runs["sequential"], runs["ray"]
    lines = [
        "bench_sweep: the 4-setting test sweep (tiny digits recipe, target.lr x target.freeze_depth), 2 cores",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {sys.version.split()[0]}; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (shared machine)",
        "1. through `mlflow run` (the issue's comparison; sample_per_class 3, n_steps 4, feature_vis_steps 1, "
        "robustness off, no timeline)",
        f"sequential (4 x `mlflow run -e main`, one setting each): {m_seq:.1f} s",
        f"ray (1 x `mlflow run -e sweep`, local Ray of 2 CPUs):      {m_ray:.1f} s",
        *_overhead_lines("mlflow run", m_seq, m_ray),
    ]
    if not args.skip_in_process:
        lines += [
            "2. in one process (stricter: no Python start or import per setting; the tests' fast diagnose options)",
            f"sequential (train_source, then finetune + diagnose x 4 in one process, 1 thread): {t_seq:.1f} s",
            f"ray (run_sweep, local Ray of 2 CPUs, max_parallel 2, Ray's start included):             {t_ray:.1f} s",
            *_overhead_lines("in one process", t_seq, t_ray), f"of it Ray's start {t_start:.1f} s",
            f"CPU seconds (load-independent): sequential {cpu_seq:.1f}, ray (driver + GCS + raylet + workers) "
            f"{cpu_ray:.1f}: Ray's CPU overhead {(cpu_ray - cpu_seq) / cpu_seq:.1%} of the sequential CPU",
        ]
    lines.append("command: PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
