"""The Robustness view (issue 13): how the teacher's adversarial weaknesses reach the student.

Pure functions of a bundle's robustness section (`PairBundle.robustness`, `robustness_examples`) and of
listed pair rows: the accuracy-versus-ε curves (teacher, student and sibling students of the same
teacher made by another transfer method), the defect inheritance rate (DIR) per class as grouped bars,
the gallery of inherited adversarial examples, and the neurons the attack moves most. Every bundle or
tag string is escaped where it becomes HTML; Bokeh draws its text on a canvas.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from bokeh.models import ColumnDataSource, FactorRange, HoverTool
from bokeh.plotting import figure as bokeh_figure

from mlflow_transfer.bundle.records import DIR_ATTACKS

from .images import data_uri, png_bytes
from .style import SOURCE, TARGET
from .text import escape_html

__all__ = ["ALL_CLASSES", "ATTACK_DASH", "DIR_ATTACKS", "NA", "accuracy_curves", "clean_accuracy", "curve_series",
           "dir_bars", "dir_caption_html", "find_siblings", "gallery_html", "method_label", "neuron_frame",
           "no_robustness_message", "overall_dir", "sibling_series"]

ALL_CLASSES = "all classes"
NA = "n/a"
ATTACK_DASH = {"fgsm": "solid", "pgd": "dashed"}
MODEL_ROLE = {"source": "teacher (source)", "target": "student (target)"}
SIBLING_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
DIR_COLORS = {"output": "#c0392b", "feature": "#e67e22"}


def no_robustness_message(target_run_id: str | None) -> str:
    """What the tab says for a bundle without the section, with the command that adds one (backticks:
    render with `message_md`)."""
    target = target_run_id or "<target run id>"
    return (f"No robustness section in this bundle — re-run `mlflow-transfer diagnose --target-run-id {target} "
            "--robustness on` for this pair.")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def method_label(method: dict | None) -> str:
    """A target run's transfer method as plain text: "finetune", "slice, ratio 0.05", "scratch, teacher
    only" (tag text: escape it where rendered as HTML)."""
    method = method or {}
    name = str(method.get("method") or "finetune")
    if method.get("slice_ratio"):
        return f"{name}, ratio {method['slice_ratio']}"
    if method.get("teacher_only"):
        return f"{name}, teacher only"
    return name


def curve_series(record: dict, class_index: int, *, models=("source", "target"), student: str = "") -> list[dict]:
    """One series per (model, attack) of ``record``'s ``curves`` for ``class_index`` (-1: all classes):
    ``{"label", "model", "attack", "x": ε·255 ascending, "y": accuracy, "n"}``, as stored (no ordering
    of the accuracies assumed). A series whose accuracies are all NaN (a class the model does not know)
    is left out. ``student``: the student's method, appended to its label."""
    frame = pd.DataFrame({k: record["curves"][k] for k in ("model", "attack", "epsilon", "class_index",
                                                          "accuracy", "n")})
    frame = frame[frame["class_index"] == class_index]
    out = []
    for model in models:
        for attack in record.get("attacks") or sorted(set(frame["attack"])):
            part = frame[(frame["model"] == model) & (frame["attack"] == attack)].sort_values("epsilon")
            if part.empty or part["accuracy"].isna().all():
                continue
            role = MODEL_ROLE.get(model, str(model))
            if model == "target" and student:
                role = f"student ({student})"
            out.append({"label": f"{role} · {str(attack).upper()}", "model": model, "attack": attack,
                        "x": part["epsilon"].to_numpy(float) * 255, "y": part["accuracy"].to_numpy(float),
                        "n": part["n"].to_numpy()})
    return out


def clean_accuracy(series: list[dict]) -> dict[str, float]:
    """Per series label's model role, the accuracy at ε = 0 (the first attack that has it)."""
    out = {}
    for s in series:
        role = s["label"].rsplit(" · ", 1)[0]
        at0 = s["y"][s["x"] == 0]
        if role not in out and at0.size and not math.isnan(at0[0]):
            out[role] = float(at0[0])
    return out


