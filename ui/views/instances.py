"""Instance view (paper §5.2, Figure 1 B): the selected classes' instances of both domains in 2-D.

Colour = class, cross = source domain, circle = target domain, dark ring = mispredicted by the target
model; hovering shows the thumbnail, domain, true label and the target model's prediction. Above
`RASTER_THRESHOLD` points the scatter is shaded by Datashader on the server, one image per zoom at the
plot's size, and hovering names the instance under the cursor (its row in the bundle's instance table,
domain, true label and prediction) from an invisible image of keys sent along, so a million points
stay usable. A zoom's time goes to the server's one pass over the points and its shading, and to the
bytes the browser receives and paints; the comments below say how each is kept small.
"""

from __future__ import annotations

from functools import partial

import datashader as ds
import datashader.transfer_functions as tf
import holoviews as hv
import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, CustomJSHover, HoverTool
from bokeh.plotting import figure as bokeh_figure
from datashader.colors import rgb
from holoviews.plotting.bokeh.callbacks import RangeXYCallback

from .images import data_uri
from .style import class_color
from .text import escape_html

__all__ = ["RASTER_THRESHOLD", "class_legend", "hover_formatter", "hover_key", "instance_frame", "instance_scatter"]

RASTER_THRESHOLD = 20_000  # points; bokeh's canvas stays fluid below this
DOMAINS = {0: "source", 1: "target"}


def instance_frame(instances: dict, classes: list[str], selected: list[str] | None = None,
                   xy: np.ndarray | None = None) -> pd.DataFrame:
    """One row per instance of the selected classes: x, y, class name, domain, predictions, mispredicted,
    and the integer codes ``label`` and ``pred`` (the target model's prediction) of the two names.

    Args:
        instances: the bundle's ``instances/table`` (index, domain, split, label, x, y, pred_source,
            pred_target, confidence_*, thumbnail PNG bytes).
        classes: all class names of the bundle, indexed by label.
        selected: class names to keep (None or empty: all).
        xy: (K, 2) coordinates replacing the stored ones for the K kept rows, in row order (a
            re-projection of the selected classes, `ui.projection.reprojected`).
    """
    labels = np.asarray(instances["label"])
    # (a name not in ``classes``, say from a stale link, selects nothing rather than raising)
    keep = np.isin(labels, [classes.index(c) for c in selected if c in classes]) if selected else np.ones(len(labels), bool)
    rows = np.flatnonzero(keep)
    pred = np.asarray(instances["pred_target"])[rows]
    names = np.asarray(classes, dtype=object)
    if xy is None:
        xy = np.stack([np.asarray(instances["x"])[rows], np.asarray(instances["y"])[rows]], 1)
    elif len(xy) != len(rows):
        raise ValueError(f"xy has {len(xy)} rows for {len(rows)} instances of the selected classes")
    return pd.DataFrame({
        "row": rows, "x": xy[:, 0], "y": xy[:, 1], "class": names[labels[rows]],
        "domain": [DOMAINS.get(int(d), str(d)) for d in np.asarray(instances["domain"])[rows]],
        "prediction": names[pred], "mispredicted": pred != labels[rows],
        "confidence": np.asarray(instances["confidence_target"])[rows], "label": labels[rows], "pred": pred})


def _thumbnails(instances: dict, rows: np.ndarray) -> list[str]:
    thumbs = instances["thumbnail"]
    return [data_uri(thumbs[r]) for r in rows]


# Bokeh reports ranges once per gesture (a pan's end, a wheel's level-of-detail timeout below), so
# there is nothing left for HoloViews to debounce on the server; and its debounce waits in steps of
# 50 ms, so any debounce at all delays every zoom by 50 ms where None waits 10 ms.
RangeXYCallback.debounce = None


def _raster_figure(plot, _element, cmap: dict[str, str]) -> None:
    """Report a zoom to the server 50 ms after the wheel stops instead of Bokeh's 500 ms
    level-of-detail timeout, a wait the user would see on every zoom; paint on a plain canvas:
    HoloViews asks for WebGL, which draws nothing faster for images but copies the whole WebGL
    canvas onto the page at every paint, slow where the browser renders without a GPU; and key the
    class colours in a legend, as HoloViews' datashade does (an invisible glyph per class)."""
    figure = plot.state
    figure.lod_timeout = 50
    figure.output_backend = "canvas"
    if not any("class_legend" in r.tags for r in figure.renderers):  # (hooks run again on every redraw)
        source = ColumnDataSource({"x": [0] * len(cmap), "y": [0] * len(cmap), "class": list(cmap),
                                   "color": list(cmap.values())})
        key = figure.scatter("x", "y", source=source, color="color", legend_field="class", visible=False)
        key.tags = ["class_legend", "hv_legend"]  # HoloViews keeps the legend items of hv_legend glyphs
        figure.legend.location = "top_right"


