"""Instance view (paper §5.2, Figure 1 B): the selected classes' instances of both domains in 2-D.

Colour = class, cross = source domain, circle = target domain, dark ring = mispredicted by the target
model; hovering shows the thumbnail, domain, true label and the target model's prediction. Above
`RASTER_THRESHOLD` points the scatter is shaded by Datashader on the server (one image per zoom level)
and hovering names the instance under the cursor (its row in the bundle's instance table, domain,
true label and prediction), so a million points stay usable.
"""

from __future__ import annotations

import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
from bokeh.models import CustomJSHover
from holoviews.operation.datashader import datashade, rasterize
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


# HoloViews waits until a plot's ranges have been still for 100 ms before re-aggregating; the 50 ms
# level-of-detail timeout below already folds a wheel gesture into one update, so 20 ms is enough.
RangeXYCallback.debounce = 20


def _prompt_ranges(plot, _element) -> None:
    """Report a zoom to the server 50 ms after the wheel stops instead of Bokeh's 500 ms
    level-of-detail timeout, which would otherwise alone exceed the 0.5 s re-rasterise goal."""
    plot.state.lod_timeout = 50


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


def hover_formatter(classes: list[str]) -> CustomJSHover:
    """The tooltip's formatter for a pixel of the max(:func:`hover_key`) image (NaN where no instance):
    ``#row · domain · true class · predicted class``, decoded in the browser."""
    return CustomJSHover(args={"names": list(classes), "bits": _class_bits(len(classes))}, code="""
if (!Number.isFinite(value)) return "none";
const s = 2 ** bits, pred = value % s, rest = Math.floor(value / s), label = rest % s;
const rest2 = Math.floor(rest / s), domain = rest2 % 2 ? "target" : "source", row = Math.floor(rest2 / 2);
return `#${row} · ${domain} domain · true ${names[label]} · predicted ${names[pred]}`;
""")


def instance_scatter(frame: pd.DataFrame, classes: list[str], instances: dict | None = None,
                     threshold: int = RASTER_THRESHOLD) -> hv.Element | hv.Overlay:
    """The scatter of :func:`instance_frame` rows (points ≤ ``threshold``) or its Datashader raster.

    ``instances`` supplies the thumbnails shown on hover (omitted: no images in the tooltip).
    """
    opts = dict(responsive=True, min_height=420, xaxis=None, yaxis=None)
    if frame.empty:
        return hv.Points([], ["x", "y"]).opts(**opts, title="No instances of the selected classes")
    cmap = {c: class_color(i) for i, c in enumerate(classes)}
    if len(frame) > threshold:
        points = hv.Points(frame.assign(key=hover_key(frame, len(classes))), ["x", "y"], ["class", "row", "key"])
        # Shaded on the server: the browser gets one RGBA image (4 bytes a pixel) instead of a count per
        # class and pixel (40 bytes with 10 classes), which it would have to colour itself.
        image = datashade(points, aggregator=ds.count_cat("class"), color_key=cmap, min_alpha=80)
        # Hover names the instance under the cursor from a second, invisible aggregate: the max of
        # hover_key, whose high bits are the row, so it picks the pixel's last instance as max(row)
        # would, and whose low bits carry its domain, label and prediction for the tooltip to decode.
        # One max costs 0.02 s for 1M points where Datashader's per-pixel selector (which fetches
        # the row's columns) costs 0.3–0.5 s on each zoom.
        who = rasterize(points, aggregator=ds.max("key"), pixel_ratio=0.5).opts(  # 2×2 px cells: a quarter of the bytes
            alpha=0, tools=["hover"], hover_tooltips=[("instance", "@image{custom}")],
            hover_formatters={"@image": hover_formatter(classes)}, colorbar=False)
        return (image * who).opts(hv.opts.Overlay(**opts, title="Instances (t-SNE)", hooks=[_prompt_ranges]))
    frame = frame.assign(thumbnail=_thumbnails(instances, frame["row"].to_numpy()) if instances else "")
    vdims = ["class", "domain", "prediction", "mispredicted", "thumbnail", "row"]
    tooltips = _TOOLTIP if instances else [("domain", "@domain"), ("true", "@class"), ("predicted", "@prediction")]
    layers = []
    for domain, marker in (("source", "x"), ("target", "circle")):
        part = frame[frame["domain"] == domain]
        layers.append(hv.Points(part, ["x", "y"], vdims, label=f"{domain} domain").opts(
            color="class", cmap=cmap, marker=marker, size=7 if marker == "circle" else 8, line_width=2 if marker == "x" else 1,
            alpha=0.85, hover_tooltips=tooltips, show_legend=False, tools=["tap"]))
    wrong = frame[frame["mispredicted"]]
    layers.append(hv.Points(wrong, ["x", "y"], vdims, label="mispredicted (target model)").opts(
        marker="circle", size=12, fill_alpha=0.0, line_color="black", line_width=1.5, hover_tooltips=tooltips))
    return hv.Overlay(layers).opts(**opts, title="Instances (t-SNE)", legend_position="top_right")


def class_legend(classes: list[str], selected: list[str] | None = None) -> str:
    """HTML key of the scatter's encodings: a colour swatch per shown class, then the marker meanings.
    Class names come from folder names and tags: escaped."""
    shown = [c for c in (selected or classes) if c in classes]
    swatches = "".join(f"<span style='margin-right:10px;white-space:nowrap'><span style='display:inline-block;"
                       f"width:10px;height:10px;border-radius:50%;background:{class_color(classes.index(c))}'>"
                       f"</span> {escape_html(c)}</span>" for c in shown)
    return (f"<div class='class-legend' style='font-size:0.9em'>{swatches}<br>✕ source domain · ○ target "
            f"domain · <b>◯</b> dark ring: mispredicted by the target model</div>")
