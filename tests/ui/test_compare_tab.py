"""The Compare tab (issue 16) over an in-memory source of hand-made listings and planted bundles: state
coercion of its URL parameters, the tab without an open pair, picking pairs, the diff and its errors."""

from __future__ import annotations

import shutil

import panel as pn
import pytest
from helpers.compare_rows import grid_listing, run_id, write_diff_bundle
from helpers.views import drawn, find

from ui.app import TABS, build_app
from ui.readers import CompareListing, MemorySource
from ui.state import URL_PARAMS, AppState
from ui.tabs.compare import PICK_TWO, CompareTab
from ui.views.guard import UNEXPECTED
from ui.views.text import message_md

TITLES = tuple(t.title for t in TABS)
SWEEP = run_id("5e", 1)


def _bundle(root, i: int, source: str = "5" * 32):
    return write_diff_bundle(root, classes=["a", "b"], layers=["conv1", "conv2"],
                             confusion_target=[[3 + i, 1], [1, 2]], share=[0.9 - i / 10, 0.4],
                             cka_diagonal=[0.9, 0.5 + i / 10], important={("target", "a", "conv1"): [i, 5]},
                             source_run=source, diagnostics_run=run_id("d", i))


@pytest.fixture()
def source(tmp_path):
    listing = grid_listing(9, undiagnosed=(8,), sweeps=[{"run_id": SWEEP, "name": "lr-sweep"}])
    sweep = CompareListing(rows=listing.rows[:3], settings=["target.lr"], sweeps=listing.sweeps)
    bundles = {run_id("d", i): _bundle(tmp_path / f"b{i}", i) for i in range(3)}
    broken = shutil.copytree(bundles[run_id("d", 2)], tmp_path / "broken")
    (broken / "cka" / "matrix.npy").write_bytes(b"truncated")
    bundles[run_id("d", 3)] = broken
    return MemorySource({"1": "sweeps"}, {"1": []}, bundles,
                        compare_listings={("1", None): listing, ("1", SWEEP): sweep})


def _state(source, **params):
    return AppState(source, tab_count=len(TABS), tab_titles=TITLES, **params)


def test_the_compare_params_are_in_the_url_last_and_coerced(source):
    assert URL_PARAMS[-4:] == ("sweep", "compare_x", "compare_y", "compare")
    state = _state(source, compare=["x1", "x1", 7, "y2", "z3"], sweep=12, compare_x=3)
    assert state.compare == ["x1", "7"] and state.sweep == "12" and state.compare_x == "3"
    state.compare = "abc"
    assert state.compare == ["abc"]
    state.compare = {"not": "a list"}  # unreadable: kept
    assert state.compare == ["abc"]
    state.compare = [True, None, "", "q"]
    assert state.compare == ["q"]


def test_the_tab_lists_pairs_without_an_open_pair_and_says_to_pick_two(source):
    state = _state(source)
    assert state.bundle is None and state.experiment == "1"
    layout = drawn(CompareTab(state=state))
    table = find(layout, pn.widgets.Tabulator, "compare-table")
    assert len(table.value) == 9 and table.selection == []
    assert find(layout, pn.pane.Markdown, "diff-pick").object == PICK_TWO
    notes = find(layout, pn.pane.Markdown, "compare-notes").object
    assert "9 pair(s)" in notes and "1 listed run(s) have no finished diagnosis" in notes
    assert "ρ" in find(layout, pn.pane.Markdown, "compare-estimates").object


def test_the_tabs_show_once_an_experiment_is_chosen_even_without_a_pair(source):
    app = build_app(source, sync_url=False, tab=len(TABS) - 1)
    root = app.get_root()
    tabs = next(o for o in root.references() if type(o).__name__ == "Tabs" and len(o.tabs) == len(TABS))
    assert tabs.visible and app.state.bundle is None and [t.title for t in tabs.tabs][-1] == "Compare"


