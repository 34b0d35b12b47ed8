"""Hand-made compare listings (issue 16) for the Compare tab's tests and timings: rows in the format of
`mlflow_transfer.tracking.compare.list_compare_rows`, with planted settings and outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ui.readers import CompareListing

LAYERS = ("conv1", "conv2", "fc1")


def run_id(prefix: str, i: int) -> str:
    """A well-formed 32-hex run id, distinct per (prefix, i)."""
    return f"{prefix}{i:0{32 - len(prefix)}x}"


def compare_row(i: int, *, setting: dict, diagnosed: bool = True, name: str | None = None, seed: int = 0,
                source_run_id: str | None = None, layers=LAYERS, **outcomes) -> dict:
    """Row ``i``: target run ``run_id('a', i)``, diagnostics run ``run_id('d', i)`` (None when not
    ``diagnosed``), random outcomes from ``seed`` unless given in ``outcomes``."""
    rng = np.random.default_rng(seed * 100_003 + i)
    target = run_id("a", i)
    row = {"target_run_id": target, "diagnostics_run_id": run_id("d", i) if diagnosed else None,
           "source_run_id": source_run_id or run_id("5", 0), "experiment_id": "1", "name": name or f"run-{i}",
           "target_status": "FINISHED", "diagnostics_status": "FINISHED" if diagnosed else None,
           "model": "alexnet-32", "classes_hash": "0123456789ab", "source_domain": "printed-digits",
           "target_domain": "handwritten-digits", "method": "finetune", "sweep_id": None,
           "setting": dict(setting), "target_accuracy": float(rng.uniform(0.5, 1)),
           "transferability_score": float(rng.uniform(-0.2, 0.6)) if diagnosed else None,
           "logme": float(rng.normal()), "leep": float(-rng.uniform(0.5, 2)),
           "cka_mean": float(rng.uniform()) if diagnosed else None, "dir_output": None, "dir_feature": None,
           "domain_cv_accuracy": float(rng.uniform(0.5, 1)) if diagnosed else None,
           "findings_count": float(rng.integers(0, 6)) if diagnosed else None,
           "layers": list(layers) if diagnosed else [],
           "inherited_share": [float(v) for v in rng.uniform(size=len(layers))] if diagnosed else [],
           "cka": [float(v) for v in rng.uniform(size=len(layers))] if diagnosed else [],
           "command": None if diagnosed else f"mlflow-transfer diagnose --target-run-id {target}"}
    row.update(outcomes)
    return row


def grid_listing(n: int = 6, *, seed: int = 0, undiagnosed: tuple[int, ...] = (), left_out: list[dict] = (),
                 sweeps: list[dict] = ()) -> CompareListing:
    """``n`` rows over a grid of three settings (``target.lr`` numeric, ``target.freeze`` categorical,
    ``target.epochs`` numeric); rows in ``undiagnosed`` have no diagnostics run."""
    rows = [compare_row(i, seed=seed, diagnosed=i not in undiagnosed,
                        setting={"target.lr": ("0.01", "0.001", "0.1")[i % 3],
                                 "target.freeze": ("none", "conv1", "conv1,conv2")[(i // 3) % 3],
                                 "target.epochs": str(1 + i % 2), "data.seed": "0"})
            for i in range(n)]
    return CompareListing(rows=rows, settings=["target.epochs", "target.freeze", "target.lr"],
                          left_out=list(left_out), sweeps=list(sweeps))


def write_diff_bundle(root, *, classes: list[str], layers: list[str], confusion_target, share: list[float],
                      cka_diagonal: list[float], important: dict, source_run: str | None,
                      history: dict | None = None, diagnostics_run: str = "d") -> Path:
    """A planted pair bundle holding only what the two-pair diff reads: ``statistics/history`` (``history``
    {(model, dataset): (epochs, accuracies)}), ``statistics/confusion_target`` (C×C), ``comparison/layers``
    (the all-classes inherited ``share`` per layer), ``cka/matrix`` (``cka_diagonal`` on the diagonal,
    0.1 elsewhere), ``neurons/important`` (``important`` {(model, class, layer): [neurons]}) and the
    manifest's runs (``source_run`` None: not recorded)."""
    from mlflow_transfer.bundle.io import BundleWriter

    w = BundleWriter(root)
    rows = {"model": [], "dataset": [], "epoch": [], "accuracy": []}
    for (model, dataset), (epochs, values) in (history or {("target", "target_val"): ([0, 1], [0.4, 0.8])}).items():
        rows["model"] += [model] * len(epochs)
        rows["dataset"] += [dataset] * len(epochs)
        rows["epoch"] += list(epochs)
        rows["accuracy"] += [float(v) for v in values]
    w.write_table("statistics/history", rows)
    w.write_array("statistics/confusion_target", np.asarray(confusion_target, np.int64))
    n = len(layers)
    w.write_table("comparison/layers", {
        "class_index": [-1] * n, "layer": list(layers), "depth": list(range(n)),
        "n_important_weights": [10] * n, "n_inherited_weights": [0] * n,
        "inherited_weight_share": [float(v) for v in share], "n_important_neurons": [3] * n,
        "mean_best_similarity": [0.5] * n})
    cka = np.full((n, n), 0.1)
    np.fill_diagonal(cka, cka_diagonal)
    w.write_array("cka/matrix", cka)
    imp = {"model": [], "class_index": [], "layer": [], "rank": [], "neuron": []}
    for (model, cls, layer), neurons in important.items():
        for rank, neuron in enumerate(neurons):
            imp["model"].append(model); imp["class_index"].append(classes.index(cls))
            imp["layer"].append(layer); imp["rank"].append(rank); imp["neuron"].append(int(neuron))
    w.write_table("neurons/important", imp)
    runs = {"target": "t", "diagnostics": diagnostics_run, **({"source": source_run} if source_run else {})}
    w.finish(classes=list(classes), layers=list(layers), runs=runs)
    return Path(root)
