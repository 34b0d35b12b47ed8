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
from mlflow_transfer.models import build_model


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
        out[name] = attr.numpy()
    return out


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images (default 200)")
    parser.add_argument("--steps", type=int, default=50, help="n_steps (default 50)")
    parser.add_argument("--batch-size", type=int, default=32, help="instances per pass (default 32)")
    parser.add_argument("--method", default="gausslegendre")
    parser.add_argument("--captum", choices=("steps", "instances", "both"), default="both",
                        help="captum batching to time (default both)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x, y = _data(args.n)
    models = {}
    for role, seed in (("source", 0), ("target", 1)):
        torch.manual_seed(seed)
        models[role] = build_model("alexnet-32", 10).eval()
    print(f"alexnet-32 × 2, {args.n} images 3×32×32, {len(models['source'].analysis_layers)} layers, "
          f"n_steps {args.steps}, {args.method}, batch size {args.batch_size}, "
          f"{torch.get_num_threads()} threads", flush=True)

    t0 = time.perf_counter()
    ours = {role: layer_conductance(m, x, y, n_steps=args.steps, method=args.method,
                                    batch_size=args.batch_size) for role, m in models.items()}
    t_ours = time.perf_counter() - t0
    print(f"ours (all layers per pass):        {t_ours:8.1f} s", flush=True)

    for batching in (("steps", "instances") if args.captum == "both" else (args.captum,)):
        t0 = time.perf_counter()
        ref = {role: _captum(m, x, y, args.steps, args.method, args.batch_size, batching)
               for role, m in models.items()}
        t_cap = time.perf_counter() - t0
        worst = max(_rel(ours[r][k], ref[r][k]) for r in ref for k in ref[r])
        print(f"captum layer by layer ({batching:9s}): {t_cap:8.1f} s   speed-up {t_cap / t_ours:5.2f}×   "
              f"max relative difference {worst:.2e}", flush=True)


if __name__ == "__main__":
    main()
