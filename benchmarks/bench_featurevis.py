"""Feature visualisation of the demo pair's neuron set against the 90 s goal (issue 11, point 6): cold
cache (both models optimised), warm cache (a second diagnosis of the same pair: nothing optimised), and a
second pair from the same source run (source images from the cache, target optimised).

The neuron set is the demo pair's (recipes/digits.yaml: alexnet-32, 10 classes, 32 px): per model and
layer, the neurons that get patches — each class's important neurons and the 5 most similar to the other
model's (``engine._patch_neurons``). Its size is taken from a demo bundle diagnosed with this rule
(``DEMO_COUNTS``, read from ``features/{model}/{layer}/neurons``); ``--all`` times every unit instead (the
upper bound). Weights are random (untrained weights take the same time as trained ones); the target is a
perturbed copy of the source, so the caches keys differ as a fine-tuned model's do.

    .venv/bin/python benchmarks/bench_featurevis.py            # default steps
    .venv/bin/python benchmarks/bench_featurevis.py --steps 64 --all --second-pair
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from mlflow_transfer.diagnostics.featurevis import visualise_layers
from mlflow_transfer.diagnostics.options import DiagnoseOptions
from mlflow_transfer.models import build_model

GOAL_S = 90.0
# Neurons with patches in the demo pair's bundle (make demo, 2026-11-30, 10 classes), per model and layer.
DEMO_COUNTS = {"source": {"conv1": 44, "conv2": 83, "conv3": 107, "conv4": 88, "conv5": 65, "fc6": 124,
                          "fc7": 55, "fc8": 8},
               "target": {"conv1": 41, "conv2": 80, "conv3": 107, "conv4": 100, "conv5": 68, "fc6": 112,
                          "fc7": 61, "fc8": 7}}


def _requests(model, counts, everything, rng):
    out = {}
    for name, layer in model.analysis_layers.items():
        units = getattr(layer, "out_channels", getattr(layer, "out_features", 0))
        n = units if everything else counts[name]
        out[name] = (layer, sorted(rng.choice(units, n, replace=False).tolist()))
    return out


def _timed(models, requests, steps, cache):
    """Wall seconds, CPU seconds of this process, and (computed, cached) images per model."""
    t, cpu = time.perf_counter(), time.process_time()
    done = {r: visualise_layers(m, requests[r], image_size=32, steps=steps, cache_dir=cache)
            for r, m in models.items()}
    return (time.perf_counter() - t, time.process_time() - cpu,
            {r: (v.computed, v.cached) for r, v in done.items()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=DiagnoseOptions.feature_vis_steps)
    p.add_argument("--all", action="store_true", help="every unit of every layer (upper bound)")
    p.add_argument("--second-pair", action="store_true",
                   help="also time a second pair of the same source run (source cached, target optimised)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    source = build_model("alexnet-32", 10)
    target = build_model("alexnet-32", 10)
    target.load_state_dict(source.state_dict())
    with torch.no_grad():
        for param in target.parameters():
            param.add_(0.01 * torch.randn_like(param))
    rng = np.random.default_rng(args.seed)
    models = {"source": source, "target": target}
    requests = {r: _requests(m, DEMO_COUNTS[r], args.all, rng) for r, m in models.items()}
    total = sum(len(ns) for req in requests.values() for _, ns in req.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {total} neurons "
          f"({'every unit' if args.all else 'the demo set'}), {args.steps} steps, 32 px")
    threads = torch.get_num_threads()
    # On a shared machine the wall time depends on the neighbours; CPU seconds / threads is what the run
    # takes with the cores to itself (torch's intra-op threads do not oversubscribe them).
    with tempfile.TemporaryDirectory() as cache:
        cold, cpu, counts = _timed(models, requests, args.steps, cache)
        print(f"cold cache:  wall {cold:7.1f} s  ratio to the {GOAL_S:.0f} s goal {cold / GOAL_S:.2f};  CPU {cpu:7.1f} s"
              f" / {threads} threads = {cpu / threads:6.1f} s  ratio {cpu / threads / GOAL_S:.2f};  "
              f"(computed, cached) {counts}")
        warm, wcpu, counts = _timed(models, requests, args.steps, cache)
        print(f"warm cache:  wall {warm:7.1f} s  ratio {warm / GOAL_S:.3f}  vs cold {warm / cold:.3f};  CPU {wcpu:.1f} s;"
              f"  {counts}")
        if not args.second_pair:
            return
        other = build_model("alexnet-32", 10)  # a second fine-tuned model of the same source run
        other.load_state_dict(target.state_dict())
        with torch.no_grad():
            for param in other.parameters():
                param.add_(0.01 * torch.randn_like(param))
        second = {"source": source, "target": other}
        again, _, counts = _timed(second, {"source": requests["source"], "target": _requests(
            other, DEMO_COUNTS["target"], args.all, np.random.default_rng(args.seed + 1))}, args.steps, cache)
        print(f"2nd pair of the same source run: {again:7.1f} s  ratio {again / GOAL_S:.2f}  vs cold "
              f"{again / cold:.2f}  {counts}")


if __name__ == "__main__":
    main()