def accuracy_curves(series: list[dict], siblings: list[dict] = (), *, title: str = "Accuracy versus ε",
                    height: int = 340) -> bokeh_figure:
    """Accuracy (y) against ε in 1/255 units (x): the pair's models (teacher red, student blue) and the
    sibling students (other colours, from `sibling_series`); solid FGSM, dashed PGD. Renderers are
    named by their legend label (canvas text: no markup)."""
    fig = bokeh_figure(title=title, x_axis_label="ε (× 1/255, pixels in [0, 1])", y_axis_label="accuracy",
                       y_range=(0, 1.02), height=height, sizing_mode="stretch_width",
                       tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="above")
    points = []
    drawn = [(s, SOURCE if s["model"] == "source" else TARGET) for s in series]
    drawn += [(s, SIBLING_COLORS[s.get("sibling", 0) % len(SIBLING_COLORS)]) for s in siblings]
    for s, color in drawn:
        source = ColumnDataSource({"eps": s["x"], "accuracy": s["y"], "n": s["n"],
                                   "series": [s["label"]] * len(s["x"])})
        fig.line("eps", "accuracy", source=source, color=color, line_width=2, line_dash=ATTACK_DASH.get(s["attack"],
                 "dotted"), legend_label=s["label"], name=s["label"])
        points.append(fig.scatter("eps", "accuracy", source=source, color=color, size=7, legend_label=s["label"]))
    if points:
        fig.add_tools(HoverTool(renderers=points, tooltips=[("", "@series"), ("ε × 255", "@eps{0.[00]}"),
                                                            ("accuracy", "@accuracy{0.000}"), ("instances", "@n")]))
        fig.legend.location = "bottom_left"
        fig.legend.label_text_font_size = "8pt"
    return fig


def find_siblings(pairs: list[dict], pair: str, methods: dict[str, dict]) -> list[dict]:
    """The other diagnosed pairs of the same teacher (``source_run_id``) and target domain whose target
    run was made by another transfer method than the open pair's (issue 13: slice, scratch, finetune),
    the newest complete diagnosis of each target run, newest first; each row with ``method`` (its
    record in ``methods``, target run id → ``{"method", "slice_ratio", "teacher_only"}``; an unknown
    run counts as "finetune") and ``label`` (`method_label`)."""
    current = next((p for p in pairs if p.get("diagnostics_run_id") == pair), None)
    if current is None or not current.get("source_run_id"):
        return []
    default = {"method": "finetune", "slice_ratio": None, "teacher_only": False}
    own = methods.get(current.get("target_run_id"), default)
    out, seen = [], {current.get("target_run_id")}
    for p in pairs:
        target = p.get("target_run_id")
        if (not target or target in seen or p.get("status", "FINISHED") != "FINISHED"
                or p.get("source_run_id") != current["source_run_id"]
                or p.get("target_domain") != current.get("target_domain")):
            continue
        method = methods.get(target, default)
        if method.get("method") == own.get("method") and method.get("slice_ratio") == own.get("slice_ratio"):
            continue
        seen.add(target)
        out.append({**p, "method": method, "label": method_label(method)})
    return out


def sibling_series(record: dict, classes: list[str], cls: str | None, label: str, index: int) -> list[dict]:
    """A sibling pair's student curves (model "target") for class ``cls`` (None: all classes), its class
    found by name in its own bundle's ``classes``; empty when that bundle has no such class."""
    if cls is not None and cls not in classes:
        return []
    series = curve_series(record, classes.index(cls) if cls is not None else -1, models=("target",), student=label)
    return [{**s, "sibling": index} for s in series]


def overall_dir(record: dict) -> dict[str, dict]:
    """Per DIR attack, the all-classes row (class_index -1): ``{"dir", "teacher_success", "n_clean_correct",
    "n_inherited"}`` (NaN stays NaN)."""
    d = record["dir"]
    out = {}
    for i, (attack, c) in enumerate(zip(d["attack"], d["class_index"])):
        if int(c) == -1:
            out[str(attack)] = {k: d[k][i] for k in ("dir", "teacher_success", "n_clean_correct", "n_inherited")}
    return out


