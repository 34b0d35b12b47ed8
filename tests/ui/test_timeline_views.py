"""The Training tab (issue 14) over a planted timeline (``helpers.timeline.write_tiny_timeline``: point i
at position p on a circle of radius 1 + p at angle 2πi/n, class bands that move, metrics 0.5 + 0.01 p
+ 0.001 · index): the views draw exactly what the bundle holds — its region image, each domain with its
marker, trajectories through the planted coordinates, the readout's numbers — and the tab switches
epochs in place, follows the class selection, keeps picked points in the state, says how to make a
missing timeline and shows a broken one as its own error while the other tabs keep working. The
browser tests (``slow``) serve the app with `pn.serve` over a `MemorySource` and drive Chromium."""

from __future__ import annotations

import html
import io
import json
import re
import shutil

import numpy as np
import panel as pn
import pytest
from bokeh.models import Span
from helpers.browser import HOSTILE_ELEMENTS, PAGE_TEXT, needs_chromium
from helpers.timeline import planted_coords, planted_metric, write_tiny_timeline
from helpers.views import drawn, find
from PIL import Image

from mlflow_transfer.bundle.timeline import TimelineBundle
from ui.app import TABS, build_app
from ui.readers import MemorySource
from ui.state import AppState
from ui.tabs.statistics import StatisticsTab
from ui.tabs.training import TrainingTab
from ui.views import timeline as tv
from ui.views.style import class_color

HOSTILE = "<img src=x onerror=alert(1)>"
TITLES = tuple(t.title for t in TABS)
TRAINING = TITLES.index("Training")


@pytest.fixture(scope="module")
def timeline_dir(tmp_path_factory):
    return write_tiny_timeline(tmp_path_factory.mktemp("timeline") / "timetravel")


@pytest.fixture(scope="module")
def timeline(timeline_dir):
    return TimelineBundle.open(timeline_dir)


def _n(timeline) -> int:
    return len(timeline.points()["label"])


# --------------------------------------------------------------------------------------------------
# Pure views


def test_the_region_image_is_the_bundles_png_on_the_frames_extent(timeline):
    epochs = timeline.epochs()
    for p in (0, 3):
        data = tv.scene(timeline, p)["regions"]
        rgba = data["image"][0].view(np.uint8).reshape(*data["image"][0].shape, 4)
        # Bokeh's row 0 is the bottom: flipped back, the RGB is the stored PNG, fully opaque
        np.testing.assert_array_equal(rgba[::-1, :, :3], timeline.region(p))
        assert (rgba[..., 3] == 255).all()
        r = 1.1 * (1 + p)  # the planted extent
        assert (data["x"], data["y"], data["dw"], data["dh"]) == ([-r], [-r], [2 * r], [2 * r])
        assert data["x"][0] == pytest.approx(epochs["x_min"][p])
    assert not np.array_equal(timeline.region(0), timeline.region(4))  # (the planted bands move)


def test_points_of_each_domain_with_their_marker_class_colour_and_planted_coords(timeline):
    points, n = timeline.points(), _n(timeline)
    fig, sources = tv.timeline_figure(timeline)
    data = tv.scene(timeline, 2)
    tv.show(sources, data)
    markers = {r.name: r.glyph.marker for r in fig.renderers if r.name in ("source domain", "target domain")}
    assert markers == {"source domain": "x", "target domain": "circle"}
    coords = planted_coords(2, n)
    for domain in ("source", "target"):
        rows = [i for i, d in enumerate(points["domain"]) if d == domain]
        got = sources[domain].data
        assert list(got["point"]) == rows
        np.testing.assert_allclose(np.c_[got["x"], got["y"]], coords[rows], rtol=1e-6)
        assert list(got["class"]) == [timeline.classes[points["label"][i]] for i in rows]
        assert list(got["color"]) == [class_color(int(points["label"][i])) for i in rows]
        # planted prediction at position p: (i + p) mod classes
        assert list(got["predicted"]) == [timeline.classes[(i + 2) % 3] for i in rows]
    np.testing.assert_allclose(np.c_[data["boundary"]["x"], data["boundary"]["y"]], coords[:3] * 0.5, rtol=1e-6)