def test_picking_two_rows_draws_the_diff_and_open_pair_a_opens_its_statistics(source):
    state = _state(source)
    tab = CompareTab(state=state)
    layout = drawn(tab)
    table = find(layout, pn.widgets.Tabulator, "compare-table")
    table.selection = [2]
    table.selection = [2, 0]
    assert state.compare == [run_id("d", 2), run_id("d", 0)]  # the order picked: A, B
    table.selection = [2, 0, 1]  # a third tick: the oldest pick leaves
    assert state.compare == [run_id("d", 0), run_id("d", 1)] and sorted(table.selection) == [0, 1]
    table.selection = [0, 2]
    assert state.compare == [run_id("d", 0), run_id("d", 2)]
    state.compare = [run_id("d", 2), run_id("d", 0)]  # a link's order: A, B
    layout.get_root()
    diff = find(layout, pn.Column, "diff")
    head = find(diff, pn.pane.Markdown, "diff-head").object
    assert head.index("run-2") < head.index("run-0")
    classes = find(diff, pn.widgets.Tabulator, "diff-class-table").value
    # A = pair 2: a 5/6, B = pair 0: a 3/4
    assert classes["B − A"].tolist() == pytest.approx([3 / 4 - 5 / 6, 2 / 3 - 2 / 3])
    # the same source run: the target model's overlap shown (the source model's has no important neuron here)
    assert find(diff, pn.pane.HoloViews, "diff-overlap-target").visible
    assert not find(diff, pn.pane.HoloViews, "diff-overlap-source").visible
    assert not find(diff, pn.pane.Markdown, "diff-overlap-missing").visible
    button = next(b for b in diff.select(pn.widgets.Button) if b.name == "open pair A")
    button.clicks += 1
    assert state.pair == run_id("d", 2) and state.tab == TITLES.index("Statistics")
    assert state.bundle is not None


def _class_a(i: int) -> float:
    return (3 + i) / (4 + i)  # pair i's planted target accuracy on class "a" (`_bundle`)


DIFF_TITLES = ("Accuracy per epoch (A solid, B dashed)", "Inheritance and CKA by depth, B − A",
               "Target model's accuracy per class, B − A (target validation set)",
               "Important-neuron overlap (Jaccard), source model", "Important-neuron overlap (Jaccard), target model")


def _diff_figures(root) -> dict:
    """The diff's Bokeh figures in the page ``root``, by title (those drawn)."""
    from bokeh.plotting import figure

    found = {f.title.text: f for f in root.select({"type": figure}) if f.title is not None}
    return {t: found[t] for t in DIFF_TITLES if t in found}


def test_picks_update_the_diff_in_place_with_each_pairs_numbers(source, tmp_path):
    """A,B then A,C then B off and on again: each time the head names the picked runs, the class table holds
    the planted B − A, and the same panes and Bokeh figures carry the new data (no new figure)."""
    state = _state(source, compare=[run_id("d", 0), run_id("d", 1)])
    tab = CompareTab(state=state)
    layout = tab.__panel__()
    root = layout.get_root()  # one page: its models are updated, not made again
    diff = find(layout, pn.Column, "diff")
    panes = {n: find(layout, pn.pane.HoloViews, f"diff-{n}") for n in ("accuracy", "classes", "depth")}
    table = find(layout, pn.widgets.Tabulator, "diff-class-table")
    head = find(layout, pn.pane.Markdown, "diff-head")
    pick = find(layout, pn.pane.Markdown, "diff-pick")
    figures = _diff_figures(root)
    depth = figures["Inheritance and CKA by depth, B − A"]

    def shown(a: int, b: int):
        assert diff.visible and not pick.visible
        assert head.object.index(f"run-{a}") < head.object.index(f"run-{b}")
        assert run_id("d", a) in head.object and run_id("d", b) in head.object
        assert table.value["B − A"].tolist() == pytest.approx([_class_a(b) - _class_a(a), 0.0])
        share = next(r for r in depth.renderers if hasattr(r, "data_source")).data_source.data
        assert list(share["difference"]) == pytest.approx([(a - b) / 10, 0.0])  # share 0.9 − i/10 at conv1

    shown(0, 1)
    state.compare = [run_id("d", 0), run_id("d", 2)]
    shown(0, 2)
    state.compare = [run_id("d", 0)]  # B off: the note, the diff hidden
    assert pick.visible and pick.object == PICK_TWO and not diff.visible
    state.compare = [run_id("d", 0), run_id("d", 1)]
    shown(0, 1)
    # in place: the same panes in the same layout, the same Bokeh figures in the page
    assert find(layout, pn.Column, "diff") is diff and find(layout, pn.widgets.Tabulator, "diff-class-table") is table
    assert {n: find(layout, pn.pane.HoloViews, f"diff-{n}") for n in panes} == panes
    assert {t: f.id for t, f in _diff_figures(root).items()} == {t: f.id for t, f in figures.items()}
    # the buttons open the pair shown now, not the one of the first pick
    next(b for b in diff.select(pn.widgets.Button) if b.name == "open pair B").clicks += 1
    assert state.pair == run_id("d", 1)


