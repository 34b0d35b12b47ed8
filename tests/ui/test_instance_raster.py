"""The instance view's raster (more points than ``RASTER_THRESHOLD``): each zoom draws the picture HoloViews'
``datashade`` would, at the plot's size in CSS pixels, with a hover layer of uint32 keys over 2×2 pixels
that names the instance under the cursor, on a canvas figure that reports a zoom promptly."""

from __future__ import annotations

import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
import pytest
from helpers.browser import needs_chromium
from holoviews.operation.datashader import datashade
from holoviews.plotting.bokeh.callbacks import RangeXYCallback

from ui.views import instances as iv
from ui.views.style import class_color

hv.extension("bokeh", logo=False)


def _frame(n: int, n_classes: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows with the columns of ``instance_frame``: a blob per class, rows shuffled."""
    rng = np.random.default_rng(seed)
    names = np.array([f"class {i}" for i in range(n_classes)], dtype=object)
    labels, pred = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)
    centres = rng.uniform(-10, 10, (n_classes, 2))
    xy = centres[labels] + rng.standard_normal((n, 2)) * rng.uniform(0.5, 3, n_classes)[labels, None]
    return pd.DataFrame({"row": rng.permutation(n), "x": xy[:, 0], "y": xy[:, 1], "class": names[labels],
                         "domain": rng.choice(["source", "target"], n), "prediction": names[pred],
                         "mispredicted": labels != pred, "confidence": 1.0, "label": labels, "pred": pred})


def _zoom(view: hv.DynamicMap, x_range, y_range, width: int, height: int) -> tuple[hv.RGB, hv.Image]:
    view.event(x_range=x_range, y_range=y_range, width=width, height=height)
    shown = view[()]
    return shown.get(0), shown.get(1)


def _decode(key: int, n_classes: int) -> tuple[int, str, int, int]:
    """``hover_formatter``'s arithmetic in Python: (row, domain, label, prediction)."""
    bits = max(1, (n_classes - 1).bit_length())
    pred, rest = key % 2 ** bits, key // 2 ** bits
    label, rest = rest % 2 ** bits, rest // 2 ** bits
    return rest // 2, "target" if rest % 2 else "source", label, pred


# (x range, y range, width, height): the whole frame, a zoom with odd sizes, a deep zoom, nothing shown
VIEWS = [((-25.0, 25.0), (-20.0, 20.0), 300, 120), ((-3.0, 8.5), (-6.0, 1.0), 171, 67),
         ((1.0, 1.5), (0.2, 0.45), 90, 40), ((500.0, 600.0), (500.0, 600.0), 64, 32)]


@pytest.mark.parametrize(("x_range", "y_range", "width", "height"), VIEWS)
def test_a_zoom_draws_what_holoviews_datashade_draws(x_range, y_range, width, height):
    frame = _frame(60_000, 7)
    classes = sorted(set(frame["class"]))
    view = iv.instance_scatter(frame, classes, threshold=0)
    image, _ = _zoom(view, x_range, y_range, width, height)
    cmap = {c: class_color(i) for i, c in enumerate(classes)}
    expected = datashade(hv.Points(frame, ["x", "y"], ["class"]), aggregator=ds.count_cat("class"), color_key=cmap,
                         min_alpha=80, dynamic=False, width=width, height=height, x_range=x_range, y_range=y_range,
                         pixel_ratio=1)
    assert image.bounds.lbrt() == expected.bounds.lbrt()
    got = np.dstack([image.dimension_values(d, flat=False) for d in image.vdims])
    want = np.dstack([expected.dimension_values(d, flat=False) for d in expected.vdims])
    assert got.shape == (height, width, 4)
    np.testing.assert_array_equal(got, want)


def test_shade_counts_mixes_above_the_smallest_count_when_every_pixel_holds_every_class():
    """Datashader subtracts the smallest count of any pixel and class before mixing colours; with no
    empty pixel that count is not 0 (and opacity is equalised over integers, not floats; HoloViews asks
    for the few discrete levels to be spread)."""
    rng = np.random.default_rng(3)
    counts = rng.integers(5, 40, (6, 9, 4)).astype(np.uint32)
    colors = [class_color(i) for i in range(4)]
    agg = ds.Canvas(plot_width=9, plot_height=6).points(pd.DataFrame({"x": [0.0], "y": [0.0], "c": pd.Categorical(
        ["a"], categories=list("abcd"))}), "x", "y", ds.count_cat("c"))
    agg.data[:] = counts
    expected = ds.transfer_functions.shade(agg, color_key=dict(zip("abcd", colors)), how="eq_hist", min_alpha=80,
                                                rescale_discrete_levels=True)
    np.testing.assert_array_equal(iv.shade_counts(counts, colors), expected.data)


@pytest.mark.parametrize(("x_range", "y_range", "width", "height"), VIEWS)
def test_the_hover_layer_holds_each_2x2_cells_last_instance_as_uint32(x_range, y_range, width, height):
    frame = _frame(60_000, 7, seed=1)
    classes = sorted(set(frame["class"]))
    _, hover = _zoom(iv.instance_scatter(frame, classes, threshold=0), x_range, y_range, width, height)
    keys = hover.dimension_values(2, flat=False)  # first row at the bottom, as Datashader's
    assert keys.dtype == np.uint32 and keys.shape == (-(-height // 2), -(-width // 2))
    key = iv.hover_key(frame, len(classes))
    canvas = ds.Canvas(plot_width=width, plot_height=height, x_range=x_range, y_range=y_range)
    per_pixel = canvas.points(frame.assign(key=key), "x", "y", ds.max("key")).data
    padded = np.full((keys.shape[0] * 2, keys.shape[1] * 2), np.nan)
    padded[:height, :width] = per_pixel
    expected = np.fmax.reduce(np.fmax.reduce(padded.reshape(keys.shape[0], 2, keys.shape[1], 2), 3), 1)
    empty = np.isnan(expected)
    np.testing.assert_array_equal(keys == iv.NO_INSTANCE, empty)
    np.testing.assert_array_equal(keys[~empty], expected[~empty])
    # the bounds cover the pooled pixels: half the resolution, an odd last row or column padded
    x0, y0, x1, y1 = hover.bounds.lbrt()
    assert (x0, y0) == (x_range[0], y_range[0])
    np.testing.assert_allclose([x1, y1], [x_range[0] + keys.shape[1] * 2 * (x_range[1] - x_range[0]) / width,
                                          y_range[0] + keys.shape[0] * 2 * (y_range[1] - y_range[0]) / height])
    # and each key names an instance that lies in its cell: row, domain, true and predicted class
    by_row = frame.set_index("row")
    for k in keys[~empty][:50]:
        row, domain, label, pred = _decode(int(k), len(classes))
        hit = by_row.loc[row]
        assert (domain, label, pred) == (hit["domain"], hit["label"], hit["pred"])
        assert x_range[0] <= hit["x"] <= x_range[1] and y_range[0] <= hit["y"] <= y_range[1]


def test_keys_too_long_for_32_bits_travel_as_float64_with_nan_for_no_instance():
    frame = _frame(30_000, 300, seed=2)  # 9 bits per class code: row · 2^19 passes 2^32 from row 8192
    classes = [f"class {i}" for i in range(300)]
    assert iv.hover_key(frame, len(classes)).max() >= iv.NO_INSTANCE
    _, hover = _zoom(iv.instance_scatter(frame, classes, threshold=0), (-25.0, 25.0), (-20.0, 20.0), 80, 50)
    keys = hover.dimension_values(2, flat=False)
    assert keys.dtype == np.float64 and np.isnan(keys).any() and (keys[~np.isnan(keys)] % 1 == 0).all()


def test_the_raster_figure_paints_on_canvas_reports_zooms_promptly_and_keys_the_classes():
    frame = _frame(30_000, 5)
    classes = sorted(set(frame["class"]))
    view = iv.instance_scatter(frame, classes, threshold=10_000)
    assert isinstance(view, hv.DynamicMap)
    figure = hv.render(view)
    assert figure.output_backend == "canvas" and figure.lod_timeout == 50
    assert RangeXYCallback.debounce is None  # a zoom's ranges arrive once per gesture
    images = {type(r.glyph).__name__: r for r in figure.renderers if type(r.glyph).__name__.startswith("Image")}
    assert images["ImageRGBA"].data_source.data["image"][0].dtype == np.uint32
    assert images["Image"].data_source.data["image"][0].dtype == np.uint32
    (legend,) = figure.legend
    (item,) = legend.items
    assert list(item.renderers[0].data_source.data["class"]) == classes
    assert list(item.renderers[0].data_source.data["color"]) == [class_color(i) for i in range(len(classes))]
    formatter = next(t for t in figure.tools if type(t).__name__ == "HoverTool").formatters["@image"]
    assert formatter.args["none"] == iv.NO_INSTANCE


@needs_chromium
def test_the_tooltip_says_none_where_a_uint32_cell_holds_no_instance(browser):
    """``hover_formatter`` in Chromium on the values BokehJS reads from the uint32 hover image."""
    names = [f"digit {i}" for i in range(12)]
    frame = pd.DataFrame({"row": [0, 999_999], "domain": ["target", "source"], "label": [11, 3], "pred": [2, 3]})
    keys = np.append(iv.hover_key(frame, len(names)), iv.NO_INSTANCE).astype(np.uint32)
    fmt = iv.hover_formatter(names)
    run = """([values, code, args]) => Array.from(new Uint32Array(values)).map(v =>
        new Function("value", "format", "special_vars", ...Object.keys(args), code)(v, null, {}, ...Object.values(args)))"""
    page = browser.new_page()
    try:
        got = page.evaluate(run, [keys.tolist(), fmt.code, fmt.args])
    finally:
        page.close()
    assert got == ["#0 · target domain · true digit 11 · predicted digit 2",
                   "#999999 · source domain · true digit 3 · predicted digit 3", "none"]
