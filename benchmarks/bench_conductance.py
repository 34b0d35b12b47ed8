"""Benchmark: conductance of all analysis layers of two alexnet-32 models, ours vs captum layer by layer.

Both sides get the same images (the first ``--n`` handwritten digits at 32×32, true-class targets),
the same zero baseline, method and steps. captum runs ``LayerConductance(model, layer).attribute``
once per layer (8 layers × 2 models), then takes the max over positions for conv layers, as the
paper does; ours runs ``layer_conductance`` once per model. Two captum set-ups are timed:

* ``steps``: one call per layer on all instances with ``internal_batch_size = batch_size ×
  (steps + 1)`` — captum's own way to bound memory, which batches over steps and re-evaluates one
  step per chunk;
* ``instances``: one call per layer on each batch of ``batch_size`` instances with no internal
  batching — the same passes as ours, captum at its most economical.

Both sides compute every layer output and gradient with the same arithmetic (differences ≈ 1e-7, from
the order of the sum over steps only). What one shared pass saves is bounded: captum costs about
8 forwards + 8 partial backwards per batch, ours 1 forward + 1 full backward, i.e. ≈ 5.5–6× for
alexnet-32 on a quiet CPU; timings on a machine shared with other processes swing either way.

With ``--ours-method``/``--ours-steps`` ours runs another sum or step count than captum (e.g. the
trapezoid rule at the steps `diagnose` chose against captum's default at 50): the speed-up is then for
results that differ, and the script prints the overlap of the top-10 % sets per class and layer with
captum's instead of the difference.

Usage: ``python benchmarks/bench_conductance.py [--n 200] [--steps 50] [--batch-size 32]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from captum.attr import LayerConductance

from mlflow_transfer.data import load_domain
from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.ranking import top_k_neurons
from mlflow_transfer.models import build_model
from mlflow_transfer.runtime import keep_freed_memory


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    domain = load_domain("handwritten-digits", image_size=32)
    if n > len(domain):
        raise SystemExit(f"--n {n}: the domain has only {len(domain)} images")
    x = torch.stack([domain.dataset[i][0] for i in range(n)])
    return x, torch.as_tensor(domain.targets[:n], dtype=torch.long)


def _captum(model, x, y, steps, method, batch_size, batching) -> dict[str, np.ndarray]:
    out = {}
    for name, layer in model.analysis_layers.items():
        lc = LayerConductance(model, layer)
        if batching == "steps":
            attr = lc.attribute(x, 0.0, target=y, n_steps=steps, method=method,
                                internal_batch_size=batch_size * (steps + 1))
        else:
            attr = torch.cat([lc.attribute(x[i:i + batch_size], 0.0, target=y[i:i + batch_size],
                                           n_steps=steps, method=method)
                              for i in range(0, len(x), batch_size)])
        attr = attr.detach()
        if attr.ndim == 4:
            attr = attr.amax(dim=(2, 3))
        out[name] = attr.cpu().numpy()
    return out


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images (default 200)")
    parser.add_argument("--steps", type=int, default=50, help="n_steps (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="instances per pass (default 32)")
    parser.add_argument("--method", default="gausslegendre")
    parser.add_argument("--ours-method", default=None, help="ours: another sum (default: --method)")
    parser.add_argument("--ours-steps", type=int, default=None, help="ours: other n_steps (default: --steps)")
    parser.add_argument("--captum", choices=("steps", "instances", "both"), default="both",
                        help="captum batching to time (default both)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: all cores)")
    args = parser.parse_args()
    ours_method, ours_steps = args.ours_method or args.method, args.ours_steps or args.steps
    same = (ours_method, ours_steps) == (args.method, args.steps)
    keep_freed_memory()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    x, y = (t.to(device) for t in _data(args.n))
    models = {}
    for role, seed in (("source", 0), ("target", 1)):
        torch.manual_seed(seed)
        models[role] = build_model("alexnet-32", 10).eval().to(device)

    def clock() -> float:  # GPU work is asynchronous: wait for it before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    print(f"alexnet-32 × 2, {args.n} images 3×32×32, {len(models['source'].analysis_layers)} layers, "
          f"n_steps {args.steps}, {args.method}, batch size {args.batch_size}, "
          f"{torch.get_num_threads()} threads, device {device}"
          + ("" if same else f"; ours: {ours_method}, n_steps {ours_steps}"), flush=True)
    if device.type == "cuda":  # warm-up: cuDNN autotuning and allocator growth are not conductance
        layer_conductance(models["source"], x[:args.batch_size], y[:args.batch_size], n_steps=args.steps,
                          batch_size=args.batch_size)
        _captum(models["source"], x[:args.batch_size], y[:args.batch_size], args.steps, args.method,
                args.batch_size, "instances")

    modes = ("steps", "instances") if args.captum == "both" else (args.captum,)
    wall = {k: 0.0 for k in ("ours", *modes)}
    cpu = dict(wall)
    worst = {m: 0.0 for m in modes}
    overlaps = {m: [] for m in modes}
    # Model by model, ours then captum, so a change in the machine's load hits both sides alike.
    for model in models.values():
        t0, c0 = clock(), time.process_time()
        ours = layer_conductance(model, x, y, n_steps=ours_steps, method=ours_method,
                                 batch_size=args.batch_size)
        wall["ours"] += clock() - t0
        cpu["ours"] += time.process_time() - c0
        for mode in modes:
            t0, c0 = clock(), time.process_time()
            ref = _captum(model, x, y, args.steps, args.method, args.batch_size, mode)
            wall[mode] += clock() - t0
            cpu[mode] += time.process_time() - c0
            # Largest |ours − captum| over a layer's values relative to the largest |captum|.
            worst[mode] = max(worst[mode], *(_rel(ours[k], ref[k]) for k in ref))
            for k in ref:
                for c in np.unique(y.cpu().numpy()):
                    rows = y.cpu().numpy() == c
                    a, b = set(top_k_neurons(ours[k][rows])), set(top_k_neurons(ref[k][rows]))
                    overlaps[mode].append(len(a & b) / len(b))

    print(f"ours (all layers per pass):        {wall['ours']:7.1f} s wall {cpu['ours']:7.1f} s CPU")
    for mode in modes:
        print(f"captum layer by layer ({mode:9s}): {wall[mode]:7.1f} s wall {cpu[mode]:7.1f} s CPU   "
              f"speed-up {wall[mode] / wall['ours']:5.2f}× wall {cpu[mode] / cpu['ours']:5.2f}× CPU   "
              + (f"max relative difference {worst[mode]:.2e}" if same else
                 f"top-10 % overlap with captum's mean {np.mean(overlaps[mode]):.3f}, min {np.min(overlaps[mode]):.2f}"))

if __name__ == "__main__":
    main()
