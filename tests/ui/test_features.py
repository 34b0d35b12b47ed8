"""The feature view (paper §5.4.2) without a browser: frames, HoloViews and bokeh objects and the tab's wiring
over `AppState`, all checked against the arrays stored in the tiny bundle."""

from __future__ import annotations

import base64
import io

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from helpers.views import drawn, find
from PIL import Image

from mlflow_transfer.bundle import PairBundle
from ui.readers import MemorySource
from ui.state import AppState
from ui.views import features as fv
from ui.tabs.features import FeaturesTab
from ui.views.style import SOURCE, TARGET


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return PairBundle.open(tiny_bundle)


@pytest.fixture()
def state(tiny_bundle):
    row = {"diagnostics_run_id": "d1", "recipe": "digits", "model": "alexnet-32", "source_domain": "s",
           "target_domain": "t", "start_time": 1_700_000_000_000, "transferability_score": 0.4,
           "target_accuracy": 0.9, "frozen_layers": "[]"}
    return AppState(MemorySource({"1": "pairs"}, {"1": [row]}, {"d1": tiny_bundle}))


def _opt(element, key):
    return element.opts.get().kwargs[key]


def test_frame_holds_the_stored_coefficients_in_the_stored_neuron_order(bundle):
    rec = bundle.discriminability("a")
    frame = fv.feature_frame(bundle, "a")
    assert list(zip(frame["layer"], frame["neuron"])) == [(layer, n) for layer, n in rec["neurons"]]
    np.testing.assert_array_equal(frame["discriminability"], rec["coef"])  # signed, as stored
    np.testing.assert_array_equal(frame["|discriminability|"], np.abs(rec["coef"]))
    np.testing.assert_array_equal(frame["column"], np.arange(len(rec["coef"])))
    assert frame["label"][0] == f"{rec['neurons'][0][0]}:{rec['neurons'][0][1]}"
    assert frame["rank"][rec["ranked"][0]] == 1 and sorted(frame["rank"]) == list(range(1, len(frame) + 1))
    assert all(s.startswith("<svg") for s in frame["conductance"])


def test_sorting_descending_follows_the_ranking_and_ascending_reverses_it(bundle):
    rec = bundle.discriminability("__all__")
    frame = fv.feature_frame(bundle)
    down, up = fv.sort_features(frame, "descending"), fv.sort_features(frame, "ascending")
    np.testing.assert_array_equal(down["column"], rec["ranked"])
    assert down["|discriminability|"][0] == np.abs(rec["coef"]).max()
    assert list(up["label"]) == list(down["label"])[::-1]
    assert np.all(np.diff(down["|discriminability|"]) <= 0)
    with pytest.raises(ValueError, match="order must be one of"):
        fv.sort_features(frame, "sideways")


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_patches_are_cropped_from_the_target_models_sprite(bundle):
    frame = fv.feature_frame(bundle, "a", patches=1)
    row = frame.iloc[0]
    rec = bundle.patches("target", row["layer"])
    i = list(rec["neurons"]).index(row["neuron"])
    k = rec["indices"].shape[2]
    p = rec["sprite"].shape[1] // k
    uris = [part.split('"')[0] for part in row["patches"].split('src="')[1:]]
    assert len(uris) == 2 and SOURCE in row["patches"] and TARGET in row["patches"]
    for dom, uri in enumerate(uris):  # one patch per domain: row 2·i + domain, first column
        np.testing.assert_array_equal(_decode(uri), rec["sprite"][(2 * i + dom) * p:(2 * i + dom + 1) * p, :p])


def test_mirrored_histogram_has_source_up_and_target_down(bundle):
    rec = bundle.discriminability("a")
    hist = fv.mirrored_histogram(rec, 3, "conv1:25")
    src, tgt = (el for el in hist if isinstance(el, hv.Histogram))
    np.testing.assert_array_equal(src.dimension_values("instances"), rec["hist_source"][3])
    np.testing.assert_array_equal(tgt.dimension_values("instances"), -rec["hist_target"][3])
    assert src.dimension_values("instances").min() >= 0 and tgt.dimension_values("instances").max() <= 0
    np.testing.assert_allclose(src.edges, rec["hist_edges"][3])
    assert _opt(src, "color") == SOURCE and _opt(tgt, "color") == TARGET
    hv.render(hist, backend="bokeh")


