"""The Training tab's figures (issue 14): one timeline through the source run's training and then the
fine-tuning, DVI-style — the sample's points in 2-D over the decision regions of the position shown.

Points: colour = class (`class_color`), cross = source domain, circle = target domain (the instance
view's convention, `style.MODEL_MARKER`); the selected classes in full, the others faded. Behind them
the position's region image (colour = the head's class of each decoded grid cell, light near a
boundary), optionally the boundary samples as small dots, and the trajectories of picked points
through every position. A small axis marks each position by phase and the transfer moment.

Everything here is a function of a `TimelineBundle` (and the picked position, classes and points):
`scene` returns the column data of every glyph for one position, `timeline_figure` builds the figure
once around named data sources, and `show` writes a `scene` into them in place — the app's epoch
switch replaces column data only, never the figure. `strip_html` is the report's small multiples.
Strings from the bundle reach the page through Bokeh fields (escaped by Bokeh) or `escape_html`.
"""

from __future__ import annotations

import math

import numpy as np
from bokeh.models import ColumnDataSource, DataRange1d, HoverTool, Span
from bokeh.plotting import figure as bokeh_figure
from PIL import Image, ImageDraw

from .images import data_uri, png_bytes
from .style import MODEL_MARKER, SOURCE, TARGET, class_color
from .text import escape_html

__all__ = ["DOMAINS", "FADED", "MAX_TRACKED", "METRIC_MEANINGS", "SHOWN", "axis_figure", "figure_title",
           "full_extent", "legend_html", "no_timeline_message", "pale", "position_label", "position_labels",
           "readout_html", "region_rgba", "scene", "show", "show_axis", "strip_html", "strip_positions",
           "thumbnail", "timeline_figure"]

DOMAINS = ("source", "target")
SHOWN, FADED = 0.9, 0.12  # alpha of the selected classes' points and of the others
REGION_ALPHA = 0.55  # opacity of the region image under the points
MAX_TRACKED = 100  # picked points whose trajectories are drawn (a lasso may catch more)
PHASE_COLOR = {"source": SOURCE, "target": TARGET}

# The fidelity readout: metric name, label, what it says (one line each).
METRIC_MEANINGS = (
    ("nn_train_15", "NN@15 train", "of each training point's 15 nearest neighbours in the model's space, how many "
                                   "stay among its 15 nearest on screen (0–15; DVI reports 1.4–3.0)"),
    ("nn_val_15", "NN@15 validation", "the same for the held-out validation points, which the projection never "
                                      "trained on"),
    ("ppr", "PPR", "share of points whose prediction survives the round trip through the 2-D picture "
                   "(head(decode(encode(x))) = head(x)); the regions are trustworthy where it is near 1"),
    ("ppr_train", "PPR train", "the same on the training points alone (what DVI reports: 0.91–1.00 late)"),
    ("ppr_val", "PPR validation", "the same on the held-out validation points: the honest check, as the "
                                  "projection is trained to keep the training points' predictions"),
    ("trustworthiness", "trustworthiness", "scikit-learn's check that points close on screen are close in the "
                                           "model's space (1 = no false neighbours; k = 15, training points)"),
    ("temporal_corr", "temporal corr.", "Spearman correlation of how far each point moves in the model's space "
                                        "and on screen since the previous position (n/a at the first)"),
    ("boundary_nn_15", "boundary NN@15", "NN@15 of the boundary samples among the training points: whether the "
                                         "boundaries are placed where they are in high dimension"),
    ("accuracy", "accuracy", "the model's accuracy on the sample at this position"),
)


# --- positions ----------------------------------------------------------------------------------------

def position_label(phase: str, epoch) -> str:
    """``"source e3"``: the phase and the run's epoch of one position."""
    return f"{phase} e{int(epoch)}"


def position_labels(epochs: dict) -> list[str]:
    """One label per position of the bundle's ``epochs`` table (`position_label`)."""
    return [position_label(p, e) for p, e in zip(epochs["phase"], epochs["epoch"])]


def _extent(epochs: dict, position: int) -> tuple[float, float, float, float]:
    return tuple(float(epochs[k][position]) for k in ("x_min", "x_max", "y_min", "y_max"))


