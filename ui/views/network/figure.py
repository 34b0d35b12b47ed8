"""The zig-zag figure drawn: :func:`zigzag_figure` turns a :class:`~.layout.ZigZag` into one bokeh
canvas, :func:`describe_hit` words what a click on it hit, and :data:`LEGEND` explains its marks.

Encodings (paper §5.3.3, Figure 4): similarity brightness on the paper's fixed scale, 0 brightest and
1 darkest (``SIMILARITY_SCALES``: or the shown cells' range); weight cells coloured by the link's
signed weight value on a diverging palette centred at 0 (or by the activated level, in grey)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    HoverTool,
    LinearColorMapper,
    Range1d,
)
from bokeh.palettes import BrBG11, Greys256
from bokeh.plotting import figure as bokeh_figure

from ..style import SOURCE, TARGET
from ..text import escape_md, md_code
from .geometry import MODEL_COLOR
from .layout import ZigZag
from .weights import WEIGHT_ENCODINGS

__all__ = ["LEGEND", "MAX_PX", "SIMILARITY_SCALES", "WEIGHT_PALETTE", "describe_hit", "similarity_mapper",
           "zigzag_figure"]

MAX_PX = 900  # the canvas is scaled down to this many pixels at most
SIMILARITY_SCALES = ("fixed", "auto")  # the paper's [0, 1] scale, or the shown cells' range
# Negative weights brown, positive teal, 0 near white: red and blue name the models here.
WEIGHT_PALETTE = tuple(reversed(BrBG11))

LEGEND = (
    "Diagonal: neuron similarity (cosine of conductance over the class's target instances: 0 white, 1 black, "
    "or the shown range with the auto scale), "
    "important × important as cells, the other regions as histograms. Between layers: the links of important "
    "neurons as cells (colour = weight value, the sum of the link's kernel, brown < 0 < teal, relative to "
    "the block's largest; or the mean activated level in grey), red dot = inherited from the source; boxplots "
    "(thickness = the number of important weights in the row) with pies (share inherited) for important × "
    "non-important, histograms for the rest; the numbers on the brackets beside each block count the model's "
    "important weights meeting each group of neurons. Click a weight for its kernel in both models. Indices: "
    f"<span style='color:{SOURCE}'>source</span> / <span style='color:{TARGET}'>target</span> model; "
    "click one for its patches and most similar neurons.")

_TIPS = {
    "cells": [("layer", "@layer"), ("row", "@row_model #@row_neuron"), ("column", "@col_model #@col_neuron"),
              ("similarity", "@similarity{0.000}")],
    "sim_bars": [("region", "@region"), ("similarity", "@lo{0.00} to @hi{0.00}"), ("neuron pairs", "@count")],
    "weights": [("weight", "@model @layer #@a → @next_layer #@b"), ("weight value", "@value{0.0000}"),
                ("mean level", "@level{0.0000}"),
                ("top link on", "@count instance(s)"), ("source correspondence", "@correspondence")],
    "boxes": [("neuron", "@model #@neuron (@side layer)"), ("links", "@n"), ("median", "@median{0.0000}"),
              ("quartiles", "@q1{0.0000} to @q3{0.0000}"), ("range", "@min{0.0000} to @max{0.0000}"),
              ("important links", "@n_important"), ("inherited", "@n_inherited of @n_important important links")],
    "weight_bars": [("value", "@lo{0.0000} to @hi{0.0000}"), ("links", "@count")],
    "edges": [("important weights", "@n"), ("meeting", "@group neurons of @neurons_of"),
              ("block", "@model @layer → @next_layer")],
    "indices": [("neuron", "@id"), ("importance rank", "@rank (0 = top)"), ("", "click for details")],
}


def similarity_mapper(similarity: np.ndarray, scale: str = SIMILARITY_SCALES[0]) -> LinearColorMapper:
    """The similarity cells' greys (low white → high black): ``"fixed"`` spans the paper's [0, 1]
    (§5.3.3: "zero is represented by the highest brightness and one the lowest"; negative cosines are
    white too), ``"auto"`` the shown cells' range — cosines of non-negative conductance crowd near 1,
    where the fixed scale paints every cell nearly black."""
    if scale not in SIMILARITY_SCALES:
        raise ValueError(f"scale must be one of {SIMILARITY_SCALES}, got {scale!r}")
    greys = list(reversed(Greys256))
    sim = np.asarray(similarity, float)
    if scale == "fixed" or not np.isfinite(sim).any():
        return LinearColorMapper(palette=greys, low=0.0, high=1.0)
    lo, hi = float(np.nanmin(sim)), float(np.nanmax(sim))
    return LinearColorMapper(palette=greys, low=min(lo, hi - 1e-3), high=hi)


def zigzag_figure(data: ZigZag, max_px: int = MAX_PX, similarity_scale: str = SIMILARITY_SCALES[0]) -> bokeh_figure:
    """One bokeh canvas of :func:`zigzag_data`: about a dozen glyph renderers whatever the layer count.

    Plain bokeh rather than a HoloViews overlay: the layout is already in plot coordinates, and
    HoloViews' range and option pass over a dozen elements is paid on every redraw (class, layer range,
    toggles, pair switch) for nothing this canvas needs (benchmarks/results_notes.txt).

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
    similarity = similarity_mapper(data.cells["similarity"].to_numpy(float), similarity_scale)
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
    by_value = data.weight_encoding == WEIGHT_ENCODINGS[0]
    weights = LinearColorMapper(palette=list(WEIGHT_PALETTE), low=-1, high=1, nan_color="#bbbbbb") if by_value \
        else LinearColorMapper(palette=greys, low=0, high=1)
    quads(cells_w, _TIPS["weights"], name="weight-cells",
          fill_color={"field": "tone" if by_value else "shade", "transform": weights}, line_color="edge", line_width=1)
    if not data.weight_cells.empty:
        fig.add_layout(ColorBar(color_mapper=weights, width=10, title_text_font_size="8pt",
                                title="weight value ÷ block max |value|" if by_value else "level ÷ block max",
                                major_label_text_font_size="8pt"), "right")
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
    if not data.edges.empty:
        edges = ColumnDataSource(fill(data.edges, "model", MODEL_COLOR))
        r = fig.segment("x0", "y0", "x1", "y1", source=edges, color="fill", line_width=2, name="edge-counts")
        fig.add_tools(HoverTool(renderers=[r], tooltips=_TIPS["edges"]))
        fig.text("x", "y", text="label", source=edges, text_color="fill", text_font_size="7pt",
                 text_align="center", text_baseline="middle")
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
        value = hit.get("value", float("nan"))
        value = f"weight value (sum of its parameters) {value:.4g}; " if pd.notna(value) else ""
        return (f"**{hit['model']} weight** {escape_md(hit['layer'])} #{hit['a']} → {escape_md(hit['next_layer'])} "
                f"#{hit['b']}: {value}"
                f"mean activated level {hit['level']:.4g}, among each instance's top links on {hit['count']} "
                f"instance(s); important weight: {'yes' if hit['important'] else 'no'}; source correspondence: {inh}")
    if hit["kind"] == "similarity":
        return (f"**similarity** {escape_md(hit['layer'])}: {hit['row_model']} #{hit['row_neuron']} vs "
                f"{hit['col_model']} #{hit['col_neuron']}: {hit['similarity']:.3f}")
    return f"neuron {md_code(hit.get('id', ''))}"
