"""Planted pair bundles for the findings (issue 16): only the records `compute_findings` reads, each with
values that plant exactly one phenomenon (or none: the clean pair), and `replace_findings` to give a real
bundle a findings record of the test's choosing (the app's browser test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("a", "b", "c", "d")
LAYERS = ("conv1", "conv2", "fc")
UNITS = 21  # neurons per layer: rank percentiles in steps of 1/20
ROWS = 8    # analysed instances per class and domain


def write_planted_bundle(root: Path, *, classes=CLASSES, score: float | None = 0.1,
                         class_acc: dict | None = None, support: dict | None = None,
                         source_domain: dict | None = None, shares=(0.9, 0.8, None),
                         specific: dict | None = None, stability: dict | None = None,
                         top_fraction: float = 0.1, widths: dict | None = None, rows: int = ROWS,
                         noise: float = 0.0) -> Path:
    """A pair bundle with planted records; the defaults are a clean pair (no finding of any kind).

    Args:
        score: the transferability score (None: none recorded).
        class_acc: ``{class: (source accuracy, target accuracy)}`` on the target validation set
            (default 0.8 both); ``support``: ``{class: instances}`` (default 20).
        source_domain: the same on the source validation set (default 0.9 both, support 20).
        shares: inherited-weight share per depth, all classes (None: no next layer).
        specific: ``{"source" | "target": (layer, neuron, m)}``: the target model's ``neuron`` ranks top on
            that domain's rows and at position ``m`` (of 0..20, so percentile m/20) on the other domain's.
            Elsewhere neuron j's conductance is j on every row (the same ranking on both domains).
        stability: ``{(class, model, layer): mean Jaccard}`` (default 0.9 everywhere).
        widths: ``{layer: neurons}`` (default `UNITS` each); ``rows``: analysed instances per class and
            domain; ``noise``: the standard deviation of seeded normal noise added to every conductance
            (the benchmark's realistic sort; the tests' planted orderings need 0).
    """
    from mlflow_transfer.bundle.io import BundleWriter

    classes = tuple(classes)
    w = BundleWriter(root)
    for name, acc, default in (("statistics/confusion", class_acc, 0.8),
                               ("statistics/source_domain/confusion", source_domain, 0.9)):
        acc = {c: (acc or {}).get(c, (default, default)) for c in classes}
        n = {c: (support or {}).get(c, 20) if name == "statistics/confusion" else 20 for c in classes}
        w.write_table(name, {"class_index": list(range(len(classes))), "class": list(classes),
                             "support": [n[c] for c in classes],
                             "source_accuracy": [float(acc[c][0]) for c in classes],
                             "target_accuracy": [float(acc[c][1]) for c in classes],
                             "difference": [float(acc[c][1] - acc[c][0]) for c in classes],
                             "misclassified_into": [""] * len(classes)})
    cmp = {k: [] for k in ("class_index", "layer", "depth", "n_important_weights", "n_inherited_weights",
                           "inherited_weight_share", "n_important_neurons", "mean_best_similarity")}
    layers = tuple(widths or LAYERS)
    shares = tuple(shares) + (None,) * (len(layers) - len(shares))
    for depth, layer in enumerate(layers):
        share = shares[depth]
        for k, v in zip(cmp, (-1, layer, depth, 40, 0 if share is None else round(40 * share),
                              float("nan") if share is None else float(share), 3, 0.7)):
            cmp[k].append(v)
    w.write_table("comparison/layers", cmp)
    labels = np.tile(np.repeat(np.arange(len(classes)), rows), 2)
    domain = np.repeat([0, 1], len(classes) * rows).astype(np.int8)
    rng = np.random.default_rng(0)
    w.write_table("instances/table", {"index": np.arange(len(labels)), "label": labels, "domain": domain,
                                      "split": np.zeros(len(labels), np.int8)})
    for layer in layers:
        units = (widths or {}).get(layer, UNITS)
        a = np.tile(np.arange(units, dtype=np.float32), (len(labels), 1))
        if noise:
            a += rng.normal(0, noise, a.shape).astype(np.float32)
        for d, (at, j, m) in (specific or {}).items():
            if at != layer:
                continue
            own = domain == (0 if d == "source" else 1)
            a[:, j] = -1.0  # below every other neuron, then placed on each domain
            # neuron j's own level is gone: with the others (j excluded) sorted, sit above m of them
            others = np.sort(np.delete(np.arange(units, dtype=np.float32), j))
            a[~own, j] = -1.0 if m == 0 else others[m - 1] + 0.5
            a[own, j] = units + 1
        w.write_array(f"conductance/target/{layer}", a)
        w.write_array(f"conductance/source/{layer}", np.where(domain[:, None] == 0, np.nan, a).astype(np.float32))
        for i in range(len(classes)):
            w.write_array(f"similarity/c{i}/{layer}", np.zeros((1, 1), np.float32))  # names only: compared_classes
    st = {k: [] for k in ("model", "class_index", "layer", "k", "n_instances", "n_resamples", "stability", "reason")}
    for model in ("source", "target"):
        for i, c in enumerate(classes):
            for layer in layers:
                for k, v in zip(st, (model, i, layer, 3, rows, 20, (stability or {}).get((c, model, layer), 0.9), "")):
                    st[k].append(v)
    w.write_table("neurons/stability", st)
    w.write_table("statistics/history", {"model": [], "dataset": [], "epoch": [], "accuracy": []})
    w.write_json("statistics/summary", {})
    scores = {} if score is None else {"transferability_score": score, "target_val_accuracy": 0.7}
    w.finish(classes=list(classes), layers=list(layers), options={"top_fraction": top_fraction}, scores=scores)
    return Path(root)


def replace_findings(root: Path, findings: list[dict]) -> Path:
    """Give the bundle at ``root`` the findings record ``{"version": 1, "findings": findings}`` (any
    record it had is removed first)."""
    from helpers.bundles import without_records

    from mlflow_transfer.bundle.io import add_json_record

    without_records(root, "findings")
    add_json_record(root, "findings", {"version": 1, "findings": findings})
    return Path(root)
