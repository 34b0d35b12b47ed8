"""The Compare tab's pure views (issue 16) on hand-made listings: columns, notes, axes, Spearman ρ."""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import pytest
import scipy.stats
from helpers.compare_rows import compare_row, grid_listing

from ui.readers import OUTCOMES, CompareListing
from ui.views import compare as cv


def test_the_outcome_titles_cover_the_listings_outcomes():
    assert tuple(cv.OUTCOME_TITLES) == OUTCOMES


def test_the_frame_has_the_settings_that_differ_then_the_outcomes_the_shares_and_the_command():
    listing = grid_listing(6, undiagnosed=(4,))
    frame, titles = cv.compare_frame(listing)
    assert list(frame.columns) == ["name", "s0", "s1", "s2", *OUTCOMES, "share0", "share1", "share2",
                                   "diagnostics_run_id", "command"]
    assert [titles[f"s{i}"] for i in range(3)] == listing.settings  # data.seed is the same everywhere: absent
    assert frame["s2"].tolist() == [r["setting"]["target.lr"] for r in listing.rows]
    assert frame["findings_count"].tolist()[:4] == [r["findings_count"] for r in listing.rows[:4]]
    assert frame["share1"].tolist()[0] == listing.rows[0]["inherited_share"][1]
    # the undiagnosed row: its run's outcomes, no diagnostics run, the command that diagnoses it
    assert frame["command"].tolist()[4] == f"mlflow-transfer diagnose --target-run-id {listing.rows[4]['target_run_id']}"
    assert frame["diagnostics_run_id"].tolist()[4] == "" and frame["target_accuracy"].tolist()[4] > 0
    assert math.isnan(frame["share0"].tolist()[4])
    assert all(c == "" for i, c in enumerate(frame["command"]) if i != 4)


def test_a_hostile_setting_key_is_an_escaped_column_title_and_values_stay_text():
    bad = '<img src=x onerror="alert(1)">'
    listing = CompareListing(rows=[compare_row(0, setting={bad: "<b>1</b>"}, name=bad),
                                   compare_row(1, setting={bad: "2"})], settings=[bad])
    frame, titles = cv.compare_frame(listing)
    assert titles["s0"] == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"
    assert frame["s0"].tolist() == ["<b>1</b>", "2"] and frame["name"][0] == bad  # Tabulator cells escape text
    table = cv.compare_table(listing)
    assert table.titles["s0"] == titles["s0"]


def test_the_table_pages_a_thousand_rows_and_only_diagnosed_rows_are_selectable():
    listing = grid_listing(1000, undiagnosed=(1, 7))
    picked = [listing.rows[5]["diagnostics_run_id"], listing.rows[2]["diagnostics_run_id"]]
    table = cv.compare_table(listing, picked)
    assert table.pagination == "local" and table.page_size == 20 and len(table.value) == 1000
    assert table.selection == [5, 2] and table.selectable == "checkbox"
    selectable = table.selectable_rows(table.value)
    assert 1 not in selectable and 7 not in selectable and len(selectable) == 998


def test_the_left_out_note_names_each_run_and_why_escaped():
    listing = grid_listing(3, left_out=[{"target_run_id": "f" * 32, "name": "*bold* <i>x</i>",
                                         "reason": "model 'resnet', not 'alexnet-32'"}])
    note = cv.left_out_md(listing)
    assert "Left out: 1 run(s)" in note and "`" + "f" * 32 + "`" in note
    assert r"\*bold\* \<i\>x\</i\>" in note and "model 'resnet', not 'alexnet-32'" in note
    assert cv.left_out_md(grid_listing(3)) == ""
    assert "1 listed run(s) have no finished diagnosis" in cv.undiagnosed_md(grid_listing(3, undiagnosed=(0,)))


