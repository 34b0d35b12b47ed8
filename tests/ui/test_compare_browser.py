"""The Compare tab in a real browser (issue 16): Debian's Chromium against the app's real server over a
memory source holding a hand-made listing of three settings, two real pair bundles and a planted one.
No pair is open when the tab is first shown: it must not need one."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from helpers.browser import needs_chromium
from helpers.compare_rows import grid_listing, run_id, write_diff_bundle
from playwright.sync_api import expect

from ui.app import TABS

pytestmark = [pytest.mark.slow, needs_chromium]

COMPARE = [t.title for t in TABS].index("Compare")
STATISTICS = [t.title for t in TABS].index("Statistics")
HOSTILE = '<img src=x onerror="window.__xss=1">'
SWEEP = run_id("5f", 1)  # not "5e…1": Panel reads a query value that parses as a number as one


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory):
    from helpers.servers import memory_ui

    planted = write_diff_bundle(tmp_path_factory.mktemp("planted") / "b", classes=["a", "b", "c"],
                                layers=["conv1", "conv2"], confusion_target=[[3, 1, 0], [1, 2, 0], [0, 0, 4]],
                                share=[0.8, 0.3], cka_diagonal=[0.9, 0.4], important={}, source_run="s1")
    listing = grid_listing(9, undiagnosed=(8,), sweeps=[{"run_id": SWEEP, "name": "lr-sweep"}])
    listing.rows[1]["name"] = HOSTILE
    listing.rows[4]["setting"]["target.freeze"] = "<b>bold</b>"
    as_json = {"rows": listing.rows, "settings": listing.settings, "left_out": [
        {"target_run_id": run_id("a", 99), "name": "resnet-run", "reason": "model 'resnet-18', not 'alexnet-32'"}],
        "sweeps": listing.sweeps}
    sweep = {**as_json, "rows": [listing.rows[i] for i in (0, 1, 3)], "settings": ["target.freeze", "target.lr"],
             "left_out": []}
    spec = {"experiments": {"1": "sweeps"}, "pairs": {"1": []},
            "bundles": {run_id("d", 0): tiny_bundle, run_id("d", 1): tiny_bundle, run_id("d", 2): planted},
            "compare": {"1 ": as_json, f"1 {SWEEP}": sweep}}
    with memory_ui(spec) as url:
        yield url


def _query(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


_AXIS_LABEL = """(label) => Bokeh.documents.some(d => [...d.all_models].some(
    m => m.axis_label !== undefined && m.axis_label === label))"""


def test_pick_two_pairs_see_the_diff_change_an_axis_reload_and_open_pair_a(served, page):
    page.goto(f"{served}?tab={COMPARE}")
    page.get_by_text("pair(s)").first.wait_for(timeout=90_000)
    table = page.locator(".tabulator").first
    table.locator(".tabulator-row").first.wait_for(timeout=30_000)
    assert table.locator(".tabulator-row").count() == 9
    # hostile names and setting values are text, never markup
    assert page.get_by_text(HOSTILE).count() >= 1 and page.get_by_text("<b>bold</b>").count() >= 1
    assert page.evaluate("() => window.__xss") is None
    assert page.get_by_text("resnet-run").count() == 1  # the left-out note
    assert page.get_by_text("mlflow-transfer diagnose --target-run-id " + run_id("a", 8)).count() >= 1

    table.locator(".tabulator-row", has_text=HOSTILE).locator("input[type=checkbox]").click()
    table.locator(".tabulator-row", has_text="run-0").locator("input[type=checkbox]").click()
    page.wait_for_function("() => JSON.parse(new URLSearchParams(location.search).get('compare') || '[]')"
                           ".length === 2", timeout=30_000)
    assert json.loads(_query(page)["compare"]) == [run_id("d", 1), run_id("d", 0)]
    page.get_by_text("differences are B − A").wait_for(timeout=60_000)
    page.get_by_role("button", name="open pair A").wait_for(timeout=30_000)
    # a second pick: a third tick drops the oldest (A); the diff in place shows A run-0, B run-2 (planted)
    checkbox = {name: table.locator(".tabulator-row", has_text=name).locator("input[type=checkbox]")
                for name in (HOSTILE, "run-0", "run-2")}
    checkbox["run-2"].click()
    page.get_by_text(re.compile(r"run-0 .*run-2 .*differences are B − A")).wait_for(timeout=60_000)
    page.get_by_text("no class and layer with important neurons in common").wait_for(timeout=30_000)  # planted: none
    checkbox["run-2"].click()  # B off: the note instead of the diff
    page.get_by_text("Pick two diagnosed pairs").wait_for(timeout=30_000)
    expect(page.get_by_text("differences are B − A")).to_be_hidden()
    checkbox[HOSTILE].click()  # B on again: now A run-0, B the hostile name
    page.get_by_text(re.compile(r"run-0 .*differences are B − A")).wait_for(timeout=60_000)
    assert json.loads(_query(page)["compare"]) == [run_id("d", 0), run_id("d", 1)]

    x_axis = page.locator("select:has(option:text-is('setting · target.freeze'))")
    start = time.perf_counter()
    x_axis.select_option(label="setting · target.freeze")
    page.wait_for_function(_AXIS_LABEL, arg="target.freeze", timeout=30_000)
    print(f"\naxis change drawn in the browser after {time.perf_counter() - start:.2f} s")
    page.wait_for_function("() => new URLSearchParams(location.search).get('compare_x') === 'target.freeze'",
                           timeout=30_000)
    page.locator("select:has(option:text-is('LEEP')):not(:has(option:text-is('setting · target.lr')))").select_option(
        label="LEEP")
    page.wait_for_function(_AXIS_LABEL, arg="LEEP", timeout=30_000)
    page.locator("select:has(option:text-is('whole experiment'))").select_option(label="lr-sweep (5f000000)")
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('sweep') === '{SWEEP}'", timeout=30_000)
    expect(page.locator(".tabulator").first.locator(".tabulator-row")).to_have_count(3, timeout=30_000)
    before = _query(page)
    assert {k: before[k] for k in ("sweep", "compare_x", "compare_y")} == {
        "sweep": SWEEP, "compare_x": "target.freeze", "compare_y": "leep"}

    page.reload()  # the link restores sweep, axes and picked pairs
    page.get_by_text("differences are B − A").wait_for(timeout=90_000)
    page.wait_for_function(_AXIS_LABEL, arg="target.freeze", timeout=30_000)
    after = _query(page)
    assert {k: after[k] for k in ("sweep", "compare_x", "compare_y", "compare", "tab")} == \
           {k: before[k] for k in ("sweep", "compare_x", "compare_y", "compare", "tab")}
    expect(page.locator(".tabulator").first.locator(".tabulator-row.tabulator-selected")).to_have_count(2)
    page.screenshot(path=str(_shots() / "compare.png"), full_page=True)

    page.get_by_role("button", name="open pair A").click()
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('tab') === '{STATISTICS}'",
                           timeout=30_000)
    assert _query(page)["pair"] == run_id("d", 0)  # A of the current pick, not of the first one
    page.get_by_text("Transferability score").wait_for(timeout=60_000)  # pair A's Statistics tab


def _shots():
    shots = Path(__file__).resolve().parents[2] / "test-output" / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    return shots