_TOOLTIP = """<div><img src="@thumbnail" width="48" height="48" style="image-rendering:pixelated">
<div>@domain domain · true <b>@class</b> · predicted <b>@prediction</b></div></div>"""


def _class_bits(n_classes: int) -> int:
    return max(1, int(n_classes - 1).bit_length())


def hover_key(frame: pd.DataFrame, n_classes: int) -> np.ndarray:
    """float64 (N,): ``((row · 2 + target domain) · 2^b + label) · 2^b + pred``, b = bits per class code.

    Exact in float64 (Datashader's max returns floats) while ``row < 2^(52 − 2b)``: 2^36 rows for 256
    classes. Increasing in ``row``, so a pixel's max is its highest row. :func:`hover_formatter` reads it.
    """
    bits = _class_bits(n_classes)
    rows = frame["row"].to_numpy(np.int64)
    if len(rows) and rows.max() >= 2 ** (52 - 2 * bits):
        raise ValueError(f"{rows.max()} rows is too many to pack with {n_classes} classes")
    key = (rows * 2 + (frame["domain"].to_numpy() == "target")) << (2 * bits)
    key += (frame["label"].to_numpy(np.int64) << bits) + frame["pred"].to_numpy(np.int64)
    return key.astype(np.float64)


# A hover pixel without an instance, when the keys travel as uint32 (NaN when they need float64).
NO_INSTANCE = 2 ** 32 - 1


def hover_formatter(classes: list[str]) -> CustomJSHover:
    """The tooltip's formatter for a pixel of the max(:func:`hover_key`) image (NaN or `NO_INSTANCE`
    where no instance): ``#row · domain · true class · predicted class``, decoded in the browser."""
    return CustomJSHover(args={"names": list(classes), "bits": _class_bits(len(classes)), "none": NO_INSTANCE},
                         code="""
if (!Number.isFinite(value) || value === none) return "none";
const s = 2 ** bits, pred = value % s, rest = Math.floor(value / s), label = rest % s;
const rest2 = Math.floor(rest / s), domain = rest2 % 2 ? "target" : "source", row = Math.floor(rest2 / 2);
return `#${row} · ${domain} domain · true ${names[label]} · predicted ${names[pred]}`;
""")


def shade_counts(counts: np.ndarray, colors: list[str], min_alpha: int = 80) -> np.ndarray:
    """(H, W) uint32 RGBA of a (H, W, C) uint32 count per pixel and class: the image HoloViews'
    ``datashade(aggregator=count_cat, color_key=..., min_alpha=min_alpha)`` makes (Datashader's
    ``shade`` with ``how="eq_hist"``, then every transparent pixel zeroed).

    Colour = the classes' colours weighted by their counts, opacity = the pixel's total count,
    histogram-equalised over the drawn pixels into [min_alpha, 255]. The arithmetic is Datashader's
    (float32 colour sums), so the image is the same bit for bit while a pixel's counts times 255
    stay exact in float32. Written out rather than called because Datashader's ``shade`` is most
    of a zoom's work on the server: it works every pixel and class through float32 copies, where
    this divides and equalises the drawn pixels only; and it mixes colours in one matrix product
    over all pixels, which has OpenBLAS start its threads, and on a machine whose cores are busy
    those wait for each other — here the product runs in blocks of `_BLOCK` pixels, each too small
    for OpenBLAS to thread.
    """
    h, w, n = counts.shape
    flat = counts.reshape(-1, n)
    out = np.zeros(h * w, np.uint32)
    baseline = int(flat.min()) if flat.size else 0  # Datashader mixes colours above the smallest count
    mass = flat.astype(np.float32)
    if baseline:
        mass -= np.float32(baseline)
    weights = np.ones((n, 4), np.float32)
    weights[:, :3] = [rgb(c) for c in colors]
    sums = np.empty((h * w, 4), np.float32)  # red, green, blue sums and the weight of each pixel
    for start in range(0, h * w, _BLOCK):
        np.matmul(mass[start:start + _BLOCK], weights, out=sums[start:start + _BLOCK])
    drawn = np.arange(h * w) if baseline else np.flatnonzero(sums[:, 3])
    if len(drawn):
        part = sums[drawn]
        rgba = np.empty((len(drawn), 4), np.uint8)
        with np.errstate(divide="ignore", invalid="ignore"):
            rgba[:, :3] = (part[:, :3] / part[:, 3:]).astype(np.uint8)
        # (no weight above the baseline: Datashader's mean of the colours)
        rgba[part[:, 3] == 0, :3] = (weights[:, :3].sum(0) / np.float32(n)).astype(np.uint8)
        rgba[:, 3] = _alpha(part[:, 3].astype(np.uint64) + baseline * n, empty=len(drawn) < h * w,
                            min_alpha=min_alpha)
        rgba[rgba[:, 3] == 0] = 0
        out[drawn] = rgba.view(np.uint32).ravel()
    return out.reshape(h, w)