def full_extent(epochs: dict) -> tuple[float, float, float, float]:
    """The union of every position's grid extent: the figure's fixed ranges, so that the picture moves
    and the axes stay."""
    return (min(epochs["x_min"]), max(epochs["x_max"]), min(epochs["y_min"]), max(epochs["y_max"]))


# --- one position's data --------------------------------------------------------------------------------

def region_rgba(region: np.ndarray) -> np.ndarray:
    """The (G, G) uint32 RGBA image Bokeh's ``image_rgba`` draws of a (G, G, 3) uint8 region image. The
    region's row 0 is its top; Bokeh's row 0 is the bottom, so the rows are flipped."""
    g_h, g_w, _ = region.shape
    rgba = np.empty((g_h, g_w, 4), np.uint8)
    rgba[..., :3] = region[::-1]
    rgba[..., 3] = 255
    return rgba.view(np.uint32).reshape(g_h, g_w)


def _alpha(labels: np.ndarray, classes: list[str], selected) -> np.ndarray:
    wanted = [classes.index(c) for c in (selected or []) if c in classes]
    if not wanted:
        return np.full(len(labels), SHOWN)
    return np.where(np.isin(labels, wanted), SHOWN, FADED)


def _tracked(tracked, n_points: int) -> list[int]:
    """The picked point ids that exist, once each, at most `MAX_TRACKED`."""
    seen: list[int] = []
    for t in tracked or []:
        if 0 <= int(t) < n_points and int(t) not in seen:
            seen.append(int(t))
    return seen[:MAX_TRACKED]


def scene(bundle, position: int, selected=None, tracked=None, *, region=None, frame=None,
          trajectories=None) -> dict[str, dict]:
    """The column data of every glyph of `timeline_figure` at ``position``:

    ``regions`` (the image and its extent), ``source``/``target`` (each domain's points, in the fixed
    order of the bundle's point table: x, y, point id, class, predicted class, split, colour, alpha),
    ``boundary`` (the boundary samples), ``trajectories`` (one line per picked point through every
    position) and ``now`` (where the picked points are at ``position``).

    Args:
        bundle: an open `TimelineBundle`.
        position: 0 … n_positions − 1.
        selected: class names shown in full (the others faded); None or empty: all.
        tracked: picked point ids (unknown ones dropped, at most `MAX_TRACKED`).
        region, frame, trajectories: the position's `bundle.region`, `bundle.frame` and the picked
            points' `bundle.trajectories`, when the caller keeps them (read from the bundle otherwise).
    """
    classes = list(bundle.classes)
    points = bundle.points()
    frame = bundle.frame(position) if frame is None else frame
    region = bundle.region(position) if region is None else region
    x0, x1, y0, y1 = (float(v) for v in frame.extent)
    labels = np.asarray(points["label"], np.int64)
    domains = np.asarray(points["domain"]).astype(str)
    splits = np.asarray(points["split"]).astype(str)
    coords = np.asarray(frame.coords, np.float64)
    prediction = np.asarray(frame.prediction, np.int64)
    names = np.asarray(classes, dtype=object)
    alpha = _alpha(labels, classes, selected)
    out = {"regions": {"image": [region_rgba(region)], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}}
    for domain in DOMAINS:
        rows = np.flatnonzero(domains == domain)
        out[domain] = {"x": coords[rows, 0], "y": coords[rows, 1], "point": rows, "class": names[labels[rows]],
                       "predicted": names[np.clip(prediction[rows], 0, len(classes) - 1)],
                       "split": splits[rows], "color": [class_color(int(c)) for c in labels[rows]],
                       "alpha": alpha[rows]}
    boundary = np.asarray(frame.boundary, np.float64).reshape(-1, 2)
    out["boundary"] = {"x": boundary[:, 0], "y": boundary[:, 1]}
    picked = _tracked(tracked, len(labels))
    if picked:
        paths = np.asarray(bundle.trajectories(picked) if trajectories is None else trajectories, np.float64)
        # (P, len, 2): one line per picked point through the positions
        out["trajectories"] = {"xs": [paths[:, j, 0] for j in range(len(picked))],
                               "ys": [paths[:, j, 1] for j in range(len(picked))],
                               "point": picked, "color": [class_color(int(labels[p])) for p in picked]}
    else:
        out["trajectories"] = {"xs": [], "ys": [], "point": [], "color": []}
    out["now"] = {"x": coords[picked, 0] if picked else [], "y": coords[picked, 1] if picked else [],
                  "point": picked, "color": out["trajectories"]["color"]}
    return out


