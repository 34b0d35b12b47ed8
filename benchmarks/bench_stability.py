"""How stable the important neurons are on the demo pair for several analysis caps, and what each cap costs.

Trains the digits demo pair once with the real pipeline (`run_pipeline`, no diagnostics) into a fresh
temporary sqlite store — or reuses a finished pair (``--tracking-uri`` and ``--target-run-id``) — then,
for each cap (``DiagnoseOptions.sample_per_class``: analysed instances per class, domain and split),
builds the analysed sample as `diagnose` does (`build_instances`) and times `diagnose_pair` on it.
Prints per cap: the median bootstrap stability of the target model's important sets over classes ×
layers (and the source model's), their spread, the diagnose time and its ratio to the first cap's in
the same run. The default cap is the smallest whose target median is >= 0.8.

    .venv/bin/python benchmarks/bench_stability.py [--caps 10,20,30,50] [--recipe recipes/digits.yaml]
    .venv/bin/python benchmarks/bench_stability.py --store /tmp/pair   # keeps the trained pair
    .venv/bin/python benchmarks/bench_stability.py --tracking-uri sqlite:////tmp/pair/mlflow.db --target-run-id <id>
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402

from mlflow_transfer.config import load_recipe  # noqa: E402
from mlflow_transfer.diagnostics.engine import diagnose_pair  # noqa: E402
from mlflow_transfer.diagnostics.options import DiagnoseOptions  # noqa: E402
from mlflow_transfer.diagnostics.similarity import NO_MATCH, best_source_neurons  # noqa: E402
from mlflow_transfer.runtime import keep_freed_memory  # noqa: E402
from mlflow_transfer.tracking.context import prepare_data  # noqa: E402
from mlflow_transfer.tracking.diagnose import build_instances, resolve_pair  # noqa: E402
from mlflow_transfer.tracking.pipeline import run_pipeline  # noqa: E402

GOAL = 0.8


def _former_match(sim: np.ndarray) -> np.ndarray:
    """The correspondence rule before issue 11: argmax (lowest index on a tie) above 0, and the same
    index kept whenever it ties the column maximum (silent neurons included)."""
    best = np.argmax(sim, axis=0)
    cols = np.arange(sim.shape[1])
    value = sim[best, cols]
    matched = np.where(value > 0, best, -1)
    return np.where(sim[cols, cols] >= value, cols, matched) if sim.shape[0] == sim.shape[1] else matched


def _shares(diag) -> None:
    """Per layer pair, the inherited share (mean over classes) with the current and the former rule."""
    print("      inherited share per layer (now / former same-index rule; target silent neurons per class):")
    for n, nxt in zip(diag.layers, diag.layers[1:]):
        now, former = [], []
        for cls, pairs in diag.correspondence.items():
            w = diag.weights["target"][cls].get((n, nxt))
            if w is None or not len(w.pairs):
                continue
            source = set(map(tuple, diag.weights["source"][cls][(n, nxt)].pairs.tolist()))
            a, b = _former_match(diag.similarity[cls][n]), _former_match(diag.similarity[cls][nxt])
            former.append(np.mean([a[x] != -1 and b[y] != -1 and (a[x], b[y]) in source for x, y in w.pairs]))
            now.append(pairs[(n, nxt)].mean())
        silent = np.mean([diag.silent["target"][c][n].sum() for c in diag.silent["target"]])
        size = next(iter(diag.silent["target"].values()))[n].size
        same = []  # of the matched target neurons, the share matched to their own index
        for c in diag.correspondence:
            m = best_source_neurons(diag.similarity[c][n], silent_source=diag.silent["source"][c][n],
                                    silent_target=diag.silent["target"][c][n])
            same.append(np.mean(m[m != NO_MATCH] == np.flatnonzero(m != NO_MATCH)) if (m != NO_MATCH).any() else np.nan)
        print(f"      {n} → {nxt}: {np.mean(now):.3f} / {np.mean(former):.3f}; {n}: silent {silent:.1f} of {size}, "
              f"matched to the same index {np.nanmean(same):.2f}")


def _values(diag, model: str) -> np.ndarray:
    return np.array([s.stability for per_layer in diag.stability[model].values() for s in per_layer.values()])


def _measure(pair, data, caps, seed: int, shares: bool = False) -> None:
    # ratios against cap 10 (the former default) when it is measured, else against the first cap;
    # cap 10 is then measured first so that every ratio has its baseline
    order = sorted(caps, key=lambda c: c != 10)
    base_cap = order[0]
    base = None
    rows = {}
    print(f"{'cap':>5} {'tgt/class':>9} {'median tgt':>10} {'q10 tgt':>8} {'min tgt':>8} {'median src':>10} "
          f"{'diagnose s':>10} {'ratio':>6} {'stability s':>11}   (ratio: diagnose time / cap {base_cap}'s)")
    for cap in order:
        instances = build_instances(data, cap, seed)
        options = DiagnoseOptions(sample_per_class=cap, seed=seed)
        start = time.perf_counter()
        diag = diagnose_pair(pair.source_model, pair.target_model, instances, tuple(data.classes), options)
        seconds = time.perf_counter() - start
        base = base or seconds
        tgt, src = _values(diag, "target"), _values(diag, "source")
        per_class = np.mean([next(iter(v.values())).n_instances for v in diag.stability["target"].values()])
        median = float(np.nanmedian(tgt))
        print(f"{cap if cap else 'all':>5} {per_class:9.1f} {median:10.3f} {np.nanquantile(tgt, 0.1):8.3f} "
              f"{np.nanmin(tgt):8.3f} {np.nanmedian(src):10.3f} {seconds:10.1f} {seconds / base:6.2f} "
              f"{diag.timings.get('stability', 0.0):11.3f}", flush=True)
        per_layer = {layer: np.nanmedian([diag.stability["target"][c][layer].stability for c in diag.stability["target"]])
                     for layer in diag.layers}
        print("      target median per layer: " + ", ".join(f"{k} {v:.2f}" for k, v in per_layer.items()), flush=True)
        print(f"      {len(instances.labels)} instances; stages (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in diag.timings.items()), flush=True)
        rows[cap] = median
        if shares:
            _shares(diag)
    chosen = next((c for c in sorted(rows, key=lambda c: float("inf") if c is None else c) if rows[c] >= GOAL), None)
    print(f"smallest cap with target median stability >= {GOAL}: {chosen if chosen else 'none of ' + str(caps)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/digits.yaml")
    p.add_argument("--caps", default="10,20,30,50", help="comma-separated caps; 'all' for no cap")
    p.add_argument("--tracking-uri")
    p.add_argument("--target-run-id")
    p.add_argument("--store", help="folder for the sqlite store when training (kept, for reuse with "
                                   "--tracking-uri sqlite:///<store>/mlflow.db); default: a temporary one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shares", action="store_true",
                   help="also print the inherited share per layer with the current and the former correspondence rule")
    args = p.parse_args()
    keep_freed_memory()
    caps = [None if c == "all" else int(c) for c in args.caps.split(",")]
    recipe = load_recipe(args.recipe)
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or tmp
        mlflow.set_tracking_uri(args.tracking_uri or f"sqlite:///{store}/mlflow.db")
        target_run_id = args.target_run_id
        if target_run_id is None:
            # artifacts beside the store, not in ./mlruns of the current folder
            mlflow.set_experiment(experiment_id=mlflow.create_experiment(
                "bench-stability", artifact_location=f"file://{os.path.abspath(store)}/artifacts"))
            start = time.perf_counter()
            target_run_id = run_pipeline(recipe).target_run_id
            print(f"trained the pair of {args.recipe} in {time.perf_counter() - start:.0f} s "
                  f"(target run {target_run_id})", flush=True)
        pair = resolve_pair(target_run_id=target_run_id, recipe=recipe)
        _measure(pair, prepare_data(recipe), caps, args.seed, shares=args.shares)


if __name__ == "__main__":
    main()
