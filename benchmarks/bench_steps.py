"""Adaptive conductance steps at the paper's SVHN→MNIST setting: for each candidate n_steps, the
relative completeness error on the probe (16 seeded target instances, as `diagnose` draws it), the
conductance time per instance, and the overlap of the top-10 % important sets with n_steps 50;
then which n_steps each tolerance chooses and the paper-scale diagnose time that choice implies.

Two pairs of alexnet-32 models: untrained (the target a perturbed copy of the source, as
``bench_diagnose.py``), and briefly trained (source on printed digits, target fine-tuned on
handwritten digits), because the choice depends on the weights. Times are ratios within one run; the
paper-scale estimate is ``other stages + conductance at 50 steps × the time ratio of the chosen
n_steps``, from the measured 31-min run in ``results_paper_scale.txt`` (labelled as an estimate).

    .venv/bin/python benchmarks/bench_steps.py --n 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench_diagnose import perturbed_copy_pair, train  # the benchmarks folder is the script's sys.path[0]

from mlflow_transfer.data import load_domain
from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.options import CANDIDATE_STEPS
from mlflow_transfer.diagnostics.ranking import top_k_neurons
from mlflow_transfer.diagnostics.steps import PROBE_SIZE, choose_n_steps, completeness_errors
from mlflow_transfer.models import build_model
from mlflow_transfer.runtime import keep_freed_memory

PAPER_CONDUCTANCE_50_S = 1739.6  # results_paper_scale.txt, 2026-11 run: conductance stage, n_steps 50
PAPER_OTHER_S = 1874.5 - 1739.6  # every other stage and the bundle write


def _pairs(args, src, tgt):
    yield "untrained", *perturbed_copy_pair(args.seed)
    if args.train_epochs:
        t0 = time.perf_counter()
        source = train(build_model("alexnet-32", 10), *src, args.train_epochs, args.seed)
        target = build_model("alexnet-32", 10)
        target.load_state_dict(source.state_dict())
        target = train(target, *tgt, args.train_epochs, args.seed + 1)
        acc = float((target(tgt[0]).argmax(1) == tgt[1]).float().mean())
        print(f"\n(trained pair: {args.train_epochs} epoch(s) each, target accuracy on its data {acc:.3f}, "
              f"{time.perf_counter() - t0:.0f} s, not timed below)")
        yield "trained", source, target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300, help="target instances timed and ranked per candidate")
    p.add_argument("--n-source", type=int, default=3000, help="printed digits the trained source learns from")
    p.add_argument("--train-epochs", type=int, default=2, help="0: only the untrained pair")
    p.add_argument("--tolerances", default="0.01,0.02,0.05,0.1")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--methods", default="gausslegendre,trapezoid", help="conductance sums compared")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    keep_freed_memory()
    print(f"torch threads {torch.get_num_threads()}; {args.n} target instances; batch size {args.batch_size}")

    s = load_domain("printed-digits", image_size=32, size=args.n_source, seed=args.seed)
    t = load_domain("handwritten-digits", image_size=32)
    src = (s.dataset.tensors[0], torch.as_tensor(s.targets))
    tgt = (t.dataset.tensors[0], torch.as_tensor(t.targets))
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(len(t), args.n, replace=False))
    x, y = tgt[0][rows], tgt[1][rows]
    probe = np.sort(np.random.default_rng(args.seed).choice(len(t), PROBE_SIZE, replace=False))
    px, py = tgt[0][probe], tgt[1][probe]
    tolerances = [float(v) for v in args.tolerances.split(",")]

    for name, source, target in _pairs(args, src, tgt):
        for method in args.methods.split(","):
            print(f"\n== {name} pair, method {method} (target model; errors: max over its cut layers, "
                  "pooled over the probe)")
            layers = dict(target.analysis_layers)
            times, sets, errors = {}, {}, {}
            for steps in CANDIDATE_STEPS:
                errors[steps] = max(completeness_errors(target, px, py, layers, n_steps=steps, method=method,
                                                        batch_size=args.batch_size).values())
                t0 = time.perf_counter()
                cond = layer_conductance(target, x, y, n_steps=steps, method=method,
                                         batch_size=args.batch_size)
                times[steps] = time.perf_counter() - t0
                sets[steps] = {(c, n): set(top_k_neurons(cond[n][(y == c).numpy()]).tolist())
                               for c in range(10) for n in layers if (y == c).any()}
            ref = sets[50]
            print(f"  {'n_steps':>7} {'error':>8} {'s/inst':>8} {'vs 50':>6} {'overlap mean':>13} {'min':>6}")
            for steps in CANDIDATE_STEPS:
                ov = [len(sets[steps][k] & ref[k]) / len(ref[k]) for k in ref]
                print(f"  {steps:>7} {errors[steps]:8.4f} {times[steps] / args.n:8.4f} {times[steps] / times[50]:6.2f}"
                      f" {np.mean(ov):13.3f} {np.min(ov):6.3f}")
            for tol in tolerances:
                chosen = {role: choose_n_steps(m, px, py, dict(m.analysis_layers), tolerance=tol, method=method,
                                               batch_size=args.batch_size) for role, m in (("source", source),
                                                                                            ("target", target))}
                est = PAPER_OTHER_S + PAPER_CONDUCTANCE_50_S / 2 * sum(times[c.n_steps] / times[50]
                                                                       for c in chosen.values())
                ov = np.mean([len(sets[chosen["target"].n_steps][k] & ref[k]) / len(ref[k]) for k in ref])
                print(f"  tolerance {tol:<5g}: n_steps source {chosen['source'].n_steps:>3} "
                      f"(met {chosen['source'].met}), target {chosen['target'].n_steps:>3} (met {chosen['target'].met}); "
                      f"target overlap vs 50 {ov:.3f}; paper-scale estimate {est / 60:5.1f} min (31.2 at 50; "
                      "conductance on every row, as in that run)")


if __name__ == "__main__":
    main()
