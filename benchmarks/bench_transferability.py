"""LogME + LEEP for the demo pair's source model on the target training data (issue 15: goal <= 5 s).

The target training data is what a target run fine-tunes on: `handwritten-digits` at 32 px, split as
recipes/digits.yaml splits it (85 %, stratified, seed 0): about 1,500 images. The source model is a
seeded untrained alexnet-32 (the time does not depend on the weights). Each repeat times
`estimate_transferability` whole, and alone: the forward pass (`model_outputs`, the baseline every
estimate needs), `logme` and `leep` on its outputs, in wall and in this process's CPU seconds. Prints
medians (and the least wall time) over the repeats, their ratios to the forward pass in the same run,
the ratio to the 5 s goal, and the load average before and after. On a shared machine, run it on one
thread: its CPU time is then close to the wall time it would take on an idle core, whatever the load.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_transferability.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from mlflow_transfer.data import load_domain, split_domain
from mlflow_transfer.diagnostics.instances import model_outputs
from mlflow_transfer.diagnostics.transferability import estimate_transferability, leep, logme
from mlflow_transfer.models import build_model

GOAL_S = 5.0


def _timed(fn):
    """(value, wall s, CPU s of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    load = os.getloadavg()
    domain = load_domain("handwritten-digits", image_size=32, seed=args.seed)
    train = split_domain(domain, val_fraction=0.15, seed=args.seed).train
    torch.manual_seed(args.seed)
    model = build_model("alexnet-32", 10)
    images = torch.stack([train[i][0] for i in range(len(train))])
    labels = np.array([train[i][1] for i in range(len(train))], dtype=np.int64)
    print(f"# {len(train)} target training images, alexnet-32 (untrained, seed {args.seed}); torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}", flush=True)

    rows = {name: [] for name in ("estimate_transferability", "forward pass", "logme", "leep")}
    for _ in range(args.repeats):
        result, *times = _timed(lambda: estimate_transferability(model, train))
        rows["estimate_transferability"].append(times)
        out, *times = _timed(lambda: model_outputs(model, images))
        rows["forward pass"].append(times)
        fast, *times = _timed(lambda: logme(out.embedding, labels))
        rows["logme"].append(times)
        _, *times = _timed(lambda: leep(out.probabilities, labels))
        rows["leep"].append(times)
        print("  repeat (wall / CPU s): " + ", ".join(f"{k} {v[-1][0]:.2f} / {v[-1][1]:.2f}" for k, v in rows.items()),
              flush=True)
    wall = {k: statistics.median(t[0] for t in v) for k, v in rows.items()}
    cpu = {k: statistics.median(t[1] for t in v) for k, v in rows.items()}
    least = {k: min(t[0] for t in v) for k, v in rows.items()}
    print(f"embedding {out.embedding.shape[1]} dimensions; LogME {result['logme']:.4f} (alone {fast:.4f}), "
          f"LEEP {result['leep']:.4f}, n {result['n']}")
    print(f"{'step':<26} {'wall s':>8} {'least':>7} {'CPU s':>7} {'wall/fwd':>8} {'CPU/fwd':>8}   "
          f"(medians of {args.repeats} repeats; fwd: the forward pass)")
    for name in rows:
        print(f"{name:<26} {wall[name]:8.3f} {least[name]:7.3f} {cpu[name]:7.3f} "
              f"{wall[name] / wall['forward pass']:8.2f} {cpu[name] / cpu['forward pass']:8.2f}")
    name = "estimate_transferability"
    print(f"LogME + LEEP for the demo pair: wall {wall[name]:.2f} s = {wall[name] / GOAL_S:.2f} × the {GOAL_S:g} s "
          f"goal (least {least[name]:.2f} s = {least[name] / GOAL_S:.2f} ×); CPU {cpu[name]:.2f} s = "
          f"{cpu[name] / GOAL_S:.2f} × (load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f})")

if __name__ == "__main__":
    main()
