"""``report.html``: a self-contained page with the essentials of one diagnosed pair.

`write_report` turns a pair bundle folder into one HTML file that MLflow's artifact viewer (or any
browser, offline) shows without the app: a title naming the pair (run ids, model, domains), the
accuracy curves and the transferability score (paper §5.1; or why there is none), the five-column
confusion tables of the target and the source validation sets with the instances they rest on, the
instance scatter of all classes (§5.2), the per-layer inheritance summary with the layer CKA
matrix (§5.3), above them the pair's findings (issue 16: `ui.views.findings.findings_html`) and, when the bundle has one (issue 13), a short robustness section: the overall defect
inheritance rate per attack and both models' accuracy at the largest ε; with the pair's training timeline
(issue 14) a small-multiples strip of it: about six positions' decision regions with the points drawn on
them, embedded PNGs (`ui.views.timeline.strip_html`).

Self-contained means: BokehJS and the plots' JSON are inline, the table and text are plain HTML with
inline CSS, hover thumbnails are ``data:`` URIs, and no ``<script>``, ``<link>`` or ``<img>`` points
at any URL. Each plot is a bokeh JSON document (`bokeh.embed.json_item`) in a ``<script
type="application/json">``, rendered by BokehJS inlined through `bundle_for_objs_and_resources` (only
the parts the plots use). The page is built from these public pieces rather than ``file_html``, whose
resources list the ``__javascript__`` URL of every *imported* extension model: Panel's import
registers one (a relative ``static/extensions/...`` script) that the report does not use and a
browser would try to fetch. (Panel's own ``save`` links its favicons from a CDN.)

The scatter is drawn point by point (no Datashader, which needs a server): above `MAX_POINTS`
instances a seeded sample of `MAX_POINTS` is drawn and the page says so; above `MAX_THUMBNAILS`
drawn points the hover shows text only, which keeps the file small (a thumbnail is ~0.5–4 kB).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from pathlib import Path

import holoviews as hv
import numpy as np
from bokeh.embed import json_item
from bokeh.embed.bundle import bundle_for_objs_and_resources
from bokeh.model import Model
from bokeh.resources import Resources

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.timeline import TimelineBundle

from .views import instances as instance_view
from .views import overview, summary
from .views.findings import findings_html
from .views import robustness as robustness_view
from .views import timeline as timeline_view
from .views.style import SOURCE, TARGET
from .views.text import rests_on

__all__ = ["MAX_POINTS", "MAX_THUMBNAILS", "build_report_html", "robustness_html", "timeline_html", "write_report"]

MAX_POINTS = 20_000      # instances drawn in the scatter; more are sampled down to this many
MAX_THUMBNAILS = 1_000   # drawn points up to which the hover shows the instance's thumbnail
SAMPLE_SEED = 0


def write_report(bundle_dir: str | Path, out_path: str | Path, timeline_dir: str | Path | None = None) -> Path:
    """Write the self-contained report of the pair bundle at ``bundle_dir`` to ``out_path``.

    Args:
        bundle_dir: a pair bundle folder (as written by `write_pair_bundle`, e.g. a downloaded
            ``diagnostics/`` artifact folder).
        out_path: the HTML file to write (its folder is created); overwritten when it exists.
        timeline_dir: the pair's timeline bundle folder (``timetravel/``), drawn as a strip; None: none.
    Returns: ``out_path`` as a `Path`.
    Raises:
        mlflow_transfer.errors.BundleError: ``bundle_dir`` is not a readable pair bundle, or
            ``timeline_dir`` not a readable timeline bundle.
    """
    timeline = TimelineBundle.open(timeline_dir) if timeline_dir is not None else None
    page = build_report_html(PairBundle.open(bundle_dir), timeline)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def build_report_html(bundle: PairBundle, timeline: TimelineBundle | None = None) -> str:
    """The report page of an opened bundle (and its timeline), as one HTML string (see the module docstring)."""
    manifest = bundle.manifest
    instances = bundle.instances()
    frame = instance_view.instance_frame(instances, bundle.classes)
    n_all = len(frame)
    if n_all > MAX_POINTS:
        keep = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n_all, MAX_POINTS, replace=False))
        frame = frame.iloc[keep].reset_index(drop=True)
    thumbs = len(frame) <= MAX_THUMBNAILS
    scatter = instance_view.instance_scatter(frame, bundle.classes, instances if thumbs else None,
                                             threshold=max(len(frame), 1), height=520)
    plots = {
        "inheritance": summary.inheritance_line(bundle).opts(hv.opts.Overlay(height=340)),
        "cka": summary.cka_heatmap(bundle).opts(height=340),
    }
    spaces = bundle.label_spaces()  # issue 12: which classes both models know
    models = {"accuracy": overview.accuracy_curves(bundle.history(), height=340, fresh_head=spaces["differ"]),
              "instances": scatter,
              **{name: hv.render(obj, backend="bokeh") for name, obj in plots.items()}}
    js, css = _inline_resources(list(models.values()))
    divs = {name: _plot_html(name, model) for name, model in models.items()}

    score, score_note = bundle.transferability()
    if n_all > MAX_POINTS:
        scatter_note = (f"A seeded random sample of {len(frame):,} of the bundle's {n_all:,} instances is "
                        f"drawn (seed {SAMPLE_SEED}); the app shows all of them.")
    else:
        scatter_note = f"All {n_all:,} instances of the bundle."
    if not thumbs:
        scatter_note += f" Hover shows text only (thumbnails are embedded up to {MAX_THUMBNAILS:,} points)."
    body = _BODY.format(
        title=html.escape(_title(manifest)), header=_header(manifest), findings=findings_html(bundle.findings()),
        accuracy=divs["accuracy"], badge=overview.transferability_badge(score, score_note).object
        + overview.estimates_html(bundle.transferability_estimates()) + overview.label_spaces_html(spaces, bundle.transferability_basis()),
        confusion=_confusions_html(bundle), instances=divs["instances"],
        scatter_note=html.escape(scatter_note), inheritance=divs["inheritance"], cka=divs["cka"],
        robustness=robustness_html(bundle.robustness()), timeline=timeline_html(timeline), footer=_footer(manifest), source=SOURCE, target=TARGET)
    return _PAGE.format(title=html.escape(_title(manifest)), css=css, js=js, style=_STYLE, body=body,
                        script=_EMBED)


def _plot_html(name: str, model: Model) -> str:
    """A target ``<div>`` and the plot's bokeh JSON document (`json_item`) in a ``<script
    type="application/json">`` beside it; `_EMBED` renders every such document into its div. Every
    ``<`` in the JSON is written as ``\\u003c``, so no string in it (a tooltip's HTML) can end the
    script element."""
    target = f"plot-{name}"
    data = json.dumps(json_item(model, target), allow_nan=False).replace("<", "\\u003c")  # JSON.parse: no NaN
    return (f"<div id='{target}' class='plot'></div>\n"
            f"<script type='application/json' class='bokeh-item' data-target='{target}'>{data}</script>")


def confusion_html(confusion: dict) -> str:
    """The confusion table (`overview.confusion_frame`) as a static HTML table with inline styles:
    the accuracies as bars in the model's colour, the difference green (gain) or red (loss), missing
    values (a class without target-validation instances) as ``–``."""
    frame = overview.confusion_frame(confusion)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for rec in frame.to_dict("records"):
        cells = [f"<td class='cls'>{html.escape(str(rec['class']))}</td>",
                 _bar(rec["source accuracy"], SOURCE), _bar(rec["target accuracy"], TARGET)]
        diff = rec["difference"]
        if _missing(diff):
            cells.append("<td class='num'>–</td>")
        else:
            color = "#2a8a2a" if diff >= 0 else "#c0392b"
            cells.append(f"<td class='num' style='color:{color}'>{diff:+.3f}</td>")
        cells.append(f"<td>{html.escape(str(rec['misclassified into']))}</td>")
        cells.append(f"<td class='num'>{int(rec['support'])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='confusion'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _confusions_html(bundle: PairBundle) -> str:
    """Each domain's confusion table that the bundle holds (target first), under a line saying what it
    rests on (`rests_on`)."""
    basis = bundle.statistics_basis()["basis"]
    out = []
    for domain in ("target", "source"):
        confusion = bundle.domain_confusion(domain)
        if confusion is None:
            continue
        what = (f"Whole {domain} validation set" if basis == "whole validation set"
                else f"Analysed sample's {domain} validation rows")
        out.append(f"<p class='note'>{html.escape(rests_on(what, confusion['support']))}</p>"
                   + confusion_html(confusion))
    return "".join(out)


def robustness_html(record: dict | None) -> str:
    """Issue 13, the report's robustness section: the overall DIR and the teacher's own success per
    teacher-crafted attack, and each model's all-class accuracy at ε = 0 and the largest ε per attack
    (a table of class ``robustness``); "" when the bundle has no robustness section. Bundle strings
    are escaped."""
    if record is None:
        return ""
    rows = [f"<tr><td>DIR, {html.escape(str(a))} attack</td><td class='num'>{_number(r['dir'])}</td>"
            f"<td>teacher success {_number(r['teacher_success'])}; {int(r['n_inherited'])} of "
            f"{int(r['n_clean_correct'])} clean-correct student samples</td></tr>"
            for a, r in robustness_view.overall_dir(record).items()]
    curves = record["curves"]
    eps = np.asarray(curves["epsilon"], float)
    top = float(eps.max()) if eps.size else 0.0
    for model, role in robustness_view.MODEL_ROLE.items():
        for attack in record["attacks"]:
            at = {float(x): a for m, k, x, c, a in zip(curves["model"], curves["attack"], eps, curves["class_index"],
                                                      curves["accuracy"]) if m == model and k == attack and c == -1}
            rows.append(f"<tr><td>{html.escape(role)}, {html.escape(str(attack).upper())}</td>"
                        f"<td class='num'>{_number(at.get(top))}</td><td>accuracy at ε = {top * 255:.3g}/255 "
                        f"(clean: {_number(at.get(0.0))})</td></tr>")
    return (f"<h2>Robustness</h2><p class='note'>Defect inheritance rate (DIR): the share of the student's "
            f"clean-correct samples it misclassifies on adversarial examples crafted on the teacher (PGD, "
            f"{html.escape(str(record['dir_pgd_steps']))} steps, ε = {float(record['dir_epsilon']) * 255:.3g}/255). "
            f"Basis: {html.escape(str(record['basis']))}.</p>"
            f"<table class='robustness'><tbody>{''.join(rows)}</tbody></table>")


def timeline_html(timeline: TimelineBundle | None) -> str:
    """Issue 14, the report's timeline section: a strip of about six positions (the first, the last
    source epoch, the first target epoch, the last, some between), each its decision regions with the
    points; "" without a timeline."""
    if timeline is None:
        return ""
    return ("<h2>Training timeline</h2><p class='note'>The sample's points in 2-D, epoch by epoch through the "
            "source run's training and then the fine-tuning (DeepVisualInsight's projection; cross = source "
            "domain, ring = target domain, colour = class), over the decision regions of that epoch's model "
            "(pale near a boundary). NN@15: of each training point's 15 nearest neighbours in the model's "
            "space, how many stay nearest on screen; PPR: share of points whose prediction survives the "
            "round trip through the picture. The app's Training tab shows every epoch.</p>"
            + timeline_view.strip_html(timeline))


def _number(value) -> str:
    return "–" if _missing(value) else f"{float(value):.3f}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _bar(value, color: str) -> str:
    if _missing(value):
        return "<td class='num'>–</td>"
    pct = max(0.0, min(1.0, float(value))) * 100
    return (f"<td class='num bar' style='background:linear-gradient(90deg,{color}40 {pct:.1f}%,"
            f"transparent {pct:.1f}%)'>{float(value):.3f}</td>")


def _inline_resources(models: list[Model]) -> tuple[str, str]:
    """BokehJS (only the parts these models use) and any CSS, as inline ``<script>``/``<style>``."""
    used = {type(m) for root in models for m in root.references()}
    external = [url for cls in used for attr in ("__javascript__", "__css__")
                for url in _as_list(getattr(cls, attr, None))]
    if external:  # none of the report's plots uses one today; refuse rather than write a page that fetches
        raise RuntimeError(f"the report's plots need external resources {external}; a self-contained "
                           "report cannot load them")
    bundle = bundle_for_objs_and_resources(models, Resources(mode="inline"))
    js = "".join(f"<script type='text/javascript'>\n{raw}\n</script>\n" for raw in bundle.js_raw)
    css = "".join(f"<style>\n{raw}\n</style>\n" for raw in bundle.css_raw)
    return js, css


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _title(manifest: dict) -> str:
    name = manifest.get("recipe") or manifest.get("pair_id") or "pair"
    return f"Transfer diagnostics — {name}"


def _header(manifest: dict) -> str:
    runs = manifest.get("runs") or {}
    domains = manifest.get("domains") or {}
    items = [("source run", runs.get("source")), ("target run", runs.get("target")),
             ("diagnostics run", runs.get("diagnostics")), ("pair", manifest.get("pair_id")),
             ("model", manifest.get("model")),
             ("domains", f"{domains['source']} → {domains['target']}" if domains else None),
             ("classes", ", ".join(map(str, manifest.get("classes", [])))),
             *_label_space_items(manifest),
             ("instances", manifest.get("n_instances")),
             ("analysed instances per class, domain and split",
              # bundles written before the rename call it per_class_cap
              manifest.get("sample_per_class", manifest.get("per_class_cap"))),
             ("conductance steps", _steps_text(manifest.get("conductance_steps"))),
             ("device", (manifest.get("runtime") or {}).get("device") if isinstance(manifest.get("runtime"), dict)
              else None)]
    return "".join(f"<div><span class='k'>{html.escape(k)}</span> <code>{html.escape(str(v))}</code></div>"
                   for k, v in items if v not in (None, ""))


def _label_space_items(manifest: dict) -> list[tuple[str, str]]:
    """Issue 12: each model's classes and the shared ones, when the label spaces differ (strings from the
    manifest: `_header` escapes them)."""
    source, target, shared = (manifest.get(f"{k}_classes") for k in ("source", "target", "shared"))
    if not (isinstance(source, list) and isinstance(target, list) and source != target):
        return []
    return [("source classes", ", ".join(map(str, source))), ("target classes", ", ".join(map(str, target))),
            ("shared classes", ", ".join(map(str, shared or [])) or "none (no shared classes)")]


def _steps_text(steps) -> str:
    """The manifest's ``conductance_steps`` (issue 12) in words; bundle values, escaped by the caller."""
    if not isinstance(steps, dict):
        return "not in this bundle"

    def one(role, c):
        if not isinstance(c, dict):
            return f"{role} ?"
        err, tol = c.get("completeness_error"), c.get("tolerance")
        if c.get("mode") != "auto" or not isinstance(err, (int, float)):
            return f"{role} {c.get('n_steps')} (fixed)"
        met = "" if c.get("met", True) or not isinstance(tol, (int, float)) else f", tolerance {tol:.2%} not met"
        return f"{role} {c.get('n_steps')} (auto, completeness error {err:.2%}{met})"

    return ", ".join(one(role, c) for role, c in steps.items())


