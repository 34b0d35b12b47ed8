"""ResNet-18 at 224×224 on an Office-31-sized pair (2,817 source + 795 target images, 31 classes; random
images of that size, untrained models): what a `diagnose` costs on this machine's device.

What diagnose analyses: ``sample_per_class`` (10) instances per class, domain and split (train and
validation, 15 % validation), so with Office-31's class sizes about 1,050 of the 3,612 images; the
whole validation sets are streamed once through both models for the confusion tables. Timed here:

- ``outputs``: one inference pass of both models over ``--outputs-timed`` images, scaled to every
  image (an upper bound of the forward passes of the outputs, statistics and CKA stages);
- ``steps``: the adaptive n_steps choice (16-instance probe, candidates up to the first that meets
  the tolerance), per model — or, with ``--n-steps N``, its cost estimated from the timed
  conductance (16 probe instances × the points of every candidate up to N);
- ``conductance``: Layer Conductance of all analysis layers at the chosen n_steps on ``--timed``
  instances, then scaled to the rows `diagnose` computes it on (labelled as an estimate): the
  source model the analysed target rows, the target model those and the domain classifiers' source
  rows (as many as the target rows per class, plus the all-class sample: at most 2 × the target rows).

    .venv/bin/python benchmarks/bench_resnet_office.py --device auto
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.options import CANDIDATE_STEPS
from mlflow_transfer.diagnostics.steps import PROBE_SIZE, choose_n_steps
from mlflow_transfer.models import build_model
from mlflow_transfer.runtime import keep_freed_memory, resolve_device

N_SOURCE, N_TARGET, CLASSES, VAL = 2817, 795, 31, 0.15


def analysed(n: int, per_class: int = 10) -> int:
    """Instances diagnose analyses in a domain of ``n`` images over 31 equal classes (train + validation)."""
    each = n / CLASSES
    return int(CLASSES * (min(per_class, round(each * (1 - VAL))) + min(per_class, round(each * VAL))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--timed", type=int, default=8, help="instances whose conductance is timed")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--n-steps", default="auto", help="auto, or a number to skip the choice")
    p.add_argument("--outputs-timed", type=int, default=N_SOURCE + N_TARGET, help="images of the timed inference pass")
    args = p.parse_args()
    keep_freed_memory()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    models = {r: build_model("resnet18", CLASSES).eval().to(device) for r in ("source", "target")}
    n_src, n_tgt = analysed(N_SOURCE), analysed(N_TARGET)
    rows = {"source": n_tgt, "target": n_tgt + min(n_src, 2 * n_tgt)}  # diagnostics/rows.py, upper bound
    print(f"device {device}; torch threads {torch.get_num_threads()}; resnet18, 224x224, {CLASSES} classes; "
          f"{N_SOURCE} + {N_TARGET} images, {n_src} + {n_tgt} analysed (sample_per_class 10); conductance rows: "
          f"source model {rows['source']}, target model {rows['target']}")
    g = torch.Generator().manual_seed(0)

    t0 = time.perf_counter()
    timed = min(args.outputs_timed, N_SOURCE + N_TARGET)
    with torch.inference_mode():
        for start in range(0, timed, 64):
            x = torch.rand(min(64, timed - start), 3, 224, 224, generator=g).to(device)
            for m in models.values():
                m(x)
    t_out = (time.perf_counter() - t0) * (N_SOURCE + N_TARGET) / timed
    print(f"  outputs (both models, all {N_SOURCE + N_TARGET} images, inference): {t_out:8.1f} s"
          f"{'' if timed == N_SOURCE + N_TARGET else f' (estimate from {timed} images)'}")

    x = torch.rand(max(PROBE_SIZE, args.timed), 3, 224, 224, generator=g)
    y = torch.randint(0, CLASSES, (len(x),), generator=g)
    total_cond = 0.0
    for role, m in models.items():
        layers = dict(m.analysis_layers)
        if args.n_steps == "auto":
            t0 = time.perf_counter()
            choice = choose_n_steps(m, x[:PROBE_SIZE], y[:PROBE_SIZE], layers, tolerance=args.tolerance,
                                    batch_size=args.batch_size)
            t_steps = time.perf_counter() - t0
            steps = choice.n_steps
            tried = ", ".join(f"{k}: {v:.4f}" for k, v in choice.candidates.items())
            print(f"  {role}: steps choice {t_steps:8.1f} s -> n_steps {steps} (met {choice.met}; errors {tried}; "
                  f"measured on {list(choice.layers)})")
        else:
            steps = int(args.n_steps)
        t0 = time.perf_counter()
        layer_conductance(m, x[:args.timed], y[:args.timed], layers, n_steps=steps, batch_size=args.batch_size)
        per = (time.perf_counter() - t0) / args.timed
        if args.n_steps != "auto":
            points = sum(c + 1 for c in CANDIDATE_STEPS if c <= steps)
            print(f"  {role}: steps choice up to n_steps {steps} (estimate): "
                  f"{PROBE_SIZE * points * per / (steps + 1) / 60:.1f} min")
        total_cond += per * rows[role]
        print(f"  {role}: conductance at n_steps {steps}, {len(layers)} layers: {per:.2f} s per instance "
              f"(timed on {args.timed}) -> {per * rows[role] / 60:.1f} min for {rows[role]} instances (estimate)")
    print(f"  conductance, both models (estimate): {total_cond / 60:.1f} min")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