def test_plot_shows_the_stored_projection_with_the_domain_markers(bundle):
    rec = bundle.discriminability("a")
    plot = fv.discriminability_plot(bundle, "a", projection="all")
    for label, code, color, marker in (("source domain", 0, SOURCE, "x"), ("target domain", 1, TARGET, "circle")):
        r = plot.select_one({"name": label})
        np.testing.assert_allclose(np.column_stack([r.data_source.data["u"], r.data_source.data["g"]]),
                                   rec["coordinates"][rec["labels"] == code])
        assert r.glyph.line_color == color and r.glyph.marker == marker
    boundary = plot.select_one({"name": "boundary"})
    assert boundary.dimension == "height"
    assert boundary.location == pytest.approx(-rec["intercept"] / np.linalg.norm(rec["coef"]))
    title = plot.title.text
    assert f"{rec['cv_mean']:.3f}" in title and f"{rec['cv_std']:.3f}" in title
    assert f"{rec['folds_used']}-fold" in title and "fewer than the paper's 10 folds" in title
    assert "over all neurons" in title
    # the bundle's A is the matrix the stored projection was made from
    np.testing.assert_allclose(rec["scaled"] @ rec["basis"], rec["coordinates"], atol=1e-5)


def _segments(plot) -> dict:
    """label → (x1, y1, colour) of every biplot axis."""
    out = {}
    for name in ("axes", "checked axes"):
        r = plot.select_one({"name": name})
        d = r.data_source.data
        for x1, y1, label in zip(d["x1"], d["y1"], d["label"]):
            out[label] = (x1, y1, r.glyph.line_color)
    return out


def _points(plot) -> np.ndarray:
    """The drawn instances (u, g), source rows then target rows."""
    return np.vstack([np.column_stack([plot.select_one({"name": f"{d} domain"}).data_source.data[c] for c in "ug"])
                      for d in ("source", "target")])


# Hand-worked record: 3 neurons, coef (3, 4, 0) so u = (0.6, 0.8, 0), g = (0, 0, 1); 2 source, 2 target rows.
PLANTED = {"labels": np.array([0, 0, 1, 1]), "coef": np.array([3.0, 4.0, 0.0]), "ranked": np.array([1, 0, 2]),
           "neurons": [["l", 0], ["l", 1], ["l", 2]], "intercept": 0.0, "folds_used": 2, "cv_mean": 1.0,
           "cv_std": 0.0, "note": "", "basis": np.array([[0.6, 0.0], [0.8, 0.0], [0.0, 1.0]]),
           "scaled": np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 1.0], [0.5, 0.0, 0.5]])}
PLANTED["coordinates"] = PLANTED["scaled"] @ PLANTED["basis"]


def test_activated_projection_and_axes_by_hand():
    # top two activated ("l:1", "l:0"): A·W over columns 1, 0 only, worked by hand
    plot = fv.discriminability_plot(None, "x", top=2, record=PLANTED)
    np.testing.assert_allclose(_points(plot), [[0.6, 0.0], [0.8, 0.0], [-1.4, 0.0], [0.3, 0.0]])
    segs = _segments(plot)
    # W's rows scaled so the longest (l:1, 0.8) reaches the farthest instance (1.4): 1.4 and 0.6 / 0.8 · 1.4
    assert segs["l:1"][:2] == pytest.approx((1.4, 0.0)) and segs["l:0"][:2] == pytest.approx((1.05, 0.0))
    assert "2 activated neurons" in plot.title.text
    # ticking l:2 (coef 0) activates it: it enters the projection, and its axis is vertical (no horizontal length)
    plot = fv.discriminability_plot(None, "x", ["l:2"], top=2, record=PLANTED)
    np.testing.assert_allclose(_points(plot), [[0.6, -1.0], [0.8, 0.0], [-1.4, 1.0], [0.3, 0.5]])
    r = np.hypot(1.4, 1.0)  # farthest instance; the longest row of W (l:2) has norm 1
    segs = _segments(plot)
    assert segs["l:1"][:2] == pytest.approx((0.8 * r, 0.0)) and segs["l:0"][:2] == pytest.approx((0.6 * r, 0.0))
    assert segs["l:2"][:2] == pytest.approx((0.0, r)) and segs["l:2"][2] == fv.CHECKED_COLOR
    # the all-neuron option draws every column's projection, the axes still only of the activated ones
    plot = fv.discriminability_plot(None, "x", top=2, record=PLANTED, projection="all")
    np.testing.assert_allclose(_points(plot), PLANTED["coordinates"])
    assert set(_segments(plot)) == {"l:0", "l:1"}
    # a bundle without A (older schema) falls back to all neurons and says so
    old = {k: v for k, v in PLANTED.items() if k != "scaled"}
    plot = fv.discriminability_plot(None, "x", top=2, record=old)
    np.testing.assert_allclose(_points(plot), PLANTED["coordinates"])
    assert "no A" in plot.title.text
    with pytest.raises(ValueError, match="projection"):
        fv.discriminability_plot(None, "x", record=PLANTED, projection="some")


