"""Per-layer summary of a pair (paper §5.3): how much of the source model the target inherited, by depth.

Two small pure-HoloViews views over a `PairBundle`, shared by the app and the static ``report.html``:

- :func:`inheritance_line` — for each analysis layer in depth order, the share of the target model's
  important weights that it inherited from the source (``inherited_weight_share``) and the mean best
  similarity of its important neurons to the source's (``mean_best_similarity``), for all classes and,
  optionally, one class;
- :func:`cka_heatmap` — linear CKA between every source layer (rows) and target layer (columns).

Both read the bundle's records only (``comparison/layers``, ``cka/matrix``); nothing is recomputed.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd

from mlflow_transfer.errors import BundleError

from .style import class_color

__all__ = ["ALL_CLASSES", "MEASURES", "cka_heatmap", "inheritance_frame", "inheritance_line"]

ALL_CLASSES = -1  # class_index of the all-classes rows of ``comparison/layers``
# column of comparison/layers -> (legend text, line dash)
MEASURES = {"inherited_weight_share": ("inherited share of important weights", "solid"),
            "mean_best_similarity": ("mean best neuron similarity", "dashed")}
_ALL_COLOR = "#333333"


def inheritance_frame(bundle, cls: str | None = None) -> pd.DataFrame:
    """The rows of ``comparison/layers`` for all classes (and ``cls``, when given), in depth order.

    Columns: ``scope`` ("all classes" or the class name), ``class_index`` (-1 = all), ``layer``,
    ``depth``, ``measure`` (a key of `MEASURES`) and ``value`` (NaN where the bundle has none, e.g.
    the weight share of the last layer, which has no next layer).

    Raises:
        mlflow_transfer.errors.BundleError: ``cls`` is not one of the bundle's classes.
    """
    table = pd.DataFrame(bundle.layer_comparison())
    scopes = [(ALL_CLASSES, "all classes")]
    if cls is not None:
        if cls not in bundle.classes:
            raise BundleError(f"class {cls!r} is not in this bundle; it has {bundle.classes}")
        scopes.append((bundle.classes.index(cls), cls))
    parts = []
    for index, scope in scopes:
        rows = table[table["class_index"] == index].sort_values("depth")
        for measure in MEASURES:
            parts.append(pd.DataFrame({
                "scope": scope, "class_index": index, "layer": rows["layer"].astype(str).to_numpy(),
                "depth": rows["depth"].to_numpy(), "measure": measure,
                "value": rows[measure].to_numpy(dtype=float)}))
    columns = ["scope", "class_index", "layer", "depth", "measure", "value"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def inheritance_line(bundle, cls: str | None = None) -> hv.Overlay:
    """Inherited share of important weights and mean best similarity per layer, by depth.

    x: the analysis layers in depth order (categorical), y: [0, 1]. One solid line (share) and one
    dashed line (similarity) for all classes in dark grey and, when ``cls`` is given, the same two in
    that class's colour. Each line's label is ``"<scope>: <measure text>"``; its ``value`` dimension
    holds the bundle's numbers unchanged (NaN breaks the line).

    Args:
        bundle: a `mlflow_transfer.bundle.PairBundle`.
        cls: a class name of the bundle, or None for all classes only.
    """
    frame = inheritance_frame(bundle, cls)
    kdims = [hv.Dimension("layer", label="layer (input → output)")]
    vdims = [hv.Dimension("value", label="share / similarity", range=(0, 1))]
    layers = []
    for (index, scope, measure), part in frame.groupby(["class_index", "scope", "measure"], sort=False):
        text, dash = MEASURES[measure]
        color = _ALL_COLOR if index == ALL_CLASSES else class_color(int(index))
        label = f"{scope}: {text}"
        data = part[["layer", "value", "depth"]]
        layers.append(hv.Curve(data, kdims, vdims + ["depth"], label=label).opts(
            color=color, line_dash=dash, line_width=2))
        layers.append(hv.Scatter(data, kdims, vdims + ["depth"], label=label).opts(
            color=color, size=6, tools=["hover"]))
    if not layers:
        layers = [hv.Curve([], kdims, vdims).relabel("no per-layer comparison in this bundle")]
    title = "Inheritance per layer" + (f" (all classes and class {cls})" if cls is not None else " (all classes)")
    # a half-transparent legend: lines near 0 stay visible under it
    return hv.Overlay(layers).opts(
        hv.opts.Overlay(title=title, ylim=(0, 1.02), legend_position="bottom_left",
                        legend_opts={"background_fill_alpha": 0.6, "label_text_font_size": "8pt"},
                        responsive=True, min_height=300, show_grid=True))


def cka_heatmap(bundle) -> hv.HeatMap:
    """Linear CKA of every source layer (rows, y, first layer on top) with every target layer
    (columns, x), colour range fixed to [0, 1]; hovering shows both layer names and the value.

    The matrix may hold NaN (a layer without variation) or small negative values (the unbiased
    estimator); they are shown as they are, the colour clipped to the range.
    """
    matrix = np.asarray(bundle.cka(), dtype=float)
    names = bundle.layers
    rows, cols = np.meshgrid(np.arange(len(names)), np.arange(len(names)), indexing="ij")
    data = pd.DataFrame({"target layer": np.asarray(names, dtype=object)[cols.ravel()],
                         "source layer": np.asarray(names, dtype=object)[rows.ravel()],
                         "CKA": matrix.ravel()})
    heat = hv.HeatMap(data, ["target layer", "source layer"], hv.Dimension("CKA", range=(0, 1)))
    return heat.opts(cmap="viridis", clim=(0, 1), colorbar=True, tools=["hover"], invert_yaxis=True,
                     xrotation=45, responsive=True, min_height=320, title="Layer similarity (linear CKA)",
                     hover_tooltips=[("source layer", "@{source_layer}"), ("target layer", "@{target_layer}"),
                                     ("CKA", "@{CKA}")])
