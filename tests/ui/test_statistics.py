"""The Statistics tab and what every tab says it rests on (issue 11): the transferability score or the
reason there is none, the target's epoch 0 marked as before fine-tuning, the confusion tables of the
target and the source validation sets, and the instance counts of each view — over real bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import panel as pn
import pytest
from helpers.bundles import TINY_META, write_tiny_bundle
from helpers.views import drawn, find

from mlflow_transfer.bundle import PairBundle
from ui.readers import MemorySource
from ui.state import AppState
from ui.tabs.features import FeaturesTab
from ui.tabs.instances import InstancesTab
from ui.tabs.network import NetworkTab
from ui.tabs.statistics import StatisticsTab
from ui.views import overview
from ui.views.text import rests_on

NOTE = ("Expected the target run's accuracy on the target validation set for at least one trained epoch "
        "(step >= 1); got only step 0 <img src=x onerror=alert(1)>")


def _state(bundle_dir) -> AppState:
    row = {"diagnostics_run_id": "d1", "recipe": "digits", "model": "alexnet-32", "source_domain": "s",
           "target_domain": "t", "start_time": 1_700_000_000_000, "transferability_score": None,
           "target_accuracy": None, "frozen_layers": "[]"}
    return AppState(MemorySource({"1": "pairs"}, {"1": [row]}, {"d1": bundle_dir}))


def _html(layout, name: str) -> str:
    return str(find(layout, pn.pane.HTML, name).object)


def test_rests_on_wording():
    assert rests_on("Whole target validation set", [4, 4, 4]) == "Whole target validation set: 12 instances, 4 per class"
    assert rests_on("Analysed sample", np.array([10, 3]), per="class, domain and split") == \
        "Analysed sample: 13 instances, 3–10 per class, domain and split"
    assert rests_on("Class a", 1, per=None) == "Class a: 1 instance"


def test_badge_shows_a_negative_score_in_red_and_a_missing_one_with_its_reason_escaped():
    negative = overview.transferability_badge(-0.25).object
    assert "-0.250" in negative and "#c0392b" in negative
    missing = overview.transferability_badge(None, NOTE).object
    assert "no score" in missing and "got only step 0" in missing
    assert "<img" not in missing and "&lt;img src=x" in missing  # the note is bundle text: escaped
    assert "n/a (no run history)" in overview.transferability_badge(None).object


def test_the_targets_epoch_0_is_marked_before_fine_tuning(tiny_bundle):
    fig = overview.accuracy_curves(PairBundle.open(tiny_bundle).history())
    (start,) = [r for r in fig.renderers if r.name == overview.BEFORE_FINE_TUNING]
    assert list(start.data_source.data["epoch"]) == [0] and start.glyph.marker == "square"
    np.testing.assert_allclose(start.data_source.data["accuracy"], [0.5])  # TINY_HISTORY's target step 0
    assert "before fine-tuning" in start.data_source.data["stage"][0]
    # the target's own markers are its fine-tuned epochs; its line still starts at epoch 0
    target = [r for r in fig.renderers if r.name == "target validation (target model)"]
    marks = next(r for r in target if type(r.glyph).__name__ == "Scatter")
    assert list(marks.data_source.data["epoch"]) == [1] and marks.data_source.data["stage"] == ["fine-tuned epoch"]
    line = next(r for r in target if type(r.glyph).__name__ == "Line")
    assert list(line.data_source.data["epoch"]) == [0, 1]
    # the source model's epoch 0 is its initialisation: a point of its own series, said so on hover
    source = next(r for r in fig.renderers if r.name == "target validation (source model)"
                  and type(r.glyph).__name__ == "Scatter")
    assert source.data_source.data["stage"][0].startswith("before training")
    assert fig.legend.items[-1].label.value == overview.BEFORE_FINE_TUNING
    assert any(t[1] == "@stage" for tool in fig.tools if hasattr(tool, "tooltips") for t in tool.tooltips)


def test_statistics_tab_states_its_basis_and_switches_to_the_source_validation_set(tiny_bundle):
    tab = StatisticsTab(state=_state(tiny_bundle))
    layout = drawn(tab)
    b = PairBundle.open(tiny_bundle)
    support = b.domain_confusion("target")["support"]
    # the tiny bundle was diagnosed without validation sets: its tables rest on the sample's rows
    assert _html(layout, "rests-on") == f"Analysed sample&#x27;s target validation rows: {int(sum(support))} " \
        f"instances, {min(support)}–{max(support)} per class (support column)"
    assert "+0.400" in _html(layout, "transferability")
    table = find(layout, pn.widgets.Tabulator, "confusion")
    assert list(table.value["support"]) == list(support)
    (switch,) = layout.select(pn.widgets.RadioButtonGroup)
    switch.value = "source"  # the user's click
    assert tab.domain == "source"
    layout = drawn(tab)
    source = b.domain_confusion("source")
    table = find(layout, pn.widgets.Tabulator, "confusion")
    assert list(table.value["support"]) == list(source["support"])
    np.testing.assert_allclose(table.value["target accuracy"], source["target_accuracy"])
    assert "source validation rows" in _html(layout, "rests-on")


def _without_source_domain(src, dst):
    """A copy of bundle ``src`` as written before the source-domain records and the basis existed."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    kept = [e for e in manifest["files"] if not e["path"].startswith("statistics/source_domain/")]
    for e in manifest["files"]:
        if e not in kept:
            (dst / e["path"]).unlink()
    manifest["files"] = kept
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_an_older_bundle_says_it_has_no_source_domain_table(tiny_bundle, tmp_path):
    old = _without_source_domain(tiny_bundle, tmp_path / "old")
    assert PairBundle.open(old).domain_confusion("source") is None
    tab = StatisticsTab(state=_state(old))
    tab.domain = "source"
    layout = drawn(tab)
    message = find(layout, pn.pane.Markdown, "confusion-missing").object
    assert "no confusion table of the source validation set" in message and "diagnose the pair again" in message


