"""The Robustness tab (issue 13) over bundles with planted robustness records
(``helpers.bundles.add_robustness_records``): the curves and DIR bars carry the planted values, NaN
shows as "n/a", bundle and tag strings are escaped, sibling students of the same teacher are found on a
real sqlite tracking store (another teacher's are not), a sibling or pair without the section is a
note, and a neuron's button opens the Network tab on it. The browser tests (``slow``) serve the same
store with `mlflow-transfer ui` and open the tab in Chromium."""

from __future__ import annotations

import html
import math
import shutil

import numpy as np
import panel as pn
import pytest
from helpers.browser import needs_chromium
from helpers.bundles import (
    ROBUSTNESS_EPSILONS,
    add_robustness_records,
    planted_accuracy,
    planted_dir,
)
from helpers.servers import clean_env, transfer_ui
from helpers.views import drawn, find

from mlflow_transfer.bundle import PairBundle
from ui.readers import MemorySource, TrackingSource
from ui.state import AppState
from ui.tabs.robustness import RobustnessTab
from ui.views import robustness as rv

TITLES = ("Statistics", "Instances", "Network", "Features", "Robustness")
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def robust_dir(tiny_bundle, tmp_path_factory):
    return add_robustness_records(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("robust") / "b"))


@pytest.fixture(scope="module")
def record(robust_dir):
    return PairBundle.open(robust_dir).robustness()


def _state(bundles: dict, rows: list[dict], methods: dict | None = None) -> AppState:
    return AppState(MemorySource({"1": "e"}, {"1": rows}, bundles, target_methods=methods or {}), tab_titles=TITLES)


def _row(d: str, t: str, s: str = "s1", domain: str = "handwritten") -> dict:
    return {"diagnostics_run_id": d, "target_run_id": t, "source_run_id": s, "target_domain": domain}


def _renderer(fig, name: str):
    return fig.select(name=name)[0]


def test_curves_carry_the_planted_values_as_stored(record):
    """Per model, attack and ε, the drawn accuracy is the planted one — which rises at ε = 4/255: the view
    draws what is stored, it does not sort or clip accuracies."""
    for class_index in (-1, 0, 2):
        series = rv.curve_series(record, class_index)
        fig = rv.accuracy_curves(series)
        want_labels = {f"{rv.MODEL_ROLE[m]} · {a.upper()}" for m in ("source", "target") for a in ("fgsm", "pgd")
                       if not (m == "source" and class_index == 2)}  # the source model does not know class 2
        assert {s["label"] for s in series} == want_labels
        for s in series:
            data = _renderer(fig, s["label"]).data_source.data
            assert np.allclose(data["eps"], np.asarray(ROBUSTNESS_EPSILONS) * 255)
            assert np.allclose(data["accuracy"], [planted_accuracy(s["model"], s["attack"], e, class_index)
                                                  for e in range(5)])
    assert not np.all(np.diff(rv.curve_series(record, -1)[0]["y"]) <= 0)  # the planted data is not monotone


def test_dir_bars_per_class_equal_the_table_and_nan_is_na(record):
    fig = rv.dir_bars(record, ["a", "b", "c"])
    data = _renderer(fig, "dir-bars").data_source.data
    for (cls, attack), top, label in zip(data["x"], data["top"], data["label"]):
        want = planted_dir(attack, "abc".index(cls))
        if math.isnan(want):
            assert top == 0 and label == rv.NA
        else:
            assert top == pytest.approx(want) and label == f"{want:.2f}"
    assert len(data["x"]) == 2 * 3
    na = _renderer(fig, "dir-na").data_source.data
    assert list(na["x"]) == [("c", "output"), ("c", "feature")] and set(na["label"]) == {rv.NA}
    caption = rv.dir_caption_html(record)
    assert f"DIR {planted_dir('output', -1):.2f}" in caption and "teacher success 0.80" in caption


def test_bundle_and_tag_strings_are_escaped(record, robust_dir):
    bundle = PairBundle.open(robust_dir)
    page = rv.gallery_html(bundle.robustness_examples("output"), [HOSTILE, "b", "c"], "output")
    assert HOSTILE not in page and html.escape(HOSTILE) in page and page.count("<img src='data:image/png") == 6
    caption = rv.dir_caption_html({**record, "basis": HOSTILE, "note": HOSTILE})
    assert HOSTILE not in caption and caption.count(html.escape(HOSTILE)) == 2
    # a hostile method tag on a sibling reaches the tab's HTML escaped (Bokeh draws the legend on a canvas)
    state = _state({"d1": robust_dir, "d2": robust_dir}, [_row("d1", "t1"), _row("d2", "t2")],
                   {"t1": {"method": HOSTILE}})
    caption = find(drawn(RobustnessTab(state=state)), pn.pane.HTML, "robustness-caption").object
    assert HOSTILE not in caption and f"student ({html.escape(HOSTILE)})" in caption


