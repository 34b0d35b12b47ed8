"""Statistical view (paper §5.1, Figure 1 A): accuracy curves, transferability score, confusion table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure as bokeh_figure

from .style import DATASET_COLOR, DATASET_LABEL, MODEL_MARKER, SOURCE, TARGET
from .text import escape_html

__all__ = ["BEFORE_FINE_TUNING", "CONFUSION_WIDTHS", "NO_SHARED_CLASSES", "accuracy_curves", "confusion_frame",
           "confusion_table", "estimates_html", "label_spaces_html", "transferability_badge"]

# legend entry (and renderer name) of the target model's step 0: the unchanged source model
BEFORE_FINE_TUNING = "before fine-tuning (target model, epoch 0)"
_STAGE = {("source", True): "before training (random initialisation)",
          ("target", True): "before fine-tuning: the unchanged source model, not in the score",
          ("source", False): "trained epoch", ("target", False): "fine-tuned epoch"}


_FRESH_HEAD = "before fine-tuning: the source model with a fresh last layer (chance accuracy), not in the score"


def accuracy_curves(history: dict, *, height: int = 320, fresh_head: bool = False) -> bokeh_figure:
    """One line per model × dataset: epochs on x, accuracy [0, 1] on y, colour = dataset, crosses for
    the source model and circles for the target model; legend entries end in the model's name.

    The target model's epoch 0 is the source model before any fine-tuning step, not a fine-tuned
    epoch (the transferability score leaves it out): its points are drawn as hollow squares under one
    legend entry, `BEFORE_FINE_TUNING`, and every point's hover says which stage it is.

    A plain bokeh figure (renderers named by their legend entry): it is redrawn on every pair switch,
    which a HoloViews overlay made slower (benchmarks/results_notes.txt).

    Args:
        history: the bundle's ``statistics/history`` table (columns model, dataset, epoch, accuracy).
        fresh_head: the target model's last layer was replaced (label spaces that differ): its epoch 0
            is at chance, and the hover says so.
    """
    fig = bokeh_figure(title="Accuracy per epoch", x_axis_label="epoch", y_axis_label="accuracy",
                       y_range=(0, 1.02), height=height, sizing_mode="stretch_width",
                       tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="above")
    frame = pd.DataFrame(history)
    if frame.empty:  # a pair diagnosed from model URIs has no run history
        fig.title.text = "Accuracy per epoch: no per-epoch history logged"
        return fig
    points = []
    for (model, dataset), part in frame.groupby(["model", "dataset"], sort=True):
        part = part.sort_values("epoch")
        label = f"{DATASET_LABEL.get(dataset, dataset)} ({model} model)"  # drawn as canvas text: no markup
        color = DATASET_COLOR.get(dataset, "#333333")
        epochs = part["epoch"].to_numpy()
        columns = {"epoch": epochs, "accuracy": part["accuracy"].to_numpy(), "series": [label] * len(part),
                   "stage": [_FRESH_HEAD if fresh_head and model == "target" and int(e) == 0
                             else _STAGE.get((model, int(e) == 0), "") for e in epochs]}
        source = ColumnDataSource(columns)
        fig.line("epoch", "accuracy", source=source, color=color, line_width=2, legend_label=label, name=label)
        before = (epochs == 0) if model == "target" else np.zeros(len(epochs), bool)
        kept = ColumnDataSource({k: np.asarray(v)[~before] for k, v in columns.items()})
        points.append(fig.scatter("epoch", "accuracy", source=kept, color=color, size=8,
                                  marker=MODEL_MARKER.get(model, "circle"), line_width=2 if model == "source" else 1,
                                  fill_alpha=0.0 if model == "target" else 1.0, legend_label=label, name=label))
        if before.any():
            start = ColumnDataSource({k: np.asarray(v)[before] for k, v in columns.items()})
            points.append(fig.scatter("epoch", "accuracy", source=start, color=color, size=11, marker="square",
                                      line_width=2, fill_color="white", legend_label=BEFORE_FINE_TUNING,
                                      name=BEFORE_FINE_TUNING))
    fig.add_tools(HoverTool(renderers=points, tooltips=[("", "@series"), ("epoch", "@epoch"), ("", "@stage"),
                                                        ("accuracy", "@accuracy{0.000}")]))
    fig.legend.location = "bottom_right"
    return fig


def transferability_badge(score: float | None, note: str | None = None) -> pn.pane.HTML:
    """The transferability score (best fine-tuned target-model minus best trained source-model accuracy
    on the target validation set, epochs ≥ 1), signed and coloured: green when transfer helped, red
    (with its minus sign) when it hurt. Without a score: ``note`` — why there is none, recorded by the
    diagnostics (escaped) — or "n/a (no run history)" (a pair diagnosed from model URIs)."""
    detail = ""
    if score is None or (isinstance(score, float) and math.isnan(score)):
        body, color = ("no score" if note else "n/a (no run history)"), "#666"
        if note:
            detail = f"<div class='transferability-note' style='font-size:0.85em;color:#8a5a00'>{escape_html(note)}</div>"
    else:
        body, color = f"{score:+.3f}", "#2a8a2a" if score >= 0 else "#c0392b"
    return pn.pane.HTML(f"<div class='transferability'><div style='font-size:0.9em'>Transferability score"
                        f"</div><div style='font-size:2em;font-weight:bold;color:{color}'>{body}</div>{detail}</div>",
                        name="transferability")


ESTIMATES_MEANING = ("estimated before fine-tuning from the source model alone, on the target training data; "
                     "higher predicts better transfer. They rank sources or settings of one target (compare them "
                     "across a sweep), they are not on the score's scale: LogME is the evidence per instance of "
                     "a linear model on the source features, LEEP the mean log-likelihood of the target labels "
                     "through the source classifier (at most 0).")


def estimates_html(estimates: dict | None) -> str:
    """Issue 15: one line with the source model's LogME and LEEP (`PairBundle.transferability_estimates`)
    beside the realised score, and what they mean; "" when the bundle has none."""
    if not estimates:
        return ""
    values = ", ".join(f"{label} {estimates[key]:.3f}" if estimates.get(key) is not None else f"{label} n/a"
                       for key, label in (("logme", "LogME"), ("leep", "LEEP")))
    return (f"<div class='transferability-estimates' style='font-size:0.85em;color:#444;margin-top:4px'>"
            f"<b>{values}</b>: {escape_html(ESTIMATES_MEANING)}</div>")


def confusion_frame(confusion: dict) -> pd.DataFrame:
    """The paper's five columns as a frame: class, source-model accuracy, target-model accuracy,
    difference, misclassified-into (``"7 (3), 1 (1)"``, most frequent first), plus support."""
    return pd.DataFrame({"class": list(confusion["class"]),
                         "source accuracy": list(confusion["source_accuracy"]),
                         "target accuracy": list(confusion["target_accuracy"]),
                         "difference": list(confusion["difference"]),
                         "misclassified into": list(confusion["misclassified_into"]),
                         "support": list(confusion["support"])})


# px; with room for the sort arrows, all six columns fit the statistics view's side column
CONFUSION_WIDTHS = {"class": 70, "source accuracy": 150, "target accuracy": 150, "difference": 110,
                    "misclassified into": 165, "support": 95}


def confusion_table(confusion: dict, **kwargs) -> pn.widgets.Tabulator:
    """Tabulator of :func:`confusion_frame`, sortable on every column, one row selectable."""
    fmt = {"type": "progress", "max": 1, "legend": True}
    return pn.widgets.Tabulator(
        confusion_frame(confusion), show_index=False, selectable=1, disabled=True, layout="fit_data_stretch",
        formatters={"source accuracy": {**fmt, "color": SOURCE}, "target accuracy": {**fmt, "color": TARGET}},
        widths=CONFUSION_WIDTHS, name="confusion", **kwargs)


NO_SHARED_CLASSES = "No shared classes"


def label_spaces_html(spaces: dict, basis: str | None = None) -> str:
    """Which classes the two models know, from `PairBundle.label_spaces` (issue 12), as escaped HTML; ""
    when both know the same classes. ``basis``: what the transferability score means then (manifest)."""
    if not spaces.get("differ"):
        return ""

    def names(values) -> str:
        return escape_html(", ".join(values)) if values else "none"

    shared = spaces["shared"]
    lead = (f"<b>{NO_SHARED_CLASSES}</b>: the models' label spaces have no class in common, so this pair has no "
            "class-level analyses (per-class neurons, similarity, weights, discriminability); the layer-level "
            "views (CKA, inheritance, instances, all-class discriminability) cover every target class."
            if not shared else
            f"<b>Shared classes</b> (class-level analyses): {names(shared)}. The layer-level views cover every "
            "target class.")
    rows = (f"<div>{lead}</div><div>Source model: {len(spaces['source'])} classes ({names(spaces['source'])}); "
            f"target model (new head): {len(spaces['target'])} classes ({names(spaces['target'])}).</div>")
    if basis:
        rows += f"<div>Transferability score: {escape_html(basis)}.</div>"
    return f"<div class='label-spaces' style='font-size:0.85em;color:#444'>{rows}</div>"