def test_selected_classes_are_drawn_in_full_and_the_others_faded(timeline):
    data = tv.scene(timeline, 0, selected=["b", "not-a-class"])
    for domain in ("source", "target"):
        want = [tv.SHOWN if c == "b" else tv.FADED for c in data[domain]["class"]]
        assert list(data[domain]["alpha"]) == want
    assert set(tv.scene(timeline, 0)["source"]["alpha"]) == {tv.SHOWN}  # nothing selected: all in full


def test_trajectories_run_through_the_planted_coordinates_of_every_position(timeline):
    n, positions = _n(timeline), timeline.n_positions
    data = tv.scene(timeline, 1, tracked=[5, 2, 5, n + 3, -1])  # a repeat and unknown ids dropped
    lines = data["trajectories"]
    assert lines["point"] == [5, 2]
    for j, i in enumerate((5, 2)):
        want = np.stack([planted_coords(p, n)[i] for p in range(positions)])
        np.testing.assert_allclose(np.c_[lines["xs"][j], lines["ys"][j]], want, rtol=1e-6)
        assert lines["color"][j] == class_color(i % 3)
    np.testing.assert_allclose(np.c_[data["now"]["x"], data["now"]["y"]], planted_coords(1, n)[[5, 2]], rtol=1e-6)
    assert tv.scene(timeline, 1)["trajectories"]["xs"] == []


def test_the_readout_numbers_are_the_bundles(timeline):
    for p in range(timeline.n_positions):
        cells = dict(re.findall(r"data-metric='(\w+)'>([^<]*)<", tv.readout_html(timeline.epochs(), p)))
        assert set(cells) == {name for name, _, _ in tv.METRIC_MEANINGS}
        for name, text in cells.items():
            want = planted_metric(name, p)
            assert text == ("n/a" if np.isnan(want) else f"{want:.3f}"), name
    assert "n/a" in tv.readout_html(timeline.epochs(), 0)  # temporal corr. has no previous position


def test_the_axis_labels_each_position_and_marks_the_transfer(timeline):
    epochs = timeline.epochs()
    fig, marker = tv.axis_figure(epochs, timeline.transfer_position)
    assert fig.xaxis[0].major_label_overrides == {0: "s1", 1: "s2", 2: "s3", 3: "t1", 4: "t2"}
    spans = [r for r in fig.center if isinstance(r, Span)]
    assert [s.location for s in spans] == [timeline.transfer_position - 0.5]
    tv.show_axis(marker, 4)
    assert marker.data == {"x": [4], "y": [0]}
    assert tv.position_labels(epochs) == ["source e1", "source e2", "source e3", "target e1", "target e2"]
    assert tv.figure_title(epochs, 2, 3).endswith("the last before the transfer")
    assert tv.figure_title(epochs, 3, 3).endswith("the first after the transfer")
    fig, _ = tv.axis_figure(epochs, None)  # a target-only timeline: no transfer mark
    assert not [r for r in fig.center if isinstance(r, Span)]


@pytest.mark.parametrize(("n", "transfer", "want"), [
    (13, 8, [0, 2, 5, 7, 8, 12]), (5, 3, [0, 1, 2, 3, 4]), (1, None, [0]), (13, None, [0, 2, 5, 7, 10, 12]),
    (30, 29, [0, 6, 12, 17, 28, 29])])
def test_the_strip_holds_the_first_the_last_source_the_first_target_and_the_last(n, transfer, want):
    got = tv.strip_positions(n, transfer)
    assert got == want and {0, n - 1} <= set(got)
    if transfer is not None:
        assert {transfer - 1, transfer} <= set(got)


def test_class_names_and_notes_are_escaped(tmp_path):
    root = write_tiny_timeline(tmp_path / "t", classes=(HOSTILE, "b", "c"))
    t = TimelineBundle.open(root)
    for text in (tv.legend_html(t.classes), tv.strip_html(t)):
        assert "<img src=x" not in text.replace("<img src='data:", "")
    assert html.escape(HOSTILE) in tv.legend_html(t.classes)


# --------------------------------------------------------------------------------------------------
# The tab over an AppState


