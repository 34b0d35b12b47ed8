"""§5.1 statistics (transferability score, confusion table) and §5.4.1 domain discriminability.

References: values worked out by hand, sklearn called directly on independently scaled data, a
literal min-max scaling and histogram count kept here, and planted truths.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import SVC

from mlflow_transfer.diagnostics.discriminability import (
    Discriminability, domain_discriminability, rank_neurons)
from mlflow_transfer.diagnostics.statistics import (
    best_trained_accuracy,
    confusion_table,
    transferability_from_history,
    transferability_score,
)
from mlflow_transfer.errors import DiagnosticsError

NAN = float("nan")


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- transferability score


def test_transferability_score_by_hand():
    # best target 0.8 − best source 0.5
    assert transferability_score([0.2, 0.5, 0.4], [0.3, 0.8, 0.7]) == pytest.approx(0.3)
    # negative transfer; series of different lengths; a single epoch
    assert transferability_score(np.array([0.9, 0.6]), np.array([0.1, 0.7, 0.4, 0.2])) == \
        pytest.approx(-0.2)
    assert transferability_score([0.25], [0.25]) == 0.0
    assert isinstance(transferability_score([0.1], [0.2]), float)


@pytest.mark.parametrize("source, target, match", [
    ([0.1, NAN], [0.2], r"Expected source_target_val of finite accuracies; got NaN or infinite values at epochs \[1\]\."),
    ([0.1], [float("inf")], r"Expected target_target_val of finite accuracies; got NaN"),
    ([], [0.2], r"Expected source_target_val as a 1-D array of shape \(epochs,\) with sizes >= 1; got shape \(0,\)\."),
    ([[0.1, 0.2]], [0.2], r"; got shape \(1, 2\)\. Pass one accuracy per epoch\."),
    ([55.0, 60.0], [0.2], r"Expected source_target_val as accuracies, fractions in \[0, 1\]; got values in \[55, 60\]\. Divide percentages by 100\."),
    ([0.1], [-0.1], r"fractions in \[0, 1\]; got values in \[-0.1, -0.1\]"),
    (["a"], [0.1], r"Expected source_target_val as .* of real numbers; got dtype <U1\."),
])
def test_transferability_score_rejects(source, target, match):
    with pytest.raises(DiagnosticsError, match=match):
        transferability_score(source, target)


def test_the_score_from_histories_leaves_step_0_out():
    """Step 0 of the target run is the unchanged source model: above every fine-tuned epoch here, it
    must not be the target's best (the old score, max over all steps, gave 0.9 - 0.8 = +0.1)."""
    source = ([0, 1, 2, 3], [0.1, 0.6, 0.8, 0.7])  # step 0: random initialisation, left out too
    target = ([0, 1, 2], [0.9, 0.3, 0.5])
    assert transferability_from_history(source, target) == pytest.approx(0.5 - 0.8)
    assert best_trained_accuracy(target, "target") == pytest.approx(0.5)
    # a source whose random start happened to score best is scored on its trained epochs only
    assert transferability_from_history(([0, 1], [0.95, 0.4]), ([0, 1], [0.4, 0.7])) == pytest.approx(0.3)
    # steps in any order (as MLflow may return them), numpy input, floats that are whole numbers
    assert transferability_from_history((np.array([2.0, 0.0, 1.0]), np.array([0.6, 0.9, 0.2])),
                                        ([1, 0], [0.65, 0.99])) == pytest.approx(0.05)


def test_a_target_with_only_step_0_has_no_score_and_says_why():
    with pytest.raises(DiagnosticsError) as info:
        transferability_from_history(([0, 1], [0.1, 0.5]), ([0], [0.5]))
    message = str(info.value)
    assert "target run" in message and "only step 0" in message and "before fine-tuning" in message
    assert "target.epochs >= 1" in message and "no transferability score" in message
    with pytest.raises(DiagnosticsError, match=r"source run.*only step 0, which is its random initialisation"):
        transferability_from_history(([0], [0.1]), ([0, 1], [0.1, 0.5]))