# --- the figure -------------------------------------------------------------------------------------------

_SOURCES = ("regions", "boundary", "trajectories", "source", "target", "now")


def timeline_figure(bundle, *, height: int = 560, boundary: bool = True) -> tuple:
    """The scatter over the regions with empty named data sources (fill them with `show`); returns
    ``(figure, {name: ColumnDataSource})``. Its ranges are the union of all positions' extents, so
    switching positions moves the picture, not the axes. Box and lasso select and tap pick points."""
    x0, x1, y0, y1 = full_extent(bundle.epochs())
    # The ranges follow only an invisible pair of corners (the union extent), so they never move with a
    # frame; match_aspect keeps one unit as long on screen in x as in y by widening one range.
    corners = ColumnDataSource({"x": [x0, x1], "y": [y0, y1]}, name="timeline-extent")
    fig = bokeh_figure(height=height, sizing_mode="stretch_width", x_range=DataRange1d(range_padding=0),
                       y_range=DataRange1d(range_padding=0), match_aspect=True,
                       tools="pan,wheel_zoom,box_select,lasso_select,tap,reset,save", active_scroll="wheel_zoom",
                       active_drag="lasso_select", toolbar_location="above", output_backend="canvas", title="")
    extent = fig.scatter("x", "y", source=corners, alpha=0, name="extent")
    fig.x_range.renderers = fig.y_range.renderers = [extent]
    fig.axis.visible = False
    fig.grid.visible = False
    sources = {name: ColumnDataSource(name=f"timeline-{name}") for name in _SOURCES}
    # the regions pale behind the points, which carry the same class colours (DVI's pastel background)
    fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=sources["regions"], name="regions",
                   global_alpha=REGION_ALPHA)
    fig.scatter("x", "y", source=sources["boundary"], size=2, color="#555555", alpha=0.6, name="boundary samples",
                visible=boundary)
    fig.multi_line("xs", "ys", source=sources["trajectories"], line_color="color", line_width=2, line_alpha=0.9,
                   name="trajectories")
    shown = []
    for domain in DOMAINS:
        cross = MODEL_MARKER[domain] == "x"
        style = ({"size": 9, "line_width": 2.5, "line_color": "color"} if cross else
                 {"size": 7, "line_width": 0.7, "line_color": "#222222", "fill_color": "color"})
        renderer = fig.scatter("x", "y", source=sources[domain], marker=MODEL_MARKER[domain], fill_alpha="alpha",
                               line_alpha="alpha", name=f"{domain} domain", nonselection_fill_alpha="alpha",
                               nonselection_line_alpha="alpha", **style)
        shown.append(renderer)
    fig.scatter("x", "y", source=sources["now"], marker="circle", size=12, fill_alpha=0, line_color="black",
                line_width=2, name="picked now")
    fig.add_tools(HoverTool(renderers=shown, tooltips=[("point", "#@point (@split)"), ("true", "@class"),
                                                       ("predicted", "@predicted")]))
    fig.select_one({"type": HoverTool}).point_policy = "snap_to_data"
    return fig, sources


def show(sources: dict, data: dict, fig=None, title: str | None = None) -> None:
    """Write a `scene` into the figure's data sources (and its title): the epoch switch, in place."""
    for name, columns in data.items():
        if name in sources:
            sources[name].data = columns
    if fig is not None and title is not None:
        fig.title.text = title


def figure_title(epochs: dict, position: int, transfer_position) -> str:
    """``"source e8 — position 8 of 13, the last before the transfer"`` (canvas text, not HTML)."""
    n = len(epochs["position"])
    text = f"{position_label(epochs['phase'][position], epochs['epoch'][position])} — position {position + 1} of {n}"
    if transfer_position is not None and position == transfer_position - 1:
        text += ", the last before the transfer"
    elif transfer_position is not None and position == transfer_position:
        text += ", the first after the transfer"
    return text


