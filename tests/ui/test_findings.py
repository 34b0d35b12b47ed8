"""The findings list (issue 16) in the Statistics tab and report.html: every finding's title and evidence shown
escaped, its button opening the tab and state it names (only URL parameters, never another pair), a note
for a pair without findings and for an older bundle; in Chromium, the button's state reaches the URL and
hostile class names stay text."""

from __future__ import annotations

import html
import json
import shutil

import panel as pn
import pytest
from helpers.browser import HOSTILE_ELEMENTS, PAGE_TEXT, needs_chromium
from helpers.bundles import without_records, write_tiny_bundle
from helpers.findings import replace_findings
from helpers.views import drawn

from ui.app import TABS
from ui.readers import MemorySource
from ui.report import write_report
from ui.state import AppState
from ui.tabs.statistics import StatisticsTab
from ui.views import findings as fv

TITLES = tuple(t.title for t in TABS)
HOSTILE = "<img src=x onerror=alert(1)>"
PLANTED = [
    {"kind": "class_negative_transfer", "title": f"Negative transfer for class {HOSTILE}: 50.0% fine-tuned vs 65.0%",
     "score": 3.0, "evidence": {"class": HOSTILE, "difference": -0.15, "support": 20}, "tab": "Statistics",
     "state": {"classes": [HOSTILE]}},
    {"kind": "source_only_neuron", "title": "Source-only neuron: conv2 #3 of the fine-tuned model", "score": 1.2,
     "evidence": {"layer": "conv2", "neuron": 3, "specificity": 0.6}, "tab": "Network",
     "state": {"classes": ["b"], "layer_from": 1, "layer_to": 2, "neuron": "target:conv2:3"}},
    {"kind": "x", "title": "A finding of a tab this app lacks", "score": 0.5, "evidence": {}, "tab": HOSTILE,
     "state": {}},
]


@pytest.fixture(scope="module")
def hostile_bundle(tmp_path_factory):
    """A real tiny bundle whose first class is named like an HTML injection, with the PLANTED findings."""
    root = write_tiny_bundle(tmp_path_factory.mktemp("findings") / "b", classes=(HOSTILE, "b", "c"))
    return replace_findings(root, PLANTED)


def _state(bundle_dir) -> AppState:
    rows = [{"diagnostics_run_id": "d1", "target_run_id": "t1"}]
    return AppState(MemorySource({"1": "e"}, {"1": rows}, {"d1": bundle_dir}), tab_count=len(TABS), tab_titles=TITLES)


def _listed(layout) -> str:
    return " ".join(str(p.object) for p in layout.select(pn.pane.HTML))


def test_each_finding_is_listed_escaped_with_its_evidence(hostile_bundle):
    layout = drawn(StatisticsTab(state=_state(hostile_bundle), index=0))
    text = _listed(layout)
    assert HOSTILE not in text and html.escape(HOSTILE) in text
    assert "class = " + html.escape(HOSTILE) in text and "difference = -0.15" in text and "neuron = 3" in text
    assert [b.label for b in layout.select(pn.widgets.Button) if "finding-open" in b.css_classes] == [
        "Show in Statistics", "Show in Network", "No such tab"]
    assert [b.disabled for b in layout.select(pn.widgets.Button) if "finding-open" in b.css_classes] == [
        False, False, True]


def test_a_findings_button_opens_its_tab_and_state(hostile_bundle):
    state = _state(hostile_bundle)
    layout = drawn(StatisticsTab(state=state, index=0))
    first, second, _ = [b for b in layout.select(pn.widgets.Button) if "finding-open" in b.css_classes]
    second.clicks += 1
    assert (state.tab, state.classes, state.layer_from, state.layer_to, state.neuron) == (
        TITLES.index("Network"), ["b"], 1, 2, "target:conv2:3")
    first.clicks += 1
    assert (state.tab, state.classes) == (TITLES.index("Statistics"), [HOSTILE])


def test_a_finding_sets_only_url_parameters_of_its_own_pair(hostile_bundle):
    state = _state(hostile_bundle)
    tab = StatisticsTab(state=state, index=0)
    tab.open_finding({"tab": "Nowhere", "state": {"pair": "d2", "experiment": "9", "tab": 3, "bundle": None,
                                                  "classes": ["b", "not a class"], "layer_to": 99}})
    # an unknown tab keeps the open one; the pair and experiment stay; values are coerced like a link's
    assert (state.pair, state.experiment, state.tab, state.bundle is not None) == ("d1", "1", 0, True)
    assert state.classes == ["b"] and state.layer_to == len(state.bundle.layers) - 1


