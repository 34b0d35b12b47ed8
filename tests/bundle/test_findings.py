"""Findings (issue 16) on planted bundles: each planted phenomenon gives its finding and no other of its kind,
a clean pair gives none, thresholds hold at their edges, the ranking follows the documented units, and the
stored record reads back (None for an older bundle, a BundleError for a malformed one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.findings import CLASSES, replace_findings, write_planted_bundle
from scipy.stats import rankdata

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle import findings as fm
from mlflow_transfer.bundle.io import add_json_record
from mlflow_transfer.errors import BundleError


def _findings(tmp_path, **plant) -> list[dict]:
    return fm.compute_findings(PairBundle.open(write_planted_bundle(tmp_path / "b", **plant)))[0]


def _of(found: list[dict], kind: str) -> list[dict]:
    return [f for f in found if f["kind"] == kind]


def test_rank_percentiles_are_scipys_average_ranks_scaled_to_0_1():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(30, 7)).astype(float)  # many ties
    a[3] = 1.0  # a row of one value
    expected = (rankdata(a, axis=1) - 1) / (a.shape[1] - 1)
    np.testing.assert_allclose(fm.rank_percentiles(a), expected, atol=1e-12)
    b = rng.normal(size=(5, 12))
    np.testing.assert_allclose(fm.rank_percentiles(b), (rankdata(b, axis=1) - 1) / 11, atol=1e-12)


def test_a_clean_pair_has_no_finding_of_any_kind(tmp_path):
    assert _findings(tmp_path) == []


@pytest.mark.parametrize(("score", "fires"), [(-0.0001, True), (0.0, False), (0.05, False)])
def test_negative_transfer_overall_fires_below_zero_only(tmp_path, score, fires):
    found = _findings(tmp_path, score=score)
    assert [f["kind"] for f in found] == (["negative_transfer"] if fires else [])
    if fires:
        f = found[0]
        assert f["evidence"] == {"transferability_score": -0.0001, "target_val_accuracy": 0.7}
        assert f["score"] == pytest.approx(0.0001 / fm.UNITS["negative_transfer"])
        assert (f["tab"], f["state"]) == ("Statistics", {"classes": []})


def test_no_score_recorded_is_no_negative_transfer(tmp_path):
    assert _findings(tmp_path, score=None) == []


@pytest.mark.parametrize(("target", "fires"), [(0.8 - 0.0501, True), (0.8 - 0.0499, False)])
def test_class_negative_transfer_at_its_threshold(tmp_path, target, fires):
    found = _findings(tmp_path, class_acc={"b": (0.8, target)})
    neg = _of(found, "class_negative_transfer")
    assert [f["evidence"]["class"] for f in neg] == (["b"] if fires else [])
    # the class is the largest loss either way (beyond 0.02), and nothing else is planted
    assert [f["evidence"]["class"] for f in _of(found, "largest_loss")] == ["b"]
    assert {f["kind"] for f in found} <= {"class_negative_transfer", "largest_loss"}
    if fires:
        f = neg[0]
        assert f["evidence"] == {"class": "b", "source_accuracy": 0.8, "target_accuracy": round(target, 4),
                                 "difference": round(target - 0.8, 4), "support": 20}
        assert f["score"] == pytest.approx(0.0501 / fm.CLASS_LOSS_ABOVE)
        assert (f["tab"], f["state"]) == ("Statistics", {"classes": ["b"]})


@pytest.mark.parametrize(("support", "fires"), [(fm.MIN_SUPPORT, True), (fm.MIN_SUPPORT - 1, False)])
def test_a_class_with_too_few_instances_gets_no_class_finding(tmp_path, support, fires):
    found = _findings(tmp_path, class_acc={"c": (0.9, 0.5)}, support={"c": support})
    assert bool(_of(found, "class_negative_transfer")) is fires and bool(_of(found, "largest_loss")) is fires


@pytest.mark.parametrize(("gain", "fires"), [(0.0201, True), (0.0199, False)])
def test_largest_gain_at_its_threshold_and_only_the_largest(tmp_path, gain, fires):
    small = 0.01  # a smaller gain elsewhere is not the largest
    found = _findings(tmp_path, class_acc={"c": (0.7, 0.7 + gain), "a": (0.7, 0.7 + small)})
    assert [f["kind"] for f in found] == (["largest_gain"] if fires else [])
    if fires:
        assert found[0]["evidence"]["class"] == "c" and found[0]["state"] == {"classes": ["c"]}
        assert found[0]["score"] == pytest.approx(gain / fm.UNITS["largest_gain"])


def test_largest_loss_is_the_worst_class_and_each_losing_class_is_its_own_finding(tmp_path):
    found = _findings(tmp_path, class_acc={"a": (0.8, 0.7), "d": (0.9, 0.6)})
    assert [f["evidence"]["class"] for f in _of(found, "largest_loss")] == ["d"]
    assert [f["evidence"]["class"] for f in _of(found, "class_negative_transfer")] == ["d", "a"]  # by score
    assert _of(found, "largest_gain") == []


@pytest.mark.parametrize(("target", "fires"), [(0.9 - 0.1001, True), (0.9 - 0.0999, False)])
def test_forgotten_source_accuracy_at_its_threshold(tmp_path, target, fires):
    found = _findings(tmp_path, source_domain={c: (0.9, target) for c in CLASSES})
    assert [f["kind"] for f in found] == (["forgotten_source"] if fires else [])
    if fires:
        e = found[0]["evidence"]
        assert e["source_model_accuracy"] == 0.9 and e["target_model_accuracy"] == round(target, 4)
        assert e["instances"] == 20 * len(CLASSES) and e["worst_class"] == "a"


def test_forgetting_is_weighted_over_the_whole_source_validation_set(tmp_path):
    # one class forgets 0.3, the other three nothing: 0.075 over the set, under the threshold
    assert _findings(tmp_path, source_domain={"b": (0.9, 0.6)}) == []
    found = _findings(tmp_path / "x", source_domain={"b": (0.9, 0.4), "c": (0.9, 0.8)})  # (0.5 + 0.1) / 4 = 0.15
    assert [f["kind"] for f in found] == ["forgotten_source"]
    assert found[0]["evidence"]["drop"] == pytest.approx(0.15) and found[0]["evidence"]["worst_class"] == "b"


@pytest.mark.parametrize(("shares", "depth"), [((0.9, 0.4999, None), 1), ((0.9, 0.5, None), None),
                                               ((0.3, 0.2, None), 0), ((0.9, 0.8, 0.1), 2)])
def test_inheritance_below_half_names_the_first_depth_only(tmp_path, shares, depth):
    found = _findings(tmp_path, shares=shares)
    assert [f["evidence"]["depth"] for f in _of(found, "inheritance_below_half")] == ([] if depth is None else [depth])
    assert {f["kind"] for f in found} <= {"inheritance_below_half"}
    if depth is not None:
        f = found[0]
        assert f["evidence"]["inherited_weight_share"] == shares[depth]
        assert f["score"] == pytest.approx((1 - shares[depth]) / 0.5)
        lo, hi = (depth, depth + 1) if depth < 2 else (1, 2)
        assert (f["tab"], f["state"]) == ("Network", {"classes": [], "layer_from": lo, "layer_to": hi, "neuron": ""})


@pytest.mark.parametrize(("m", "fires"), [(9, True), (10, False), (11, False)])
@pytest.mark.parametrize("domain", ["source", "target"])
def test_a_domain_specific_neuron_at_its_threshold(tmp_path, domain, m, fires):
    # top on its own domain's rows (percentile 1), m/20 on the other's: specificity 1 - m/20
    found = _findings(tmp_path, specific={domain: ("conv2", 3, m)})
    other = "target" if domain == "source" else "source"
    assert _of(found, f"{other}_only_neuron") == []
    assert [f["kind"] for f in found] == ([f"{domain}_only_neuron"] if fires else [])
    if fires:
        f = found[0]
        e = f["evidence"]
        assert (e["layer"], e["neuron"], e[f"{domain}_percentile"], e[f"{other}_percentile"]) == ("conv2", 3, 1.0, 0.45)
        assert e["specificity"] == pytest.approx(0.55) and e[f"{domain}_only_neurons"] == 1
        assert f["score"] == pytest.approx(0.55 / fm.DOMAIN_SPECIFIC_ABOVE)
        assert f["tab"] == "Network" and f["state"]["neuron"] == "target:conv2:3"
        assert (f["state"]["layer_from"], f["state"]["layer_to"]) == (1, 2) and f["state"]["classes"] == ["a"]


def test_the_most_specific_neuron_of_each_domain_is_named(tmp_path):
    found = _findings(tmp_path, specific={"source": ("fc", 0, 2), "target": ("conv1", 5, 0)})
    assert [(f["kind"], f["evidence"]["layer"], f["evidence"]["neuron"]) for f in found] == [
        ("target_only_neuron", "conv1", 5, ), ("source_only_neuron", "fc", 0)]  # specificity 1.0, then 0.9
    assert found[1]["state"] == {"classes": ["a"], "layer_from": 1, "layer_to": 2, "neuron": "target:fc:0"}


@pytest.mark.parametrize(("j", "fires"), [(0.4999, True), (0.5, False)])
def test_unstable_class_at_its_threshold(tmp_path, j, fires):
    found = _findings(tmp_path, stability={("b", "target", "conv2"): j, ("c", "source", "fc"): 0.6})
    assert [(f["kind"], f["evidence"]["class"]) for f in found] == ([("unstable_class", "b")] if fires else [])
    if fires:
        f = found[0]
        assert {k: f["evidence"][k] for k in ("model", "layer", "stability", "unstable_layers")} == {
            "model": "target", "layer": "conv2", "stability": 0.4999, "unstable_layers": 1}
        assert f["state"] == {"classes": ["b"], "layer_from": 1, "layer_to": 2, "neuron": ""}


def test_unstable_class_names_its_least_stable_layer_over_both_models(tmp_path):
    found = _findings(tmp_path, stability={("d", "target", "conv1"): 0.4, ("d", "source", "fc"): 0.1})
    assert len(found) == 1 and (found[0]["evidence"]["model"], found[0]["evidence"]["layer"]) == ("source", "fc")
    assert found[0]["evidence"]["unstable_layers"] == 2 and found[0]["score"] == pytest.approx(0.9 / 0.5)


def test_findings_are_ranked_by_score_across_kinds(tmp_path):
    found = _findings(tmp_path, score=-0.03, class_acc={"b": (0.8, 0.65)}, shares=(0.9, 0.3, None),
                      stability={("a", "target", "fc"): 0.45})
    # effects / units: 0.03/0.01 = 3, 0.15/0.05 = 3 (twice: class and largest loss), 0.7/0.5 = 1.4, 0.55/0.5 = 1.1
    assert [(f["kind"], f["score"]) for f in found] == [
        ("negative_transfer", 3.0), ("class_negative_transfer", 3.0), ("largest_loss", 3.0),
        ("inheritance_below_half", 1.4), ("unstable_class", 1.1)]


def test_per_class_kinds_keep_the_worst_and_count_the_rest(tmp_path):
    classes = tuple(f"k{i}" for i in range(7))
    b = PairBundle.open(write_planted_bundle(tmp_path / "b", classes=classes,
                                             class_acc={c: (0.9, 0.8 - 0.01 * i) for i, c in enumerate(classes)}))
    found, left_out = fm.compute_findings(b)
    assert [f["evidence"]["class"] for f in _of(found, "class_negative_transfer")] == ["k6", "k5", "k4", "k3", "k2"]
    assert left_out == {"class_negative_transfer": 2}
    record = fm.findings_record(b)
    assert record["findings"] == found and record["left_out"] == left_out and record["thresholds"] == fm.THRESHOLDS


def test_the_record_reads_back_and_an_older_bundle_reads_none(tmp_path):
    root = write_planted_bundle(tmp_path / "b", score=-0.02, class_acc={"c": (0.9, 0.1)})
    assert PairBundle.open(root).findings() is None  # written without the record: an older bundle
    record = fm.findings_record(PairBundle.open(root))
    add_json_record(root, fm.FINDINGS, record)
    found = PairBundle.open(root).findings()  # the manifest lists it with its hash
    assert found == json.loads(json.dumps(record["findings"])) and len(found) == 3
    with pytest.raises(BundleError, match="written twice"):
        add_json_record(root, fm.FINDINGS, record)


@pytest.mark.parametrize("bad", [
    [], {"findings": "none"}, {"findings": [{"kind": "x"}]},
    {"findings": [{"kind": "x", "title": "t", "score": float("nan"), "evidence": {}, "tab": "Statistics", "state": {}}]},
    {"findings": [{"kind": "x", "title": "t", "score": 1, "evidence": {"a": [1]}, "tab": "Statistics", "state": {}}]},
    {"findings": [{"kind": "x", "title": "t", "score": 1, "evidence": {}, "tab": "Statistics", "state": {"c": {}}}]},
    {"findings": [{"kind": "x", "title": 3, "score": 1, "evidence": {}, "tab": "Statistics", "state": {}}]},
    {"findings": [{"kind": "x", "title": "t", "score": True, "evidence": {}, "tab": "Statistics", "state": {}}]},
])
def test_a_malformed_record_is_the_readers_error(tmp_path, bad):
    root = write_planted_bundle(tmp_path / "b")
    add_json_record(root, fm.FINDINGS, bad)
    with pytest.raises(BundleError, match="Expected findings.json as .* diagnose"):
        PairBundle.open(root).findings()


def test_a_replaced_record_is_read_as_written(tmp_path):
    root = write_planted_bundle(tmp_path / "b")
    planted = [{"kind": "x", "title": "<b>t</b>", "score": 2, "evidence": {"n": 1, "s": "<i>"}, "tab": "Network",
                "state": {"classes": ["a"], "layer_from": 1}}]
    assert PairBundle.open(replace_findings(root, planted)).findings() == planted


def test_the_writer_stores_the_same_findings_for_the_same_diagnostics(tmp_path):
    """Every bundle `write_pair_bundle` writes holds the record, and the list is deterministic."""
    from helpers.bundles import write_tiny_bundle

    a = PairBundle.open(write_tiny_bundle(tmp_path / "a", seed=1))
    b = PairBundle.open(write_tiny_bundle(tmp_path / "b", seed=1))
    assert a.manifest["schema_version"] == "1.7.0" and a.findings() == b.findings()
    assert a.findings() == fm.compute_findings(a)[0] and isinstance(a.findings(), list)


def test_neuron_percentiles_rest_on_at_most_rank_rows_per_domain(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "RANK_ROWS", 5)
    (f,) = _findings(tmp_path, specific={"target": ("fc", 7, 4)})
    assert (f["evidence"]["source_rows"], f["evidence"]["target_rows"]) == (5, 5)
    assert f["evidence"]["specificity"] == pytest.approx(0.8)