def legend_html(classes: list[str]) -> str:
    """The key of the figure: a colour swatch per class (escaped names), the markers, what picking does."""
    swatches = "".join(f"<span style='margin-right:10px;white-space:nowrap'><span style='display:inline-block;"
                       f"width:10px;height:10px;border-radius:50%;background:{class_color(i)}'></span> "
                       f"{escape_html(c)}</span>" for i, c in enumerate(classes))
    return (f"<div class='class-legend' style='font-size:0.9em'>{swatches}<br>✕ source domain · ○ target domain · "
            "background: the class the model predicts there (pale near a boundary) · box, lasso or click: pick "
            "points to follow through the epochs</div>")


# --- the timeline axis ----------------------------------------------------------------------------------

def axis_figure(epochs: dict, transfer_position) -> tuple:
    """A strip of one dot per position (red: source run, blue: target run), labelled ``s1 … | t1 …``,
    the transfer moment a dashed line; returns ``(figure, marker source)`` — the ring of the position
    shown, moved by `show_axis`."""
    n = len(epochs["position"])
    fig = bokeh_figure(height=90, sizing_mode="stretch_width", x_range=(-0.6, n - 0.4), y_range=(-1, 1.4),
                       tools="tap", toolbar_location=None, output_backend="canvas", name="timeline-axis")
    fig.yaxis.visible = False
    fig.grid.visible = False
    fig.outline_line_color = None
    phases = [str(p) for p in epochs["phase"]]
    fig.scatter(list(range(n)), [0] * n, size=11, color=[PHASE_COLOR.get(p, "#888888") for p in phases],
                name="positions")
    marker = ColumnDataSource({"x": [0], "y": [0]}, name="timeline-now")
    fig.scatter("x", "y", source=marker, size=20, fill_alpha=0, line_color="black", line_width=2, name="now")
    fig.xaxis.ticker = list(range(n))
    fig.xaxis.major_label_overrides = {i: f"{p[0]}{int(e)}" for i, (p, e) in enumerate(zip(phases, epochs["epoch"]))}
    if transfer_position is not None and 0 < transfer_position < n:
        fig.add_layout(Span(location=transfer_position - 0.5, dimension="height", line_dash="dashed",
                            line_color="black", line_width=2, name="transfer"))
        fig.text([transfer_position - 0.45], [0.45], text=["transfer"], text_align="left",
                 text_font_size="9pt", name="transfer label")
    return fig, marker


def show_axis(marker: ColumnDataSource, position: int) -> None:
    marker.data = {"x": [position], "y": [0]}


# --- the fidelity readout -------------------------------------------------------------------------------

