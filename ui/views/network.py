"""Network relation view (paper §5.3.3, Figures 3–4): how the two models' neurons and weights relate.

This module is long because it is one view whose parts share one coordinate system: the zig-zag layout
(`zigzag_data`), its bokeh drawing (`zigzag_figure`), what a click hits (`ZigZag.hit`) and the neuron
detail beside it; split apart, each piece would have to re-derive the others' cell geometry.

One canvas per class and layer range. Each layer's neuron similarity matrix sits on the diagonal, its
rows one model's neurons and its columns the other's, the two swapping from layer to layer (the
zig-zag of Figure 4 A), so each model's weights between two consecutive layers fill a corner between
their matrices: the target's above-right, the source's below-left (or the other way round, alternating).
Rows and columns are grouped into important neurons (rank order, one cell each) and a fixed-size strip
summarising the non-important ones (Figure 4 B/C):

* similarity, important × important: cells, darker = more similar, the shades spanning the shown
  cells' range of cosines (the colour bar gives it);
* similarity, the three other regions: a histogram of their values;
* weights, important × important: an adjacency matrix, dark = high mean activated level (relative to
  the block's largest), outlined when the link is one of the model's important weights, with a red
  dot when the target's important weight has a correspondence in the source model (``inherited``);
* weights, important × non-important: one boxplot per important neuron of its links' levels, with a
  pie glyph — the share of its important links that have a source correspondence (target only);
* weights, non-important × non-important: a histogram of the levels.

Data and drawing are separate: :func:`zigzag_data` lays everything out as tables in one coordinate
system (cell units, y pointing down), :func:`zigzag_figure` turns them into one bokeh canvas (a
handful of glyph renderers, however many layers) and :meth:`ZigZag.hit` says what lies under a click.
Everything is read from the bundle; nothing is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import panel as pn
from bokeh.events import Tap
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    HoverTool,
    LinearColorMapper,
    Range1d,
)
from bokeh.palettes import Greys256
from bokeh.plotting import figure as bokeh_figure

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError

from .guard import guarded
from .images import crop_patches, png_bytes
from .style import SOURCE, TARGET
from .summary import cka_heatmap, inheritance_line
from .text import escape_html, escape_md, md_code, shorten

__all__ = ["ZigZag", "network_tab", "neuron_detail", "parse_neuron_id", "zigzag_data", "zigzag_figure"]

MODEL_COLOR = {"source": SOURCE, "target": TARGET}
OTHER = {"source": "target", "target": "source"}
DOMAINS = ("source", "target")

# Layout, in cell units (one important neuron = one unit).
LABEL = 3.0   # band holding a layer's neuron indices (and its name in the corner)
STRIP = 6.0   # side of a non-important region
GAP = 0.4     # between a layer's important cells and its non-important strip
SPACE = 0.8   # after each layer
PIE = 1.0     # the part of a boxplot strip that holds the pie glyphs
BINS = 12     # histogram bins
MAX_PX = 900  # the canvas is scaled down to this many pixels at most


# --------------------------------------------------------------------------------------------------
# Reading


def _important(table: pd.DataFrame, model: str, class_index: int, layer: str) -> np.ndarray:
    """(k,) important neurons of one model, class and layer, most important first."""
    part = table[(table["model"] == model) & (table["class_index"] == class_index) & (table["layer"] == layer)]
    return part.sort_values("rank")["neuron"].to_numpy(np.int64)


# --------------------------------------------------------------------------------------------------
# Layout tables


@dataclass
class ZigZag:
    """The zig-zag figure of one class as tables in cell units (x right, y down).

    ``message`` non-empty means there is nothing to draw (say it instead); ``notes`` are remarks about
    what is drawn (e.g. missing weight matrices). Both are plain text quoting class and layer names
    (the figure's title shows the message): escape them to show them in Markdown. Every table has the rectangle columns x0, y0, x1, y1
    unless said otherwise.

    Attributes:
        cells: similarity, important × important: layer, row_model, row_neuron, col_model, col_neuron,
            similarity (the bundle's value, rows × cols of the drawn orientation).
        sim_bars: similarity histogram bars: layer, region ("imp×non", "non×imp", "non×non"), lo, hi, count.
        weight_cells: weights, important × important: model, layer, next_layer, a (neuron of ``layer``),
            b (neuron of ``next_layer``), level, count, shade (level / block max, clipped to [0, 1]),
            important (one of the model's important weights), inherited (target: bool; source: None),
            edge (outline colour).
        dots: red dots (x, y centres) on ``weight_cells`` rows with ``inherited`` True.
        boxes: one per important neuron of a boxplot region: model, layer, next_layer, neuron, side
            ("prev"/"next": which layer the neuron is in), n (links), q1, median, q3, min, max,
            n_important, n_inherited, share (n_inherited / n_important; NaN when none is important).
        box_lines: whiskers and medians as segments (x0, y0, x1, y1).
        pies: polygon dicts (x, y arrays + share, neuron, part) of the pie glyphs (target weights only).
        weight_bars: histogram bars of the non-important × non-important weights: model, layer, lo, hi, count.
        regions: every region's frame: kind ("similarity"/"weights"), model, layer, region, n, edge.
        indices: the neuron index glyphs: x, y (centre), model, layer, neuron, rank, axis ("row"/"col"), id.
        titles: layer names (x, y, text).
    """

    cls: str
    layers: list[str]
    message: str = ""
    notes: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)  # the row model of each layer, in order
    width: float = 0.0
    height: float = 0.0
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)
    sim_bars: pd.DataFrame = field(default_factory=pd.DataFrame)
    weight_cells: pd.DataFrame = field(default_factory=pd.DataFrame)
    dots: pd.DataFrame = field(default_factory=pd.DataFrame)
    boxes: pd.DataFrame = field(default_factory=pd.DataFrame)
    box_lines: pd.DataFrame = field(default_factory=pd.DataFrame)
    pies: list = field(default_factory=list)
    weight_bars: pd.DataFrame = field(default_factory=pd.DataFrame)
    regions: pd.DataFrame = field(default_factory=pd.DataFrame)
    indices: pd.DataFrame = field(default_factory=pd.DataFrame)
    titles: pd.DataFrame = field(default_factory=pd.DataFrame)

    def hit(self, x: float, y: float) -> dict | None:
        """What lies at (x, y): ``{"kind": "neuron", "id": "model:layer:index", ...}``, a weight
        cell (``kind="weight"`` and its row) or a similarity cell (``kind="similarity"``); else None."""
        for kind, frame in (("neuron", self.indices), ("weight", self.weight_cells), ("similarity", self.cells)):
            if frame.empty:
                continue
            inside = (frame["x0"] <= x) & (x < frame["x1"]) & (frame["y0"] <= y) & (y < frame["y1"])
            if inside.any():
                return {"kind": kind, **frame[inside].iloc[0].to_dict()}
        return None


@dataclass
class _Band:
    """One layer's span on one axis: index band, important cells, non-important strip."""

    start: float
    n_imp: int
    show_non: bool

    @property
    def imp0(self) -> float:
        return self.start + LABEL

    @property
    def imp1(self) -> float:
        return self.imp0 + self.n_imp

    @property
    def non0(self) -> float:
        return self.imp1 + GAP

    @property
    def non1(self) -> float:
        return self.non0 + STRIP

    @property
    def end(self) -> float:
        return (self.non1 if self.show_non else self.imp1) + SPACE


def _bands(counts: list[int], show_non: bool) -> list[_Band]:
    bands, start = [], 0.0
    for n in counts:
        bands.append(_Band(start, n, show_non))
        start = bands[-1].end
    return bands


def _hist_bars(values: np.ndarray, box: tuple, lo: float, hi: float, along: str) -> list[dict]:
    """Histogram bars of ``values`` inside ``box`` (x0, y0, x1, y1): bins along ``along`` ("x": bars
    rise from the box's bottom edge; "y": bars grow rightwards from its left edge)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return []
    counts, edges = np.histogram(values, bins=BINS, range=(lo, hi if hi > lo else lo + 1e-6))
    x0, y0, x1, y1 = box
    top = counts.max()
    bars = []
    for i, c in enumerate(counts):
        if c == 0:
            continue
        f = c / top * 0.95
        if along == "x":
            w = (x1 - x0) / BINS
            rect = (x0 + i * w, y1 - f * (y1 - y0), x0 + (i + 1) * w, y1)
        else:
            h = (y1 - y0) / BINS
            rect = (x0, y0 + i * h, x0 + f * (x1 - x0), y0 + (i + 1) * h)
        bars.append(dict(zip(("x0", "y0", "x1", "y1"), rect), lo=float(edges[i]), hi=float(edges[i + 1]),
                         count=int(c)))
    return bars


def _region(kind, model, layer, region, box, n, edge="#999999") -> dict:
    return dict(zip(("x0", "y0", "x1", "y1"), box), kind=kind, model=model, layer=layer, region=region,
                n=int(n), edge=edge)


def _pie(cx: float, cy: float, share: float, r: float = 0.4, **info) -> list[dict]:
    """A pie glyph as polygons: the full disc and, if share > 0, the wedge of ``share``."""
    t = np.linspace(0, 2 * np.pi, 25)
    out = [{"x": cx + r * np.sin(t), "y": cy - r * np.cos(t), "share": share, "part": "disc", **info}]
    if share > 0:
        t = np.linspace(0, 2 * np.pi * share, max(3, int(24 * share) + 2))
        out.append({"x": np.r_[cx, cx + r * np.sin(t)], "y": np.r_[cy, cy - r * np.cos(t)],
                    "share": share, "part": "wedge", **info})
    return out


def zigzag_data(bundle: PairBundle, cls: str, layer_from: int, layer_to: int, *,
                hide_non_important: bool = False, hide_source_weights: bool = False,
                tables: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> ZigZag:
    """Lay out the zig-zag figure of class ``cls`` for layers ``layer_from..layer_to`` (inclusive
    indices into ``bundle.layers``, in either order, clipped to the bundle).

    The row model of the k-th shown layer is the target for even k and the source for odd k; between
    layers k-1 and k the row model of layer k has its weights below-left, the other model above-right.

    Args:
        tables: the bundle's ``important_neurons()`` and ``weights()`` as frames, when the caller
            already read them (they are the same for every class and range).

    Returns:
        A :class:`ZigZag`; its ``message`` says why nothing is drawn (unknown class, no similarity
        data for the class, a bundle without layers).

    Raises:
        mlflow_transfer.errors.BundleError: a similarity or weight file of the class cannot be read.
    """
    layers_all = bundle.layers
    if cls not in bundle.classes:
        return ZigZag(cls, [], message=f"Class '{cls}' is not in this pair (it has {', '.join(bundle.classes)}).")
    if not layers_all:
        return ZigZag(cls, [], message="This bundle has no analysis layers.")
    last = len(layers_all) - 1
    lo, hi = sorted((max(0, min(int(layer_from), last)), max(0, min(int(layer_to), last))))
    layers = layers_all[lo:hi + 1]
    if cls not in bundle.compared_classes:
        return ZigZag(cls, layers, message=(
            f"Class '{cls}' has no neuron similarity data: it has no target-domain instances, so its "
            "neurons were not ranked or compared. Pick another class."))
    sims = [bundle.similarity(cls, layer) for layer in layers]  # an unreadable file raises: the view's guard
    imp_table, w_table = tables if tables is not None else (pd.DataFrame(bundle.important_neurons()),
                                                              pd.DataFrame(bundle.weights()))
    ci = bundle.classes.index(cls)
    show_non = not hide_non_important
    rows = ["target" if k % 2 == 0 else "source" for k in range(len(layers))]
    imp = {(m, layer): _important(imp_table, m, ci, layer) for m in DOMAINS for layer in layers}
    xb = _bands([len(imp[OTHER[r], layer]) for r, layer in zip(rows, layers)], show_non)
    yb = _bands([len(imp[r, layer]) for r, layer in zip(rows, layers)], show_non)
    z = ZigZag(cls, layers, rows=rows, width=xb[-1].end, height=yb[-1].end)
    if len(layers) == 1:
        z.notes.append("One layer selected: widen the layer range to see the weights between layers.")

    cells, sim_bars, regions, indices, titles = [], [], [], [], []
    for k, (layer, s) in enumerate(zip(layers, sims)):
        rm, cm = rows[k], OTHER[rows[k]]
        m = s if rm == "source" else s.T  # similarity is stored [source, target]
        ri, cj = imp[rm, layer], imp[cm, layer]
        rn, cn = np.setdiff1d(np.arange(m.shape[0]), ri), np.setdiff1d(np.arange(m.shape[1]), cj)
        bx, by = xb[k], yb[k]
        for i, r in enumerate(ri):
            for j, c in enumerate(cj):
                cells.append({"x0": bx.imp0 + j, "y0": by.imp0 + i, "x1": bx.imp0 + j + 1, "y1": by.imp0 + i + 1,
                              "layer": layer, "row_model": rm, "row_neuron": int(r), "col_model": cm,
                              "col_neuron": int(c), "similarity": float(m[r, c])})
        regions.append(_region("similarity", "", layer, "imp×imp", (bx.imp0, by.imp0, bx.imp1, by.imp1),
                               len(ri) * len(cj), "#555555"))
        if show_non:
            vlo, vhi = min(0.0, float(np.nanmin(m))), 1.0
            for name, vals, box, along in (
                    ("imp×non", m[np.ix_(ri, cn)], (bx.non0, by.imp0, bx.non1, by.imp1), "y"),
                    ("non×imp", m[np.ix_(rn, cj)], (bx.imp0, by.non0, bx.imp1, by.non1), "x"),
                    ("non×non", m[np.ix_(rn, cn)], (bx.non0, by.non0, bx.non1, by.non1), "x")):
                regions.append(_region("similarity", "", layer, name, box, vals.size))
                sim_bars += [{**bar, "layer": layer, "region": name}
                             for bar in _hist_bars(vals.ravel(), box, vlo, vhi, along)]
        for axis, model, neurons, band, other in (("row", rm, ri, by, bx), ("col", cm, cj, bx, by)):
            for rank, n in enumerate(neurons):
                a0, a1 = band.imp0 + rank, band.imp0 + rank + 1
                b0, b1 = other.start + 0.15, other.start + LABEL - 0.15
                x0, y0, x1, y1 = (b0, a0, b1, a1) if axis == "row" else (a0, b0, a1, b1)
                indices.append({"x0": x0, "y0": y0, "x1": x1, "y1": y1, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2,
                                "model": model, "layer": layer, "neuron": int(n), "rank": rank, "axis": axis,
                                "id": f"{model}:{layer}:{int(n)}"})
        titles.append({"x": bx.start + LABEL / 2, "y": by.start + LABEL / 2, "text": layer})

    wcells, boxes, box_lines, pies, wbars = [], [], [], [], []
    missing = []
    for k in range(1, len(layers)):
        prev, nxt = layers[k - 1], layers[k]
        # below-left: rows = layer k's row model (next layer), cols = layer k-1's columns, same model
        # above-right: rows = layer k-1's row model (previous layer), cols = layer k's columns
        for model, row_is_next, (bx, by) in ((rows[k], True, (xb[k - 1], yb[k])),
                                             (rows[k - 1], False, (xb[k], yb[k - 1]))):
            if hide_source_weights and model == "source":
                continue
            wm = bundle.weight_matrices(model, cls, prev)
            if wm is None:
                missing.append(f"{model} {prev}→{nxt}")
                continue
            levels, counts = wm["levels"], wm["counts"]  # (N_next, N_prev)
            ia, ib = imp[model, prev], imp[model, nxt]
            lev, cnt = (levels, counts) if row_is_next else (levels.T, counts.T)
            ri, cj = (ib, ia) if row_is_next else (ia, ib)
            rn, cn = np.setdiff1d(np.arange(lev.shape[0]), ri), np.setdiff1d(np.arange(lev.shape[1]), cj)
            rows_w = w_table[(w_table["model"] == model) & (w_table["class_index"] == ci) & (w_table["layer"] == prev)]
            flags = {(int(a), int(b)): (None if model == "source" or inh is None or pd.isna(inh) else bool(inh))
                     for a, b, inh in zip(rows_w["a"], rows_w["b"], rows_w["inherited"])}
            top = float(np.nanmax(levels)) if levels.size else 0.0
            edge = MODEL_COLOR[model]
            regions.append(_region("weights", model, prev, "imp×imp", (bx.imp0, by.imp0, bx.imp1, by.imp1),
                                   len(ri) * len(cj), edge))
            for i, r in enumerate(ri):
                for j, c in enumerate(cj):
                    a, b = (int(c), int(r)) if row_is_next else (int(r), int(c))
                    level = float(lev[r, c])
                    wcells.append({"x0": bx.imp0 + j, "y0": by.imp0 + i, "x1": bx.imp0 + j + 1, "y1": by.imp0 + i + 1,
                                   "model": model, "layer": prev, "next_layer": nxt, "a": a, "b": b,
                                   "level": level, "count": int(cnt[r, c]),
                                   "shade": float(np.clip(level / top, 0, 1)) if top > 0 else 0.0,
                                   "important": (a, b) in flags, "inherited": flags.get((a, b)),
                                   "edge": edge if (a, b) in flags else "#dddddd"})
            if not show_non:
                continue
            vlo, vhi = float(np.nanmin(levels)), float(np.nanmax(levels))
            span = (vhi - vlo) or 1.0
            for side_rows, neurons, others in ((True, ri, cn), (False, cj, rn)):
                # boxes of the important rows sit in the strip to the right (values along x); those of
                # the important columns in the strip below (values along y, rising upwards)
                for idx, n in enumerate(neurons):
                    vals = lev[n, others] if side_rows else lev[others, n]
                    if vals.size == 0:
                        continue
                    q = np.percentile(vals, [0, 25, 50, 75, 100])
                    n_is_next = side_rows == row_is_next  # then n is neuron b of the link a → b
                    ab = [(int(o), int(n)) if n_is_next else (int(n), int(o)) for o in others]
                    known = [flags[p] for p in ab if p in flags]
                    n_inh = sum(1 for f in known if f)
                    share = n_inh / len(known) if known and model == "target" else float("nan")
                    along = (q - vlo) / span * (STRIP - PIE - 0.3)  # min, q1, median, q3, max on the value axis
                    if side_rows:
                        pos, v = by.imp0 + idx + 0.5, bx.non0 + along
                        box = (v[1], pos - 0.3, v[3], pos + 0.3)
                        box_lines += [{"x0": v[0], "y0": pos, "x1": v[4], "y1": pos},
                                      {"x0": v[2], "y0": pos - 0.3, "x1": v[2], "y1": pos + 0.3}]
                        centre = (bx.non1 - PIE / 2, pos)
                    else:
                        pos, v = bx.imp0 + idx + 0.5, by.non1 - along  # y points down: high values up
                        box = (pos - 0.3, v[3], pos + 0.3, v[1])
                        box_lines += [{"x0": pos, "y0": v[4], "x1": pos, "y1": v[0]},
                                      {"x0": pos - 0.3, "y0": v[2], "x1": pos + 0.3, "y1": v[2]}]
                        centre = (pos, by.non0 + PIE / 2)
                    layer_of_n = nxt if n_is_next else prev
                    boxes.append({**dict(zip(("x0", "y0", "x1", "y1"), box)), "model": model, "layer": prev,
                                  "next_layer": nxt, "neuron": int(n),
                                  "side": "next" if n_is_next else "prev", "n": int(vals.size),
                                  "q1": q[1], "median": q[2], "q3": q[3], "min": q[0], "max": q[4],
                                  "n_important": len(known), "n_inherited": n_inh, "share": share})
                    if model == "target" and known:
                        pies += _pie(*centre, share, neuron=int(n), layer=layer_of_n,
                                     label=f"{n_inh} of {len(known)} important links inherited")
                name = "imp×non" if side_rows else "non×imp"
                box_region = (bx.non0, by.imp0, bx.non1, by.imp1) if side_rows else (bx.imp0, by.non0, bx.imp1, by.non1)
                regions.append(_region("weights", model, prev, name, box_region, len(neurons), edge))
            box = (bx.non0, by.non0, bx.non1, by.non1)
            regions.append(_region("weights", model, prev, "non×non", box, len(rn) * len(cn), edge))
            wbars += [{**bar, "model": model, "layer": prev} for bar in
                      _hist_bars(lev[np.ix_(rn, cn)].ravel(), box, vlo, vhi, "x")]
    if missing:
        z.notes.append("No weight matrices for " + ", ".join(missing) + " (the last layer, a pair across a "
                       "residual junction, or a bundle older than schema 1.1: diagnose the pair again).")

    rect = ["x0", "y0", "x1", "y1"]
    z.cells = pd.DataFrame(cells, columns=rect + ["layer", "row_model", "row_neuron", "col_model", "col_neuron",
                                                  "similarity"])
    z.sim_bars = pd.DataFrame(sim_bars, columns=rect + ["lo", "hi", "count", "layer", "region"])
    z.weight_cells = pd.DataFrame(wcells, columns=rect + ["model", "layer", "next_layer", "a", "b", "level", "count",
                                                           "shade", "important", "inherited", "edge"])
    inh = z.weight_cells[z.weight_cells["inherited"].map(lambda v: v is True).astype(bool)]
    z.dots = pd.DataFrame({"x": (inh["x0"] + inh["x1"]) / 2, "y": (inh["y0"] + inh["y1"]) / 2,
                           "model": inh["model"], "layer": inh["layer"], "a": inh["a"], "b": inh["b"]})
    z.boxes = pd.DataFrame(boxes, columns=rect + ["model", "layer", "next_layer", "neuron", "side", "n", "q1",
                                                  "median", "q3", "min", "max", "n_important", "n_inherited", "share"])
    z.box_lines = pd.DataFrame(box_lines, columns=rect)
    z.pies = pies
    z.weight_bars = pd.DataFrame(wbars, columns=rect + ["lo", "hi", "count", "model", "layer"])
    z.regions = pd.DataFrame(regions, columns=rect + ["kind", "model", "layer", "region", "n", "edge"])
    z.indices = pd.DataFrame(indices, columns=rect + ["x", "y", "model", "layer", "neuron", "rank", "axis", "id"])
    z.titles = pd.DataFrame(titles, columns=["x", "y", "text"])
    return z


# --------------------------------------------------------------------------------------------------
# Drawing


_TIPS = {
    "cells": [("layer", "@layer"), ("row", "@row_model #@row_neuron"), ("column", "@col_model #@col_neuron"),
              ("similarity", "@similarity{0.000}")],
    "sim_bars": [("region", "@region"), ("similarity", "@lo{0.00} to @hi{0.00}"), ("neuron pairs", "@count")],
    "weights": [("weight", "@model @layer #@a → @next_layer #@b"), ("mean level", "@level{0.0000}"),
                ("top link on", "@count instance(s)"), ("source correspondence", "@correspondence")],
    "boxes": [("neuron", "@model #@neuron (@side layer)"), ("links", "@n"), ("median", "@median{0.0000}"),
              ("quartiles", "@q1{0.0000} to @q3{0.0000}"), ("range", "@min{0.0000} to @max{0.0000}"),
              ("inherited", "@n_inherited of @n_important important links")],
    "weight_bars": [("mean level", "@lo{0.0000} to @hi{0.0000}"), ("links", "@count")],
    "indices": [("neuron", "@id"), ("importance rank", "@rank (0 = top)"), ("", "click for details")],
}


def zigzag_figure(data: ZigZag, max_px: int = MAX_PX) -> bokeh_figure:
    """One bokeh canvas of :func:`zigzag_data`: about a dozen glyph renderers whatever the layer count.

    Plain bokeh rather than a HoloViews overlay: the layout is already in plot coordinates, and
    HoloViews' range and option pass over a dozen elements cost ~1 s per redraw (class, layer range,
    toggles, pair switch) for nothing this canvas needs.

    Colour conventions: neuron indices red (source model) / blue (target model); weight blocks framed
    in their model's colour; red dots and red pie wedges = a source correspondence. Every element has
    hover details; the neuron index glyphs are named ``neuron-index`` in the bokeh document.
    """
    fig = bokeh_figure(tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="above",
                       x_axis_type=None, y_axis_type=None)
    fig.grid.visible = False
    fig.outline_line_color = None
    if data.message:
        fig.title.text = data.message
        fig.x_range, fig.y_range = Range1d(0, 1), Range1d(1, 0)
        fig.frame_width = fig.frame_height = 300
        return fig
    unit = max(4.0, min(16.0, max_px / max(data.width, data.height, 1.0)))
    fig.title.text = f"Class {data.cls}: {data.layers[0]} → {data.layers[-1]}" if len(data.layers) > 1 else \
        f"Class {data.cls}: {data.layers[0]}"
    fig.x_range, fig.y_range = Range1d(0, data.width), Range1d(data.height, 0)  # y points down
    fig.frame_width, fig.frame_height = int(data.width * unit), int(data.height * unit)
    greys = list(reversed(Greys256))  # low white → high black
    # Cosines of non-negative conductance vectors crowd near 1, where a fixed [0, 1] scale paints every
    # cell black: span the shown cells' range instead, stated by the colour bar.
    sim = data.cells["similarity"].to_numpy(float)
    lo, hi = (float(np.nanmin(sim)), float(np.nanmax(sim))) if np.isfinite(sim).any() else (0.0, 1.0)
    similarity = LinearColorMapper(palette=greys, low=min(lo, hi - 1e-3), high=hi)
    box = {"left": "x0", "right": "x1", "top": "y0", "bottom": "y1"}

    def quads(frame, tips=None, name=None, **glyph):
        r = fig.quad(source=ColumnDataSource(frame), name=name, **box, **glyph)
        if tips:
            fig.add_tools(HoverTool(renderers=[r], tooltips=tips))
        return r

    def fill(frame, column, mapping):
        return frame.assign(fill=frame[column].map(mapping))

    quads(data.regions, fill_color="#f6f6f6", line_color="edge", line_width=1)
    quads(data.cells, _TIPS["cells"], fill_color={"field": "similarity", "transform": similarity},
          line_color="white", line_width=0.5)
    fig.add_layout(ColorBar(color_mapper=similarity, title="similarity", width=10, title_text_font_size="8pt",
                            major_label_text_font_size="8pt"), "right")
    quads(data.sim_bars, _TIPS["sim_bars"], fill_color="#888888", line_width=0)
    cells_w = data.weight_cells.assign(
        correspondence=data.weight_cells["inherited"].map({True: "yes", False: "no"}).fillna("–"))
    quads(cells_w, _TIPS["weights"], fill_color={"field": "shade", "transform": LinearColorMapper(palette=greys, low=0, high=1)},
          line_color="edge", line_width=1)
    fig.scatter("x", "y", source=ColumnDataSource(data.dots), color=SOURCE, size=max(3, unit * 0.35), line_width=0)
    quads(fill(data.boxes, "model", MODEL_COLOR), _TIPS["boxes"], fill_color="fill", fill_alpha=0.45,
          line_color="#333333", line_width=0.7)
    fig.segment("x0", "y0", "x1", "y1", source=ColumnDataSource(data.box_lines), color="#333333", line_width=1)
    if data.pies:
        pies = pd.DataFrame(data.pies).rename(columns={"x": "xs", "y": "ys"})
        r = fig.patches("xs", "ys", source=ColumnDataSource(fill(pies, "part", {"disc": "#ffffff", "wedge": SOURCE})),
                        fill_color="fill", line_color="#555555", line_width=0.5)
        fig.add_tools(HoverTool(renderers=[r], tooltips=[("links", "@label")]))
    quads(fill(data.weight_bars, "model", MODEL_COLOR), _TIPS["weight_bars"], fill_color="fill", fill_alpha=0.6,
          line_width=0)
    quads(data.indices, _TIPS["indices"], name="neuron-index", fill_alpha=0, line_alpha=0,
          hover_fill_color="#ffe680", hover_fill_alpha=0.6)
    size = f"{max(5, min(8, int(unit * 0.55)))}pt"
    for axis, angle in (("row", 0.0), ("col", np.pi / 2)):
        labels = fill(data.indices[data.indices["axis"] == axis], "model", MODEL_COLOR).assign(
            label=lambda f: f["neuron"].astype(str))
        fig.text("x", "y", text="label", source=ColumnDataSource(labels), angle=angle, text_color="fill",
                 text_font_size=size, text_align="center", text_baseline="middle")
    fig.text("x", "y", text="text", source=ColumnDataSource(data.titles), text_font_size="8pt",
             text_font_style="bold", text_color="#333333", text_align="center", text_baseline="middle")
    return fig


def describe_hit(hit: dict) -> str:
    """Markdown for a clicked weight or similarity cell (what :meth:`ZigZag.hit` returned)."""
    if hit["kind"] == "weight":
        inh = {True: "yes", False: "no"}.get(hit["inherited"], "– (only target weights are matched)")
        return (f"**{hit['model']} weight** {escape_md(hit['layer'])} #{hit['a']} → {escape_md(hit['next_layer'])} "
                f"#{hit['b']}: "
                f"mean activated level {hit['level']:.4g}, among each instance's top links on {hit['count']} "
                f"instance(s); important weight: {'yes' if hit['important'] else 'no'}; source correspondence: {inh}")
    if hit["kind"] == "similarity":
        return (f"**similarity** {escape_md(hit['layer'])}: {hit['row_model']} #{hit['row_neuron']} vs "
                f"{hit['col_model']} #{hit['col_neuron']}: {hit['similarity']:.3f}")
    return f"neuron {md_code(hit.get('id', ''))}"


# --------------------------------------------------------------------------------------------------
# Neuron detail


def parse_neuron_id(neuron_id: str) -> tuple[str, str, int] | None:
    """``"model:layer:index"`` → (model, layer, index); None for '' or anything malformed."""
    try:
        model, rest = neuron_id.split(":", 1)
        layer, index = rest.rsplit(":", 1)
        index = int(index)
    except (AttributeError, ValueError):
        return None
    return (model, layer, index) if model in DOMAINS and index >= 0 else None


_PIXELATED = ["img {image-rendering: pixelated;}"]


def _patch_row(patches: dict[str, list[dict]], label: str, size: int) -> pn.layout.Row:
    items = []
    for domain in DOMAINS:
        items.append(pn.pane.HTML(f"<span style='color:{MODEL_COLOR[domain]};font-size:0.85em'>{domain}</span>",
                                  margin=(12, 2, 0, 6)))
        for j, patch in enumerate(patches[domain]):
            # Panel writes alt_text into the tag with Python's repr quoting, which HTML does not read:
            # the layer name in it is escaped (quotes included) first
            items.append(pn.pane.PNG(png_bytes(patch["image"]), width=size, height=size, margin=1,
                                     alt_text=escape_html(f"{label} {domain}-domain patch {j + 1}: activation "
                                                          f"{patch['value']:.3g} on instance {patch['index']}"),
                                     stylesheets=_PIXELATED))
        if not patches[domain]:
            items.append(pn.pane.HTML("<i style='font-size:0.8em'>none</i>", margin=(12, 2, 0, 2)))
    return pn.Row(*items, margin=0)


def neuron_detail(bundle: PairBundle, cls: str, neuron_id: str, *, k: int = 5, on_select=None,
                  patch_px: int = 48, important: pd.DataFrame | None = None) -> pn.Column:
    """The detail panel of a clicked neuron (paper Figure 1 C.1), named ``neuron-detail``.

    Shows the neuron's top activating patches of each data domain and the ``k`` most similar neurons of
    the other model for class ``cls`` (from ``bundle.similarity``), each with its similarity and patches.

    Args:
        neuron_id: ``"model:layer:index"``; '' or malformed gives a hint instead.
        on_select: called with a neuron id when a similar neuron's button is clicked (None: no buttons).
        important: the bundle's ``important_neurons()`` as a frame, when the caller already read it.
    """
    parsed = parse_neuron_id(neuron_id)
    if parsed is None or parsed[1] not in bundle.layers:
        hint = "Click a neuron index in the figure to see its patches and its most similar neurons."
        if neuron_id:  # a stale or hand-edited link: shown back, shortened and as code
            hint = f"{md_code(shorten(neuron_id))} names no neuron of this pair. " + hint
        return pn.Column(pn.pane.Markdown(hint), name="neuron-detail")
    model, layer, index = parsed
    other = OTHER[model]
    records = {}
    for m in DOMAINS:
        try:
            records[m] = bundle.patches(m, layer)
        except BundleError:
            records[m] = None

    def crop(m, n):
        return crop_patches(records[m], n) if records[m] is not None else {d: [] for d in DOMAINS}

    table = important if important is not None else pd.DataFrame(bundle.important_neurons())
    rank = table[(table["model"] == model) & (table["layer"] == layer) & (table["neuron"] == index) &
                 (table["class_index"] == bundle.classes.index(cls))]["rank"] if cls in bundle.classes else []
    status = (f"important for class {escape_md(cls)} (rank {int(rank.iloc[0]) + 1})" if len(rank)
              else f"not important for class {escape_md(cls)}")
    # model is one of DOMAINS (parse_neuron_id); layer and class names come from the bundle: escaped
    items = [pn.pane.Markdown(f"### <span style='color:{MODEL_COLOR[model]}'>{model}</span> model · {escape_md(layer)} · "
                              f"neuron {index}\n{status}. Top activating patches:", margin=(0, 5)),
             _patch_row(crop(model, index), f"{model} {layer} #{index}", patch_px)]
    if cls not in bundle.compared_classes:
        items.append(pn.pane.Markdown(f"Class {md_code(cls)} has no similarity data (no target-domain instances)."))
        return pn.Column(*items, name="neuron-detail")
    found = bundle.most_similar(cls, layer, model, index, k)  # an unreadable file raises: the view's guard shows it
    if found is None:
        items.append(pn.pane.Markdown(f"{escape_md(layer)} of the {model} model has no neuron #{index}."))
        return pn.Column(*items, name="neuron-detail")
    order, values = found
    items.append(pn.pane.Markdown(f"**Top {len(order)} most similar {other} neurons** (class {escape_md(cls)}):",
                                  margin=(8, 5, 0, 5)))
    for n, v in zip(order, values):
        head = [pn.pane.HTML(f"<span style='color:{MODEL_COLOR[other]}'>#{int(n)}</span> · similarity "
                             f"<b>{v:.3f}</b>", margin=(12, 5, 0, 5), width=150)]
        if on_select is not None:
            button = pn.widgets.Button(label="open", color="light", width=55, margin=(5, 2))
            button.on_click(lambda _e, nid=f"{other}:{layer}:{int(n)}": on_select(nid))
            head.append(button)
        items.append(pn.Row(*head, _patch_row(crop(other, int(n)), f"{other} {layer} #{int(n)}", patch_px // 2 + 8),
                            margin=0))
    return pn.Column(*items, name="neuron-detail")


# --------------------------------------------------------------------------------------------------
# Per-layer summaries


_LEGEND = (
    "Diagonal: neuron similarity (darker = higher cosine of conductance over the class's target instances; "
    "the colour bar gives the range), "
    "important × important as cells, the other regions as histograms. Between layers: important weights "
    "(brightness = mean activated level, red dot = inherited from the source), boxplots with pies (share "
    "inherited) for important × non-important, histograms for the rest. Indices: "
    f"<span style='color:{SOURCE}'>source</span> / <span style='color:{TARGET}'>target</span> model; "
    "click one for its patches and most similar neurons.")


def network_tab(state) -> pn.viewable.Viewable:
    """The network relation view over ``state`` (an ``AppState``): controls, the zig-zag figure, the
    neuron detail, the inheritance line and the CKA heatmap.

    Two-way links: the class select ↔ ``state.classes`` (``select_class``), the layer slider ↔
    ``state.layer_from``/``layer_to``, the checkboxes ↔ the two hide flags; a click on a neuron index
    sets ``state.neuron``, which the detail panel follows. Panes are named ``network``,
    ``neuron-detail``, ``weight-detail``, ``inheritance`` and ``cka``.
    """
    b = state.bundle
    if b is None:
        return pn.pane.Markdown("Select a diagnosed pair above.", name="network")
    available = b.compared_classes  # those with neuron similarity matrices
    tables = (pd.DataFrame(b.important_neurons()), pd.DataFrame(b.weights()))  # read once per pair
    n = len(b.layers)

    def current() -> str:
        """The shown class: the first selected one with similarity data, else the first selected."""
        selected = state.selected_classes or b.classes
        return next((c for c in selected if c in available), selected[0])

    select = pn.widgets.Select(label="Class", options=b.classes, value=current(), width=150)
    syncing = []  # a select change made to follow the state must not narrow a multi-class selection

    def follow_state(_event):
        syncing.append(True)
        try:
            select.value = current()
        finally:
            syncing.pop()

    def open_here() -> bool:  # the state outlives this tab, which is rebuilt for another pair
        return state.bundle is b

    select.param.watch(lambda e: None if syncing else state.select_class(e.new), "value")
    state.watch_while(open_here, follow_state, "classes")

    def span() -> tuple[int, int]:
        lo, hi = sorted((min(state.layer_from, n - 1), min(state.layer_to, n - 1)))
        return lo, hi

    controls = [select]
    if n >= 2:
        slider = pn.widgets.IntRangeSlider(label="Layers", start=0, end=n - 1, step=1, value=span(), width=260)
        slider.param.watch(lambda e: state.param.update(layer_from=e.new[0], layer_to=e.new[1]), "value")
        state.watch_while(open_here, lambda *_e: setattr(slider, "value", span()), "layer_from", "layer_to")
        controls += [slider, pn.bind(lambda v: pn.pane.Markdown(f"{escape_md(b.layers[v[0]])} → {escape_md(b.layers[v[1]])}",
                                                                 margin=(22, 5, 0, 5)), slider)]
    controls += [pn.widgets.Checkbox.from_param(state.param.hide_non_important, label="Hide non-important regions",
                                                margin=(24, 10, 0, 10)),
                 pn.widgets.Checkbox.from_param(state.param.hide_source_weights, label="Hide source weights",
                                                margin=(24, 10, 0, 10))]
    clicked = pn.pane.Markdown("Click a weight or similarity cell for its value.", name="weight-detail")
    legend = pn.pane.Markdown(_LEGEND, styles={"font-size": "0.85em"}, margin=(0, 10))

    def figure(classes, layer_from, layer_to, hide_non_important, hide_source_weights):
        data = zigzag_data(b, current(), layer_from, layer_to, hide_non_important=hide_non_important,
                           hide_source_weights=hide_source_weights, tables=tables)
        if data.message:
            return pn.pane.Markdown(escape_md(data.message), name="network")
        fig = zigzag_figure(data)

        def on_tap(event):
            hit = data.hit(event.x, event.y) if event.x is not None and event.y is not None else None
            if hit is None:
                return
            if hit["kind"] == "neuron":
                state.neuron = hit["id"]
            else:
                clicked.object = describe_hit(hit)

        fig.on_event(Tap, on_tap)
        notes = [pn.pane.Markdown("\n".join(f"- {escape_md(note)}" for note in data.notes), name="network-notes")
                 ] if data.notes else []
        return pn.Column(pn.pane.Bokeh(fig, name="network", css_classes=["network-figure"]), *notes)

    def detail(neuron, classes):
        return neuron_detail(b, current(), neuron, on_select=lambda nid: setattr(state, "neuron", nid),
                             important=tables[0])

    def inheritance(classes):
        return pn.pane.HoloViews(inheritance_line(b, current()), name="inheritance", sizing_mode="stretch_width",
                                 min_height=280)

    p = state.param
    return pn.Column(
        pn.Row(*controls),
        pn.Row(pn.Column(pn.bind(guarded(figure, "network figure"), p.classes, p.layer_from, p.layer_to,
                                 p.hide_non_important, p.hide_source_weights), clicked),
               # the neuron detail, or the two by-depth summaries side by side: plots drawn only when
               # shown, since each costs pair-switch time while this tab is open
               pn.Column(legend, pn.Tabs(("Neuron", pn.bind(guarded(detail, "neuron detail"), p.neuron, p.classes)),
                                         ("Inheritance and CKA by depth",
                                          pn.Column(pn.bind(guarded(inheritance, "inheritance line"), p.classes),
                                                    pn.pane.HoloViews(cka_heatmap(b), name="cka",
                                                                      sizing_mode="stretch_width"))),
                                         dynamic=True), width=440)),
        name="network-tab", sizing_mode="stretch_width")