@pytest.fixture()
def source(tiny_bundle, timeline_dir, tmp_path):
    broken = shutil.copytree(timeline_dir, tmp_path / "broken")
    (broken / "frames" / "001" / "coords.npy").write_bytes(b"truncated")
    rows = [{"diagnostics_run_id": d, "target_run_id": f"t{d}"} for d in ("d1", "d2", "d3")]
    return MemorySource({"1": "e"}, {"1": rows}, {d: tiny_bundle for d in ("d1", "d2", "d3")},
                        timelines={"d1": timeline_dir, "d3": broken})


def _tab(source, **params):
    state = AppState(source, tab_titles=TITLES, tab_count=len(TITLES), tab=TRAINING, **params)
    tab = TrainingTab(state=state, index=TRAINING)
    return state, tab, drawn(tab)


def _image(fig):
    return fig.select_one({"name": "timeline-regions"}).data["image"][0]


def test_an_epoch_switch_writes_the_frame_into_the_same_figure(source, timeline):
    state, tab, layout = _tab(source, pair="d1")
    fig = find(layout, pn.pane.Bokeh, "timeline").object
    regions = fig.select_one({"name": "timeline-regions"})
    assert state.epoch == 0 and tab._player.value == 0
    assert list(tab._player.options) == ["source e1", "source e2", "source e3", "target e1", "target e2"]
    state.epoch = 4
    assert find(layout, pn.pane.Bokeh, "timeline").object is fig  # not rebuilt
    assert fig.select_one({"name": "timeline-regions"}) is regions
    np.testing.assert_array_equal(_image(fig).view(np.uint8).reshape(40, 40, 4)[::-1, :, :3], timeline.region(4))
    src = fig.select_one({"name": "timeline-target"}).data
    np.testing.assert_allclose(src["x"], planted_coords(4, _n(timeline))[src["point"], 0], rtol=1e-6)
    assert fig.title.text.startswith("target e2") and tab._player.value == 4
    assert f"'nn_train_15'>{planted_metric('nn_train_15', 4):.3f}<" in find(layout, pn.pane.HTML,
                                                                         "timeline-readout").object
    tab._player.value = 1  # the player drives the state (and so the URL)
    assert state.epoch == 1 and fig.title.text.startswith("source e2")


def test_a_link_past_the_end_shows_the_last_position(source):
    state, tab, layout = _tab(source, pair="d1", epoch=99)
    assert find(layout, pn.pane.Bokeh, "timeline").object.title.text.startswith("target e2")
    assert state.epoch == 4  # the player's clamp is written back


def test_a_lasso_pick_tracks_points_and_the_class_selection_fades_the_others(source, timeline):
    state, tab, layout = _tab(source, pair="d1", classes=["a"])
    fig = find(layout, pn.pane.Bokeh, "timeline").object
    target = fig.select_one({"name": "timeline-target"})
    assert list(target.data["alpha"]) == [tv.SHOWN if c == "a" else tv.FADED for c in target.data["class"]]
    image = _image(fig)
    target.selected.indices = [0, 2]  # what a lasso over two target points sends
    picked = [int(target.data["point"][0]), int(target.data["point"][2])]
    assert state.tracked == picked
    assert _image(fig) is image  # a pick sends the lines, not the region image again
    lines = fig.select_one({"name": "timeline-trajectories"}).data
    assert lines["point"] == picked and len(lines["xs"][0]) == timeline.n_positions
    state.classes = []
    assert set(target.data["alpha"]) == {tv.SHOWN}
    tab._choose.value = ["b"]  # the tab's own class choice is the state's
    assert state.classes == ["b"] and sum(a == tv.SHOWN for a in target.data["alpha"]) == len(target.data["alpha"]) // 3
    state.tracked = []
    assert list(target.selected.indices) == [] and fig.select_one({"name": "timeline-trajectories"}).data["xs"] == []