def _fmt(value, spec: str = ".2f") -> str:
    return NA if _missing(value) else format(float(value), spec)


def dir_bars(record: dict, classes: list[str], *, height: int = 300) -> bokeh_figure:
    """DIR per class, one bar per DIR attack in each class's group (renderer ``dir-bars``); a class with
    no clean-correct student sample (NaN) has no bar and the label "n/a" (renderer ``dir-na``)."""
    d = record["dir"]
    attacks = [a for a in (record.get("dir_attacks") or []) if a in set(d["attack"])] or sorted(set(d["attack"]))
    rows = {int(c): {} for c in d["class_index"] if int(c) >= 0}
    for i, (attack, c) in enumerate(zip(d["attack"], d["class_index"])):
        if int(c) >= 0:
            rows[int(c)][str(attack)] = i
    names = [classes[c] if 0 <= c < len(classes) else f"class {c}" for c in sorted(rows)]
    data = {k: [] for k in ("x", "dir", "top", "attack", "cls", "n_clean_correct", "n_inherited", "teacher_success",
                            "label", "color")}
    for c, name in zip(sorted(rows), names):
        for attack in attacks:
            i = rows[c].get(attack)
            if i is None:
                continue
            v = d["dir"][i]
            for k, val in (("x", (name, attack)), ("dir", v), ("top", 0.0 if _missing(v) else float(v)),
                           ("attack", attack), ("cls", name), ("n_clean_correct", int(d["n_clean_correct"][i])),
                           ("n_inherited", int(d["n_inherited"][i])),
                           ("teacher_success", _fmt(d["teacher_success"][i])), ("label", _fmt(v)),
                           ("color", DIR_COLORS.get(attack, "#555555"))):
                data[k].append(val)
    fig = bokeh_figure(title="Defect inheritance rate per class", x_range=FactorRange(*data["x"]),
                       y_range=(0, 1.05), height=height, sizing_mode="stretch_width", y_axis_label="DIR",
                       tools="save", toolbar_location="above")
    source = ColumnDataSource(data)
    bars = fig.vbar(x="x", top="top", width=0.8, source=source, color="color", name="dir-bars")
    na = ColumnDataSource({k: [v for v, lab in zip(data[k], data["label"]) if lab == NA] for k in ("x", "label")})
    fig.text(x="x", y=0.02, text="label", source=na, text_align="center", text_font_size="9pt", name="dir-na")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[("class", "@cls"), ("attack", "@attack"),
                                                        ("DIR", "@label"), ("clean-correct", "@n_clean_correct"),
                                                        ("inherited", "@n_inherited"),
                                                        ("teacher success", "@teacher_success")]))
    fig.xaxis.major_label_orientation = 0.8 if len(names) > 8 else 0
    return fig


def dir_caption_html(record: dict) -> str:
    """The overall DIR and the teacher's own attack success per attack, what they rest on, as escaped HTML."""
    parts = []
    for attack, row in overall_dir(record).items():
        parts.append(f"<b>{escape_html(attack)}</b> attack: DIR {_fmt(row['dir'])} ({int(row['n_inherited'])} of "
                     f"{int(row['n_clean_correct'])} clean-correct student samples), teacher success "
                     f"{_fmt(row['teacher_success'])}")
    eps = record.get("dir_epsilon")
    how = (f"Adversarial examples crafted on the teacher (PGD, {escape_html(record.get('dir_pgd_steps'))} steps, "
           f"ε = {float(eps) * 255:.3g}/255) applied to the student" if isinstance(eps, (int, float)) else "")
    lines = ["; ".join(parts) or "No overall DIR in this bundle.", how,
             f"Basis: {escape_html(record.get('basis', ''))}"]
    if record.get("note"):
        lines.append(escape_html(record["note"]))
    return "<div class='dir-caption' style='font-size:0.85em;color:#444'>" + "<br>".join(x for x in lines if x) + \
        "</div>"


