"""Whole-`diagnose` timing at the paper's SVHN→MNIST scale, per stage, with peak memory, and how far
the important-neuron sets move when Layer Conductance uses fewer integration steps.

Data: printed digits (generated, SVHN-like) as the source domain and scikit-learn's handwritten
digits as the target domain, 32×32; a pair of alexnet-32 models: ``--pair trained`` (default; the
source trained on the source domain, the target fine-tuned from it on the target domain, one epoch
each, not timed) or ``--pair untrained`` (random init, the target a perturbed copy of the source).
Paper scale is ``--n-source 15000 --n-target 1500`` (the paper: 3.5 h for conductance alone).

    .venv/bin/python benchmarks/bench_diagnose.py --n-source 15000 --n-target 1500
    .venv/bin/python benchmarks/bench_diagnose.py --n-source 1500 --n-target 150   # 1/10 scale

``--steps auto`` (the default, as `diagnose`) lets each model choose its n_steps (``--tolerance``). The
comparison then ranks the target model's top-10 % sets on a sample of target instances with the
diagnosis' method at the chosen and smaller n_steps, against three references: the same method at 50
steps, captum's sum (Gauss–Legendre, the default before issue 12) at 50 steps, and the same method at
``--converged-steps`` (the integral, nearly).
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


def train(model, x, y, epochs: int, seed: int):
    """``model`` after ``epochs`` of Adam (lr 1e-3, batches of 64) on (x, y); returned in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


def trained_pair(inst: Instances, seed: int, epochs: int = 1):
    """alexnet-32 trained on the source-domain rows, and a copy of it fine-tuned on the target-domain rows."""
    src, tgt = (inst.domain == d for d in (0, 1))
    labels = torch.as_tensor(inst.labels)
    torch.manual_seed(seed)
    source = train(build_model("alexnet-32", 10), inst.images[src], labels[src], epochs, seed)
    target = build_model("alexnet-32", 10)
    target.load_state_dict(source.state_dict())
    return source, train(target, inst.images[tgt], labels[tgt], epochs, seed + 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-source", type=int, default=15000)
    p.add_argument("--n-target", type=int, default=1500)
    p.add_argument("--steps", default="auto", help="diagnose's n_steps: auto or a number")
    p.add_argument("--tolerance", type=float, default=DiagnoseOptions.completeness_tolerance)
    p.add_argument("--pair", choices=("trained", "untrained"), default="trained")
    p.add_argument("--svm-max-rows", type=int, default=DiagnoseOptions.svm_max_rows)
    p.add_argument("--reference-steps", type=int, default=50, help="the n_steps the overlaps are against")
    p.add_argument("--converged-steps", type=int, default=200, help="the reference that stands for the integral")
    p.add_argument("--compare-steps", default="8,16,32")
    p.add_argument("--compare-per-class", type=int, default=60,
                   help="target instances per class used for the n_steps comparison")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    keep_freed_memory()

    t0 = time.perf_counter()
    inst = _instances(args.n_source, args.n_target, args.seed)
    t_data = time.perf_counter() - t0
    print(f"data: {int((inst.domain == 0).sum())} source + {int((inst.domain == 1).sum())} target images "
          f"(32x32) in {t_data:.1f} s; torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    source, target = trained_pair(inst, args.seed) if args.pair == "trained" else perturbed_copy_pair(args.seed)
    if args.pair == "trained":
        acc = {r: float((m(inst.images[inst.domain == 1]).argmax(1).numpy() == inst.labels[inst.domain == 1]).mean())
               for r, m in (("source", source), ("target", target))}
        print(f"pair: trained, one epoch each ({time.perf_counter() - t0:.0f} s, not timed); accuracy on the "
              f"target-domain rows: source {acc['source']:.3f}, target {acc['target']:.3f}")
    else:
        print("pair: untrained (the target a perturbed copy of the source)")

    t0 = time.perf_counter()
    steps = args.steps if args.steps == "auto" else int(args.steps)
    diag = diagnose_pair(source, target, inst, tuple(str(d) for d in range(10)),
                         DiagnoseOptions(n_steps=steps, completeness_tolerance=args.tolerance,
                                         svm_max_rows=args.svm_max_rows))
    t_diag = time.perf_counter() - t0
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_pair_bundle(f"{tmp}/b", diag)
        t_write = time.perf_counter() - t0
    total = t_diag + t_write
    print(f"diagnose (n_steps {args.steps}, method {diag.options.method}, tolerance {args.tolerance}, "
          f"svm_max_rows {args.svm_max_rows}, all {len(diag.layers)} layers, both models): {total:.1f} s "
          f"= {total / 60:.1f} min (goal 12 min; paper 210 min for conductance alone)")
    computed = {r: int(np.isfinite(c[diag.layers[0]][:, 0]).sum()) for r, c in diag.conductance.items()}
    print(f"conductance computed on {computed['source']} rows (source model) and {computed['target']} rows "
          f"(target model) of {len(inst.labels)}")
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

    method = diag.options.method
    refs = {f"{method} {args.reference_steps}": (method, args.reference_steps),
            f"gausslegendre {args.reference_steps}": ("gausslegendre", args.reference_steps),
            f"{method} {args.converged_steps}": (method, args.converged_steps)}
    reference, seconds = {}, {}
    for name, (m, steps) in refs.items():
        t0 = time.perf_counter()
        reference[name] = top_sets(layer_conductance(target, x, y, n_steps=steps, method=m))
        seconds[name] = time.perf_counter() - t0
    first = next(iter(refs))
    print(f"\nn_steps comparison on {len(rows)} target instances (target model, top-10 % sets per class and layer; "
          f"mean overlap, min in brackets):")
    print("  " + " ".join(f"{'vs ' + name:>24}" for name in refs))
    for name, (m, steps) in refs.items():
        overlaps = [np.mean([len(reference[name][k] & reference[r][k]) / len(reference[r][k]) for k in reference[r]])
                    for r in refs]
        print(f"  {name:<20} {seconds[name]:7.1f} s ({seconds[name] / seconds[first]:.2f}x) "
              + " ".join(f"{o:24.3f}" for o in overlaps))
    compare = {int(s) for s in args.compare_steps.split(",") if s} | {diag.conductance_steps["target"].n_steps}
    for steps in sorted(compare - {args.reference_steps}):
        t0 = time.perf_counter()
        sets = top_sets(layer_conductance(target, x, y, n_steps=steps, method=method))
        took = time.perf_counter() - t0
        cells = []
        for r in refs:
            ov = [len(sets[k] & reference[r][k]) / len(reference[r][k]) for k in reference[r]]
            cells.append(f"{np.mean(ov):.3f} ({np.min(ov):.2f})")
        print(f"  {method + ' ' + str(steps):<20} {took:7.1f} s ({took / seconds[first]:.2f}x) "
              + " ".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main()
