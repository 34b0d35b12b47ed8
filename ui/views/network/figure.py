"""The zig-zag figure drawn: :func:`zigzag_figure` turns a :class:`~.layout.ZigZag` into one bokeh
canvas, :func:`describe_hit` words what a click on it hit, and :data:`LEGEND` explains its marks."""

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
from bokeh.palettes import Greys256
from bokeh.plotting import figure as bokeh_figure

from ..style import SOURCE, TARGET
from ..text import escape_md, md_code
from .geometry import MODEL_COLOR
from .layout import ZigZag

__all__ = ["LEGEND", "MAX_PX", "describe_hit", "zigzag_figure"]

MAX_PX = 900  # the canvas is scaled down to this many pixels at most

LEGEND = (
    "Diagonal: neuron similarity (darker = higher cosine of conductance over the class's target instances; "
    "the colour bar gives the range), "
    "important × important as cells, the other regions as histograms. Between layers: important weights "
    "(brightness = mean activated level, red dot = inherited from the source), boxplots with pies (share "
    "inherited) for important × non-important, histograms for the rest. Indices: "
    f"<span style='color:{SOURCE}'>source</span> / <span style='color:{TARGET}'>target</span> model; "
    "click one for its patches and most similar neurons.")

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
