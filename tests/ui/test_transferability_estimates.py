"""LogME and LEEP in the bundle and beside the realised score (issue 15): `PairBundle.transferability_estimates`
reads what the diagnostics copied into ``statistics/summary`` (None for older bundles), the Statistics tab
and report.html show both on one line with what they mean, and a damaged value is refused."""

from __future__ import annotations

import json
import shutil

import panel as pn
import pytest
from helpers.bundles import TINY_META, write_tiny_bundle
from helpers.views import drawn, find

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError
from ui import report
from ui.readers import MemorySource
from ui.state import AppState
from ui.tabs.statistics import StatisticsTab
from ui.views import overview

ESTIMATES = {"logme": 0.8262, "leep": -2.3025}


@pytest.fixture(scope="module")
def estimated_bundle(tmp_path_factory):
    meta = {**TINY_META, "transferability_estimates": ESTIMATES}
    return write_tiny_bundle(tmp_path_factory.mktemp("estimated") / "diagnostics", meta=meta)


def _state(bundle_dir) -> AppState:
    row = {"diagnostics_run_id": "d1", "recipe": "digits", "model": "alexnet-32", "source_domain": "s",
           "target_domain": "t", "start_time": 1_700_000_000_000, "transferability_score": 0.4,
           "target_accuracy": None, "frozen_layers": "[]"}
    return AppState(MemorySource({"1": "pairs"}, {"1": [row]}, {"d1": bundle_dir}))


def test_bundle_holds_the_estimates_in_its_summary_and_older_bundles_none(estimated_bundle, tiny_bundle):
    b = PairBundle.open(estimated_bundle)
    assert b.summary()["logme"] == ESTIMATES["logme"] and b.summary()["leep"] == ESTIMATES["leep"]
    assert b.transferability_estimates() == ESTIMATES
    assert PairBundle.open(tiny_bundle).transferability_estimates() is None  # written without them


def _with_summary(src, dst, **changes):
    """A copy of bundle ``src`` whose statistics/summary has ``changes`` (its checksum updated)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (entry,) = [e for e in manifest["files"] if e["path"].startswith("statistics/summary")]
    path = dst / entry["path"]
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    import hashlib

    for key in [k for k in entry if k not in ("path", "kind")]:
        if "sha" in key:
            entry[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif key in ("bytes", "size"):
            entry[key] = path.stat().st_size
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_one_estimate_missing_is_none_and_a_damaged_one_is_refused(estimated_bundle, tmp_path):
    only_leep = PairBundle.open(_with_summary(estimated_bundle, tmp_path / "a", logme=None))
    assert only_leep.transferability_estimates() == {"logme": None, "leep": ESTIMATES["leep"]}
    damaged = PairBundle.open(_with_summary(estimated_bundle, tmp_path / "b", logme="<b>high</b>"))
    with pytest.raises(BundleError, match="statistics/summary field 'logme' as a number"):
        damaged.transferability_estimates()


def test_statistics_tab_shows_both_estimates_beside_the_score_with_their_meaning(estimated_bundle, tiny_bundle):
    layout = drawn(StatisticsTab(state=_state(estimated_bundle)))
    line = str(find(layout, pn.pane.HTML, "transferability-estimates").object)
    assert "LogME 0.826" in line and "LEEP -2.303" in line and "before fine-tuning" in line
    assert "+0.400" in str(find(layout, pn.pane.HTML, "transferability").object)
    older = drawn(StatisticsTab(state=_state(tiny_bundle)))
    assert str(find(older, pn.pane.HTML, "transferability-estimates").object) == ""


def test_estimates_line_says_n_a_for_a_missing_one():
    assert overview.estimates_html(None) == ""
    line = overview.estimates_html({"logme": None, "leep": -1.5})
    assert "LogME n/a" in line and "LEEP -1.500" in line


def test_report_shows_the_estimates_line(estimated_bundle, tiny_bundle, tmp_path):
    text = report.write_report(estimated_bundle, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "transferability-estimates" in text and "LogME 0.826" in text and "LEEP -2.303" in text
    older = report.write_report(tiny_bundle, tmp_path / "older.html").read_text(encoding="utf-8")
    assert "LogME" not in older