def test_the_gallery_shows_each_examples_tiles_and_predictions(robust_dir):
    sprite, table = PairBundle.open(robust_dir).robustness_examples("output")
    page = rv.gallery_html((sprite, table), ["a", "b", "c"], "output")
    assert "validation row 5, class a" in page and "student: a → b" in page and "teacher: b → n/a" in page
    assert "validation row 7" not in rv.gallery_html((sprite, table), ["a", "b", "c"], "output", class_index=0)
    assert "No examples of this attack" in rv.gallery_html(None, ["a"], "feature")


def test_a_bundle_without_the_section_says_how_to_add_it(tiny_bundle):
    state = _state({"d1": tiny_bundle}, [_row("d1", "0123abcd")])
    layout = drawn(RobustnessTab(state=state))
    note = find(layout, pn.pane.Markdown, "no-robustness").object
    assert "No robustness section in this bundle" in note
    assert "`mlflow-transfer diagnose --target-run-id 0123abcd --robustness on`" in note
    assert not [o for o in layout.select(pn.pane.Bokeh)]


def test_the_class_select_drives_the_curves_and_the_neuron_table(robust_dir):
    state = _state({"d1": robust_dir}, [_row("d1", "t1")])
    tab = RobustnessTab(state=state)
    layout = drawn(tab)
    assert tab._select.value == rv.ALL_CLASSES
    tab._select.value = "b"
    assert state.classes == ["b"]
    fig = find(layout, pn.pane.Bokeh, "robustness-curves").object
    assert np.allclose(_renderer(fig, "student (finetune) · PGD").data_source.data["accuracy"],
                       [planted_accuracy("target", "pgd", e, 1) for e in range(5)])
    frame = find(layout, pn.widgets.Tabulator, "robustness-neurons").value
    assert set(frame["class"]) == {"b"} and list(frame["rank"]) == sorted(frame["rank"])
    assert abs(frame["shift"].iloc[0]) == frame["shift"].abs().max()
    state.classes = []
    assert tab._select.value == rv.ALL_CLASSES


def test_a_neurons_button_opens_the_network_tab_on_its_class_layer_and_neuron(robust_dir):
    state = _state({"d1": robust_dir}, [_row("d1", "t1")])
    tab = RobustnessTab(state=state)
    layout = drawn(tab)
    state.classes = ["b"]
    table = find(layout, pn.widgets.Tabulator, "robustness-neurons")
    row = table.value.iloc[0]

    class Click:
        column, row = "network", 0

    tab._clicked(table.value, Click())
    layers = state.bundle.layers
    i = layers.index(row["layer"])
    assert state.tab == TITLES.index("Network") and state.classes == ["b"]
    assert state.layer_from == i and state.layer_to == i + 1
    assert state.neuron == f"target:{row['layer']}:{int(row['neuron'])}"


# --------------------------------------------------------------------------------------------------
# Siblings on a real sqlite tracking store


@pytest.fixture(scope="module")
def planted_store(module_store, robust_dir, tiny_bundle, tmp_path_factory):
    """Teacher s1 with three students (finetune: no method tag, slice 0.05, scratch), each diagnosed (the
    scratch one's bundle without the robustness section), and a finetune student of another teacher
    s2; all in one experiment."""
    from mlflow import MlflowClient

    from mlflow_transfer.tags import TAGS

    client = MlflowClient(module_store.uri)
    exp = module_store.experiment_id
    teacher, other = (client.create_run(exp, tags={TAGS.role: "source"}).info.run_id for _ in range(2))
    runs = {}
    for name, src, tags, bundle in (
            ("finetune", teacher, {}, robust_dir),
            ("slice", teacher, {TAGS.method: "slice", TAGS.slice_ratio: "0.05"}, robust_dir),
            ("scratch", teacher, {TAGS.method: "scratch", TAGS.teacher_only: "true"}, tiny_bundle),
            ("other", other, {}, robust_dir)):
        target = client.create_run(exp, tags={TAGS.role: "target", TAGS.source_run_id: src, **tags}).info.run_id
        client.set_terminated(target, "FINISHED")
        diag = client.create_run(exp, tags={TAGS.role: "diagnostics", TAGS.source_run_id: src,
                                            TAGS.target_run_id: target, TAGS.target_domain: "handwritten"})
        client.log_artifacts(diag.info.run_id, str(bundle), "diagnostics")
        client.set_terminated(diag.info.run_id, "FINISHED")
        runs[name] = {"target": target, "diagnostics": diag.info.run_id}
    return {"store": module_store, "runs": runs, "cache": tmp_path_factory.mktemp("cache")}