@pytest.fixture(scope="module")
def unscored_bundle(tmp_path_factory):
    """A bundle whose target run had no fine-tuned epoch: no score, the diagnostics' reason instead."""
    meta = {**TINY_META, "scores": {}, "transferability_note": NOTE}
    return write_tiny_bundle(tmp_path_factory.mktemp("unscored") / "diagnostics", meta=meta,
                             history={("target", "target_val"): ([0], [0.5])})


def test_statistics_tab_shows_why_there_is_no_score(unscored_bundle):
    b = PairBundle.open(unscored_bundle)
    assert b.transferability() == (None, NOTE) and b.summary()["transferability_note"] == NOTE
    badge = _html(drawn(StatisticsTab(state=_state(unscored_bundle))), "transferability")
    assert "no score" in badge and "got only step 0" in badge and "<img" not in badge


def test_each_tab_says_how_many_instances_it_rests_on(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    counts = b.analysed_counts()
    inst = b.instances()
    for c in range(len(b.classes)):  # a literal count of the instance table
        for d in (0, 1):
            for s in (0, 1):
                assert counts[c, d, s] == np.sum((inst["label"] == c) & (inst["domain"] == d) & (inst["split"] == s))
    state = _state(tiny_bundle)
    shown = drawn(InstancesTab(state=state))
    nonzero = counts[counts > 0]
    assert _html(shown, "rests-on") == f"Analysed sample: 48 instances, {nonzero.min()}–{nonzero.max()} per class, " \
        "domain and split"
    state.classes = ["b"]
    network = drawn(NetworkTab(state=state))
    assert _html(network, "rests-on") == f"Class b, analysed target-domain instances: {counts[1, 1].sum()} instances"
    features = drawn(FeaturesTab(state=state))
    rows = np.bincount(np.asarray(b.discriminability("b")["labels"]), minlength=2)
    text = find(features, pn.pane.Markdown, "cv-accuracy").object
    assert f"Domain classifier's analysed instances: {rows.sum()} instances" in text.replace("\\", "")
    assert (f"{rows[0]} per domain" if rows[0] == rows[1] else f"{rows.min()}–{rows.max()} per domain") in text
