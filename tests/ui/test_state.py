"""The app's state and views without a browser: `AppState` over an in-memory source, HoloViews objects."""

from __future__ import annotations

import json
import shutil
import time

import datashader as ds
import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pytest
from helpers.servers import free_port

from mlflow_transfer.bundle import PairBundle
from ui.app import TABS, build_app
from ui.readers import PREVIEW_ROWS, MemorySource, TrackingSource
from ui.state import URL_PARAMS, AppState
from ui.views import instances as iv
from ui.views import overview
from ui.views.pairs import pairs_frame, pairs_table


def _row(run_id, score=0.4, start=1_700_000_000_000):
    return {"diagnostics_run_id": run_id, "recipe": "digits", "model": "alexnet-32",
            "source_domain": "printed-digits", "target_domain": "handwritten-digits", "start_time": start,
            "transferability_score": score, "target_accuracy": 0.9, "frozen_layers": "[]"}


@pytest.fixture()
def source(tiny_bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "cka" / "matrix.npy").write_bytes(b"truncated")
    return MemorySource({"1": "empty", "2": "pairs"}, {"2": [_row("d2"), _row("d1"), _row("bad")]},
                        {"d1": tiny_bundle, "d2": tiny_bundle, "bad": broken})


def test_state_opens_the_first_experiment_with_pairs_and_its_newest_pair(source):
    state = AppState(source)
    assert state.experiment == "2" and state.pair == "d2" and state.bundle is not None and state.error == ""
    assert state.selected_classes == ["a", "b", "c"]
    state.select_class("b")
    state.select_class("a", add=True)
    assert state.classes == ["a", "b"]
    state.select_class("zzz")  # unknown class names are ignored, not raised
    assert state.classes == ["a", "b"]


def test_a_link_with_only_a_pair_finds_its_experiment_and_keeps_the_view_state(source):
    state = AppState(source, pair="d1", classes=["c", "nope"], layer_to=99)
    assert state.experiment == "2" and state.pair == "d1"
    assert state.classes == ["c"] and state.layer_to == len(state.bundle.layers) - 1


def test_opening_lists_each_experiments_pairs_once(source, monkeypatch):
    """Finding the experiment to open lists pairs (paged requests on a server): the chosen experiment's
    listing is reused, not fetched again."""
    calls = []
    real = source.pairs
    monkeypatch.setattr(source, "pairs", lambda i: calls.append(i) or real(i))
    state = AppState(source)
    assert state.experiment == "2" and len(state.pairs) == 3 and calls == ["1", "2"]
    calls.clear()
    AppState(source, pair="d1")  # a link naming only the pair
    assert calls == ["1", "2"]