def test_axis_defaults_and_unknown_keys_fall_back():
    listing = grid_listing(6)
    xs, ys = cv.axis_choices(listing)
    assert set(listing.settings) <= set(xs.values()) and set(OUTCOMES) <= set(xs.values())
    assert cv.share_key("conv2") in ys.values() and not set(listing.settings) & set(ys.values())
    assert cv.default_axes(listing) == ("target.epochs", "target_accuracy")
    assert cv.default_axes(listing, "target.lr", "leep") == ("target.lr", "leep")
    assert cv.default_axes(listing, "nope", "target.lr") == ("target.epochs", "target_accuracy")  # y: outcomes only
    assert cv.default_axes(CompareListing(rows=listing.rows, settings=[])) == ("transferability_score",
                                                                             "target_accuracy")


def test_plot_frame_is_categorical_for_text_settings_and_numeric_otherwise():
    listing = grid_listing(9, undiagnosed=(3,))
    frame, ticks = cv.plot_frame(listing, "target.freeze", "target_accuracy")
    assert ticks == {0: "conv1", 1: "conv1,conv2", 2: "none"}
    assert [ticks[int(x)] for x in frame.sort_values("name")["x"]] == \
           [r["setting"]["target.freeze"] for r in sorted(listing.rows, key=lambda r: r["name"])]
    frame, ticks = cv.plot_frame(listing, "target.lr", "transferability_score",
                                 [listing.rows[2]["diagnostics_run_id"], listing.rows[0]["diagnostics_run_id"]])
    assert ticks == {} and len(frame) == 8  # the undiagnosed row has no transferability score: not plotted
    assert sorted(frame["x"]) == sorted(float(r["setting"]["target.lr"]) for i, r in enumerate(listing.rows) if i != 3)
    picks = dict(zip(frame["name"], frame["pick"]))
    assert picks["run-2"] == "A" and picks["run-0"] == "B" and picks["run-1"] == ""
    assert frame["pick"].tolist()[-2:] == ["A", "B"]  # drawn last, on top
    element = cv.scatter(listing, "target.lr", "transferability_score")
    assert isinstance(element, hv.Scatter) and element.kdims[0].label == "target.lr"
    assert element.vdims[0].label == "transferability"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties_and_missing_values(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 40).astype(float)  # ties
    b = a + rng.normal(size=40)
    a[[3, 9]] = np.nan
    b[17] = np.nan
    rho, n = cv.spearman(list(a), [None if np.isnan(v) else v for v in b])
    keep = ~np.isnan(a) & ~np.isnan(b)
    assert n == keep.sum() == 37
    assert rho == pytest.approx(scipy.stats.spearmanr(a[keep], b[keep]).statistic, abs=1e-12)
    assert cv.spearman([1, 2], [2, 1]) == (None, 2) and cv.spearman([1, 1, 1], [1, 2, 3]) == (None, 3)


def test_estimate_rhos_rank_logme_and_leep_against_the_realised_score():
    listing = grid_listing(30, undiagnosed=(0,))
    rhos = cv.estimate_rhos(listing)
    kept = [r for r in listing.rows if r["transferability_score"] is not None]
    for key in ("logme", "leep"):
        expected = scipy.stats.spearmanr([r[key] for r in kept], [r["transferability_score"] for r in kept]).statistic
        assert rhos[key] == (pytest.approx(expected, abs=1e-12), 29)
    rows = [compare_row(i, setting={}, logme=float(i), transferability_score=float(i) ** 2) for i in range(5)]
    assert cv.estimate_rhos(CompareListing(rows=rows))["logme"] == (pytest.approx(1.0), 5)
    assert "LogME: ρ = +1.00 over 5 pairs" in cv.estimates_md(CompareListing(rows=rows))


def test_share_curves_overlay_the_picked_pairs_in_their_colours():
    listing = grid_listing(4, undiagnosed=(3,))
    picked = [listing.rows[1]["diagnostics_run_id"], listing.rows[0]["diagnostics_run_id"]]
    overlay = cv.share_curves(listing, picked)
    curves = [e for e in overlay if isinstance(e, hv.Curve) and not isinstance(e, hv.Scatter)]
    assert [c.label for c in curves] == ["A: run-1", "B: run-0"]
    assert curves[0].dimension_values("share").tolist() == listing.rows[1]["inherited_share"]
    assert curves[0].dimension_values("layer").tolist() == listing.rows[1]["layers"]
    assert len(cv.share_curves(listing, [])) == 1  # the "pick pairs" placeholder