def test_the_diff_legend_names_the_picked_pairs_and_the_overlap_follows_the_source_runs(source, tmp_path):
    """First a pair of another source run (no overlap: the note, no heatmap), then a broken B (the error box
    alone), then two pairs of one source run: the target model's heatmap drawn with their Jaccard."""
    source.bundles[run_id("d", 6)] = _bundle(tmp_path / "other", 6, source="6" * 32)
    state = _state(source, compare=[run_id("d", 6), run_id("d", 0)])
    layout = tab_layout = drawn(CompareTab(state=state))
    root = tab_layout.get_root()

    def series():
        accuracy = _diff_figures(root)["Accuracy per epoch (A solid, B dashed)"]
        return list(next(r for r in accuracy.renderers if hasattr(r, "data_source")).data_source.data["series"])

    assert series() == ["A run-6: target validation (target model)", "B run-0: target validation (target model)"]
    missing = find(layout, pn.pane.Markdown, "diff-overlap-missing")
    assert missing.visible and "different source runs" in missing.object
    assert not any(find(layout, pn.pane.HoloViews, f"diff-overlap-{m}").visible for m in ("source", "target"))
    state.compare = [run_id("d", 6), run_id("d", 3)]
    box = find(layout, pn.pane.Alert, "diff-error")
    assert box.visible and "Pair B could not be opened" in box.object
    assert not find(layout, pn.Column, "diff").visible and not find(layout, pn.pane.Markdown, "diff-pick").visible
    state.compare = [run_id("d", 1), run_id("d", 0)]
    assert not box.visible and find(layout, pn.Column, "diff").visible and not missing.visible
    assert series() == ["A run-1: target validation (target model)", "B run-0: target validation (target model)"]
    assert find(layout, pn.pane.HoloViews, "diff-overlap-target").visible
    root = tab_layout.get_root()  # the heatmap's figure was made on this pick: a page loaded now has it
    heatmap = _diff_figures(root)["Important-neuron overlap (Jaccard), target model"]
    data = next(r for r in heatmap.renderers if hasattr(r, "data_source")).data_source.data
    assert [float(v) for v in data["jaccard"]] == pytest.approx([1 / 3], abs=1e-5)  # {1, 5}, {0, 5}: a, conv1
    assert list(heatmap.x_range.factors) == ["conv1"] and list(heatmap.y_range.factors) == ["a"]


def test_a_pick_that_fails_unexpectedly_is_the_parts_error_box_and_the_next_pick_draws_again(source, monkeypatch):
    state = _state(source, compare=[run_id("d", 0), run_id("d", 1)])
    tab = CompareTab(state=state)
    layout = drawn(tab)

    def broken(*args):
        raise RuntimeError("a bug")

    with monkeypatch.context() as m:
        m.setattr(tab._diff, "show", broken)  # the early update fails, then the part's redraw: its error box
        state.compare = [run_id("d", 0), run_id("d", 2)]
        assert find(layout, pn.pane.Alert, "view-error").object == message_md(UNEXPECTED)
    state.compare = [run_id("d", 2), run_id("d", 1)]
    assert not list(layout.select(pn.pane.Alert))
    assert "run-2" in find(layout, pn.pane.Markdown, "diff-head").object