_BLOCK = 4096


def _alpha(total: np.ndarray, empty: bool, min_alpha: int) -> np.ndarray:
    """uint8 opacity of the drawn pixels' total counts, as Datashader's eq_hist (which equalises
    floats when some pixel is empty, integers otherwise) and its rescale_discrete_levels."""
    level = (total.astype(np.float64) if empty else total) - total.min()
    scaled, levels = tf.eq_hist(level, np.zeros(len(level), bool))
    lo, hi = float(scaled.min()), float(scaled.max())
    multiple = -0.5 / 98 * levels + (1.5 + 1 / 98)  # 1.5 at 2 levels down to 1 at 100
    if multiple > 1:
        lo, hi = max(hi - multiple * (hi - lo), 0), 1
    alpha = np.interp(scaled, np.hstack([lo, hi]), np.array([min_alpha, 255]), left=0, right=255)
    return np.nan_to_num(alpha, copy=False).astype(np.uint8)


def _pooled_keys(key: np.ndarray, wide: bool) -> np.ndarray:
    """max(hover key) over 2×2 pixels (an odd last row or column pooled with NaN): uint32 with
    `NO_INSTANCE` where no instance, or float64 with NaN when the keys need more than 32 bits."""
    h, w = key.shape
    if h % 2 or w % 2:
        key = np.pad(key, ((0, h % 2), (0, w % 2)), constant_values=np.nan)
    rows = np.fmax(key[0::2], key[1::2])
    pooled = np.fmax(rows[:, 0::2], rows[:, 1::2])
    return pooled if wide else np.nan_to_num(pooled, nan=NO_INSTANCE).astype(np.uint32)


def _raster(frame: pd.DataFrame, classes: list[str], cmap: dict[str, str]) -> hv.DynamicMap:
    """Datashader's image of ``frame`` for the plot's current ranges and size, and above it the
    invisible hover layer, redrawn on each zoom, pan or resize."""
    key = hover_key(frame, len(classes))
    wide = bool(len(key)) and key.max() >= NO_INSTANCE
    # Sorted by x, so that a zoom aggregates only the slice of points between the view's x bounds.
    by_x = np.argsort(frame["x"].to_numpy(np.float64), kind="stable")
    data = pd.DataFrame({"x": frame["x"].to_numpy(np.float64)[by_x], "y": frame["y"].to_numpy(np.float64)[by_x],
                         "class": pd.Categorical(frame["class"], categories=classes)[by_x], "key": key[by_x]})
    xs = data["x"].to_numpy()
    colors = [cmap[c] for c in classes]
    extent = [_span(data["x"]), _span(data["y"])]

    def draw(x_range=None, y_range=None, width=None, height=None, scale=1.0):  # PlotSize scales width, height
        (x0, x1), (y0, y1) = x_range or extent[0], y_range or extent[1]
        # One pass over the points, at the plot's size in CSS pixels (a device pixel ratio of 2
        # would send four times the pixels for the same look of single-pixel points).
        canvas = ds.Canvas(plot_width=width or 400, plot_height=height or 400, x_range=(x0, x1), y_range=(y0, y1))
        shown = data.iloc[np.searchsorted(xs, x0, "left"):np.searchsorted(xs, x1, "right")]
        agg = canvas.points(shown, "x", "y", ds.summary(counts=ds.count_cat("class"), key=ds.max("key")))
        rgba = shade_counts(agg["counts"].data, colors)[::-1]  # Datashader's first row is the bottom one
        image = hv.RGB(rgba.view(np.uint8).reshape(*rgba.shape, 4), bounds=(x0, y0, x1, y1))
        # Hover resolves 2×2 pixels: a quarter of the key bytes, and a pixel's neighbour is as
        # close as a hand can point; uint32 (while the keys fit) is half the bytes of float64.
        keys = _pooled_keys(agg["key"].data, wide)[::-1]
        h, w = agg["key"].shape  # the pooled image covers an even number of pixels each way
        bounds = (x0, y0, x0 + 2 * keys.shape[1] * (x1 - x0) / w, y0 + 2 * keys.shape[0] * (y1 - y0) / h)
        return image * hv.Image(keys, bounds=bounds, vdims=["key"])

    hover = hv.opts.Image(alpha=0, tools=["hover"], hover_tooltips=[("instance", "@image{custom}")],
                          hover_formatters={"@image": hover_formatter(classes)}, colorbar=False)
    return hv.DynamicMap(draw, streams=[hv.streams.RangeXY(), hv.streams.PlotSize()]).opts(hover)


