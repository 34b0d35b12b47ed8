"""Two pairs side by side (issue 16): pure functions of two `PairBundle`s, or of their `PairRecords` (A and B,
in the order they were picked) — accuracy curves overlaid, the target model's per-class accuracy
difference, the inherited share and CKA by depth as differences, and the overlap of the important-neuron
sets where the pairs share a model. Differences are always B − A. Nothing is recomputed: each number is
read from a bundle record (``statistics/history``, ``statistics/confusion_target``, ``comparison/layers``,
``cka/matrix``, ``neurons/important``); `read_records` reads each of them once.

Each plot is one element of a fixed structure whatever the pairs hold (the accuracy series are the paths of
one `hv.Contours`; an empty frame draws an empty plot), so the Compare tab can draw them as DynamicMaps
and send a new pick's data to the same figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import holoviews as hv
import numpy as np
import pandas as pd
from bokeh.models import Legend, LegendItem

from .style import DATASET_COLOR, DATASET_LABEL

__all__ = ["ALL_CLASSES", "CLASS_COLUMNS", "NO_HISTORY", "OVERLAP_COLUMNS", "PairRecords",
           "accuracy_lines", "accuracy_series", "class_accuracy", "class_difference", "class_difference_bars",
           "depth_difference", "depth_difference_plot", "empty_frame", "important_sets", "neuron_overlap", "overlap_heatmap",
           "read_records", "shared_model_reason"]

ALL_CLASSES = -1  # class_index of comparison/layers' all-classes rows
_DASH = ("solid", "dashed")  # pair A, pair B
NO_HISTORY = "no per-epoch history in either bundle"
CLASS_COLUMNS = ["class", "A", "B", "B − A"]
OVERLAP_COLUMNS = ["model", "class", "layer", "A", "B", "shared", "jaccard"]


@dataclass(frozen=True, eq=False)
class PairRecords:
    """The records of one bundle that the diff reads, each read (and checked) once by `read_records`; it
    answers the same calls as a `PairBundle`, so every function here takes either."""

    classes: list
    layers: list
    manifest: dict
    history_record: dict
    confusion_target: np.ndarray
    layers_record: dict
    cka_matrix: np.ndarray
    important_record: dict

    def history(self) -> dict:
        return self.history_record

    def confusion_matrix(self, model: str) -> np.ndarray:
        if model != "target":
            raise KeyError(f"the diff reads the target model's confusion matrix only, not {model!r}")
        return self.confusion_target

    def layer_comparison(self) -> dict:
        return self.layers_record

    def cka(self) -> np.ndarray:
        return self.cka_matrix

    def important_neurons(self) -> dict:
        return self.important_record


def empty_frame(columns: list[str]) -> pd.DataFrame:
    """A frame of ``columns`` (e.g. `OVERLAP_COLUMNS`) without rows, names as
    text and numbers as floats: what a plot draws before any pair is picked."""
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("class", "layer", "model") else float) for c in columns})


def read_records(bundle) -> PairRecords:
    """Every record the diff needs of ``bundle``, read now: a broken one raises here (a `BundleError`),
    not half-way through drawing."""
    return PairRecords(classes=list(bundle.classes), layers=list(bundle.layers), manifest=bundle.manifest,
                       history_record=bundle.history(), confusion_target=bundle.confusion_matrix("target"),
                       layers_record=bundle.layer_comparison(), cka_matrix=bundle.cka(),
                       important_record=bundle.important_neurons())


def accuracy_series(a, b, names: tuple[str, str] = ("A", "B")) -> list[dict]:
    """Every accuracy series of both pairs (model × dataset, by epoch) as a path: ``epoch``, ``accuracy``
    and its ``series`` label (starting with the pair's name), ``dataset``, ``pair`` ("A"/"B"), ``colour``
    (the dataset's) and ``dash`` (A solid, B dashed). When neither bundle has any, one path labelled
    `NO_HISTORY` with no point to draw (an empty element would leave the plot no axis range)."""
    paths = []
    for i, bundle in enumerate((a, b)):
        frame = pd.DataFrame(bundle.history())
        if frame.empty:
            continue
        for (model, dataset), part in frame.groupby(["model", "dataset"], sort=True):
            part = part.sort_values("epoch")
            label = DATASET_LABEL.get(dataset, dataset)
            paths.append({"epoch": part["epoch"].to_numpy(float), "accuracy": part["accuracy"].to_numpy(float),
                          "series": f"{'AB'[i]} {names[i]}: {label} ({model} model)", "dataset": label,
                          "pair": "AB"[i], "colour": DATASET_COLOR.get(dataset, "#333333"), "dash": _DASH[i]})
    return paths or [{"epoch": np.zeros(1), "accuracy": np.full(1, np.nan), "series": NO_HISTORY, "dataset": "",
                      "pair": "", "colour": "#333333", "dash": "solid"}]


def _series_legend(plot, element):
    """One legend entry per ``series`` value, drawn by the browser from the data: a new pick's series
    replace the old ones without a new figure."""
    figure = plot.state
    if not any(isinstance(x, Legend) for x in figure.center):
        figure.add_layout(Legend(items=[LegendItem(label={"field": "series"},
                                                   renderers=[plot.handles["glyph_renderer"]])],
                                 location="bottom_right", background_fill_alpha=0.6, label_text_font_size="7pt"))


def accuracy_lines(paths: list[dict]) -> hv.Contours:
    """The paths of `accuracy_series` overlaid (one multi-line glyph): colour = dataset, A solid, B dashed,
    a legend entry per series, hovering names the series."""
    vdims = ["series", "dataset", "pair", "colour", "dash"]
    return hv.Contours(paths, ["epoch", hv.Dimension("accuracy", range=(0, 1))], vdims).opts(
        color="colour", line_dash=hv.dim("dash"), line_width=2, tools=["hover"], framewise=True,
        hover_tooltips=[("series", "@{series}"), ("epoch", "$x{0.0}"), ("accuracy", "$y{0.000}")],
        title="Accuracy per epoch (A solid, B dashed)", ylim=(0, 1.02), responsive=True, shared_axes=False,
        min_height=320, show_grid=True, hooks=[_series_legend])


def class_accuracy(bundle) -> dict[str, float]:
    """The target model's accuracy per class on the target validation set: the diagonal of its
    confusion matrix over the row sums (NaN for a class without instances)."""
    matrix = np.asarray(bundle.confusion_matrix("target"), dtype=float)
    classes = bundle.classes
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(support > 0, np.diag(matrix) / np.where(support > 0, support, 1), np.nan)
    return {c: float(accuracy[i]) for i, c in enumerate(classes[:len(accuracy)])}


def class_difference(a, b) -> pd.DataFrame:
    """Per class both bundles know (in A's order): ``class``, ``A``, ``B`` (target-model accuracy) and
    ``B − A``."""
    acc_a, acc_b = class_accuracy(a), class_accuracy(b)
    shared = [c for c in acc_a if c in acc_b]
    return pd.DataFrame({"class": shared, "A": [acc_a[c] for c in shared], "B": [acc_b[c] for c in shared],
                         "B − A": [acc_b[c] - acc_a[c] for c in shared]}, columns=CLASS_COLUMNS)


def class_difference_bars(frame: pd.DataFrame) -> hv.Bars:
    """Bars of ``B − A`` per shared class (green: B better, red: A better)."""
    data = frame.assign(better=np.where(frame["B − A"] >= 0, "B", "A"))
    return hv.Bars(data, "class", [hv.Dimension("B − A", label="accuracy B − A"), "A", "B", "better"]).opts(
        color="better", cmap={"B": "#2ca02c", "A": "#d62728"}, tools=["hover"], responsive=True, shared_axes=False,
        min_height=280, show_grid=True, xrotation=45, show_legend=False, framewise=True,
        title="Target model's accuracy per class, B − A (target validation set)")


def _depth(bundle) -> pd.DataFrame:
    """Per layer of ``bundle``: the all-classes inherited share and the CKA of corresponding layers."""
    table = pd.DataFrame(bundle.layer_comparison())
    rows = table[table["class_index"] == ALL_CLASSES]
    share = dict(zip(rows["layer"].astype(str), rows["inherited_weight_share"].astype(float)))
    cka = np.asarray(bundle.cka(), dtype=float)
    layers = bundle.layers
    diagonal = np.diag(cka) if cka.ndim == 2 and cka.shape[0] == cka.shape[1] == len(layers) \
        else np.full(len(layers), np.nan)
    return pd.DataFrame({"layer": layers, "share": [share.get(n, math.nan) for n in layers],
                         "cka": diagonal.astype(float)})


def depth_difference(a, b) -> pd.DataFrame:
    """Per layer name both bundles analysed (in A's depth order): ``share A``, ``share B``, ``share B − A``
    (inherited share of important weights, all classes) and the same for ``cka`` (the diagonal of each
    bundle's CKA matrix: each layer against its own counterpart)."""
    da, db = _depth(a).set_index("layer"), _depth(b).set_index("layer")
    shared = [n for n in da.index if n in db.index]
    frame = pd.DataFrame({"layer": shared})
    for key in ("share", "cka"):
        frame[f"{key} A"] = [da.at[n, key] for n in shared]
        frame[f"{key} B"] = [db.at[n, key] for n in shared]
        frame[f"{key} B − A"] = frame[f"{key} B"] - frame[f"{key} A"]
    return frame


def _layer_axis(plot, element):
    """The x axis names this frame's layers: HoloViews keeps an overlay's first categories across the
    updates of a DynamicMap."""
    plot.state.x_range.factors = [str(v) for v in element.get(1).dimension_values("layer")]


def depth_difference_plot(frame: pd.DataFrame) -> hv.Overlay:
    """The two differences by depth (B − A): inherited share (solid) and CKA (dashed), zero line grey."""
    kdim = hv.Dimension("layer", label="layer (input → output)")
    vdim = hv.Dimension("difference", label="B − A", range=(-1, 1))
    parts = [hv.HLine(0).opts(color="#999999", line_width=1)]
    for key, dash, colour in (("share", "solid", "#1f77b4"), ("cka", "dashed", "#d62728")):
        data = pd.DataFrame({"layer": frame["layer"], "difference": frame[f"{key} B − A"]})
        label = "inherited share B − A" if key == "share" else "CKA B − A"
        parts.append(hv.Curve(data, kdim, vdim, label=label).opts(color=colour, line_dash=dash, line_width=2,
                                                                   framewise=True))
        parts.append(hv.Scatter(data, kdim, vdim, label=label).opts(color=colour, size=6, tools=["hover"],
                                                                     framewise=True))
    return hv.Overlay(parts).opts(hv.opts.Overlay(
        title="Inheritance and CKA by depth, B − A", ylim=(-1.02, 1.02), ylabel="B − A",
        xlabel="layer (input → output)", responsive=True, shared_axes=False, min_height=280, show_grid=True,
        legend_position="bottom_left", framewise=True, hooks=[_layer_axis]))


def _source_run(bundle) -> str | None:
    runs = bundle.manifest.get("runs") or {}
    found = runs.get("source") if isinstance(runs, dict) else None
    return found if isinstance(found, str) and found else None


def shared_model_reason(a, b) -> str:
    """'' when the two pairs share a model (the same source run: the same source model, and target
    models fine-tuned from its weights), else why their neuron sets are not compared."""
    sa, sb = _source_run(a), _source_run(b)
    if sa is None or sb is None:
        return ("The important-neuron overlap is not shown: "
                f"{'pair A' if sa is None else 'pair B'} does not record its source run, so a shared model "
                "cannot be told.")
    if sa != sb:
        return ("The important-neuron overlap is not shown: the two pairs start from different source "
                "runs, so their neurons are not the same units.")
    return ""


def important_sets(bundle) -> dict[tuple[str, str, str], set[int]]:
    """``{(model, class, layer): important neuron indices}`` from ``neurons/important``."""
    table = bundle.important_neurons()
    classes = bundle.classes
    sets: dict[tuple[str, str, str], set[int]] = {}
    for model, index, layer, neuron in zip(table["model"], table["class_index"], table["layer"], table["neuron"]):
        index = int(index)
        if 0 <= index < len(classes):
            sets.setdefault((str(model), classes[index], str(layer)), set()).add(int(neuron))
    return sets


def neuron_overlap(a, b) -> tuple[pd.DataFrame | None, str]:
    """The Jaccard overlap |A ∩ B| / |A ∪ B| of the two pairs' important-neuron sets per model, class and
    layer that both have (columns ``model``, ``class``, ``layer``, ``A``, ``B``, ``shared``, ``jaccard``),
    or ``(None, why)`` when the pairs share no model (`shared_model_reason`)."""
    why = shared_model_reason(a, b)
    if why:
        return None, why
    sa, sb = important_sets(a), important_sets(b)
    keys = [k for k in sa if k in sb]
    rows = []
    for model, cls, layer in keys:
        x, y = sa[(model, cls, layer)], sb[(model, cls, layer)]
        union = x | y
        rows.append({"model": model, "class": cls, "layer": layer, "A": len(x), "B": len(y),
                     "shared": len(x & y), "jaccard": len(x & y) / len(union) if union else math.nan})
    frame = pd.DataFrame(rows, columns=OVERLAP_COLUMNS)
    return frame, "" if rows else "The two pairs have no class and layer with important neurons in common."


def overlap_heatmap(frame: pd.DataFrame, model: str) -> hv.HeatMap:
    """Jaccard overlap of ``model``'s important-neuron sets, class (rows) × layer (columns), range [0, 1]."""
    data = frame[frame["model"] == model][["layer", "class", "jaccard", "A", "B", "shared"]]
    return hv.HeatMap(data, ["layer", "class"], [hv.Dimension("jaccard", range=(0, 1)), "A", "B", "shared"]).opts(
        cmap="viridis", clim=(0, 1), colorbar=True, tools=["hover"], responsive=True, shared_axes=False, min_height=260,
        xrotation=45, invert_yaxis=True, framewise=True, title=f"Important-neuron overlap (Jaccard), {model} model")