def test_the_reload_button_asks_the_source_again(source):
    state = _state(source)
    layout = drawn(CompareTab(state=state))
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 9
    source.compare_listings[("1", None)] = grid_listing(4)  # new runs arrived
    state.tab = state.tab  # nothing changed: the listing is kept
    layout.get_root()
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 9
    next(b for b in layout.select(pn.widgets.Button) if b.name == "reload the listing").clicks += 1
    layout.get_root()
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 4


def test_a_url_pick_highlights_the_table_rows(source):
    state = _state(source, compare=[run_id("d", 1), run_id("d", 0)])
    table = find(drawn(CompareTab(state=state)), pn.widgets.Tabulator, "compare-table")
    assert table.selection == [1, 0]
    state.compare = [run_id("d", 2)]
    assert table.selection == [2]


@pytest.mark.parametrize("other, expected", [(run_id("d", 5), "does not exist"), (run_id("d", 3), "truncated")])
def test_a_missing_or_broken_bundle_is_one_error_box_naming_the_command(source, other, expected):
    state = _state(source, compare=[run_id("d", 0), other])
    layout = drawn(CompareTab(state=state))
    box = find(layout, pn.pane.Alert, "diff-error").object
    target = run_id("a", int(other[-1]))
    assert "Pair B could not be opened" in box and f"mlflow-transfer diagnose --target-run-id {target}" in box
    assert expected in box.lower() or expected in box
    assert "Traceback" not in box


def test_a_sweep_lists_its_runs_and_an_unknown_one_says_so(source):
    state = _state(source, sweep=SWEEP)
    tab = CompareTab(state=state)
    layout = drawn(tab)
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 3
    state.sweep = run_id("5e", 2)  # well formed, not this experiment's
    layout.get_root()
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 9
    assert "There is no sweep" in find(layout, pn.pane.Markdown, "compare-notes").object
    state.sweep = "<b>x"
    layout.get_root()
    notes = find(layout, pn.pane.Markdown, "compare-notes").object
    assert "whole experiment" in notes and "<b>" not in notes


def _figure(layout):
    from bokeh.plotting import figure

    pane = find(layout, pn.pane.HoloViews, "compare-chart")
    return next(iter(pane.get_root().select({"type": figure})))


def test_a_pick_sends_the_picked_points_not_every_pairs(source):
    from bokeh.models import GlyphRenderer

    state = _state(source)
    layout = drawn(CompareTab(state=state))
    every, picked = [r for r in _figure(layout).renderers if isinstance(r, GlyphRenderer)]
    assert len(every.data_source.data["x"]) == 9 and len(picked.data_source.data["x"]) == 0
    sent = []
    every.data_source.on_change("data", lambda attr, old, new: sent.append(attr))
    state.compare = [run_id("d", 1), run_id("d", 0)]
    assert not sent  # the 9 points stay as they are
    assert list(picked.data_source.data["pick"]) == ["A", "B"]
    assert list(picked.data_source.data["run"]) == [run_id("d", 1), run_id("d", 0)]
    state.compare_y = "leep"  # an axis change moves both
    assert sent and sorted(picked.data_source.data["y"]) == sorted(
        r["leep"] for r in source.compare("1").rows if r["diagnostics_run_id"] in state.compare)