def _class_name(classes: list[str], index) -> str:
    i = int(index)
    return classes[i] if 0 <= i < len(classes) else NA


def gallery_html(found: tuple[np.ndarray, dict] | None, classes: list[str], attack: str, *,
                 class_index: int | None = None, size: int = 72, limit: int = 12) -> str:
    """The inherited adversarial examples of ``attack`` (`PairBundle.robustness_examples`): per row the
    clean, adversarial and amplified perturbation tiles (``data:`` URIs) and the predictions of student
    and teacher, class names escaped; only class ``class_index``'s (None: all), at most ``limit``."""
    head = f"<div class='gallery-title'><b>{escape_html(attack)} attack</b></div>"
    if found is None:
        return f"<div class='gallery' data-attack='{escape_html(attack)}'>{head}<i>No examples of this attack in " \
               "this bundle.</i></div>"
    sprite, table = found
    n = len(table["row"])
    if n == 0:
        return f"<div class='gallery' data-attack='{escape_html(attack)}'>{head}<i>No inherited defect: every " \
               "clean-correct student sample stayed correct.</i></div>"
    h, w = sprite.shape[0] // n, sprite.shape[1] // 3
    keep = [i for i in range(n) if class_index is None or int(table["class_index"][i]) == class_index]
    if not keep:
        return f"<div class='gallery' data-attack='{escape_html(attack)}'>{head}<i>No inherited defect of this " \
               "class among the stored examples.</i></div>"
    rows = []
    for i in keep[:limit]:
        tile = [data_uri(png_bytes(sprite[i * h:(i + 1) * h, t * w:(t + 1) * w])) for t in range(3)]
        tiles = "".join(
            f"<figure style='margin:0 4px;text-align:center'><img src='{tile[t]}'"
            f" width='{size}' height='{size}' style='image-rendering:pixelated' alt='{what}'>"
            f"<figcaption style='font-size:0.75em'>{what}</figcaption></figure>"
            for t, what in enumerate(("clean", "adversarial", "perturbation")))

        def name(col):
            return escape_html(_class_name(classes, table[col][i]))

        caption = (f"validation row {int(table['row'][i])}, class {name('class_index')}<br>student: "
                   f"{name('student_clean')} → {name('student_adversarial')}<br>teacher: {name('teacher_clean')} → "
                   f"{name('teacher_adversarial')}")
        rows.append(f"<div class='example' style='display:flex;align-items:center;margin:4px 0'>{tiles}"
                    f"<div style='font-size:0.8em;margin-left:6px'>{caption}</div></div>")
    more = f"<div style='font-size:0.8em;color:#666'>{len(keep) - limit} more not shown.</div>" \
        if len(keep) > limit else ""
    return f"<div class='gallery' data-attack='{escape_html(attack)}'>{head}{''.join(rows)}{more}</div>"


NEURON_COLUMNS = ["class", "layer", "neuron", "clean", "adversarial", "shift", "rank"]


def neuron_frame(record: dict, classes: list[str], model: str, class_index: int | None, *,
                 top: int = 10) -> pd.DataFrame:
    """The important neurons of ``model`` the attack moves most: for one class (``class_index``) its
    rows with rank ≤ ``top``; for all classes (None) the ``top`` × 2 largest |shift| over every class.
    Columns `NEURON_COLUMNS`, largest |shift| first."""
    n = record["neurons"]
    frame = pd.DataFrame({k: list(n[k]) for k in ("model", "class_index", "layer", "neuron", "clean", "adversarial",
                                                  "shift", "rank")})
    frame = frame[frame["model"] == model]
    if class_index is not None:
        frame = frame[(frame["class_index"] == class_index) & (frame["rank"] <= top)]
    frame = frame.assign(order=frame["shift"].abs()).sort_values(["order", "rank"], ascending=[False, True])
    if class_index is None:
        frame = frame.head(2 * top)
    frame = frame.assign(**{"class": [_class_name(classes, c) for c in frame["class_index"]],
                            "layer": frame["layer"].astype(str)})
    return frame[NEURON_COLUMNS].reset_index(drop=True)