def test_biplot_axes_are_the_top_five_plus_the_checked_ones_with_horizontal_length_proportional_to_coef(bundle):
    rec = bundle.discriminability("__all__")
    labels = [f"{layer}:{n}" for layer, n in rec["neurons"]]
    top5 = [labels[j] for j in rec["ranked"][:5]]
    extra = labels[rec["ranked"][40]]
    plot = fv.discriminability_plot(bundle, "__all__", checked=[extra, top5[0], "conv9:999"])
    segs = _segments(plot)
    assert set(segs) == {*top5, extra}
    assert segs[extra][2] == fv.CHECKED_COLOR and {segs[x][2] for x in top5} == {fv.AXIS_COLOR}
    ratio = [abs(segs[x][0]) / abs(rec["coef"][labels.index(x)]) for x in segs]
    np.testing.assert_allclose(ratio, ratio[0])  # horizontal lengths proportional to |coef|
    active = [labels.index(x) for x in segs]
    coords = rec["scaled"][:, active] @ rec["basis"][active]  # A·W over the activated neurons
    np.testing.assert_allclose(np.sort(_points(plot), axis=0), np.sort(coords, axis=0), atol=1e-9)
    radius = np.linalg.norm(coords, axis=1).max()
    assert max(np.hypot(*segs[x][:2]) for x in segs) == pytest.approx(radius)  # the longest reaches the farthest
    for x in segs:  # direction: the neuron's row of W
        j = labels.index(x)
        assert np.cross(segs[x][:2], rec["basis"][j]) == pytest.approx(0, abs=1e-9)
        assert np.dot(segs[x][:2], rec["basis"][j]) > 0
    bottom5 = [labels[j] for j in rec["ranked"][::-1][:5]]
    assert set(_segments(fv.discriminability_plot(bundle, "__all__", order="ascending"))) == set(bottom5)


def test_cv_text_names_the_fallback_only_below_ten_folds():
    rec = {"folds_used": 4, "cv_mean": 0.8125, "cv_std": 0.1, "note": "used 4 folds instead"}
    assert fv.cv_summary(rec) == ("4-fold CV accuracy 0.812 ± 0.100 (fewer than the paper's 10 folds: "
                                  "used 4 folds instead)")
    assert fv.cv_summary(rec, note=False) == "4-fold CV accuracy 0.812 ± 0.100 (fewer than the paper's 10 folds)"
    assert fv.cv_summary({**rec, "folds_used": 10, "note": ""}) == "10-fold CV accuracy 0.812 ± 0.100"


def test_a_class_without_discriminability_is_an_empty_state(bundle):
    assert fv.read_discriminability(bundle, "c") is None
    frame = fv.feature_frame(bundle, "c")
    assert frame.empty and list(frame.columns) == fv.COLUMNS
    plot = fv.discriminability_plot(bundle, "c")
    assert "No domain discriminability" in plot.title.text and not plot.renderers
    assert "no target-domain instances" in fv.missing_message(bundle, "c")