def test_an_axis_change_updates_the_charts_data_not_the_figure(source):
    state = _state(source)
    layout = drawn(CompareTab(state=state))
    pane = find(layout, pn.pane.HoloViews, "compare-chart")
    root = pane.get_root()
    from bokeh.models import GlyphRenderer
    from bokeh.plotting import figure

    fig = next(iter(root.select({"type": figure})))
    assert fig.xaxis[0].axis_label == "target.epochs" and fig.yaxis[0].axis_label == "target accuracy"
    state.compare_x = "target.freeze"
    assert next(iter(root.select({"type": figure}))) is fig
    assert fig.xaxis[0].axis_label == "target.freeze"
    assert dict(fig.xaxis[0].major_label_overrides) == {0: "conv1", 1: "conv1,conv2", 2: "none"}
    state.compare_y = "leep"
    state.compare_x = "nope"  # unknown: the default
    assert fig.xaxis[0].axis_label == "target.epochs" and fig.yaxis[0].axis_label == "LEEP"
    data = next(r for r in fig.renderers if isinstance(r, GlyphRenderer)).data_source.data
    listing = source.compare("1")
    assert sorted(data["y"]) == sorted(r["leep"] for r in listing.rows)
    assert dict(fig.xaxis[0].major_label_overrides) == {}


def test_an_axis_change_and_the_diff_on_a_thousand_rows(tmp_path):
    # their speed is benchmarks/bench_ui.py's (--only compare); here only that both are drawn
    listing = grid_listing(1000)
    bundles = {run_id("d", i): _bundle(tmp_path / f"b{i}", i) for i in range(2)}
    state = _state(MemorySource({"1": "big"}, {"1": []}, bundles, compare_listings={("1", None): listing}))
    tab = CompareTab(state=state)
    layout = drawn(tab)
    _figure(layout)
    state.compare_x = "target.freeze"
    state.compare = [run_id("d", 0), run_id("d", 1)]
    layout.get_root()
    assert find(layout, pn.Column, "diff") is not None


def test_the_tab_over_a_real_tracking_store_lists_compares_and_leaves_out(tracking_store, tmp_path):
    """Through `TrackingSource.compare` on a real sqlite store: settings from the target runs' params, a run
    of another model left out with why, an undiagnosed run with its command, a sweep to choose."""
    from helpers.compare import Runs

    from ui.readers import TrackingSource

    exp = tracking_store.experiment_id
    runs = Runs(exp, tracking_store.uri)
    sweep = runs.sweep("lr-sweep")
    targets = [runs.target(f"lr-{lr}", lr=lr, sweep=sweep, logme=float(i), leep=-float(i))
               for i, lr in enumerate(("0.1", "0.01", "0.001"))]
    for i, t in enumerate(targets[:2]):
        runs.diagnostics(t, transferability_score=float(i) / 10)
    other = runs.target("resnet", model="resnet-18")
    state = _state(TrackingSource(tracking_store.uri, cache_dir=tmp_path / "cache"), experiment=exp)
    layout = drawn(CompareTab(state=state))
    frame = find(layout, pn.widgets.Tabulator, "compare-table").value
    assert sorted(frame["name"]) == ["lr-0.001", "lr-0.01", "lr-0.1"] and "resnet" not in set(frame["name"])
    assert sorted(frame["s0"]) == ["0.001", "0.01", "0.1"]  # target.lr, the one setting that differs
    assert frame.set_index("name").at["lr-0.001", "command"] == f"mlflow-transfer diagnose --target-run-id {targets[2]}"
    notes = find(layout, pn.pane.Markdown, "compare-notes").object
    assert "Left out: 1 run(s)" in notes and other in notes and "resnet" in notes
    state.sweep = sweep
    layout.get_root()
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 3


def test_an_experiment_without_target_runs_says_so_and_draws_an_empty_chart(tmp_path):
    state = _state(MemorySource({"1": "empty"}, {"1": []}, {}, compare_listings={("1", None): CompareListing()}))
    layout = drawn(CompareTab(state=state))
    assert find(layout, pn.pane.Markdown, "compare-empty").object == "No target run in this selection yet."
    assert "0 pair(s)" in find(layout, pn.pane.Markdown, "compare-notes").object
    assert "not enough pairs" in find(layout, pn.pane.Markdown, "compare-estimates").object
    assert not list(layout.select(pn.pane.Alert))
    _figure(layout)  # drawn, with no point


class _CountingSource(MemorySource):
    """A MemorySource that counts the bundles it opens."""

    def bundle(self, diagnostics_run_id):
        self.opened = getattr(self, "opened", []) + [diagnostics_run_id]
        return super().bundle(diagnostics_run_id)


