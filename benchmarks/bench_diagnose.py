"""Whole-`diagnose` timing at the paper's SVHN→MNIST scale, per stage, with peak memory, and how far
the important-neuron sets move when Layer Conductance uses fewer integration steps.

Data: printed digits (generated, SVHN-like) as the source domain and scikit-learn's handwritten
digits as the target domain, 32×32; a pair of alexnet-32 models (random init, the target a perturbed
copy of the source, so the timing does not depend on training). Paper scale is
``--n-source 15000 --n-target 1500`` (the paper: 3.5 h for conductance alone).

    .venv/bin/python benchmarks/bench_diagnose.py --n-source 15000 --n-target 1500
    .venv/bin/python benchmarks/bench_diagnose.py --n-source 1500 --n-target 150   # 1/10 scale

``--steps auto`` (the default, as `diagnose`) lets each model choose its n_steps (``--tolerance``); the
comparison then also reports the chosen n_steps against the reference (50).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from mlflow_transfer.bundle.writer import write_pair_bundle
from mlflow_transfer.data import load_domain
from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.diagnostics.ranking import top_k_neurons
from mlflow_transfer.models import build_model
from mlflow_transfer.runtime import keep_freed_memory


def _instances(n_source: int, n_target: int, seed: int) -> Instances:
    src = load_domain("printed-digits", image_size=32, size=n_source, seed=seed)
    tgt = load_domain("handwritten-digits", image_size=32)
    rng = np.random.default_rng(seed)
    tgt_rows = np.sort(rng.choice(len(tgt), min(n_target, len(tgt)), replace=False))
    images = torch.cat([src.dataset.tensors[0], tgt.dataset.tensors[0][tgt_rows]])
    labels = np.concatenate([src.targets, tgt.targets[tgt_rows]])
    domain = np.repeat([0, 1], [len(src), len(tgt_rows)]).astype(np.int8)
    split = (rng.random(len(labels)) < 0.15).astype(np.int8)
    return Instances(images, labels, domain, split, np.concatenate([np.arange(len(src)), tgt_rows]))


def perturbed_copy_pair(seed: int):
    """An untrained alexnet-32 and a copy with 5 % noise on every parameter: a stand-in fine-tuned pair."""
    torch.manual_seed(seed)
    source = build_model("alexnet-32", 10).eval()
    target = build_model("alexnet-32", 10).eval()
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        for param in target.parameters():
            param.add_(0.05 * param.std().nan_to_num() * torch.randn_like(param))
    return source, target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-source", type=int, default=15000)
    p.add_argument("--n-target", type=int, default=1500)
    p.add_argument("--steps", default="auto", help="diagnose's n_steps: auto or a number")
    p.add_argument("--tolerance", type=float, default=DiagnoseOptions.completeness_tolerance)
    p.add_argument("--reference-steps", type=int, default=50, help="the n_steps the overlaps are against")
    p.add_argument("--compare-steps", default="8,16,32")
    p.add_argument("--compare-per-class", type=int, default=150,
                   help="target instances per class used for the n_steps comparison")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    keep_freed_memory()

    source, target = perturbed_copy_pair(args.seed)

    t0 = time.perf_counter()
    inst = _instances(args.n_source, args.n_target, args.seed)
    t_data = time.perf_counter() - t0
    print(f"data: {int((inst.domain == 0).sum())} source + {int((inst.domain == 1).sum())} target images "
          f"(32x32) in {t_data:.1f} s; torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    steps = args.steps if args.steps == "auto" else int(args.steps)
    diag = diagnose_pair(source, target, inst, tuple(str(d) for d in range(10)),
                         DiagnoseOptions(n_steps=steps, completeness_tolerance=args.tolerance))
    t_diag = time.perf_counter() - t0
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_pair_bundle(f"{tmp}/b", diag)
        t_write = time.perf_counter() - t0
    total = t_diag + t_write
    print(f"diagnose (n_steps {args.steps}, tolerance {args.tolerance}, all {len(diag.layers)} layers, both models): {total:.1f} s "
          f"= {total / 60:.1f} min (goal 60 min; paper 210 min for conductance alone)")
    for stage, seconds in sorted(diag.timings.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<12} {seconds:8.1f} s")
    print(f"  {'bundle write':<12} {t_write:8.1f} s")
    print(f"peak memory (RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for role, choice in diag.conductance_steps.items():
        print(f"n_steps {role}: {choice.n_steps} ({choice.mode}; completeness error {choice.completeness_error:.4f}, "
              f"tolerance {choice.tolerance}, candidates {choice.candidates})")
    for note in diag.notes:
        print(f"note: {note}")

    # Fewer integration steps: time and overlap of the top-k sets with the reference steps.
    rng = np.random.default_rng(args.seed)
    rows = np.concatenate([rng.permutation(np.flatnonzero((inst.domain == 1) & (inst.labels == c)))[:args.compare_per_class]
                           for c in range(10)])
    x, y = inst.images[rows], torch.as_tensor(inst.labels[rows])

    def top_sets(cond):
        return {(c, n): set(top_k_neurons(cond[n][inst.labels[rows] == c]).tolist())
                for c in range(10) for n in diag.layers if (inst.labels[rows] == c).any()}

    t0 = time.perf_counter()
    reference = top_sets(layer_conductance(target, x, y, n_steps=args.reference_steps))
    t_ref = time.perf_counter() - t0
    print(f"\nn_steps comparison on {len(rows)} target instances (target model, top-10 % sets per class and layer):")
    print(f"  n_steps {args.reference_steps:>3}: {t_ref:7.1f} s   overlap 1.000 (reference)")
    compare = {int(s) for s in args.compare_steps.split(",") if s} | {diag.conductance_steps["target"].n_steps}
    for steps in sorted(compare - {args.reference_steps}):
        t0 = time.perf_counter()
        sets = top_sets(layer_conductance(target, x, y, n_steps=steps))
        seconds = time.perf_counter() - t0
        overlaps = [len(sets[key] & reference[key]) / len(reference[key]) for key in reference]
        print(f"  n_steps {steps:>3}: {seconds:7.1f} s   overlap mean {np.mean(overlaps):.3f}, "
              f"min {np.min(overlaps):.3f}   ({seconds / t_ref:.2f}x the time)")


if __name__ == "__main__":
    main()
