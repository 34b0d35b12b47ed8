"""``report.html`` (ui/report.py) and the per-layer summary views (ui/views/summary.py) on a real bundle."""

from __future__ import annotations

import json
import logging
import math
from html.parser import HTMLParser

import holoviews as hv
import numpy as np
import pytest

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError
from ui import report
from ui.views.summary import MEASURES, cka_heatmap, inheritance_line

TITLES = ("Accuracy per epoch", "Instances (t-SNE)", "Inheritance per layer", "Layer similarity (linear CKA)")


class _Page(HTMLParser):
    """Collects what the tests look at: every URL a script/link/img/iframe/source element would load,
    the bokeh JSON documents (their script elements' text) and the confusion table's cells."""

    def __init__(self):
        super().__init__()
        self.urls, self.items, self.cells = [], [], []
        self._in_item = self._in_table = self._in_cell = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "link", "img", "iframe", "source", "embed", "object"):
            self.urls += [attrs[a] for a in ("src", "href", "data") if attrs.get(a)]
        if tag == "script" and attrs.get("type") == "application/json":
            self._in_item = True
            self.items.append({"target": attrs.get("data-target"), "text": ""})
        if tag == "table" and "confusion" in (attrs.get("class") or ""):
            self._in_table = True
        if self._in_table and tag == "tr":
            self.cells.append([])
        if self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.cells[-1].append("")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_item = False
        if tag == "table":
            self._in_table = False
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_item:
            self.items[-1]["text"] += data
        if self._in_cell:
            self.cells[-1][-1] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def written(tiny_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    path = report.write_report(tiny_bundle, out / "report.html")
    return out, path, path.read_text(encoding="utf-8")


def test_report_is_one_self_contained_page(written):
    out, path, text = written
    assert path == out / "report.html" and [p.name for p in out.iterdir()] == ["report.html"]
    page = _parse(text)
    # nothing to fetch: no script/link/img/... element loads a URL other than a data: URI
    assert not [u for u in page.urls if u.lower().startswith(("http:", "https:", "//"))]
    assert all(u.startswith("data:") for u in page.urls)
    # (the parser does see such references where they exist)
    assert _parse("<link rel='icon' href='https://cdn/x.ico'><script src='http://a/b.js'></script>"
                  "<img src='data:image/png;base64,AA'>").urls == ["https://cdn/x.ico", "http://a/b.js",
                                                                  "data:image/png;base64,AA"]
    assert text.count("/* BEGIN bokeh.min.js */") == 1  # BokehJS inline, once


def test_report_holds_the_plots_table_and_title(written, tiny_bundle):
    _, _, text = written
    page = _parse(text)
    # one bokeh JSON document per plot, each parseable and rendered into its own div
    assert [i["target"] for i in page.items] == ["plot-accuracy", "plot-instances", "plot-inheritance", "plot-cka"]
    docs = [json.loads(i["text"]) for i in page.items]
    assert all(d["target_id"] == i["target"] and d["doc"]["roots"] for d, i in zip(docs, page.items))
    assert all(f"<div id='{i['target']}'" in text for i in page.items)
    for title in TITLES:
        assert sum(title in i["text"] for i in page.items) == 1, title
    # the instance scatter carries the thumbnails for hover as data: URIs
    assert page.items[1]["text"].count("data:image/png;base64,") >= 48
    # the confusion tables, target then source validation set: header + one row per class, in the
    # bundle's order, each under the line saying what it rests on
    b = PairBundle.open(tiny_bundle)
    n = len(b.classes) + 1
    for i, domain in enumerate(("target", "source")):
        cells = page.cells[i * n:(i + 1) * n]
        assert cells[0][0] == "class" and [row[0] for row in cells[1:]] == b.classes
        support = b.domain_confusion(domain)["support"]
        assert [row[-1] for row in cells[1:]] == [str(int(k)) for k in support]
        assert f"Analysed sample&#x27;s {domain} validation rows: {int(sum(support))} instances" in text
    assert len(page.cells) == 2 * n
    # title and header: pair run ids, the transferability score
    assert "<title>Transfer diagnostics" in text
    for run_id in ("s1", "t1", "d1"):
        assert f"<code>{run_id}</code>" in text
    assert "+0.400" in text and "All 48 instances" in text


def test_report_samples_a_large_scatter_and_says_so(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "MAX_POINTS", 10)
    monkeypatch.setattr(report, "MAX_THUMBNAILS", 5)
    drawn = []
    real = report.instance_view.instance_scatter

    def spy(frame, classes, instances=None, threshold=None, **kwargs):
        drawn.append((frame, instances, threshold))
        return real(frame, classes, instances, threshold=threshold, **kwargs)

    monkeypatch.setattr(report.instance_view, "instance_scatter", spy)
    text = report.write_report(tiny_bundle, tmp_path / "sub" / "r.html").read_text(encoding="utf-8")
    report.write_report(tiny_bundle, tmp_path / "again.html")
    (frame, instances, threshold), (again, _, _) = drawn
    assert len(frame) == 10 and frame["row"].is_unique and set(frame["row"]) <= set(range(48))
    assert list(again["row"]) == list(frame["row"])  # seeded: the same sample every time
    assert instances is None and threshold >= 10  # no thumbnails above MAX_THUMBNAILS, never rasterised
    assert "sample of 10 of the bundle&#x27;s 48 instances" in text and "text only" in text
    assert "data:image/png" not in _parse(text).items[1]["text"]  # the scatter's document


def test_report_of_a_folder_that_is_no_bundle(tmp_path):
    with pytest.raises(BundleError):
        report.write_report(tmp_path, tmp_path / "report.html")


def test_inheritance_line_values_equal_layer_comparison(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    table = b.layer_comparison()
    overlay = inheritance_line(b, "b")
    curves = [el for el in overlay if isinstance(el, hv.Curve)]
    assert len(curves) == 4  # (all classes, class b) × (share, similarity)
    for scope, index in (("all classes", -1), ("b", b.classes.index("b"))):
        rows = sorted((d, i) for i, (c, d) in enumerate(zip(table["class_index"], table["depth"])) if c == index)
        order = [i for _, i in rows]
        for measure, (text, _) in MEASURES.items():
            (curve,) = [c for c in curves if c.label == f"{scope}: {text}"]
            assert list(curve.dimension_values("layer")) == [table["layer"][i] for i in order] == b.layers
            np.testing.assert_array_equal(curve.dimension_values("value"),
                                          np.array([table[measure][i] for i in order], dtype=float))
    # x in depth order on the rendered plot, y on [0, 1]
    fig = hv.render(overlay, backend="bokeh")
    assert list(fig.x_range.factors) == b.layers
    only_all = [el.label for el in inheritance_line(b) if isinstance(el, hv.Curve)]
    assert only_all == [f"all classes: {text}" for text, _ in MEASURES.values()]
    with pytest.raises(BundleError, match="class 'zebra' is not in this bundle"):
        inheritance_line(b, "zebra")


def test_cka_heatmap_values_equal_the_bundle_matrix(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    matrix = b.cka()
    heat = cka_heatmap(b)
    assert heat.kdims == ["target layer", "source layer"] and heat.vdims == ["CKA"]
    assert heat.get_dimension("CKA").range == (0, 1)
    frame = heat.dframe()
    assert len(frame) == len(b.layers) ** 2
    for tgt, src, value in frame[["target layer", "source layer", "CKA"]].itertuples(index=False):
        expected = matrix[b.layers.index(src), b.layers.index(tgt)]
        assert (math.isnan(value) and math.isnan(expected)) or value == expected
    fig = hv.render(heat, backend="bokeh")
    assert list(fig.x_range.factors) == b.layers and list(fig.y_range.factors) == b.layers[::-1]  # first on top
    hover = next(t for t in fig.tools if type(t).__name__ == "HoverTool")
    assert ("CKA", "@{CKA}") in hover.tooltips


def test_a_failing_report_keeps_the_run_and_says_why(tiny_bundle, tmp_path, caplog):
    """`diagnose`'s report step: a writer that raises is a warning and a report_error.txt, not a failure."""
    import mlflow
    from mlflow import MlflowClient

    from mlflow_transfer.tracking import diagnose as diagnose_module

    def broken(bundle_dir, out_path):
        raise ValueError("no fonts here")

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        # an experiment of this store: another test's active experiment id must not leak in
        experiment = MlflowClient().create_experiment("report-failure")
        with mlflow.start_run(experiment_id=experiment) as run, caplog.at_level(logging.WARNING, logger="mlflow_transfer"):
            assert diagnose_module.log_report(broken, tiny_bundle, tmp_path) is False
            assert diagnose_module.log_report(lambda b, o: o, tiny_bundle, tmp_path) is False  # wrote nothing
            assert diagnose_module.log_report(report.write_report, tiny_bundle, tmp_path) is True
        names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
        note = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/report_error.txt")
        assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(previous)
    assert names == {"report.html", "report_error.txt"}
    assert "ValueError: no fonts here" in caplog.text and "report.html was not written" in caplog.text
    assert "without writing" in note  # the last failure's reason


def test_report_states_the_conductance_steps_or_that_the_bundle_has_none():
    # issue 12: the manifest's conductance_steps in words; a bundle without it says so; odd values do not crash
    auto = {"n_steps": 16, "completeness_error": 0.0042, "tolerance": 0.01, "met": True, "mode": "auto"}
    unmet = {"n_steps": 100, "completeness_error": 0.014, "tolerance": 0.01, "met": False, "mode": "auto"}
    assert report._steps_text({"source": auto, "target": unmet}) == (
        "source 16 (auto, completeness error 0.42%), target 100 (auto, completeness error 1.40%, tolerance 1.00% not met)")
    assert report._steps_text({"source": {"n_steps": 2, "mode": "fixed", "completeness_error": None}}) == "source 2 (fixed)"
    assert report._steps_text(None) == "not in this bundle"
    assert report._steps_text({"source": "<b>"}) == "source ?"
    assert report._steps_text([1]) == "not in this bundle"


def test_report_of_the_tiny_bundle_names_its_fixed_steps(written):
    _, _, text = written
    assert "conductance steps</span> <code>source 2 (fixed), target 2 (fixed)</code>" in text