def test_a_compare_link_opens_no_bundle_until_a_pair_tab_is_shown(source):
    counting = _CountingSource(source.experiments_by_id, {"1": [
        {"diagnostics_run_id": run_id("d", 0), "target_run_id": run_id("t", 0)}]}, source.bundles,
        compare_listings=source.compare_listings)
    compare = len(TABS) - 1
    app = build_app(counting, sync_url=False, tab=compare)
    state = app.state
    assert state.pair == run_id("d", 0) and state.bundle is None and not getattr(counting, "opened", [])
    drawn(CompareTab(state=state, index=compare))  # the tab draws from the listing alone
    assert not getattr(counting, "opened", [])
    state.tab = 0  # Statistics: now the pair's bundle is opened, once
    assert state.bundle is not None and counting.opened == [run_id("d", 0)]
    state.tab = compare
    state.tab = 0
    assert counting.opened == [run_id("d", 0)]  # the same pair is not opened again
    # "open pair B" from the compare tab: pair and tab set together open the new pair at once
    state.tab = compare
    state.param.update(pair=run_id("d", 1), tab=0)
    assert counting.opened[-1] == run_id("d", 1) and state.bundle is not None


def test_the_tracking_source_keeps_pair_lists_and_a_reload_lists_again(tracking_store):
    from mlflow import MlflowClient

    from mlflow_transfer.tags import TAGS
    from ui.readers import TrackingSource

    client = MlflowClient()
    experiment = tracking_store.experiment_id

    def diagnostics_run():
        run = client.create_run(experiment, tags={TAGS.role: "diagnostics"})
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    first = diagnostics_run()
    source = TrackingSource(tracking_store.uri)
    assert [p["diagnostics_run_id"] for p in source.pairs(experiment)] == [first]
    second = diagnostics_run()
    assert [p["diagnostics_run_id"] for p in source.pairs(experiment)] == [first]  # kept (COMPARE_TTL_S)
    listed = source.pairs(experiment, fresh=True)
    assert {p["diagnostics_run_id"] for p in listed} == {first, second}
    state = AppState(source, experiment=experiment)
    third = diagnostics_run()
    state.reload()  # the pair browser's reload button
    assert {p["diagnostics_run_id"] for p in state.pairs} == {first, second, third}


class _Arriving(MemorySource):
    """A source whose whole listing arrives later: until then ``preview`` gives its first two rows; ``starts``
    records each ``start`` asked with a preview (may the whole listing be started now)."""

    whole = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.starts = []

    def compare(self, experiment_id, sweep_id=None, *, fresh=False, preview=False, start=True):
        import dataclasses

        if preview:
            self.starts.append(start)
        listing = super().compare(experiment_id, sweep_id)
        if preview and not self.whole:
            return dataclasses.replace(listing, rows=listing.rows[:2], partial=True)
        return listing


def test_a_first_page_is_shown_until_the_whole_listing_arrives(source):
    arriving = _Arriving(source.experiments_by_id, source.pair_rows, source.bundles,
                         compare_listings=source.compare_listings)
    tab = CompareTab(state=_state(arriving))
    layout = drawn(tab)
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 2
    assert "The newest 2 run(s) so far" in find(layout, pn.pane.Markdown, "compare-notes").object
    assert not any(arriving.starts)  # the first draw does not start the whole listing: the first wait does
    key, asked = tab._listing[0], ("1", None)
    assert not tab.whole_arrived(key, asked) and tab.listed == 0  # still on its way
    assert arriving.starts[-1]
    arriving.whole = True
    assert tab.whole_arrived(key, asked) and tab.listed == 1
    layout = drawn(tab)
    assert len(find(layout, pn.widgets.Tabulator, "compare-table").value) == 9
    assert "so far" not in find(layout, pn.pane.Markdown, "compare-notes").object
    assert tab.whole_arrived(key, asked)  # an outdated wait ends without another redraw
    assert tab.listed == 1
