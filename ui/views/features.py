"""Feature view (paper §5.4.2, Figure 1 D): the feature ranking list and the domain discriminability plot.

Everything comes from the bundle's ``discriminability/<class>`` record (Algorithm 1 run on the
*target* model's conductance of its important neurons; ``neurons`` names the columns of A) and the
target model's ``features/target/<layer>`` patch sprites and feature visualisations. Nothing is
recomputed here but display scaling and the plot's projection A·W restricted to the activated neurons (the stored A, ``scaled``,
times rows of the stored W, ``basis``). A class without the record (e.g. one with instances in only
one domain) is an empty state.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool, Span
from bokeh.plotting import figure as bokeh_figure

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError

from .images import crop_patches, data_uri, png_bytes, vis_image
from .style import MODEL_MARKER, SOURCE, TARGET
from .text import escape_md

__all__ = ["ALL", "ORDERS", "PAGE_SIZE", "PROJECTIONS", "TOP_AXES", "activated_columns", "biplot_axes",
           "cv_details", "cv_summary", "discriminability_plot", "feature_frame", "feature_table",
           "mirrored_histogram", "missing_message", "projected", "read_discriminability", "sort_features",
           "top_labels"]

ALL = "__all__"  # the bundle's key for the all-classes record
ORDERS = ("descending", "ascending")
PROJECTIONS = ("activated", "all")  # A·W over the activated neurons (§5.4.2), or over every neuron
TOP_AXES = 5       # biplot axes drawn without ticking (paper: "top five neurons ... depending on the order")
FEW_PATCHES = 3    # patches per domain shown in a list row
PAGE_SIZE = 15     # list rows per page; remote paging sends only these to the browser
PAPER_FOLDS = 10
AXIS_COLOR, CHECKED_COLOR = "#333333", "#2ca02c"  # red/blue are reserved for the domains
COLUMNS = ["rank", "layer", "neuron", "discriminability", "|discriminability|", "patches", "visualisation",
           "conductance", "column", "label"]


def read_discriminability(bundle: PairBundle, cls: str = ALL) -> dict | None:
    """``bundle.discriminability(cls)``, or None when the bundle holds no such record for ``cls``."""
    try:
        return bundle.discriminability(cls)
    except BundleError:
        return None


def missing_message(bundle: PairBundle, cls: str) -> str:
    """Markdown saying why ``cls`` has no domain discriminability, quoting the diagnostics' notes on it
    (the class name and the notes escaped)."""
    name = "all classes" if cls == ALL else f"class **{escape_md(cls)}**"
    try:
        notes = [n for n in bundle.summary().get("notes", []) if n.startswith(f"class {cls!r}")]
    except BundleError:
        notes = []
    why = escape_md(" ".join(notes)) or "The diagnostics computed none (it needs instances of both domains)."
    return f"No domain discriminability for {name}. {why}"


def _patch_html(strips: list[np.ndarray | None]) -> str:
    """Source strip over target strip, each framed in its domain colour; '' when neither exists."""
    imgs = [f'<img src="{data_uri(png_bytes(s))}" title="{dom} domain" style="height:28px;border:2px solid {color};'
            f'image-rendering:pixelated;margin:1px">'
            for s, dom, color in zip(strips, ("source", "target"), (SOURCE, TARGET)) if s is not None]
    return "<br>".join(imgs)


def _vis_cells(bundle: PairBundle, keys: list[tuple[str, int]]) -> list[str]:
    """Per (layer, neuron): the target model's feature visualisation as an ``<img>`` (HTML), or a short
    note when the bundle holds none for it (feature visualisation off, or an older bundle)."""
    records = {}
    for layer in {layer for layer, _ in keys}:
        try:
            records[layer] = bundle.feature_vis("target", layer)
        except BundleError:
            records[layer] = None
    cells = []
    for layer, n in keys:
        image = vis_image(records[layer], n)
        cells.append("not in this bundle" if image is None else
                     f'<img src="{data_uri(png_bytes(image))}" title="optimised image (target model)" '
                     f'style="height:48px;image-rendering:pixelated;margin:1px">')
    return cells


def _histogram_svg(source: np.ndarray, target: np.ndarray, width: int = 120, height: int = 40) -> str:
    """Sparkline of the mirrored histogram (source bars up in red, target bars down in blue).

    Tabulator has no bar-chart cell, and one bokeh figure per row would not stay responsive."""
    half, top = height / 2, max(int(source.max(initial=0)), int(target.max(initial=0)), 1)
    w = width / max(len(source), 1)
    rects = []
    for i, (s, t) in enumerate(zip(source, target)):
        hs, ht = s / top * half, t / top * half
        if hs:
            rects.append(f'<rect x="{i * w:.1f}" y="{half - hs:.1f}" width="{w * 0.9:.1f}" height="{hs:.1f}" fill="{SOURCE}"/>')
        if ht:
            rects.append(f'<rect x="{i * w:.1f}" y="{half:.1f}" width="{w * 0.9:.1f}" height="{ht:.1f}" fill="{TARGET}"/>')
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}"><title>conductance: source '
            f'{int(source.sum())} above, target {int(target.sum())} below</title>{"".join(rects)}'
            f'<line x1="0" x2="{width}" y1="{half}" y2="{half}" stroke="#888" stroke-width="0.5"/></svg>')


def _patch_strips(bundle: PairBundle, keys: list[tuple[str, int]], few: int) -> dict[tuple[str, int], list]:
    """(layer, neuron) → [source strip, target strip] for the neurons ``keys``: the target model's first
    ``few`` top patches side by side (H=p, W=n·p, 3), or None for a domain without patches. (The
    sprites also hold the neurons most similar to the source's important ones: not listed here.)"""
    records, out = {}, {}
    for layer, n in keys:
        if layer not in records:
            try:
                records[layer] = bundle.patches("target", layer)
            except BundleError:  # the layer had no neuron with patches
                records[layer] = None
        if records[layer] is not None:
            crops = crop_patches(records[layer], n)
            out[(layer, n)] = [np.hstack([c["image"] for c in crops[d][:few]]) if crops[d] else None
                               for d in ("source", "target")]
    return out


def _base_frame(record: dict) -> pd.DataFrame:
    """The columns of :func:`feature_frame` that need only the record (no patches, no sparklines)."""
    coef = np.asarray(record["coef"], dtype=np.float64)
    rank = np.empty(len(coef), np.int64)
    rank[np.asarray(record["ranked"])] = np.arange(1, len(coef) + 1)  # stored ranking, ties as stored
    neurons = [(str(layer), int(n)) for layer, n in record["neurons"]]
    return pd.DataFrame({
        "rank": rank,
        "layer": [layer for layer, _ in neurons], "neuron": [n for _, n in neurons],
        "discriminability": coef, "|discriminability|": np.abs(coef), "patches": "", "visualisation": "",
        "conductance": "",
        "column": np.arange(len(coef)), "label": [f"{layer}:{n}" for layer, n in neurons]}, columns=COLUMNS)


def feature_frame(bundle: PairBundle, cls: str = ALL, *, patches: int = FEW_PATCHES,
                  record: dict | None = None) -> pd.DataFrame:
    """One row per neuron of A (the columns of Algorithm 1's matrix), in the stored column order.

    Columns: ``rank`` (1 = largest |coef|, from the
    stored ``ranked``), ``layer``, ``neuron`` (index in the layer), ``discriminability`` (signed SVM
    coefficient; > 0 pushes towards the target domain), ``|discriminability|``, ``patches`` (HTML:
    up to ``patches`` top patches of the target model per domain), ``conductance`` (HTML: mirrored
    histogram sparkline), ``visualisation`` (HTML: the target model's feature visualisation of the
    neuron, or "not in this bundle"), ``column`` (j, the row of coef/axes/hist_* for this neuron), ``label``
    (``"layer:index"``). Empty (same columns) when ``cls`` has no discriminability record.
    ``record``: ``cls``'s record when the caller already read it.
    """
    rec = record if record is not None else read_discriminability(bundle, cls)
    if rec is None:
        return pd.DataFrame({c: [] for c in COLUMNS})
    frame = _base_frame(rec)
    keys = list(zip(frame["layer"], frame["neuron"]))
    strips = _patch_strips(bundle, keys, patches)
    hs, ht = np.asarray(rec["hist_source"]), np.asarray(rec["hist_target"])
    frame["patches"] = [_patch_html(strips.get(key, [None, None])) or "no patches stored" for key in keys]
    frame["visualisation"] = _vis_cells(bundle, keys)
    frame["conductance"] = [_histogram_svg(hs[j], ht[j]) for j in frame["column"]]
    return frame


def sort_features(frame: pd.DataFrame, order: str = "descending") -> pd.DataFrame:
    """``frame`` by discriminability magnitude: ``descending`` follows the stored ranking (largest
    |coef| first, ties by column), ``ascending`` is its exact reverse. The index is reset."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    return frame.sort_values("rank", ascending=order == "descending", kind="stable").reset_index(drop=True)


def top_labels(frame: pd.DataFrame, order: str = "descending", n: int = TOP_AXES) -> list[str]:
    """Labels of the first ``n`` neurons of the list in ``order`` (the biplot axes drawn by default)."""
    return list(sort_features(frame, order)["label"].iloc[:n])


def mirrored_histogram(record: dict, column: int, label: str = "") -> hv.Overlay:
    """Conductance histogram of neuron ``column`` of A: source counts as bars above 0 (red), target
    counts below 0 (blue, negated), on the shared bin edges (units: conductance).

    Args:
        record: ``bundle.discriminability(cls)`` (hist_source/hist_target (P, bins), hist_edges (P, bins+1)).
        column: j in [0, P).
    """
    edges = np.asarray(record["hist_edges"][column], dtype=np.float64)
    kdims, vdims = [hv.Dimension("conductance")], [hv.Dimension("instances")]
    src = hv.Histogram((edges, np.asarray(record["hist_source"][column])), kdims=kdims, vdims=vdims, label="source domain")
    tgt = hv.Histogram((edges, -np.asarray(record["hist_target"][column])), kdims=kdims, vdims=vdims, label="target domain")
    return hv.Overlay([src.opts(color=SOURCE, line_color=None), tgt.opts(color=TARGET, line_color=None),
                       hv.HLine(0).opts(color="#888", line_width=1)]).opts(
        title=label, height=160, width=360, legend_position="right", show_grid=True)


def cv_summary(record: dict, *, note: bool = True) -> str:
    """One line: the domain classifier's k-fold CV accuracy mean ± std, flagging fewer folds than the
    paper's 10; with ``note``, the diagnostics' own remark (e.g. why folds were reduced) follows."""
    text = f"{record['folds_used']}-fold CV accuracy {record['cv_mean']:.3f} ± {record['cv_std']:.3f}"
    remarks = [f"fewer than the paper's {PAPER_FOLDS} folds"] if record["folds_used"] < PAPER_FOLDS else []
    if note and record.get("note"):
        remarks.append(record["note"])
    return text + (f" ({': '.join(remarks)})" if remarks else "")


def activated_columns(frame: pd.DataFrame, checked=(), order: str = "descending", top: int = TOP_AXES
                      ) -> tuple[list[str], list[str]]:
    """The activated neurons (§5.4.2): the first ``top`` labels of the list in ``order``, and the
    ``checked`` labels of this class's A beyond those (sorted); labels not in A are ignored."""
    default = top_labels(frame, order, top)
    return default, sorted((set(checked) & set(frame["label"])) - set(default))


def projected(record: dict, columns=None) -> np.ndarray | None:
    """(M, 2) instances projected as A·W (§5.4.2) with A's and W's rows restricted to ``columns`` (j
    indices of A's columns; None: all neurons, the stored ``coordinates``). None when the record has
    no A (``scaled``: bundles written before it was stored) and ``columns`` is not None.

    With only the activated columns, x is the decision value of the SVM restricted to them (the
    others held at 0, the middle of their scaled range) over ||coef||, so the stored boundary line
    x = -b/||coef|| still separates its two decisions."""
    if columns is None:
        return np.asarray(record["coordinates"], np.float64)
    if "scaled" not in record:
        return None
    cols = np.asarray(list(columns), np.int64)
    a = np.asarray(record["scaled"], np.float64)[:, cols]
    return a @ np.asarray(record["basis"], np.float64)[cols]


def biplot_axes(record: dict, columns, radius: float) -> np.ndarray:
    """(len(columns), 2) biplot line ends of the neurons ``columns``: their rows of W = [u, g] under one
    common factor, so the longest line is ``radius`` long and every line's horizontal length,
    radius · |u_j| / max ||W_j||, is proportional to |coef_j| (§5.4.2: the horizontal lengths show
    the domain discriminability)."""
    w = np.asarray(record["basis"], np.float64)[np.asarray(list(columns), np.int64)].reshape(-1, 2)
    longest = float(np.hypot(w[:, 0], w[:, 1]).max(initial=0.0))
    return w * (radius / longest) if longest > 0 else w


def _axes_frame(record: dict, frame: pd.DataFrame, labels: list[str], checked: list[str],
                radius: float) -> pd.DataFrame:
    """Biplot segments from the origin for ``labels`` (default) and ``checked``, on one common scale."""
    names = list(labels) + list(checked)
    columns = frame.set_index("label").loc[names, "column"].to_numpy(np.int64) if names else np.zeros(0, np.int64)
    ends = biplot_axes(record, columns, radius)
    coef = np.asarray(record["coef"], np.float64)
    return pd.DataFrame({"x0": 0.0, "y0": 0.0, "x1": ends[:, 0], "y1": ends[:, 1], "label": names,
                         "discriminability": coef[columns], "checked": [n in checked for n in names]},
                        columns=["x0", "y0", "x1", "y1", "label", "discriminability", "checked"])


def discriminability_plot(bundle: PairBundle, cls: str = ALL, checked=(), *, order: str = "descending",
                          top: int = TOP_AXES, record: dict | None = None,
                          projection: str = PROJECTIONS[0]) -> bokeh_figure:
    """Domain discriminability plot (§5.4.2): instances (rows of A) projected as A·W on [u, g] — u, the
    SVM normal, horizontal (the decision boundary is the dashed vertical line), g, the first principal
    component, vertical; red crosses source, blue circles target. The activated neurons are the first
    ``top`` of the list in ``order`` plus the ``checked`` labels (green): with ``projection``
    "activated" only their columns of A and rows of W enter the projection, with "all" every neuron's
    do (the stored coordinates). Each activated neuron's biplot axis, labelled ``layer:index``, is its
    row of W on one common scale (the longest reaching the farthest instance), so its horizontal
    length is proportional to |coef|. The title gives the k-fold CV accuracy and the projection.

    A plain bokeh figure (renderers named ``source domain``, ``target domain``, ``axes`` and
    ``checked axes``; the boundary a ``Span`` named ``boundary``): redrawn on every tick, class and
    order change, which a HoloViews overlay would slow down (benchmarks/results_notes.txt).

    Args:
        checked: ``"layer:index"`` labels ticked in the list; labels not in this class's A are ignored.
        record: ``cls``'s record when the caller already read it.
        projection: "activated" or "all"; a bundle without A (older) draws "all" and says so.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    fig = bokeh_figure(tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="above",
                       sizing_mode="stretch_width", height=440, x_axis_label="u: SVM normal (→ target)",
                       y_axis_label="g: first principal component")
    rec = record if record is not None else read_discriminability(bundle, cls)
    if rec is None:
        fig.title.text = f"No domain discriminability for {cls}"
        return fig
    frame = _base_frame(rec)
    default, extra = activated_columns(frame, checked, order, top)
    active = frame.set_index("label").loc[default + extra, "column"].to_numpy(np.int64)
    coords = projected(rec, active) if projection == "activated" else None
    if coords is None:
        coords = projected(rec)
        shown = ("all neurons" if projection == "all" else
                 "all neurons: this bundle has no A to project the activated ones, diagnose the pair again")
    else:
        shown = f"{len(active)} activated neurons"
    fig.title.text = f"Domain classifier: {cv_summary(rec, note=False)}; A·W over {shown}"
    labels = np.asarray(rec["labels"])
    points = []
    for domain, code, color in (("source", 0, SOURCE), ("target", 1, TARGET)):
        part = pd.DataFrame(coords[labels == code], columns=["u", "g"]).assign(domain=domain)
        cross = MODEL_MARKER[domain] == "x"
        points.append(fig.scatter("u", "g", source=ColumnDataSource(part), marker=MODEL_MARKER[domain], color=color,
                                  size=8 if cross else 7, line_width=2 if cross else 1, fill_alpha=0.35,
                                  legend_label=f"{domain} domain", name=f"{domain} domain"))
    fig.add_tools(HoverTool(renderers=points, tooltips=[("domain", "@domain"), ("u", "@u{0.000}"),
                                                        ("g", "@g{0.000}")]))
    norm = float(np.linalg.norm(rec["coef"]))
    if "intercept" in rec and norm > 0:  # decision value ||coef||·u + b = 0
        fig.add_layout(Span(location=-float(rec["intercept"]) / norm, dimension="height", line_color="#666666",
                            line_dash="dashed", line_width=1, name="boundary"))
    radius = float(np.linalg.norm(coords, axis=1).max(initial=0)) or 1.0
    segments = _axes_frame(rec, frame, default, extra, radius)
    for color, name, ticked in ((AXIS_COLOR, "axes", False), (CHECKED_COLOR, "checked axes", True)):
        segs = ColumnDataSource(segments[segments["checked"] == ticked].drop(columns="checked"))
        axes = fig.segment("x0", "y0", "x1", "y1", source=segs, color=color, line_width=2, name=name)
        fig.add_tools(HoverTool(renderers=[axes], tooltips=[("neuron", "@label"),
                                                            ("discriminability", "@discriminability{0.000}")]))
        fig.text("x1", "y1", text="label", source=segs, text_color=color, text_font_size="9pt",
                 text_align="left", text_baseline="middle", x_offset=6)
    fig.legend.location = "top_left"
    return fig


def feature_table(frame: pd.DataFrame, order: str = "descending", *, record: dict | None = None,
                  page_size: int = PAGE_SIZE) -> pn.widgets.Tabulator:
    """The feature ranking list: :func:`feature_frame` sorted by ``order``, paged remotely (only
    ``page_size`` rows reach the browser), read-only but for a checkbox per row (Tabulator's
    ``selectable="checkbox"``; ``selection`` = positions of the ticked rows in ``value``). With
    ``record``, expanding a row shows its full :func:`mirrored_histogram` with conductance units."""
    money = {"type": "money", "precision": 3}
    return pn.widgets.Tabulator(
        sort_features(frame, order), show_index=False, pagination="remote", page_size=page_size,
        selectable="checkbox", disabled=True, layout="fit_data", hidden_columns=["column", "label"],
        sortable=False, row_content=_row_content(record),
        formatters={"patches": {"type": "html"}, "visualisation": {"type": "html"}, "conductance": {"type": "html"},
                    "discriminability": money, "|discriminability|": money},
        titles={"conductance": "conductance (source ↑ / target ↓)", "patches": "top patches (target model)",
                "visualisation": "optimised image"},
        name="feature-ranking", sizing_mode="stretch_width")


def _row_content(record: dict | None):
    """Tabulator's expanded-row builder: the full mirrored histogram (None: rows do not expand)."""
    if record is None:
        return None
    return lambda row: pn.pane.HoloViews(mirrored_histogram(record, int(row["column"]), row["label"]))


def cv_details(record: dict) -> str:
    """Markdown for the ``cv-accuracy`` pane: :func:`cv_summary`, the per-fold accuracies, the
    training accuracy and the size of A (instances × neurons)."""
    folds = ", ".join(f"{x:.2f}" for x in np.asarray(record["cv_scores"]))
    train = f"; training accuracy {record['train_accuracy']:.3f}" if "train_accuracy" in record else ""
    return (f"**Domain classifier** (linear SVM on the target model's conductance, "
            f"{len(record['labels'])} instances × {len(record['coef'])} neurons): {escape_md(cv_summary(record))}; "
            f"per fold {folds}{train}")