def _span(values: pd.Series) -> tuple[float, float]:
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def instance_scatter(frame: pd.DataFrame, classes: list[str], instances: dict | None = None,
                     threshold: int = RASTER_THRESHOLD, *, title: str = "Instances (t-SNE)",
                     height: int = 440) -> bokeh_figure | hv.DynamicMap:
    """The scatter of :func:`instance_frame` rows (points ≤ ``threshold``: a plain bokeh figure, redrawn
    on every class change and pair switch without HoloViews' per-element option pass) or its Datashader
    raster (a HoloViews DynamicMap, re-aggregated on each zoom).

    ``instances`` supplies the thumbnails shown on hover (omitted: no images in the tooltip).
    """
    cmap = {c: class_color(i) for i, c in enumerate(classes)}
    if len(frame) > threshold:
        figure = partial(_raster_figure, cmap=cmap)
        return _raster(frame, classes, cmap).opts(hv.opts.Overlay(responsive=True, min_height=height - 20,
                                                                  xaxis=None, yaxis=None, title=title,
                                                                  hooks=[figure]))
    fig = bokeh_figure(title=title if len(frame) else "No instances of the selected classes", height=height,
                       sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset,save,tap",
                       active_scroll="wheel_zoom", toolbar_location="above")  # explored by zooming, as the raster
    fig.axis.visible = False
    fig.grid.visible = False
    if frame.empty:
        return fig
    frame = frame.assign(thumbnail=_thumbnails(instances, frame["row"].to_numpy()) if instances else "",
                         color=[cmap[c] for c in frame["class"]])
    columns = ["x", "y", "class", "domain", "prediction", "thumbnail", "row", "color"]
    shown = []
    for domain, marker in (("source", "x"), ("target", "circle")):
        part = ColumnDataSource(frame.loc[frame["domain"] == domain, columns])
        shown.append(fig.scatter("x", "y", source=part, marker=marker, color="color", alpha=0.85,
                                 size=7 if marker == "circle" else 8, line_width=2 if marker == "x" else 1,
                                 name=f"{domain} domain"))
    wrong = ColumnDataSource(frame.loc[frame["mispredicted"], columns])
    shown.append(fig.scatter("x", "y", source=wrong, marker="circle", size=12, fill_alpha=0.0, line_color="black",
                             line_width=1.5, legend_label="mispredicted (target model)",
                             name="mispredicted (target model)"))
    # field values in the tooltip are escaped by bokeh (no {safe}); the thumbnails are our data URIs
    tooltips = _TOOLTIP if instances else [("domain", "@domain"), ("true", "@class"), ("predicted", "@prediction")]
    fig.add_tools(HoverTool(renderers=shown, tooltips=tooltips))
    fig.legend.location = "top_right"
    return fig


def class_legend(classes: list[str], selected: list[str] | None = None) -> str:
    """HTML key of the scatter's encodings: a colour swatch per shown class, then the marker meanings.
    Class names come from folder names and tags: escaped."""
    shown = [c for c in (selected or classes) if c in classes]
    swatches = "".join(f"<span style='margin-right:10px;white-space:nowrap'><span style='display:inline-block;"
                       f"width:10px;height:10px;border-radius:50%;background:{class_color(classes.index(c))}'>"
                       f"</span> {escape_html(c)}</span>" for c in shown)
    return (f"<div class='class-legend' style='font-size:0.9em'>{swatches}<br>✕ source domain · ○ target "
            f"domain · <b>◯</b> dark ring: mispredicted by the target model</div>")
