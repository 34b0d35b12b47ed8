"""How far to trust a class's important neurons (issue 11): per layer, the bootstrap stability of the
important set and the count of silent neurons, as Markdown for the network and feature views.

Read from the bundle's ``neurons/stability`` and ``neurons/silent`` records (`PairBundle.stability`,
`PairBundle.silent_neurons`); a bundle written before them says so instead. Layer names and the
diagnostics' reasons come from the bundle and are escaped.
"""

from __future__ import annotations

import math

import numpy as np

from mlflow_transfer.bundle import PairBundle

from .text import escape_md

__all__ = ["ALL", "NOT_IN_BUNDLE", "STABLE", "feature_stability_md", "layer_stability_md", "stability_text"]

ALL = "__all__"
STABLE = 0.8  # below this, the caption flags the set as unsettled (the default cap aims at a median >= 0.8)
NOT_IN_BUNDLE = ("Stability and silent neurons are not in this bundle (diagnosed before they were recorded); "
                 "diagnose the pair again to see them.")
_HOW = ("mean Jaccard overlap of the important set with its recomputation on bootstrap resamples of the "
        "class's analysed instances: 1 = the same neurons every time")


def stability_text(record: dict | None) -> str:
    """One layer's stability as Markdown: ``0.93``, ``0.61 (unsettled)``, or ``not computed: <reason>``."""
    if record is None:
        return "–"
    value = record["stability"]
    if math.isnan(value):
        return f"not computed: {escape_md(record['reason'] or 'no reason recorded')}"
    return f"{value:.2f}" + (" (unsettled)" if value < STABLE else "")


def layer_stability_md(bundle: PairBundle, cls: str, layers: list[str] | None = None) -> str:
    """The network view's table: per layer (``layers``, default all), the target's and the source's
    stability of the important set of ``cls`` and their silent neurons (count / layer size)."""
    layers = bundle.layers if layers is None else layers
    stab = {m: bundle.stability(cls, m) for m in ("target", "source")}
    silent = {m: bundle.silent_neurons(cls, m) for m in ("target", "source")}
    if stab["target"] is None and silent["target"] is None:
        return NOT_IN_BUNDLE
    if not stab["target"] and not silent["target"]:
        return f"No stability for class **{escape_md(cls)}**: it was not analysed (no target-domain instances)."
    rows = ["| layer | k | stability (target) | stability (source) | silent (target) | silent (source) |",
            "|---|---|---|---|---|---|"]
    for layer in layers:
        record = (stab["target"] or {}).get(layer)
        cells = [escape_md(layer), str(record["k"]) if record else "–"]
        cells += [stability_text((stab[m] or {}).get(layer)) if stab[m] is not None else "not in bundle"
                  for m in ("target", "source")]
        for m in ("target", "source"):
            count = (silent[m] or {}).get(layer)
            cells.append("not in bundle" if silent[m] is None else "–" if count is None else f"{count[0]} / {count[1]}")
        rows.append("| " + " | ".join(cells) + " |")
    first = next(iter((stab["target"] or {}).values()), None)
    about = (f", {first['n_resamples']} resamples of {first['n_instances']} instances"
             if first and first["n_resamples"] else "")
    return (f"**Important neurons of {escape_md(cls)}: stability** ({_HOW}{about}). **Silent** neurons "
            "conduct nothing on the class's instances and have no counterpart.\n\n" + "\n".join(rows))


def feature_stability_md(bundle: PairBundle, cls: str, layers: list[str] | None = None) -> str:
    """The feature view's caption: the target model's stability per layer of the ranked neurons'
    layers for ``cls``; for all classes (``ALL``) the median over the analysed classes."""
    layers = bundle.layers if layers is None else layers
    if cls == ALL:
        per_class = [bundle.stability(c) for c in bundle.compared_classes]
        if any(p is None for p in per_class) or not per_class:
            return NOT_IN_BUNDLE if any(p is None for p in per_class) else ""
        parts = []
        for layer in layers:
            values = [p[layer]["stability"] for p in per_class if layer in p and not math.isnan(p[layer]["stability"])]
            parts.append(f"{escape_md(layer)} {np.median(values):.2f}" if values else f"{escape_md(layer)} not computed")
        return ("**Stability of the important neurons** (target model, median over classes; "
                f"{_HOW}): " + ", ".join(parts))
    stab = bundle.stability(cls)
    if stab is None:
        return NOT_IN_BUNDLE
    if not stab:
        return f"No stability for class **{escape_md(cls)}**: it was not analysed."
    parts = [f"{escape_md(layer)} {stability_text(stab.get(layer))}" for layer in layers if layer in stab]
    return f"**Stability of the important neurons of {escape_md(cls)}** (target model; {_HOW}): " + ", ".join(parts)