def test_tracked_points_from_a_link_are_drawn_and_selected(source, timeline):
    n = _n(timeline)
    state, tab, layout = _tab(source, pair="d1", tracked=[1, n - 1, n + 50])
    fig = find(layout, pn.pane.Bokeh, "timeline").object
    assert fig.select_one({"name": "timeline-trajectories"}).data["point"] == [1, n - 1]
    assert list(fig.select_one({"name": "timeline-source"}).selected.indices) == [1]
    assert list(fig.select_one({"name": "timeline-target"}).selected.indices) == [n // 2 - 1]


def test_another_pairs_timeline_forgets_the_picked_points_and_keeps_the_position(source, timeline_dir):
    source.timelines["d2"] = timeline_dir
    state, tab, layout = _tab(source, pair="d1", tracked=[1, 2], epoch=3)
    state.pair = "d2"
    fig = find(layout, pn.pane.Bokeh, "timeline").object
    assert state.tracked == [] and fig.select_one({"name": "timeline-trajectories"}).data["xs"] == []
    assert state.epoch == 3 and fig.title.text.startswith("target e1")


def test_a_pair_without_a_timeline_shows_the_command(source):
    state, tab, layout = _tab(source, pair="d2")
    text = find(layout, pn.pane.Markdown, "no-timeline").object
    assert "mlflow-transfer timetravel --target-run-id td2" in text
    assert not [w for w in layout.select(pn.widgets.DiscretePlayer)]  # no player without a timeline


def test_a_source_written_before_issue_14_has_no_timeline(tiny_bundle):
    class Older(MemorySource):
        timeline = None  # no such method

    state, tab, layout = _tab(Older({"1": "e"}, {"1": [{"diagnostics_run_id": "d1"}]}, {"d1": tiny_bundle}))
    assert "mlflow-transfer timetravel" in find(layout, pn.pane.Markdown, "no-timeline").object


def test_a_broken_timeline_is_the_tabs_error_and_the_other_tabs_work(source):
    state, tab, layout = _tab(source, pair="d3")
    error = find(layout, pn.pane.Alert, "timeline-error").object
    assert "frames/001/coords" in error and "mlflow-transfer timetravel --target-run-id td3" in error
    assert state.bundle is not None and state.error == ""  # the pair itself opened
    stats = drawn(StatisticsTab(state=state, index=None))
    assert not [a for a in stats.select(pn.pane.Alert) if a.visible and a.object]
    state.pair = "d1"  # and the next pair's timeline draws
    layout.get_root()
    assert find(layout, pn.pane.Bokeh, "timeline").object is not None


def test_a_frame_broken_on_a_switch_is_said_and_the_picture_kept(source, timeline_dir, tmp_path):
    """A frame whose files hash right but do not fit (coordinates NaN: written by something else than
    mlflow-transfer, the manifest rewritten to match) is found when it is first shown."""
    import hashlib

    odd = shutil.copytree(timeline_dir, tmp_path / "odd")
    path = odd / "frames" / "002" / "coords.npy"
    coords = np.load(path)
    coords[0, 0] = np.nan
    np.save(path, coords)
    manifest = json.loads((odd / "manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "frames/002/coords.npy")
    entry.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (odd / "manifest.json").write_text(json.dumps(manifest))
    source.timelines["d2"] = odd
    state, tab, layout = _tab(source, pair="d2", epoch=1)
    fig = find(layout, pn.pane.Bokeh, "timeline").object
    drawn_image = _image(fig)
    state.epoch = 2
    error = find(layout, pn.pane.Alert, "timeline-status").object
    assert "finite coordinates in frames/002/coords" in error and "mlflow-transfer timetravel" in error
    assert _image(fig) is drawn_image and fig.title.text.startswith("source e2")  # the last picture kept
    state.epoch = 3
    assert not [a for a in layout.select(pn.pane.Alert) if a.name == "timeline-status"]
    assert fig.title.text.startswith("target e1")


def test_the_training_tab_keeps_its_position_so_old_links_keep_their_tab(source):
    # tabs added later go after it (Compare, issue 16)
    assert TABS[5] is TrainingTab and TITLES[:5] == ("Statistics", "Instances", "Network", "Features", "Robustness")
    app = build_app(source, sync_url=False, pair="d1", tab=TRAINING, epoch=3)
    assert app.state.tab == TRAINING and app.state.epoch == 3


# --------------------------------------------------------------------------------------------------
# The report's strip


def test_the_report_strip_draws_the_regions_and_points_of_the_chosen_positions(timeline, tiny_bundle, tmp_path):
    from ui import report

    page = report.write_report(tiny_bundle, tmp_path / "report.html", timeline_dir=timeline.reader.root).read_text()
    assert "<h2>Training timeline</h2>" in page
    cells = re.findall(r"<figure class='timeline-cell' data-position='(\d+)'.*?<img src='data:image/png;base64,"
                       r"([^']+)'.*?</figure>", page)
    assert [int(p) for p, _ in cells] == tv.strip_positions(timeline.n_positions, timeline.transfer_position)
    import base64

    for p, data in cells:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        region = np.asarray(Image.fromarray(tv.pale(timeline.region(int(p)))).resize((200, 200), Image.NEAREST))
        differs = (picture != region).any(-1)
        assert 0 < differs.mean() < 0.2  # the region image, with the points drawn over a small part of it
        # each point's pixel carries its class colour (n points on a circle: far enough apart)
        x0, x1, y0, y1 = timeline.frame(int(p)).extent
        for i, (x, y) in enumerate(planted_coords(int(p), _n(timeline))):
            col, row = round((x - x0) / (x1 - x0) * 199), round((y1 - y) / (y1 - y0) * 199)
            colour = tuple(int(class_color(i % 3)[k:k + 2], 16) for k in (1, 3, 5))
            patch = picture[max(row - 2, 0):row + 3, max(col - 2, 0):col + 3].reshape(-1, 3)
            assert (patch == colour).all(-1).any(), (p, i)
    assert "data-position='3'" in page and "transfer →" in page
    assert "Training timeline" not in report.build_report_html(report.PairBundle.open(tiny_bundle))


# --------------------------------------------------------------------------------------------------
# In Chromium: the app's real server over a MemorySource (helpers/memory_app.py)

# The regions' image data as BokehJS holds it (a hash of its pixels), and where the plot's frame is on screen.
_REGIONS = """() => {
  const doc = Bokeh.documents[0];
  const source = doc && doc.get_model_by_name('timeline-regions');
  if (!source || !source.data.image || !source.data.image.length) return null;
  const pixels = source.data.image[0];
  let hash = 0;
  for (let i = 0; i < pixels.length; i++) hash = (Math.imul(hash, 31) + pixels[i]) >>> 0;
  const lines = doc.get_model_by_name('timeline-trajectories');
  return {hash, dw: source.data.dw[0], n: pixels.length, lines: lines ? lines.data.xs.length : -1};
}"""

_FRAME = """() => {
  const seen = new Set();
  function* walk(v) { if (!v || seen.has(v)) return; seen.add(v); yield v; for (const c of (v.child_views ?? [])) yield* walk(c); }
  for (const root of Bokeh.index.roots ?? [])
    for (const v of walk(root))
      if (v.frame && v.model.renderers && v.model.renderers.some(r => r.name === 'regions')) {
        const box = v.canvas_view.el.getBoundingClientRect(), f = v.frame.bbox;
        return {x: box.left + f.left, y: box.top + f.top, width: f.width, height: f.height};
      }
  return null;
}"""


@pytest.fixture(scope="module")
def served_timeline(tiny_bundle, timeline_dir):
    from helpers.servers import memory_ui

    rows = [{"diagnostics_run_id": "d1", "target_run_id": "t1"}, {"diagnostics_run_id": "d2", "target_run_id": "t2"}]
    with memory_ui({"experiments": {"1": "e"}, "pairs": {"1": rows}, "bundles": {"d1": tiny_bundle, "d2": tiny_bundle},
                    "timelines": {"d1": timeline_dir}}) as url:
        yield url


def _pixels(page, frame) -> np.ndarray:
    png = page.screenshot(clip=frame)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


@pytest.mark.slow
@needs_chromium
def test_the_slider_changes_the_region_image_in_the_browser_and_a_lasso_picks_points(served_timeline, page, timeline):
    from urllib.parse import parse_qs, urlparse

    page.goto(f"{served_timeline}?pair=d1&tab={TRAINING}")
    page.get_by_text("How faithful is this picture?").wait_for(timeout=90_000)
    page.wait_for_function(_REGIONS, timeout=30_000)
    before, frame = page.evaluate(_REGIONS), page.evaluate(_FRAME)
    pixels = _pixels(page, frame)
    page.locator(".epoch-player button.last").click()  # the player's "last" button: target e2
    page.wait_for_function(f"() => {{ const r = ({_REGIONS})(); return r && r.hash !== {before['hash']}; }}",
                           timeout=30_000)
    page.wait_for_function("() => new URLSearchParams(location.search).get('epoch') === '4'", timeout=30_000)
    after = page.evaluate(_REGIONS)
    assert after["n"] == before["n"] == 40 * 40 and after["dw"] == pytest.approx(2 * 1.1 * 5)
    page.wait_for_timeout(500)  # the canvas repaints after the data arrives
    changed = (np.abs(_pixels(page, frame) - pixels).sum(-1) > 30).mean()
    assert changed > 0.05, changed  # the picture on screen changed, not only the data behind it
    page.screenshot(path=str(timeline.reader.root.parent / "training.png"), full_page=True)
    # a lasso around the whole frame picks every point: their trajectories are drawn and in the link
    x, y, w, h = frame["x"], frame["y"], frame["width"], frame["height"]
    page.mouse.move(x + 5, y + 5)
    page.mouse.down()
    for px, py in ((x + w - 5, y + 5), (x + w - 5, y + h - 5), (x + 5, y + h - 5), (x + 5, y + 10)):
        page.mouse.move(px, py, steps=8)
    page.mouse.up()
    n = _n(timeline)
    page.wait_for_function(f"() => ({_REGIONS})().lines === {n}", timeout=30_000)
    page.wait_for_function("() => JSON.parse(new URLSearchParams(location.search).get('tracked') || '[]').length > 0",
                           timeout=30_000)
    assert sorted(json.loads(parse_qs(urlparse(page.url).query)["tracked"][0])) == list(range(n))


@pytest.mark.slow
@needs_chromium
def test_a_pair_without_a_timeline_shows_the_command_in_the_browser(served_timeline, page):
    page.goto(f"{served_timeline}?pair=d2&tab={TRAINING}")
    page.get_by_text("mlflow-transfer timetravel --target-run-id t2").wait_for(timeout=90_000)
    assert page.locator(".epoch-player").count() == 0


# --------------------------------------------------------------------------------------------------
# Through a real sqlite tracking store and `mlflow-transfer ui` (`tracking.bundles.fetch_timeline`)


def _fetch_timeline_merged() -> None:
    from mlflow_transfer.tracking import bundles

    if not hasattr(bundles, "fetch_timeline"):  # written on the tracking branch of issue 14
        pytest.skip("needs mlflow_transfer.tracking.bundles.fetch_timeline (issue 14's tracking side)")


@pytest.fixture(scope="module")
def tracked_store(module_store, tiny_bundle, timeline_dir, tmp_path_factory):
    """Two diagnosed pairs in one experiment: one with a ``timetravel/`` folder beside ``diagnostics/``."""
    from mlflow import MlflowClient

    from mlflow_transfer.tags import TAGS

    client = MlflowClient(module_store.uri)
    exp = module_store.experiment_id
    source = client.create_run(exp, tags={TAGS.role: "source"}).info.run_id
    runs = {}
    for name, timeline in (("with", timeline_dir), ("without", None)):
        target = client.create_run(exp, tags={TAGS.role: "target", TAGS.source_run_id: source}).info.run_id
        client.set_terminated(target, "FINISHED")
        diag = client.create_run(exp, tags={TAGS.role: "diagnostics", TAGS.source_run_id: source,
                                            TAGS.target_run_id: target}).info.run_id
        client.log_artifacts(diag, str(tiny_bundle), "diagnostics")
        if timeline is not None:
            client.log_artifacts(diag, str(timeline), "timetravel")
        client.set_terminated(diag, "FINISHED")
        runs[name] = {"target": target, "diagnostics": diag}
    return {"store": module_store, "runs": runs, "cache": tmp_path_factory.mktemp("cache")}


def test_the_tracking_source_reads_a_pairs_timeline_and_none_without_one(tracked_store, timeline):
    from ui.readers import TrackingSource

    _fetch_timeline_merged()
    store, runs = tracked_store["store"], tracked_store["runs"]
    source = TrackingSource(store.uri, cache_dir=tracked_store["cache"])
    found = source.timeline(runs["with"]["diagnostics"])
    assert found.n_positions == timeline.n_positions and found.classes == timeline.classes
    np.testing.assert_array_equal(found.region(3), timeline.region(3))
    assert source.timeline(runs["with"]["diagnostics"]) is found  # kept open
    assert source.timeline(runs["without"]["diagnostics"]) is None
    state = AppState(source, tab_titles=TITLES, tab_count=len(TITLES), tab=TRAINING, experiment=store.experiment_id,
                     pair=runs["with"]["diagnostics"], epoch=2)
    layout = drawn(TrainingTab(state=state, index=TRAINING))
    assert find(layout, pn.pane.Bokeh, "timeline").object.title.text.startswith("source e3")


@pytest.mark.slow
@needs_chromium
def test_the_training_tab_over_mlflow_transfer_ui(tracked_store, page):
    from helpers.servers import clean_env, transfer_ui

    _fetch_timeline_merged()
    store, runs = tracked_store["store"], tracked_store["runs"]
    env = clean_env(MLFLOW_TRANSFER_CACHE=str(store.root / "ui-cache"))
    with transfer_ui(store.uri, store.root, env) as (url, _):
        page.goto(f"{url}?experiment={store.experiment_id}&pair={runs['with']['diagnostics']}&tab={TRAINING}")
        page.get_by_text("How faithful is this picture?").wait_for(timeout=90_000)
        page.wait_for_function(_REGIONS, timeout=30_000)
        before = page.evaluate(_REGIONS)["hash"]
        page.locator(".epoch-player button.last").click()
        page.wait_for_function(f"() => ({_REGIONS})().hash !== {before}", timeout=30_000)
        page.goto(f"{url}?experiment={store.experiment_id}&pair={runs['without']['diagnostics']}&tab={TRAINING}")
        page.get_by_text(f"mlflow-transfer timetravel --target-run-id {runs['without']['target']}").wait_for(
            timeout=90_000)


HOSTILE_CLASSES = (HOSTILE, "[x](javascript:alert(2))", "q\"'><svg onload=alert(3)>")


@pytest.fixture(scope="module")
def hostile_timeline(tmp_path_factory):
    root = write_tiny_timeline(tmp_path_factory.mktemp("hostile") / "timetravel", classes=HOSTILE_CLASSES)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["timeline"]["notes"] = [f"note {HOSTILE} `{HOSTILE}`"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.slow
@needs_chromium
def test_hostile_class_names_and_notes_run_no_script_in_the_tab_or_the_report(hostile_timeline, tiny_bundle,
                                                                               browser, tmp_path):
    from helpers.servers import memory_ui

    from ui.report import write_report

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        rows = [{"diagnostics_run_id": "d1", "target_run_id": "t1"}]
        with memory_ui({"experiments": {"1": "e"}, "pairs": {"1": rows}, "bundles": {"d1": tiny_bundle},
                        "timelines": {"d1": hostile_timeline}}) as url:
            page.goto(f"{url}?pair=d1&tab={TRAINING}&tracked=[0,1]")
            page.get_by_text("How faithful is this picture?").wait_for(timeout=90_000)
            page.locator(".epoch-player button.next").click()
            page.wait_for_timeout(500)  # an <img src=x>'s error event fires once its request fails
            text = page.evaluate(PAGE_TEXT)
            assert HOSTILE in text  # shown, as text (the legend and the note)
            assert page.evaluate(HOSTILE_ELEMENTS) == [] and dialogs == []
        report = write_report(tiny_bundle, tmp_path / "report.html", timeline_dir=hostile_timeline)
        page.goto(report.as_uri())
        page.get_by_text("Training timeline").wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        assert page.evaluate(HOSTILE_ELEMENTS) == [] and dialogs == []
    finally:
        page.close()