def test_siblings_are_the_other_methods_students_of_the_same_teacher(planted_store):
    store, runs = planted_store["store"], planted_store["runs"]
    source = TrackingSource(store.uri, cache_dir=planted_store["cache"])
    pairs = source.pairs(store.experiment_id)
    methods = source.methods(store.experiment_id, [p["target_run_id"] for p in pairs])
    assert methods[runs["finetune"]["target"]] == {"method": "finetune", "slice_ratio": None, "teacher_only": False}
    assert methods[runs["scratch"]["target"]]["teacher_only"] is True
    found = rv.find_siblings(pairs, runs["finetune"]["diagnostics"], methods)
    assert {r["diagnostics_run_id"]: r["label"] for r in found} == {
        runs["slice"]["diagnostics"]: "slice, ratio 0.05", runs["scratch"]["diagnostics"]: "scratch, teacher only"}
    from_slice = rv.find_siblings(pairs, runs["slice"]["diagnostics"], methods)
    assert {r["label"] for r in from_slice} == {"finetune", "scratch, teacher only"}
    assert rv.find_siblings(pairs, runs["other"]["diagnostics"], methods) == []  # no sibling of another teacher


def test_the_tab_draws_sibling_curves_and_notes_an_older_sibling_bundle(planted_store, record):
    store, runs = planted_store["store"], planted_store["runs"]
    state = AppState(TrackingSource(store.uri, cache_dir=planted_store["cache"]), tab_titles=TITLES,
                     experiment=store.experiment_id, pair=runs["finetune"]["diagnostics"])
    layout = drawn(RobustnessTab(state=state))
    fig = find(layout, pn.pane.Bokeh, "robustness-curves").object
    names = {r.name for r in fig.renderers if r.name}
    assert {"student (slice, ratio 0.05) · FGSM", "student (slice, ratio 0.05) · PGD",
            "student (finetune) · FGSM", "teacher (source) · PGD"} <= names
    assert not any("scratch" in n for n in names)
    assert np.allclose(_renderer(fig, "student (slice, ratio 0.05) · PGD").data_source.data["accuracy"],
                       [planted_accuracy("target", "pgd", e, -1) for e in range(5)])
    notes = find(layout, pn.pane.Markdown, "sibling-notes").object
    assert "scratch" in notes and "has no robustness section" in notes and runs["scratch"]["diagnostics"] in notes


# --------------------------------------------------------------------------------------------------
# In Chromium


@pytest.fixture(scope="module")
def served(planted_store):
    store = planted_store["store"]
    env = clean_env(MLFLOW_TRANSFER_CACHE=str(store.root / "ui-cache"))
    with transfer_ui(store.uri, store.root, env) as (url, _):
        yield url


@pytest.mark.slow
@needs_chromium
def test_the_robustness_tab_shows_curves_dir_bars_and_gallery_in_a_browser(served, planted_store, page):
    runs, exp = planted_store["runs"], planted_store["store"].experiment_id
    page.goto(f"{served}?experiment={exp}&pair={runs['finetune']['diagnostics']}&tab={TITLES.index('Robustness')}")
    page.get_by_text("Inherited adversarial examples").wait_for(timeout=90_000)
    page.get_by_text("Clean accuracy (ε = 0)").wait_for(timeout=30_000)
    page.get_by_text("teacher success").first.wait_for(timeout=30_000)
    assert page.locator("canvas").count() >= 2  # the curves and the DIR bars (Bokeh canvases)
    assert page.locator(".example img").count() == 6  # 2 examples × clean | adversarial | perturbation
    page.screenshot(path=str(planted_store["store"].root / "robustness.png"), full_page=True)


@pytest.mark.slow
@needs_chromium
def test_a_pair_without_robustness_shows_the_note_in_a_browser(served, planted_store, page):
    runs, exp = planted_store["runs"], planted_store["store"].experiment_id
    page.goto(f"{served}?experiment={exp}&pair={runs['scratch']['diagnostics']}&tab={TITLES.index('Robustness')}")
    page.get_by_text("No robustness section in this bundle").wait_for(timeout=90_000)
    assert page.get_by_text("--robustness on").count() >= 1


def test_the_report_has_a_robustness_section_only_when_the_bundle_has_one(robust_dir, tiny_bundle):
    from ui.report import build_report_html, robustness_html

    part = robustness_html(PairBundle.open(robust_dir).robustness())
    assert f"<td>DIR, output attack</td><td class='num'>{planted_dir('output', -1):.3f}</td>" in part
    assert f"<td>DIR, feature attack</td><td class='num'>{planted_dir('feature', -1):.3f}</td>" in part
    for model, role in rv.MODEL_ROLE.items():
        for attack in ("fgsm", "pgd"):
            want = planted_accuracy(model, attack, 4, -1)
            assert f"<td>{html.escape(role)}, {attack.upper()}</td><td class='num'>{want:.3f}</td><td>accuracy " \
                   "at ε = 8/255" in part
    assert "<h2>Robustness</h2>" in build_report_html(PairBundle.open(robust_dir))
    assert "<h2>Robustness</h2>" not in build_report_html(PairBundle.open(tiny_bundle))
    hostile = robustness_html({**PairBundle.open(robust_dir).robustness(), "basis": HOSTILE})
    assert HOSTILE not in hostile and html.escape(HOSTILE) in hostile