def test_bundle_of_an_unknown_schema_version_names_the_command_that_fixes_it(tiny_bundle, tmp_path):
    import json

    future = tmp_path / "future"
    shutil.copytree(tiny_bundle, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["schema_version"] = "2.0.0"
    (future / "manifest.json").write_text(json.dumps(manifest))
    row = {**_row("f1"), "target_run_id": "t-42"}
    state = AppState(MemorySource({"1": "e"}, {"1": [row]}, {"f1": future}))
    assert state.bundle is None and "schema version 2.0.0" in state.error
    assert state.error.endswith("mlflow-transfer diagnose --target-run-id t-42")


def test_broken_bundle_gives_a_message_instead_of_views(source):
    state = AppState(source)
    state.pair = "bad"
    assert state.bundle is None and "cka/matrix" in state.error
    state.pair = "d1"
    assert state.bundle is not None and state.error == ""


def test_experiment_without_pairs_says_how_to_make_one(source):
    state = AppState(source, experiment="1")
    assert state.pairs == [] and state.pair == "" and state.bundle is None
    app = build_app(source, sync_url=False, experiment="1")
    assert "mlflow-transfer diagnose --target-run-id" in _text(app)


def test_unreachable_tracking_server_gives_a_banner_with_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    state = AppState(TrackingSource(uri))
    assert uri in state.error and "mlflow server" in state.error and state.experiments == []
    assert uri in _text(build_app(TrackingSource(uri), sync_url=False))


def _text(viewable) -> str:
    """Every Markdown/HTML/Alert text in a rendered Panel tree."""
    root = viewable.get_root()
    return " ".join(str(getattr(m, "text", "")) for m in root.references())


def test_accuracy_curves_one_line_per_model_and_dataset(tiny_bundle):
    fig = overview.accuracy_curves(PairBundle.open(tiny_bundle).history())
    lines = {r.name: r for r in fig.renderers if type(r.glyph).__name__ == "Line"}
    assert sorted(lines) == ["source train (source model)", "target validation (source model)",
                             "target validation (target model)"]
    np.testing.assert_allclose(lines["target validation (target model)"].data_source.data["accuracy"], [0.5, 0.9])
    markers = {r.name: r.glyph.marker for r in fig.renderers if type(r.glyph).__name__ == "Scatter"}
    assert markers["target validation (source model)"] == "x" and markers["target validation (target model)"] == "circle"
    assert "no per-epoch history" in overview.accuracy_curves({}).title.text and not overview.accuracy_curves({}).renderers


def test_transferability_badge_is_signed_and_coloured():
    assert "+0.400" in overview.transferability_badge(0.4).object and "#2a8a2a" in overview.transferability_badge(0.4).object
    assert "-0.100" in overview.transferability_badge(-0.1).object and "#c0392b" in overview.transferability_badge(-0.1).object
    assert "n/a" in overview.transferability_badge(None).object


def test_confusion_frame_has_the_papers_columns(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    frame = overview.confusion_frame(b.confusion())
    assert list(frame.columns[:5]) == ["class", "source accuracy", "target accuracy", "difference",
                                       "misclassified into"]
    np.testing.assert_allclose(frame["difference"], frame["target accuracy"] - frame["source accuracy"])
    table = overview.confusion_table(b.confusion())
    assert table.selectable == 1 and table.value.shape[0] == 3


def test_instance_frame_filters_classes_and_flags_mispredictions(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    inst = b.instances()
    frame = iv.instance_frame(inst, b.classes, ["b"])
    labels = np.asarray(inst["label"])
    assert len(frame) == (labels == 1).sum() and set(frame["class"]) == {"b"}
    expected = np.asarray(inst["pred_target"])[frame["row"]] != 1
    np.testing.assert_array_equal(frame["mispredicted"], expected)
    assert set(frame["domain"]) == {"source", "target"}
    plot = iv.instance_scatter(frame, b.classes, inst)
    layers = {r.name: r.data_source.data for r in plot.renderers}
    assert set(layers) == {"source domain", "target domain", "mispredicted (target model)"}
    assert layers["source domain"]["thumbnail"][0].startswith("data:image/png;base64,")
    rings = layers["mispredicted (target model)"]["row"]
    np.testing.assert_array_equal(np.sort(rings), np.sort(frame["row"][frame["mispredicted"]]))


def test_class_with_no_instances_in_one_domain_is_an_empty_state_not_an_error(tiny_bundle):
    b = PairBundle.open(tiny_bundle)
    frame = iv.instance_frame(b.instances(), b.classes, ["c"])
    assert set(frame["domain"]) == {"source"}  # 'c' exists only in the source domain
    drawn = iv.instance_scatter(frame, b.classes, b.instances())
    assert len(next(r for r in drawn.renderers if r.name == "target domain").data_source.data["x"]) == 0
    empty = iv.instance_scatter(frame.iloc[:0], b.classes)
    assert "No instances" in empty.title.text and not empty.renderers


def _many_points(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows with the columns of ``instance_frame`` for classes a, b, c, rows shuffled."""
    rng = np.random.default_rng(seed)
    names = np.array(["a", "b", "c"], dtype=object)
    labels, pred = rng.integers(0, 3, n), rng.integers(0, 3, n)
    return pd.DataFrame({"row": rng.permutation(n), "x": rng.normal(size=n), "y": rng.normal(size=n),
                         "class": names[labels], "domain": rng.choice(["source", "target"], n),
                         "prediction": names[pred], "mispredicted": labels != pred, "confidence": 1.0,
                         "label": labels, "pred": pred})


def test_many_points_switch_to_a_datashader_raster():
    frame = _many_points(50_000)
    plot = iv.instance_scatter(frame, ["a", "b", "c"], threshold=10_000)
    assert isinstance(plot, hv.DynamicMap)
    hv.render(plot)
    small = iv.instance_scatter(frame.iloc[:100], ["a", "b", "c"], threshold=10_000)
    assert sum(len(r.data_source.data["x"]) for r in small.renderers if "domain" in r.name) == 100


def test_the_raster_hover_key_picks_each_pixels_last_row():
    """max(hover_key) per pixel is the key of the pixel's highest row (the decoder's half is tested
    in Chromium, tests/ui/test_browser.py)."""
    frame = _many_points(20_000, seed=1)
    key = iv.hover_key(frame, 3)
    assert len(np.unique(key)) == len(frame)
    np.testing.assert_array_equal(np.argsort(key), np.argsort(frame["row"].to_numpy()))  # same order as rows
    canvas = ds.Canvas(plot_width=30, plot_height=20)
    by_key = canvas.points(frame.assign(key=key), "x", "y", ds.max("key")).values
    by_row = canvas.points(frame, "x", "y", ds.max("row")).values
    drawn = np.isfinite(by_key)
    assert drawn.sum() > 100
    row_of = dict(zip(key, frame["row"]))
    np.testing.assert_array_equal([row_of[k] for k in by_key[drawn]], by_row[drawn])
    with pytest.raises(ValueError, match="too many"):
        iv.hover_key(frame.assign(row=frame["row"] + 2 ** 50), 3)


def test_pairs_frame_columns():
    frame = pairs_frame([_row("d1", score=-0.25)])
    assert list(frame.columns) == ["recipe", "setting", "date", "target accuracy", "transferability", "LogME",
                                   "LEEP", "diagnostics run", "bundle"]
    assert frame["setting"][0] == "printed-digits → handwritten-digits, alexnet-32"
    assert frame["transferability"][0] == -0.25
    assert frame["LogME"][0] is None and frame["LEEP"][0] is None  # a run diagnosed before issue 15


def test_thousands_of_diagnosed_runs_are_paged_and_a_missing_bundle_is_a_message(tmp_path):
    """A real sqlite tracking store with 1,200 finished diagnostics runs (no bundles logged): the pair list
    comes in pages, newest first, capped by ``max_pairs``; opening a pair without a bundle shows a
    message naming the command that makes one, instead of views."""
    from mlflow import MlflowClient

    from mlflow_transfer.tags import TAGS

    uri = f"sqlite:///{tmp_path}/many.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("many")
    for i in range(1200):
        run = client.create_run(exp, start_time=1_700_000_000_000 + i,
                                tags={TAGS.role: "diagnostics", TAGS.recipe: f"r{i}"})
        client.set_terminated(run.info.run_id)
    source = TrackingSource(uri, cache_dir=tmp_path / "cache", max_pairs=1100)
    state = AppState(source, experiment=exp)
    # at once the newest pairs, the newest opened; the whole list replaces them when it is made
    assert state.pairs_partial and len(state.pairs) == PREVIEW_ROWS
    first = state.pairs[0]["diagnostics_run_id"]
    deadline = time.monotonic() + 60
    while not state.complete_pairs():
        assert time.monotonic() < deadline, "the whole pair list never arrived"
        time.sleep(0.05)
    assert not state.pairs_partial and len(state.pairs) == 1100  # pages of 500, stopped at the cap
    assert [p["recipe"] for p in state.pairs[:3]] == ["r1199", "r1198", "r1197"]
    assert state.pair == state.pairs[0]["diagnostics_run_id"] == first and state.bundle is None
    assert "diagnose" in state.error and state.pair in state.error
    table = pairs_table(state.pairs, state.pair)
    assert table.pagination and table.page_size < 100 and table.selection == [0]


def test_reprojection_of_selected_classes_is_their_own_tsne_and_is_cached(tiny_bundle):
    from mlflow_transfer.projection import tsne_projection
    from ui.projection import reprojected

    b = PairBundle.open(tiny_bundle)
    labels = np.asarray(b.instances()["label"])
    rows, xy = reprojected(b, ["b", "a"])
    np.testing.assert_array_equal(rows, np.flatnonzero(labels <= 1))
    reference = tsne_projection(b.embedding("target")[rows], seed=0, gradient="bh")
    np.testing.assert_allclose(xy, reference, rtol=1e-5, atol=1e-5)
    assert reprojected(b, ["a", "b"])[1] is xy  # the same class set, in any order: from the cache
    frame = iv.instance_frame(b.instances(), b.classes, ["a", "b"], xy=xy)
    np.testing.assert_array_equal(frame[["x", "y"]].to_numpy(), xy)
    with pytest.raises(ValueError, match="rows"):
        iv.instance_frame(b.instances(), b.classes, ["a"], xy=xy)


def test_reproject_is_part_of_the_link_and_retitles_the_scatter(source):
    from ui.tabs.instances import InstancesTab

    assert "reproject" in URL_PARAMS
    state = AppState(source, classes=["a"], reproject=True)
    tab = InstancesTab(state=state)

    def titles():
        root = tab.__panel__().get_root()
        return " ".join(str(m.text) for m in root.references() if type(m).__name__ == "Title")

    assert "re-projected" in titles()
    legend = iv.class_legend(state.bundle.classes, ["a"])
    assert "</span> a</span>" in legend and "</span> b</span>" not in legend
    state.reproject = False
    assert "re-projected" not in titles()


def test_the_open_tab_survives_a_pair_switch_and_is_in_the_link(source):
    app = build_app(source, sync_url=False, tab=2)
    state = app.state

    def tabs():
        return next(o for o in app.get_root().references() if type(o).__name__ == "Tabs" and len(o.tabs) == len(TABS))

    assert tabs().active == 2 and "tab" in URL_PARAMS
    state.tab = 3
    state.pair = "d1"  # another pair: the views are rebuilt on the same tab
    assert state.bundle is not None and tabs().active == 3


def test_a_pair_switch_redraws_only_the_open_tab_and_a_hidden_one_when_it_is_shown(source):
    app = build_app(source, sync_url=False)
    state, (tabs,) = app.state, [t for t in app.select(pn.Tabs) if len(t) == len(TABS)]
    app.get_root()

    def accuracy():  # the Statistics tab's chart, as drawn (None: none)
        return next((p.object for p in tabs[0].select(pn.pane.Bokeh) if p.name == "accuracy"), None)

    drawn = accuracy()
    for i in range(len(TABS)):  # every tab visited, the last one left open
        tabs.active = i
    assert drawn is not None and accuracy() is drawn  # shown again with the same inputs: kept
    state.pair = "d1"
    # hidden: not redrawn for the new pair, and the old pair's chart no longer kept in the browser
    assert state.tab == len(TABS) - 1 and accuracy() is None
    tabs.active = 0
    assert accuracy() is not None and accuracy() is not drawn  # shown: drawn for the new pair


def test_a_killed_or_running_diagnose_is_listed_as_incomplete_and_never_fetched(tmp_path):
    """Diagnostics runs that did not finish (killed, or still running) are listed with their status; the
    app opens a finished pair by default, and choosing an unfinished one says why there is nothing to
    show (and how to mark a killed run), without downloading anything."""
    from mlflow import MlflowClient

    from mlflow_transfer.tags import TAGS

    uri = f"sqlite:///{tmp_path}/runs.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("mixed")
    ids = {}
    for i, status in enumerate(("FINISHED", "FAILED", "RUNNING")):  # the RUNNING one is the newest
        run = client.create_run(exp, start_time=1_700_000_000_000 + i,
                                tags={TAGS.role: "diagnostics", TAGS.target_run_id: "t" * 32})
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status)
        ids[status] = run.info.run_id
    cache = tmp_path / "cache"
    state = AppState(TrackingSource(uri, cache_dir=cache), experiment=exp)
    assert [p["status"] for p in state.pairs] == ["RUNNING", "FAILED", "FINISHED"]
    assert state.pair == ids["FINISHED"]  # a complete one first (its bundle is missing: a message)
    assert list(pairs_frame(state.pairs)["bundle"]) == ["incomplete (RUNNING)", "incomplete (FAILED)", "complete"]
    for status in ("RUNNING", "FAILED"):
        state.pair = ids[status]
        assert state.bundle is None and not state.loading
        assert f"is {status}, so its bundle is incomplete" in state.error
        assert "runs --stale --mark-failed" in state.error and f"--target-run-id {'t' * 32}" in state.error
    assert not cache.exists() or not any(cache.iterdir())


def test_the_training_tabs_epoch_and_picked_points_are_in_the_link_whatever_shape_arrives(source):
    """Issue 14: ``epoch`` (a timeline position, clamped by the tab to its timeline) and ``tracked``
    (picked point ids: non-negative integers, once each, at most `MAX_TRACKED`) go through Panel's real
    URL sync like the others; a value of the wrong shape keeps the current one, never aborts the link."""
    from urllib.parse import quote

    from panel.io.location import Location

    from ui.app import _query
    from ui.views.timeline import MAX_TRACKED

    state = AppState(source, tab_count=len(TABS))
    assert {"epoch", "tracked"} <= set(URL_PARAMS) and (state.epoch, state.tracked) == (0, [])
    tracked = quote(json.dumps([4, "7", 4, -2, "x", 1.5, True]))
    location = Location(search=f"?pair=d1&epoch=3&tracked={tracked}")
    location.sync(state, {p: p for p in URL_PARAMS})
    assert (state.pair, state.epoch, state.tracked) == ("d1", 3, [4, 7, 1])
    assert _query(state)["epoch"] == "3" and json.loads(_query(state)["tracked"]) == [4, 7, 1]
    location.search = "?pair=d1&epoch=-4&tracked=%7B%22a%22%3A1%7D"
    assert state.epoch == 0 and state.tracked == [4, 7, 1]
    location.search = "?pair=d1&epoch=x&tracked=9"
    assert state.epoch == 0 and state.tracked == [9]
    state.tracked = list(range(3 * MAX_TRACKED))
    assert state.tracked == list(range(MAX_TRACKED))


def test_a_linked_older_pair_stays_selected_while_the_newest_pairs_are_listed_first(tracking_store, monkeypatch):
    """Issue 16: the pair list shows the newest pairs at once (a note says so) and the whole list replaces them;
    a link's pair older than those is not replaced meanwhile, and a whole list that fails leaves them listed
    with the reason in the banner."""
    from helpers.compare import Runs
    from helpers.views import drawn

    from mlflow_transfer.errors import TrackingUnavailableError
    from mlflow_transfer.tracking import bundles
    from ui import readers
    from ui.pair_browser import PairBrowser

    exp = tracking_store.experiment_id
    runs = Runs(exp)
    diagnosed = [runs.diagnostics(runs.target(f"t{i}")) for i in range(4)]
    monkeypatch.setattr(readers, "PREVIEW_ROWS", 2)
    state = AppState(TrackingSource(tracking_store.uri), experiment=exp, pair=diagnosed[0], tab=0)
    assert state.pairs_partial and [p["diagnostics_run_id"] for p in state.pairs] == diagnosed[:1:-1]
    assert state.pair == diagnosed[0]  # not in the first page, and kept
    browser = drawn(PairBrowser(state=state))

    def note():
        return next((m.object for m in browser.select(pn.pane.Markdown) if m.name == "pairs-partial"), None)

    assert "newest 2 pairs so far" in note()
    deadline = time.monotonic() + 60
    while not state.complete_pairs():
        assert time.monotonic() < deadline, "the whole pair list never arrived"
        time.sleep(0.05)
    assert [p["diagnostics_run_id"] for p in state.pairs] == diagnosed[::-1] and state.pair == diagnosed[0]
    assert note() is None

    def failing(*args, max_pairs=None, **kwargs):
        if max_pairs and max_pairs > 3:
            time.sleep(0.3)
            raise TrackingUnavailableError("the server went away (planted)")
        return real(*args, max_pairs=max_pairs, **kwargs)

    real = bundles.list_diagnosed_pairs
    monkeypatch.setattr(bundles, "list_diagnosed_pairs", failing)
    state.reload()
    assert state.pairs_partial and len(state.pairs) == 2
    while not state.complete_pairs():
        assert time.monotonic() < deadline + 60, "the failure never arrived"
        time.sleep(0.05)
    assert not state.pairs_partial and len(state.pairs) == 2 and "planted" in state.error


def test_a_reload_opens_again_a_bundle_that_failed_and_keeps_one_that_opened(tiny_bundle):
    run = "d" * 32
    source = MemorySource({"1": "e"}, {"1": [{"diagnostics_run_id": run, "target_run_id": "t" * 32}]})
    state = AppState(source, experiment="1")
    assert state.pair == run and state.bundle is None and "does not exist" in state.error
    source.bundles[run] = tiny_bundle  # diagnosed meanwhile
    state.reload()
    assert state.bundle is not None and state.error == ""
    opened = state.bundle
    state.reload()
    assert state.bundle is opened  # not opened again (a MemorySource opens a folder anew each time)