@pytest.mark.parametrize("history, match", [
    (([0, 1], [0.5]), r"one step per accuracy in the target model's history; got 2 steps and 1 accuracies"),
    (([0, -1], [0.5, 0.6]), r"steps as epochs \(whole numbers >= 0\); got \[0, -1\]"),
    (([0, 1.5], [0.5, 0.6]), r"whole numbers >= 0"),
    (([0, 1], [0.5, 60.0]), r"Divide percentages by 100"),
    (([0, 1], [0.5, NAN]), r"finite accuracies"),
    ((), r"Expected the target model's history as \(steps, accuracies\); got tuple"),
    (None, r"Expected the target model's history as \(steps, accuracies\); got NoneType"),
])
def test_best_trained_accuracy_rejects(history, match):
    with pytest.raises(DiagnosticsError, match=match):
        best_trained_accuracy(history, "target")


# ---------------------------------------------------------------- confusion table

CLASSES = ["a", "b", "c", "d"]  # "d" has no instances
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
PRED_S = np.array([0, 0, 1, 2, 1, 0, 0, 2, 2, 2, 2, 2])
PRED_T = np.array([0, 1, 2, 2, 1, 1, 3, 2, 3, 3, 1, 0])


def test_confusion_table_by_hand():
    table = confusion_table(Y_TRUE, PRED_S, PRED_T, CLASSES)
    assert table.classes == ("a", "b", "c", "d")
    np.testing.assert_array_equal(table.matrix_source,
                                  [[2, 1, 1, 0], [2, 1, 0, 0], [0, 0, 5, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(table.matrix_target,
                                  [[1, 1, 2, 0], [0, 2, 0, 1], [1, 1, 1, 2], [0, 0, 0, 0]])
    assert table.matrix_source.dtype == np.int64 and table.matrix_target.dtype == np.int64
    assert table.matrix_target.shape == (4, 4)
    np.testing.assert_array_equal(table.support, [4, 3, 5, 0])
    np.testing.assert_allclose(table.source_accuracy, [2 / 4, 1 / 3, 5 / 5, NAN])
    np.testing.assert_allclose(table.target_accuracy, [1 / 4, 2 / 3, 1 / 5, NAN])
    np.testing.assert_allclose(table.difference, [-1 / 4, 1 / 3, -4 / 5, NAN])
    assert table.misclassified_into == (
        (("c", 2), ("b", 1)),
        (("d", 1),),
        (("d", 2), ("a", 1), ("b", 1)),  # a and b tie: class order
        (),
    )


def test_confusion_table_matrices_agree_with_sklearn_and_a_literal_count():
    rng = np.random.default_rng(3)
    n_classes, n = 5, 200
    y, ps, pt = (rng.integers(0, n_classes, n) for _ in range(3))
    table = confusion_table(y, ps, pt, [f"k{c}" for c in range(n_classes)])
    np.testing.assert_array_equal(table.matrix_source, confusion_matrix(y, ps, labels=range(5)))
    np.testing.assert_array_equal(table.matrix_target, confusion_matrix(y, pt, labels=range(5)))
    literal = np.zeros((n_classes, n_classes), dtype=np.int64)
    for t, p in zip(y, pt):
        literal[t, p] += 1
    np.testing.assert_array_equal(table.matrix_target, literal)
    for c in range(n_classes):
        mask = y == c
        assert table.target_accuracy[c] == pytest.approx(np.mean(pt[mask] == c))
        assert table.source_accuracy[c] == pytest.approx(np.mean(ps[mask] == c))
        counts = [n for _, n in table.misclassified_into[c]]
        assert counts == sorted(counts, reverse=True)
        assert sum(counts) == int((mask & (pt != c)).sum())


def test_confusion_table_records_round_trip_through_strict_json():
    records = confusion_table(Y_TRUE, PRED_S, PRED_T, CLASSES).to_records()
    assert json.loads(json.dumps(records, allow_nan=False)) == records
    assert records[2] == {"class_index": 2, "class": "c", "support": 5,
                          "source_accuracy": 1.0, "target_accuracy": pytest.approx(0.2),
                          "difference": pytest.approx(-0.8),
                          "misclassified_into": [["d", 2], ["a", 1], ["b", 1]]}
    # A class without instances: no accuracy rather than NaN (strict JSON has no NaN).
    assert records[3]["support"] == 0 and records[3]["target_accuracy"] is None
    assert records[3]["difference"] is None and records[3]["misclassified_into"] == []
    for record in records:
        assert type(record["support"]) is int and type(record["class"]) is str


@pytest.mark.parametrize("y, ps, pt, classes, match", [
    (Y_TRUE, PRED_S, PRED_T, [], r"Expected classes as a non-empty sequence of class names; got \[\]\."),
    (Y_TRUE, PRED_S, PRED_T, "abcd", r"Expected classes as a non-empty sequence of class names; got 'abcd'\."),
    (Y_TRUE, PRED_S, PRED_T, ["a", "b", "a", "d"], r"Expected unique classes; got duplicates \['a'\]\."),
    (Y_TRUE.astype(float), PRED_S, PRED_T, CLASSES, r"Expected y_true as .* of integers; got dtype float64\. Pass argmax"),
    (Y_TRUE, PRED_S[None], PRED_T, CLASSES, r"Expected pred_source as a 1-D array of shape \(instances,\); got shape \(1, 12\)\."),
    (Y_TRUE, PRED_S, PRED_T + 1, CLASSES, r"Expected pred_target as class indices in \[0, 4\); got values in"),
    (Y_TRUE, PRED_S - 1, PRED_T, CLASSES, r"Expected pred_source as class indices in \[0, 4\); got values in \[-1,"),
    (Y_TRUE, PRED_S[:-1], PRED_T, CLASSES, r"same non-zero length .*; got 12, 11 and 12\."),
    (np.array([], int), np.array([], int), np.array([], int), CLASSES, r"same non-zero length"),
])
def test_confusion_table_rejects(y, ps, pt, classes, match):
    with pytest.raises(DiagnosticsError, match=match):
        confusion_table(y, ps, pt, classes)


# ---------------------------------------------------------------- domain discriminability


def _literal_scale(a: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a, dtype=float)
    for j in range(a.shape[1]):
        lo, hi = a[:, j].min(), a[:, j].max()
        if hi > lo:
            out[:, j] = 2.0 * (a[:, j] - lo) / (hi - lo) - 1.0
    return out


def _domains(rng, ms=40, mt=40, p=6, planted: int | None = None):
    """Identical noise distributions in both domains; a planted neuron fires on source rows only."""
    source = rng.normal(0.0, 1.0, (ms, p))
    target = rng.normal(0.0, 1.0, (mt, p))
    if planted is not None:
        source[:, planted] = rng.uniform(1.0, 2.0, ms)
        target[:, planted] = 0.0
    return source, target


def test_svm_and_cv_equal_a_direct_sklearn_computation():
    rng = np.random.default_rng(0)
    source, target = _domains(rng, ms=30, mt=25, p=4)
    source[:, 1] += 0.8  # some signal so the fit is not degenerate
    result = domain_discriminability(source, target, folds=5, C=10.0, seed=7)

    a = np.vstack([source, target])
    labels = np.r_[np.zeros(30), np.ones(25)]
    scaled = _literal_scale(a)
    np.testing.assert_allclose(result.scaled, scaled, atol=1e-12)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.data_min, a.min(0))
    np.testing.assert_allclose(result.data_max, a.max(0))

    svm = SVC(kernel="linear", C=10.0).fit(scaled, labels)
    np.testing.assert_allclose(result.coef, svm.coef_[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.abs_coef, np.abs(svm.coef_[0]), rtol=1e-6, atol=1e-9)
    assert result.intercept == pytest.approx(svm.intercept_[0], rel=1e-6)
    assert result.train_accuracy == pytest.approx(svm.score(scaled, labels))
    scores = cross_val_score(SVC(kernel="linear", C=10.0), scaled, labels,
                             cv=StratifiedKFold(5, shuffle=True, random_state=7))
    np.testing.assert_allclose(result.cv_scores, scores)
    assert result.cv_mean == pytest.approx(scores.mean())
    assert result.cv_std == pytest.approx(scores.std())
    assert result.folds_used == 5 and result.note == ""
    np.testing.assert_array_equal(result.ranked, np.argsort(-np.abs(svm.coef_[0])))
    # the PCA direction of the same scaled data
    g = PCA(n_components=1).fit(scaled).components_[0]
    np.testing.assert_allclose(np.abs(result.principal @ g), 1.0, atol=1e-9)


@pytest.mark.parametrize("planted", [0, 3, 5])
def test_planted_source_only_neuron_is_the_most_discriminative(planted):
    source, target = _domains(np.random.default_rng(planted), planted=planted)
    result = domain_discriminability(source, target)
    assert result.ranked[0] == planted
    assert np.argmax(result.abs_coef) == planted
    assert result.coef[planted] < 0  # higher conductance on the planted neuron means source (0)
    assert result.cv_mean > 0.9
    assert result.folds_used == 10 and result.cv_scores.shape == (10,)


def test_without_a_planted_neuron_cv_is_near_chance():
    source, target = _domains(np.random.default_rng(11), ms=50, mt=50)
    assert domain_discriminability(source, target).cv_mean < 0.7


@pytest.mark.parametrize("swap", [False, True])
def test_projection_basis_coordinates_and_biplot_axes(swap):
    # Swapping the domains flips the sign of coef, so QR's sign convention is met both ways.
    rng = np.random.default_rng(1)
    source, target = _domains(rng, ms=30, mt=30, p=5, planted=0)
    source[:, 4] *= 3.0
    if swap:
        source, target = target, source
    r = domain_discriminability(source, target, folds=3)
    w = r.basis
    assert w.shape == (5, 2)
    np.testing.assert_allclose(w.T @ w, np.eye(2), atol=1e-12)
    u = r.coef / np.linalg.norm(r.coef)
    np.testing.assert_allclose(r.unit_normal, u)
    np.testing.assert_allclose(w[:, 0], u, atol=1e-12)  # +u, not −u
    # g lies in the plane spanned by W and the second column points along it
    np.testing.assert_allclose(w @ (w.T @ r.principal), r.principal, atol=1e-12)
    assert w[:, 1] @ r.principal > 0
    np.testing.assert_allclose(r.coordinates, _literal_scale(np.vstack([source, target])) @ w,
                               atol=1e-12)
    # points on either side of x = -b/||coef|| are the SVM's two decisions
    decision = r.scaled @ r.coef + r.intercept
    boundary = -r.intercept / np.linalg.norm(r.coef)
    np.testing.assert_array_equal(decision > 0, r.coordinates[:, 0] > boundary)
    # biplot axes: the rows of W under one common factor (the longest line 1), so their horizontal
    # lengths are proportional to |coef| (§5.4.2), whatever their vertical parts
    np.testing.assert_allclose(r.axes, w / max(np.hypot(w[:, 0], w[:, 1])), atol=1e-12)
    assert max(np.hypot(r.axes[:, 0], r.axes[:, 1])) == pytest.approx(1.0)
    ratio = np.abs(r.axes[:, 0]) / np.abs(r.coef)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)


def test_histograms_count_every_row_with_shared_edges():
    rng = np.random.default_rng(2)
    source, target = _domains(rng, ms=17, mt=23, p=3)
    r = domain_discriminability(source, target, bins=7)
    assert r.hist_source.shape == (3, 7) and r.hist_target.shape == (3, 7)
    assert r.hist_edges.shape == (3, 8)
    np.testing.assert_array_equal(r.hist_source.sum(1), [17] * 3)
    np.testing.assert_array_equal(r.hist_target.sum(1), [23] * 3)
    for j in range(3):
        column = np.r_[source[:, j], target[:, j]]
        lo, hi = column.min(), column.max()
        np.testing.assert_allclose(r.hist_edges[j], np.linspace(lo, hi, 8))
        # literal binning: the last bin is closed on the right
        idx = np.minimum(((source[:, j] - lo) / (hi - lo) * 7).astype(int), 6)
        np.testing.assert_array_equal(r.hist_source[j], np.bincount(idx, minlength=7))


def test_fallback_folds_when_a_domain_is_small():
    source, target = _domains(np.random.default_rng(4), ms=5, mt=30, p=4, planted=1)
    r = domain_discriminability(source, target, folds=10)
    assert r.folds_used == 5 and r.cv_scores.shape == (5,)
    assert "10-fold" in r.note and "used 5 folds" in r.note
    assert r.ranked[0] == 1


def test_constant_neuron_scales_to_zero_without_nan():
    source, target = _domains(np.random.default_rng(5), ms=20, mt=20, p=4, planted=0)
    source[:, 2] = 3.5
    target[:, 2] = 3.5
    r = domain_discriminability(source, target, folds=4)
    np.testing.assert_array_equal(r.scaled[:, 2], 0.0)
    assert r.hist_source[2].sum() == 20 and r.hist_target[2].sum() == 20
    assert r.coef[2] == 0.0
    for name, value in vars(r).items():
        if isinstance(value, np.ndarray):
            assert np.all(np.isfinite(value)), name


def test_single_neuron_gives_a_flat_projection():
    rng = np.random.default_rng(6)
    r = domain_discriminability(rng.normal(2.0, 0.3, (12, 1)), rng.normal(0.0, 0.3, (12, 1)),
                                folds=3)
    assert r.basis.shape == (1, 2) and r.basis[0, 0] == pytest.approx(np.sign(r.coef[0]))
    np.testing.assert_array_equal(r.coordinates[:, 1], 0.0)
    assert "P == 1" in r.note


def test_result_is_frozen_and_rank_neurons_breaks_ties_by_index():
    source, target = _domains(np.random.default_rng(8), ms=10, mt=10, p=3, planted=0)
    r = domain_discriminability(source, target, folds=2)
    assert isinstance(r, Discriminability)
    with pytest.raises(AttributeError):
        r.note = "changed"
    np.testing.assert_array_equal(rank_neurons([0.1, -0.5, 0.5, 0.0]), [1, 2, 0, 3])


GOOD = np.arange(12.0).reshape(6, 2) % 5


@pytest.mark.parametrize("source, target, kwargs, match", [
    (GOOD[:, :0], GOOD[:, :0], {}, r"Expected at least one neuron; got P == 0\."),
    (GOOD[:1], GOOD, {}, r"Expected source conductance of at least 2 instances .*; got 1 rows\."),
    (GOOD, GOOD[:0], {}, r"Expected target conductance of at least 2 instances .*; got 0 rows\."),
    (GOOD, GOOD[:, :1], {}, r"same neurons \(columns\); got P = 2 and P = 1\."),
    (GOOD.ravel(), GOOD, {}, r"Expected source conductance as a 2-D array .*; got shape \(12,\)\. Reshape"),
    (np.where(GOOD == 0, np.nan, GOOD), GOOD, {}, r"Expected source conductance as .* of finite values; got 3 NaN"),
    ([["x", "y"], ["z", "w"]], GOOD, {}, r"of real numbers; got dtype <U1\."),
    (GOOD, GOOD, {"folds": 1}, r"Expected folds as an integer >= 2; got 1\."),
    (GOOD, GOOD, {"folds": 2.5}, r"Expected folds as an integer >= 2; got 2.5\."),
    (GOOD, GOOD, {"bins": 0}, r"Expected bins as an integer >= 1; got 0\."),
    (GOOD, GOOD, {"C": 0.0}, r"Expected C as a finite number > 0; got 0.0\."),
    (GOOD, GOOD, {"C": float("nan")}, r"Expected C as a finite number > 0; got nan\."),
    (np.ones((4, 3)), np.ones((5, 3)), {}, r"got all 3 neurons constant over all 9 instances"),
    (GOOD, GOOD.copy(), {"folds": 2}, r"all-zero weights: the two domains are indistinguishable"),
])
def test_domain_discriminability_rejects(source, target, kwargs, match):
    with pytest.raises(DiagnosticsError, match=match):
        domain_discriminability(source, target, **kwargs)