def test_a_pair_without_findings_and_an_older_bundle_say_so(tiny_bundle, tmp_path):
    none = replace_findings(shutil.copytree(tiny_bundle, tmp_path / "none"), [])
    older = without_records(shutil.copytree(tiny_bundle, tmp_path / "older"), "findings")
    for root, note in ((none, fv.NO_FINDINGS), (older, fv.NOT_RECORDED)):
        layout = drawn(StatisticsTab(state=_state(root), index=0))
        assert html.escape(note) in _listed(layout)
        assert not [b for b in layout.select(pn.widgets.Button) if "finding-open" in b.css_classes]
        page = write_report(root, tmp_path / f"{root.name}.html").read_text(encoding="utf-8")
        assert html.escape(note) in page


def test_the_report_lists_the_findings_escaped_with_where_they_show(hostile_bundle, tmp_path):
    page = write_report(hostile_bundle, tmp_path / "report.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and page.count(html.escape(f"Negative transfer for class {HOSTILE}")) == 1
    assert "Shown in the app: Network tab · classes: b · layers 1–2 · neuron target:conv2:3" in page
    assert page.index("<h2>Findings</h2>") < page.index("<h2>Statistics</h2>")


def test_the_texts_name_evidence_and_state():
    assert fv.evidence_text({"inherited_weight_share": 0.31234, "depth": 2, "layer": "fc"}) == \
        "inherited weight share = 0.3123; depth = 2; layer = fc"
    assert fv.state_text({"tab": "Statistics", "state": {"classes": []}}) == "Statistics tab · classes: all"


def test_the_tiny_bundles_computed_findings_are_shown(tiny_bundle):
    # the writer stores findings in every bundle: the app lists what the bundle holds, nothing else
    from mlflow_transfer.bundle import PairBundle

    stored = PairBundle.open(tiny_bundle).findings()
    layout = drawn(StatisticsTab(state=_state(tiny_bundle), index=0))
    buttons = [b for b in layout.select(pn.widgets.Button) if "finding-open" in b.css_classes]
    assert len(buttons) == len(stored) >= 1
    assert all(html.escape(f["title"]) in _listed(layout) for f in stored)


_QUERY = "() => Object.fromEntries(new URLSearchParams(location.search))"


@pytest.mark.slow
@needs_chromium
def test_a_findings_link_opens_its_tab_and_state_in_the_browser(hostile_bundle, browser):
    from helpers.servers import memory_ui

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        rows = [{"diagnostics_run_id": "d1", "target_run_id": "t1"}]
        with memory_ui({"experiments": {"1": "e"}, "pairs": {"1": rows}, "bundles": {"d1": hostile_bundle}}) as url:
            page.goto(f"{url}?pair=d1&tab=0")
            page.get_by_text("Source-only neuron: conv2 #3").wait_for(timeout=90_000)
            page.wait_for_timeout(500)  # an <img src=x>'s error event fires once its request fails
            assert f"Negative transfer for class {HOSTILE}" in page.evaluate(PAGE_TEXT)  # shown as text
            assert page.evaluate(HOSTILE_ELEMENTS) == [] and dialogs == []
            page.get_by_role("button", name="Show in Network").click()
            page.wait_for_function("() => new URLSearchParams(location.search).get('neuron') === 'target:conv2:3'",
                                   timeout=30_000)
            query = page.evaluate(_QUERY)
            assert (query["tab"], query["layer_from"], query["layer_to"]) == (str(TITLES.index("Network")), "1", "2")
            assert json.loads(query["classes"]) == ["b"]
            page.get_by_text("Hide non-important regions").wait_for(timeout=60_000)  # the Network tab is open
            page.goto(f"{url}?pair=d1&tab=0")  # back, and the other finding: a class named like HTML
            page.get_by_role("button", name="Show in Statistics").wait_for(timeout=90_000)
            page.get_by_role("button", name="Show in Statistics").click()
            page.wait_for_function("() => (new URLSearchParams(location.search).get('classes') || '').includes('img')",
                                   timeout=30_000)
            assert json.loads(page.evaluate(_QUERY)["classes"]) == [HOSTILE]
            assert page.evaluate(HOSTILE_ELEMENTS) == [] and dialogs == []
    finally:
        page.close()