def _number(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not math.isfinite(value) else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def readout_html(epochs: dict, position: int) -> str:
    """The fidelity of the picture at ``position``: each stored metric with one line on what it means."""
    rows = "".join(
        f"<tr><td>{escape_html(label)}</td><td class='num' data-metric='{name}'>{_number(epochs[name][position])}"
        f"</td><td class='meaning'>{escape_html(meaning)}</td></tr>"
        for name, label, meaning in METRIC_MEANINGS if name in epochs)
    seconds = float(epochs["seconds"][position]) if "seconds" in epochs else math.nan
    seconds = f"{seconds:.1f}" if math.isfinite(seconds) else "n/a"
    return (f"<div class='timeline-readout'><b>How faithful is this picture?</b> "
            f"({escape_html(position_label(epochs['phase'][position], epochs['epoch'][position]))}; projected in "
            f"{seconds} s)<table style='font-size:0.85em;border-collapse:collapse'>{rows}</table></div>")


def no_timeline_message(target_run_id) -> str:
    """What a pair without a timeline shows: how to compute one (a message for `message_md`)."""
    target = target_run_id or "<target run id>"
    return (f"No training timeline for this pair yet. Compute it with `mlflow-transfer timetravel "
            f"--target-run-id {target}` (it projects every epoch checkpoint of the source and the target run).")


# --- the report's small multiples ------------------------------------------------------------------------

def strip_positions(n_positions: int, transfer_position, count: int = 6) -> list[int]:
    """About ``count`` positions: the first, the last source epoch, the first target epoch, the last,
    and evenly spaced ones between until ``count`` (fewer when the timeline is shorter)."""
    if n_positions <= 0:
        return []
    must = {0, n_positions - 1}
    if transfer_position is not None and 0 < transfer_position < n_positions:
        must |= {transfer_position - 1, transfer_position}
    chosen = set(must)
    for p in np.linspace(0, n_positions - 1, count).round().astype(int):
        if len(chosen) >= count:
            break
        chosen.add(int(p))
    return sorted(chosen)


def pale(region: np.ndarray) -> np.ndarray:
    """The region image as the figure shows it: `REGION_ALPHA` of it over white."""
    return np.round(region.astype(np.float32) * REGION_ALPHA + 255.0 * (1.0 - REGION_ALPHA)).astype(np.uint8)


def thumbnail(region: np.ndarray, coords: np.ndarray, labels: np.ndarray, domains: np.ndarray, extent,
              size: int = 200) -> np.ndarray:
    """A (size, size, 3) uint8 picture: the region image (`pale`) scaled to ``size`` with every point drawn
    on it, as in the app (cross = source domain, dot with a dark ring = target domain, in the class's colour)."""
    image = Image.fromarray(pale(region)).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = (float(v) for v in extent)
    px = (np.asarray(coords[:, 0], np.float64) - x0) / max(x1 - x0, 1e-12) * (size - 1)
    py = (y1 - np.asarray(coords[:, 1], np.float64)) / max(y1 - y0, 1e-12) * (size - 1)  # row 0 = top
    for x, y, label, domain in zip(px, py, labels, domains):
        colour = class_color(int(label))
        if domain == "source":
            draw.line([(x - 2, y - 2), (x + 2, y + 2)], fill=colour, width=2)
            draw.line([(x - 2, y + 2), (x + 2, y - 2)], fill=colour, width=2)
        else:
            draw.ellipse([(x - 2.5, y - 2.5), (x + 2.5, y + 2.5)], fill=colour, outline="#222222", width=1)
    return np.asarray(image)


def strip_html(bundle, positions=None, size: int = 200) -> str:
    """The report's strip: for each of ``positions`` (default `strip_positions`) the region image with
    the points as an embedded PNG, its label and NN@15 / PPR; the transfer moment marked. Self-contained
    (``data:`` URIs only), every bundle string escaped."""
    epochs = bundle.epochs()
    n, transfer = bundle.n_positions, bundle.transfer_position
    positions = strip_positions(n, transfer) if positions is None else positions
    points = bundle.points()
    labels = np.asarray(points["label"], np.int64)
    domains = np.asarray(points["domain"]).astype(str)
    cells = []
    for p in positions:
        frame = bundle.frame(p)
        picture = thumbnail(bundle.region(p), np.asarray(frame.coords), labels, domains, frame.extent, size)
        label = position_label(epochs["phase"][p], epochs["epoch"][p])
        mark = (" <b>· transfer →</b>" if transfer is not None and p == transfer else "")
        nn = _number(epochs["nn_train_15"][p]) if "nn_train_15" in epochs else "n/a"
        ppr = _number(epochs["ppr"][p]) if "ppr" in epochs else "n/a"
        cells.append(f"<figure class='timeline-cell' data-position='{int(p)}' style='margin:0'>"
                     f"<img src='{data_uri(png_bytes(picture))}' width='{size}' height='{size}' "
                     f"alt='{escape_html(label)}'><figcaption style='font-size:.8em'>{escape_html(label)}{mark}<br>"
                     f"NN@15 {nn} · PPR {ppr}</figcaption></figure>")
    notes = "".join(f"<p class='note'>{escape_html(t)}</p>" for t in (bundle.notes or []))
    return (f"<div class='timeline-strip' style='display:flex;flex-wrap:wrap;gap:.8em'>{''.join(cells)}</div>"
            f"{notes}")
