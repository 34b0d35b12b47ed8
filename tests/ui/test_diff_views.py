"""The two-pair diff (issue 16) on planted bundles: every number against hand-worked values."""

from __future__ import annotations

import math

import holoviews as hv
import pytest
from helpers.compare_rows import write_diff_bundle

from mlflow_transfer.bundle import PairBundle
from ui.views import diff as dv
from ui.views.style import DATASET_COLOR

A_IMPORTANT = {("target", "a", "conv1"): [1, 2, 3], ("source", "b", "conv2"): [0],
               ("target", "c", "conv1"): [7], ("target", "a", "fc1"): [4]}
B_IMPORTANT = {("target", "a", "conv1"): [2, 3, 4, 5], ("source", "b", "conv2"): [0],
               ("target", "d", "conv1"): [7], ("target", "a", "fc2"): [4]}


def _a(root, source="5" * 32):
    return PairBundle.open(write_diff_bundle(
        root, classes=["a", "b", "c"], layers=["conv1", "conv2", "fc1"],
        confusion_target=[[8, 2, 0], [1, 3, 0], [0, 0, 5]], share=[0.9, 0.5, math.nan], cka_diagonal=[0.95, 0.8, 0.4],
        important=A_IMPORTANT, source_run=source,
        history={("target", "target_val"): ([0, 1], [0.4, 0.8]), ("source", "source_train"): ([0], [0.9])}))


def _b(root, source="5" * 32):
    return PairBundle.open(write_diff_bundle(
        root, classes=["a", "b", "d"], layers=["conv1", "conv2", "fc2"],
        confusion_target=[[5, 5, 0], [0, 4, 0], [0, 0, 0]], share=[0.7, 0.6, 0.1], cka_diagonal=[0.9, 0.85, 0.3],
        important=B_IMPORTANT, source_run=source))


@pytest.fixture()
def pair(tmp_path):
    return _a(tmp_path / "a"), _b(tmp_path / "b")


def test_per_class_accuracy_difference_over_the_shared_classes(pair):
    a, b = pair
    assert dv.class_accuracy(a) == {"a": 0.8, "b": 0.75, "c": 1.0}
    found = dv.class_accuracy(b)
    assert found["a"] == 0.5 and found["b"] == 1.0 and math.isnan(found["d"])  # no instance of d
    frame = dv.class_difference(a, b)
    assert frame["class"].tolist() == ["a", "b"]
    assert frame["B − A"].tolist() == pytest.approx([-0.3, 0.25])
    assert isinstance(dv.class_difference_bars(frame), hv.Bars)


def test_share_and_cka_differences_for_the_shared_layer_names(pair):
    a, b = pair
    frame = dv.depth_difference(a, b)
    assert frame["layer"].tolist() == ["conv1", "conv2"]
    assert frame["share B − A"].tolist() == pytest.approx([-0.2, 0.1])
    assert frame["cka B − A"].tolist() == pytest.approx([-0.05, 0.05])
    assert frame["share A"].tolist() == [0.9, 0.5] and frame["cka B"].tolist() == [0.9, 0.85]
    assert isinstance(dv.depth_difference_plot(frame), hv.Overlay)


def test_neuron_overlap_is_the_jaccard_of_the_sets_both_pairs_have(pair):
    a, b = pair
    frame, why = dv.neuron_overlap(a, b)
    assert why == ""
    got = {(r.model, r["class"], r.layer): (r.jaccard, r.shared, r.A, r.B) for _, r in frame.iterrows()}
    expected = {}
    for key in set(A_IMPORTANT) & set(B_IMPORTANT):  # the reference: Python sets
        x, y = set(A_IMPORTANT[key]), set(B_IMPORTANT[key])
        expected[key] = (len(x & y) / len(x | y), len(x & y), len(x), len(y))
    assert got == expected == {("target", "a", "conv1"): (0.4, 2, 3, 4), ("source", "b", "conv2"): (1.0, 1, 1, 1)}
    assert isinstance(dv.overlap_heatmap(frame, "target"), hv.HeatMap)


def test_no_overlap_when_the_pairs_start_from_different_source_runs(tmp_path):
    a, b = _a(tmp_path / "a"), _b(tmp_path / "b", source="6" * 32)
    frame, why = dv.neuron_overlap(a, b)
    assert frame is None and "different source runs" in why
    frame, why = dv.neuron_overlap(_a(tmp_path / "a2", source=None), b)
    assert frame is None and "pair A does not record its source run" in why


def test_accuracy_curves_of_both_pairs_are_overlaid_a_solid_b_dashed(pair):
    a, b = pair
    paths = dv.accuracy_series(a, b, ("one", "two"))
    assert [p["series"] for p in paths] == ["A one: source train (source model)",
                                            "A one: target validation (target model)",
                                            "B two: target validation (target model)"]
    assert [p["dash"] for p in paths] == ["solid", "solid", "dashed"]
    assert [p["colour"] for p in paths] == [DATASET_COLOR["source_train"], DATASET_COLOR["target_val"],
                                            DATASET_COLOR["target_val"]]
    lines = dv.accuracy_lines(paths)
    assert isinstance(lines, hv.Contours) and len(lines.split()) == 3
    assert lines.split()[2].dimension_values("accuracy").tolist() == [0.4, 0.8]
    # one multi-line glyph: per-path colour and dash from the data, a legend entry per series value
    from bokeh.models import Legend, MultiLine

    figure = hv.render(lines)
    renderer = next(r for r in figure.renderers if isinstance(r.glyph, MultiLine))
    data = renderer.data_source.data
    assert list(data["series"]) == [p["series"] for p in paths] and list(data["line_dash"]) == ["solid", "solid", "dashed"]
    assert [item.label.field for legend in figure.select({"type": Legend}) for item in legend.items] == ["series"]


def test_accuracy_lines_without_any_history_say_so(tmp_path):
    empty = PairBundle.open(write_diff_bundle(
        tmp_path / "e", classes=["a"], layers=["conv1"], confusion_target=[[1]], share=[0.5], cka_diagonal=[0.5],
        important={}, source_run=None, history={("target", "target_val"): ([], [])}))
    paths = dv.accuracy_series(empty, empty)
    assert [p["series"] for p in paths] == [dv.NO_HISTORY]
    hv.render(dv.accuracy_lines(paths))  # an empty plot, drawn


def test_read_records_answers_as_the_bundle(pair):
    a, b = pair
    ra, rb = dv.read_records(a), dv.read_records(b)
    assert dv.class_difference(ra, rb).equals(dv.class_difference(a, b))
    assert dv.depth_difference(ra, rb).equals(dv.depth_difference(a, b))
    assert dv.neuron_overlap(ra, rb)[0].equals(dv.neuron_overlap(a, b)[0])
    assert dv.accuracy_series(ra, rb)[0]["series"] == dv.accuracy_series(a, b)[0]["series"]
    with pytest.raises(KeyError):
        ra.confusion_matrix("source")
