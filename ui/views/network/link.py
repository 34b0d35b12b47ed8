"""The clicked weight's detail (paper Figure 1 C.2): its description and its feature map in both models
side by side — the conv kernel as an image, a linear layer's weights on one input channel's map, or
the whole weight row of a linear → linear link with the clicked input marked — on one diverging scale,
so what fine-tuning changed shows. Built of small parts (:func:`kernel_figure`, :func:`kernel_row`) so
others can be added to :func:`weight_detail`."""

from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import (
    ColorBar,
    ColumnDataSource,
    HoverTool,
    LinearColorMapper,
    Range1d,
)
from bokeh.plotting import figure as bokeh_figure

from mlflow_transfer.bundle import PairBundle

from ..text import escape_md
from .figure import WEIGHT_PALETTE, describe_hit
from .geometry import DOMAINS, MODEL_COLOR

__all__ = ["kernel_figure", "kernel_row", "weight_detail"]

MARK_COLOR = "#ff7f0e"  # the clicked input in a weight row: neither a model's colour nor the palette's


def kernel_figure(kernel: np.ndarray, title: str, vmax: float, *, mark: int | None = None,
                  name: str = "kernel") -> bokeh_figure:
    """One model's feature map of a link: a 2-D ``kernel`` (kh × kw, or h × w) as an image, row 0 at
    the top; a 1-D one (the weight row of a linear neuron) as bars, input ``mark`` in its own colour
    (renderer ``clicked-input``). Colours diverge at 0 over [-vmax, vmax]; the image renderer is named
    ``name``."""
    k = np.asarray(kernel, np.float64)
    mapper = LinearColorMapper(palette=list(WEIGHT_PALETTE), low=-vmax, high=vmax)
    if k.ndim == 1:
        fig = bokeh_figure(width=420, height=150, title=title, toolbar_location=None, tools="",
                           x_axis_label="input neuron", y_axis_label="weight")
        bars = ColumnDataSource({"x": np.arange(len(k)), "top": k})
        r = fig.vbar("x", top="top", width=0.9, source=bars, name=name,
                     fill_color={"field": "top", "transform": mapper}, line_color=None)
        fig.add_tools(HoverTool(renderers=[r], tooltips=[("input", "@x"), ("weight", "@top{0.0000}")]))
        if mark is not None and 0 <= mark < len(k):
            fig.vbar([mark], top=[k[mark]], width=0.9, fill_color=None, line_color=MARK_COLOR, line_width=2,
                     name="clicked-input")
        return fig
    h, w = k.shape
    side = 150
    fig = bokeh_figure(width=side + 40, height=side, title=title, toolbar_location=None, tools="",
                       x_range=Range1d(0, w), y_range=Range1d(h, 0), x_axis_type=None, y_axis_type=None)
    fig.image(image=[k], x=0, y=0, dw=w, dh=h, color_mapper=mapper, name=name)
    fig.add_layout(ColorBar(color_mapper=mapper, width=6, major_label_text_font_size="7pt"), "right")
    return fig


def kernel_row(bundle: PairBundle, layer: str, next_layer: str, a: int, b: int) -> pn.viewable.Viewable:
    """Link a → b (neuron a of ``layer``, b of ``next_layer``) in the source and the target model, side by
    side on one scale (the larger |weight| of the two), named ``weight-kernels``. A note when the bundle has
    no such kernels."""
    kernels = {m: bundle.link_kernel(m, layer, a, b) for m in DOMAINS}
    found = {m: k for m, k in kernels.items() if k is not None}
    if not found:
        return pn.pane.Markdown(f"No kernel of this weight in the bundle (one written before kernels were recorded, "
                                f"or {escape_md(next_layer)} #{b} is beyond the kernels kept for a large layer).",
                                name="weight-kernels")
    vmax = max(float(np.abs(np.asarray(k, np.float64)).max(initial=0.0)) for k in found.values()) or 1.0
    one_d = next(iter(found.values())).ndim == 1
    what = (f"weight row of {next_layer} #{b} (input #{a} marked)" if one_d else
            f"kernel of {layer} #{a} → {next_layer} #{b}")
    figures = [kernel_figure(k, m, vmax, mark=a if one_d else None, name=f"kernel-{m}") for m, k in found.items()]
    for fig, m in zip(figures, found):
        fig.title.text_color = MODEL_COLOR[m]
    caption = f"**Feature map**: {escape_md(what)}, source and target model on one scale"
    if len(found) == 2:
        diff = np.abs(np.asarray(found["target"], np.float64) - np.asarray(found["source"], np.float64)).max()
        caption += f"; largest change by fine-tuning {diff:.4g}"
    missing = [m for m in DOMAINS if m not in found]
    if missing:
        caption += f" (not kept for the {missing[0]} model)"
    return pn.Column(pn.pane.Markdown(caption, margin=(0, 5)), pn.Row(*[pn.pane.Bokeh(f) for f in figures]),
                     name="weight-kernels")


def weight_detail(bundle: PairBundle, hit: dict) -> list[pn.viewable.Viewable]:
    """The parts shown for a clicked weight cell (``hit`` from ``ZigZag.hit``): its description, then
    its feature map in both models."""
    return [pn.pane.Markdown(describe_hit(hit)),
            kernel_row(bundle, hit["layer"], hit["next_layer"], int(hit["a"]), int(hit["b"]))]