def _footer(manifest: dict) -> str:
    software = manifest.get("software") or {}
    versions = ", ".join(f"{k} {v}" for k, v in software.items())
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"bundle schema {manifest.get('schema_version', '?')}", f"bundle created {manifest.get('created', '?')}",
             f"report written {when}"] + ([versions] if versions else [])
    return html.escape(" · ".join(parts))


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .3em; }
h2 { font-size: 1.15em; margin: 1.6em 0 .4em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.meta { display: flex; flex-wrap: wrap; gap: .3em 1.5em; font-size: .9em; }
.meta .k { color: #666; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.row > .grow { flex: 1 1 520px; min-width: 320px; }
.row > .side { flex: 0 1 560px; }
table.confusion { border-collapse: collapse; font-size: .85em; margin-top: .8em; }
table.confusion th, table.confusion td { border-bottom: 1px solid #e4e4e4; padding: .25em .6em; text-align: left; }
table.confusion td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.robustness { border-collapse: collapse; font-size: .85em; }
table.robustness td { border-bottom: 1px solid #e4e4e4; padding: .25em .6em; }
table.robustness td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: .85em; margin: .3em 0; }
.legend-key { font-weight: bold; }
footer { color: #777; font-size: .8em; margin-top: 2em; border-top: 1px solid #ddd; padding-top: .5em; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
{css}{js}<style>{style}</style>
</head>
<body>
{body}
{script}
</body>
</html>
"""

_EMBED = """<script type="text/javascript">
for (const item of document.querySelectorAll("script.bokeh-item")) {
  Bokeh.embed.embed_item(JSON.parse(item.textContent), item.dataset.target);
}
</script>"""

_BODY = """<h1>{title}</h1>
<div class="meta">{header}</div>
<h2>Findings</h2>
<p class="note">What stands out in this pair, best first (thresholds: the README's "Findings"); each names the
view of the app (<code>mlflow-transfer ui</code>) that shows it.</p>
{findings}
<h2>Statistics</h2>
<p class="note">Accuracy of the <span class="legend-key">source model</span> (crosses) and the
<span class="legend-key">target model</span> (circles) on each dataset, epoch by epoch; the target
model's epoch 0 (hollow square) is the source model before fine-tuning. The transferability score is
the best fine-tuned target-model minus the best trained source-model accuracy on the target validation
set, over epochs ≥ 1 only. The tables compare both models class by class on the target (then the
source) validation set.</p>
<div class="row">
<div class="grow">{accuracy}</div>
<div class="side">{badge}{confusion}</div>
</div>
<h2>Instances</h2>
<p class="note">Instances of both domains in the target model's embedding (t-SNE). Colour = class,
<span style="color:{source}">cross = source domain</span>, <span style="color:{target}">circle = target
domain</span>, black ring = mispredicted by the target model. {scatter_note}</p>
{instances}
<h2>What the target inherited, layer by layer</h2>
<p class="note">Solid: share of the target model's important weights that it inherited from the source
model; dashed: mean best similarity of its important neurons to the source model's (all classes).
Right: linear CKA between every source layer (rows) and target layer (columns).</p>
<div class="row">
<div class="grow">{inheritance}</div>
<div class="grow">{cka}</div>
</div>
{robustness}
{timeline}
<footer>{footer}</footer>
"""
