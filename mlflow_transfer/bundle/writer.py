"""`write_pair_bundle`: every record of a `PairDiagnostics` into a new pair bundle folder (the layout is
described in `records`, which reads it back). Imports the diagnostics engine's types (and so torch): the
tracking layer and the tests import this module explicitly; readers import only `records`/`io`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from ..diagnostics.engine import PairDiagnostics
from .findings import FINDINGS, findings_record
from .io import BundleReader, BundleWriter, add_json_record
from .records import MODELS, SOURCE_DOMAIN, PairBundle

__all__ = ["write_pair_bundle"]


def _key(diag_classes, cls: str) -> str:
    return "all" if cls == "__all__" else f"c{diag_classes.index(cls)}"


def _nan_to_none(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def write_pair_bundle(root: str | Path, diag: PairDiagnostics, *, history: dict | None = None,
                      meta: dict | None = None) -> dict:
    """Write every record of ``diag`` into a new bundle folder ``root``; returns the manifest.

    Args:
        history: accuracy series ``{(model, dataset): (epochs, accuracies)}`` from the runs' metrics.
        meta: extra manifest fields (run ids, model, domains, software versions, ...).
    """
    w = BundleWriter(root)
    classes = list(diag.classes)
    # statistics (§5.1)
    rows = {"model": [], "dataset": [], "epoch": [], "accuracy": []}
    for (model, dataset), (epochs, values) in (history or {}).items():
        rows["model"] += [model] * len(epochs)
        rows["dataset"] += [dataset] * len(epochs)
        rows["epoch"] += [int(e) for e in epochs]
        rows["accuracy"] += [float(v) for v in values]
    w.write_table("statistics/history", rows)
    _write_confusion(w, "statistics/confusion", diag.confusion)  # the target validation set
    if diag.confusion_source_domain is not None:
        _write_confusion(w, f"{SOURCE_DOMAIN}/confusion", diag.confusion_source_domain)
    # instances (§5.2)
    inst, out = diag.instances, diag.outputs
    w.write_table("instances/table", {
        "index": inst.index, "domain": inst.domain.astype(np.int8), "split": inst.split.astype(np.int8),
        "label": inst.labels, "x": diag.projection[:, 0], "y": diag.projection[:, 1],
        **{f"pred_{m}": out[m].prediction for m in MODELS},
        **{f"confidence_{m}": out[m].confidence for m in MODELS},
        "thumbnail": diag.thumbnails})
    for m in MODELS:
        w.write_array(f"instances/embedding_{m}", out[m].embedding)
        for layer in diag.layers:
            w.write_array(f"conductance/{m}/{layer}", diag.conductance[m][layer].astype(np.float32))
    # neurons, similarity, weights, comparison (§5.3)
    imp = {"model": [], "class_index": [], "layer": [], "rank": [], "neuron": []}
    for m in MODELS:
        for cls, per_layer in diag.important[m].items():
            for layer, neurons in per_layer.items():
                for rank, n in enumerate(neurons):
                    imp["model"].append(m); imp["class_index"].append(classes.index(cls))
                    imp["layer"].append(layer); imp["rank"].append(rank); imp["neuron"].append(int(n))
    w.write_table("neurons/important", imp)
    for cls, per_layer in diag.similarity.items():
        for layer, matrix in per_layer.items():
            w.write_array(f"similarity/{_key(classes, cls)}/{layer}", matrix.astype(np.float32))
    wt = {k: [] for k in ("model", "class_index", "layer", "next_layer", "kind", "a", "b", "count",
                          "weight_max_abs", "weight_mean", "inherited", "n_instances", "sampled")}
    for m in MODELS:
        for cls, pairs in diag.weights[m].items():
            for (layer, nxt), iw in pairs.items():
                inherited = diag.correspondence.get(cls, {}).get((layer, nxt)) if m == "target" else None
                for j, (a, b) in enumerate(iw.pairs):
                    wt["model"].append(m); wt["class_index"].append(classes.index(cls))
                    wt["layer"].append(layer); wt["next_layer"].append(nxt); wt["kind"].append(iw.kind)
                    wt["a"].append(int(a)); wt["b"].append(int(b)); wt["count"].append(int(iw.counts[j]))
                    wt["weight_max_abs"].append(float(iw.weight_max_abs[j]))
                    wt["weight_mean"].append(float(iw.weight_mean[j]))
                    wt["inherited"].append(None if inherited is None else bool(inherited[j]))
                    wt["n_instances"].append(iw.n_instances); wt["sampled"].append(iw.sampled)
    w.write_table("weights/important", wt)
    for m in MODELS:  # every link's count and mean level, for the network view's non-important regions
        for cls, pairs in diag.weights[m].items():
            for (layer, _), iw in pairs.items():
                base = f"weights/{m}/{_key(classes, cls)}/{layer}"
                w.write_array(f"{base}/counts", iw.count_matrix.astype(np.int32))
                w.write_array(f"{base}/levels", iw.mean_level.astype(np.float32))
    for m in MODELS:  # the parameters behind every link, once per model: weight colours and clicked kernels
        for (layer, _), lk in diag.kernels.get(m, {}).items():
            base = f"weights/{m}/kernels/{layer}"  # float16: display precision, half the bytes
            w.write_array(f"{base}/values", lk.values.astype(np.float16))
            w.write_array(f"{base}/kernels", lk.kernels.astype(np.float16))
            w.write_array(f"{base}/rows", lk.rows.astype(np.int64))
    cmp = {k: [] for k in ("class_index", "layer", "depth", "n_important_weights", "n_inherited_weights",
                           "inherited_weight_share", "n_important_neurons", "mean_best_similarity")}
    for cls, per_layer in diag.comparison.items():
        for depth, layer in enumerate(diag.layers):
            r = per_layer[layer]
            cmp["class_index"].append(-1 if cls == "__all__" else classes.index(cls))
            cmp["layer"].append(layer); cmp["depth"].append(depth)
            for f in ("n_important_weights", "n_inherited_weights", "inherited_weight_share",
                      "n_important_neurons", "mean_best_similarity"):
                cmp[f].append(getattr(r, f))
    w.write_table("comparison/layers", cmp)
    # issue 11: stability of each important set, silent neurons per model, class and layer
    st = {k: [] for k in ("model", "class_index", "layer", "k", "n_instances", "n_resamples", "stability",
                          "reason")}
    sil = {k: [] for k in ("model", "class_index", "layer", "n_neurons", "n_silent")}
    for m in MODELS:
        for cls, per_layer in diag.stability.get(m, {}).items():
            for layer, r in per_layer.items():
                st["model"].append(m); st["class_index"].append(classes.index(cls)); st["layer"].append(layer)
                st["k"].append(r.k); st["n_instances"].append(r.n_instances)
                st["n_resamples"].append(r.n_resamples); st["stability"].append(float(r.stability))
                st["reason"].append(r.reason)
        for cls, per_layer in diag.silent.get(m, {}).items():
            for layer, mask in per_layer.items():
                sil["model"].append(m); sil["class_index"].append(classes.index(cls)); sil["layer"].append(layer)
                sil["n_neurons"].append(int(mask.size)); sil["n_silent"].append(int(np.count_nonzero(mask)))
    w.write_table("neurons/stability", st)
    w.write_table("neurons/silent", sil)
    # domain discriminability (§5.4)
    for cls, d in diag.discriminability.items():
        key = f"discriminability/{_key(classes, cls)}"
        for f in ("labels", "coef", "basis", "coordinates", "axes", "hist_source", "hist_target",
                  "hist_edges", "cv_scores", "ranked"):
            w.write_array(f"{key}/{f}", np.asarray(getattr(d, f)))
        w.write_array(f"{key}/scaled", d.scaled.astype(np.float32))  # A: the plot re-projects ticked columns
        w.write_json(f"{key}/summary", {
            "cv_mean": d.cv_mean, "cv_std": d.cv_std, "folds_used": d.folds_used, "note": d.note,
            "intercept": float(d.intercept), "train_accuracy": d.train_accuracy,
            "neurons": [[layer, n] for layer, n in diag.discriminability_neurons[cls]]})
    # neuron features
    for m in MODELS:
        for layer, per_neuron in diag.patches[m].items():
            if not per_neuron:
                continue
            neurons = sorted(per_neuron)
            k, p = diag.options.patches, diag.options.patch_size
            sprite = np.zeros((len(neurons) * 2 * p, k * p, 3), np.uint8)
            indices = np.full((len(neurons), 2, k), -1, np.int64)
            values = np.full((len(neurons), 2, k), np.nan, np.float32)
            for i, n in enumerate(neurons):
                for dom, np_ in enumerate(per_neuron[n]):
                    if np_ is None:
                        continue
                    count = len(np_.indices)
                    indices[i, dom, :count], values[i, dom, :count] = np_.indices, np_.values
                    row = (2 * i + dom) * p
                    for j in range(count):
                        sprite[row:row + p, j * p:(j + 1) * p] = np_.patches[j]
            base = f"features/{m}/{layer}"
            w.write_array(f"{base}/neurons", np.array(neurons, np.int64))
            w.write_array(f"{base}/indices", indices)
            w.write_array(f"{base}/values", values)
            w.write_png(f"{base}/patches", sprite)
            vis = diag.feature_vis.get(m, {}).get(layer)
            if vis is not None:  # one S×S tile per neuron, stacked downwards in the order of `neurons`
                vis_neurons, images = vis
                if list(vis_neurons) != neurons:
                    raise ValueError(f"feature visualisations of {m} {layer} are not of the patched neurons")
                w.write_png(f"{base}/vis", images.reshape(-1, *images.shape[2:]))
    w.write_array("cka/matrix", diag.cka.astype(np.float64))
    summary = {"layers": list(diag.layers), "classes": classes, "notes": diag.notes,
               "timings_s": {k: round(v, 3) for k, v in diag.timings.items()},
               "peak_memory_mb": round(diag.peak_memory_mb, 1)}
    summary["basis"] = diag.statistics_basis
    summary["validation_counts"] = {"target": int(diag.confusion.support.sum()), "source": (
        None if diag.confusion_source_domain is None else int(diag.confusion_source_domain.support.sum()))}
    if (meta or {}).get("transferability_note"):
        summary["transferability_note"] = meta["transferability_note"]
    # issue 15: LogME / LEEP of the source model on the target training data, as the target run logged them
    summary.update({k: _nan_to_none(v) for k, v in ((meta or {}).get("transferability_estimates") or {}).items()
                    if k in ("logme", "leep")})
    w.write_json("statistics/summary", {**summary, **{k: _nan_to_none(v) for k, v in (meta or {}).get(
        "scores", {}).items()}})
    # issue 12: the n_steps each model's conductance used, and its completeness error (optional for readers)
    steps = {role: choice.record() for role, choice in diag.conductance_steps.items()}
    _write_robustness(w, diag.robustness)
    w.finish(classes=classes, layers=list(diag.layers), options=dataclasses.asdict(diag.options),
                    n_instances=int(len(inst.labels)), **_label_spaces(diag),
                    **({"conductance_steps": steps} if steps else {}),
                    **({"robustness": diag.robustness.info} if diag.robustness is not None else {}), **(meta or {}))
    # issue 16: the findings, read from the bundle just written (unverified: this process wrote it)
    return add_json_record(root, FINDINGS, findings_record(PairBundle(BundleReader(root, verify=False))))


def _write_robustness(w: BundleWriter, robustness) -> None:
    """Issue 13 (optional for readers; none when robustness was off): ``robustness/curves``, ``robustness/dir``,
    ``robustness/neurons`` and, per DIR attack with an inherited defect, ``robustness/examples/{attack}`` (the
    clean | adversarial | perturbation sprite) with its ``/table``; the manifest block is written by the caller."""
    if robustness is None:
        return
    w.write_table("robustness/curves", robustness.curves)
    w.write_table("robustness/dir", robustness.dir)
    w.write_table("robustness/neurons", robustness.neurons)
    for attack, (sprite, table) in robustness.examples.items():
        w.write_png(f"robustness/examples/{attack}", sprite)
        w.write_table(f"robustness/examples/{attack}/table", table)


def _label_spaces(diag: PairDiagnostics) -> dict:
    """Issue 12: each model's classes and the shared ones, for the manifest (one label space: all shared)."""
    own = diag.model_classes or {m: tuple(diag.classes) for m in MODELS}
    shared = diag.shared_classes if diag.shared_classes is not None else tuple(diag.classes)
    return {"source_classes": list(own["source"]), "target_classes": list(own["target"]),
            "shared_classes": list(shared)}


def _write_confusion(w: BundleWriter, name: str, table) -> None:
    """``name`` (the five-column table plus support) and ``{name}_{model}`` (each model's C×C matrix)."""
    records = table.to_records()
    w.write_table(name, {
        "class_index": [r["class_index"] for r in records], "class": [r["class"] for r in records],
        "support": [r["support"] for r in records],
        "source_accuracy": [_nan_float(r["source_accuracy"]) for r in records],
        "target_accuracy": [_nan_float(r["target_accuracy"]) for r in records],
        "difference": [_nan_float(r["difference"]) for r in records],
        "misclassified_into": [", ".join(f"{n} ({k})" for n, k in r["misclassified_into"]) for r in records]})
    w.write_array(f"{name}_source", table.matrix_source)
    w.write_array(f"{name}_target", table.matrix_target)


def _nan_float(v):
    return float("nan") if v is None else float(v)