def test_tab_follows_the_class_selection_and_writes_it_back(state, bundle):
    tab = FeaturesTab(state=state)
    layout = drawn(tab)
    table = find(layout, pn.widgets.Tabulator, "feature-ranking")
    assert tab.shown == fv.ALL and len(table.value) == len(bundle.discriminability()["coef"])
    state.select_class("a")
    rec = bundle.discriminability("a")
    table, plot = find(layout, pn.widgets.Tabulator, "feature-ranking"), find(layout, pn.pane.Bokeh, "discriminability")
    cv = find(layout, pn.pane.Markdown, "cv-accuracy")
    assert tab.shown == "a"
    np.testing.assert_array_equal(np.sort(table.value["discriminability"]), np.sort(rec["coef"]))
    assert f"{rec['cv_mean']:.3f}" in cv.object and f"{rec['cv_mean']:.3f}" in plot.object.title.text
    state.select_class("b", add=True)  # two classes: the view shows all of them, the selection stays
    assert tab.shown == fv.ALL and state.classes == ["a", "b"]
    select = layout.select(pn.widgets.Select)[0]
    select.value = "b"  # picked here: the other views follow
    assert state.classes == ["b"]
    select.value = fv.ALL
    assert state.classes == []
    select.value = "c"
    empty = find(layout, pn.pane.Markdown, "features-empty")
    assert state.classes == ["c"] and "no target-domain instances" in empty.object
    assert not layout.select(pn.widgets.Tabulator) and not layout.select(pn.pane.Bokeh)
    layout.get_root()  # the whole tab builds its bokeh models
    state.bundle = PairBundle.open(bundle.reader.root)  # another pair loaded: the tab follows it
    state.classes = ["a"]
    assert tab.shown == "a" and find(layout, pn.widgets.Tabulator, "feature-ranking").selection == []


def test_ticking_a_row_adds_its_axis_and_survives_a_reorder(state, bundle):
    tab = FeaturesTab(state=state)
    layout = drawn(tab)
    table = find(layout, pn.widgets.Tabulator, "feature-ranking")
    label = table.value["label"].iloc[12]
    table.selection = [12]
    assert tab.checked == [label]
    assert _segments(find(layout, pn.pane.Bokeh, "discriminability").object)[label][2] == fv.CHECKED_COLOR
    tab.order = "ascending"
    table = find(layout, pn.widgets.Tabulator, "feature-ranking")
    assert table.value["label"].iloc[0] == fv.sort_features(fv.feature_frame(bundle), "ascending")["label"][0]
    assert list(table.value["label"].iloc[table.selection]) == [label] and tab.checked == [label]
    assert label in _segments(find(layout, pn.pane.Bokeh, "discriminability").object)
    table.selection = []  # unticked in the reordered list
    assert tab.checked == []


def test_projection_switch_redraws_the_plot_over_all_neurons(state, bundle):
    tab = FeaturesTab(state=state)
    layout = drawn(tab)
    rec = bundle.discriminability()
    assert tab.projection == "activated" and "activated neurons" in find(layout, pn.pane.Bokeh,
                                                                         "discriminability").object.title.text
    find(layout, pn.widgets.RadioButtonGroup, "projection").value = "all"
    plot = find(layout, pn.pane.Bokeh, "discriminability").object
    assert tab.projection == "all" and "over all neurons" in plot.title.text
    np.testing.assert_allclose(np.sort(_points(plot), axis=0), np.sort(rec["coordinates"], axis=0))


def test_tab_without_a_bundle_says_what_to_do():
    empty = AppState(MemorySource({}, {}, {}))
    assert "Select a diagnosed pair" in find(drawn(FeaturesTab(state=empty)), pn.pane.Markdown, "no-pair").object


def test_feature_view_states_the_stability_of_the_ranked_neurons_layers(state, bundle, tmp_path):
    import shutil

    from helpers.bundles import without_records
    from ui.views.stability import NOT_IN_BUNDLE

    tab = FeaturesTab(state=state)
    layout = drawn(tab)
    caption = find(layout, pn.pane.Markdown, "feature-stability")
    for layer in bundle.layers:  # all classes: the median over the analysed classes
        median = np.median([bundle.stability(c)[layer]["stability"] for c in bundle.compared_classes])
        assert f"{layer} {median:.2f}" in caption.object
    state.select_class("b")
    caption = find(layout, pn.pane.Markdown, "feature-stability")
    assert "important neurons of b" in caption.object
    for layer, r in bundle.stability("b").items():
        assert f"{layer} {r['stability']:.2f}" in caption.object
    state.select_class("c")
    assert "not analysed" in find(layout, pn.pane.Markdown, "feature-stability").object
    old = without_records(shutil.copytree(bundle.reader.root, tmp_path / "old"), "neurons/stability")
    state.bundle = PairBundle.open(old)
    state.select_class("a")
    assert find(layout, pn.pane.Markdown, "feature-stability").object == NOT_IN_BUNDLE
    assert find(layout, pn.widgets.Tabulator, "feature-ranking")  # the rest is drawn as before
