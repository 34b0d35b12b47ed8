"""Neuron ranking (§5.3.1), network comparison (§5.3.2) and unbiased linear CKA.

References: values worked out by hand, slow literal implementations kept here (average ranks by
counting, cosine by loops, HSIC₁ from Song et al.'s equation and as a U-statistic over 4-tuples,
biased CKA from tr(KHLH)), and planted truths (identical / permuted models, independent features).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mlflow_transfer.diagnostics.cka import cka_matrix, linear_cka
from mlflow_transfer.diagnostics.ranking import neuron_rank_scores, resolve_k, top_k_neurons
from mlflow_transfer.diagnostics.similarity import (
    NO_MATCH,
    LayerComparison,
    best_matches,
    best_source_neurons,
    layer_summary,
    neuron_similarity,
    weight_correspondence,
)
from mlflow_transfer.errors import DiagnosticsError


pytestmark = pytest.mark.usefixtures("one_thread")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------
# Slow literal references
# ---------------------------------------------------------------------------------------------------

def _literal_rank_scores(conductance: np.ndarray) -> np.ndarray:
    """Average rank by counting: rank = #smaller + (#equal incl. itself + 1) / 2, summed over rows."""
    m, u = conductance.shape
    scores = [0.0] * u
    for p in range(m):
        row = conductance[p]
        for j in range(u):
            smaller = sum(1 for v in row if v < row[j])
            equal = sum(1 for v in row if v == row[j])
            scores[j] += smaller + (equal + 1) / 2
    return np.array(scores)


def _literal_cosine(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    out = np.zeros((source.shape[1], target.shape[1]))
    for a in range(source.shape[1]):
        for b in range(target.shape[1]):
            va, vb = source[:, a], target[:, b]
            na, nb = math.sqrt(sum(v * v for v in va)), math.sqrt(sum(v * v for v in vb))
            out[a, b] = 0.0 if na == 0 or nb == 0 else sum(va * vb) / (na * nb)
    return out


def _hsic1_song(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. (5); Nguyen, Raghu & Kornblith (2021), eq. (3)."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return (np.trace(kt @ lt)
            + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def _hsic1_u_statistic(k: np.ndarray, l: np.ndarray) -> float:
    """HSIC = E[k_ij l_ij] + E[k_ij] E[l_qr] - 2 E[k_ij l_iq], averaged over distinct 4-tuples."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def _literal_cka(x: np.ndarray, y: np.ndarray, hsic=_hsic1_song) -> float:
    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def _biased_cka(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic0(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic0(k, l) / math.sqrt(hsic0(k, k) * hsic0(l, l))


# ---------------------------------------------------------------------------------------------------
# Ranking (§5.3.1)
# ---------------------------------------------------------------------------------------------------

# Worked by hand. Row 0: 0 < 1 < 2 = 2 -> ranks 2, 3.5, 3.5, 1. Row 1: all tied -> 2.5 each.
# Row 2: 1 = 1 < 3 < 4 -> ranks 3, 1.5, 4, 1.5. Sums: 7.5, 7.5, 10, 5.
HAND = np.array([[1.0, 2.0, 2.0, 0.0],
                 [5.0, 5.0, 5.0, 5.0],
                 [3.0, 1.0, 4.0, 1.0]])
HAND_SCORES = np.array([7.5, 7.5, 10.0, 5.0])


def test_rank_scores_with_ties_by_hand():
    np.testing.assert_array_equal(neuron_rank_scores(HAND), HAND_SCORES)


def test_rank_scores_match_a_literal_loop():
    rng = _rng(1)
    ties = rng.integers(0, 4, size=(9, 7)).astype(np.float32)  # many ties, float32 input
    spread = rng.normal(size=(5, 11))
    for matrix in (ties, spread, ties[:1]):
        np.testing.assert_allclose(neuron_rank_scores(matrix), _literal_rank_scores(matrix), rtol=0, atol=1e-12)
    assert neuron_rank_scores(ties).dtype == np.float64


def test_rank_scores_do_not_depend_on_monotone_rescaling_of_a_row():
    matrix = _rng(2).normal(size=(6, 8))
    warped = matrix.copy()
    warped[3] = np.exp(3 * warped[3]) + 10  # strictly increasing map of one row keeps its ranks
    np.testing.assert_array_equal(neuron_rank_scores(matrix), neuron_rank_scores(warped))


def test_top_k_order_and_ties_by_hand():
    # Neurons 0 and 1 tie at 7.5: the lower index comes first.
    np.testing.assert_array_equal(top_k_neurons(HAND, k=2), [2, 0])
    np.testing.assert_array_equal(top_k_neurons(HAND, k=4), [2, 0, 1, 3])
    np.testing.assert_array_equal(top_k_neurons(HAND, fraction=0.5), [2, 0])
    assert top_k_neurons(HAND, k=1).dtype == np.int64


def test_top_k_matches_a_literal_sort():
    matrix = _rng(3).integers(0, 3, size=(4, 20)).astype(float)
    scores = _literal_rank_scores(matrix)
    expected = sorted(range(20), key=lambda j: (-scores[j], j))
    np.testing.assert_array_equal(top_k_neurons(matrix, k=20), expected)
    np.testing.assert_array_equal(top_k_neurons(matrix), expected[:2])  # ceil(0.1 * 20) = 2


@pytest.mark.parametrize(("units", "fraction", "expected"), [
    (30, 0.1, 3),     # exact
    (25, 0.1, 3),     # 2.5 rounds up
    (5, 0.1, 1),      # 0.5 rounds up
    (3, 0.1, 1),      # at least one
    (100, 0.07, 7),   # 0.07 * 100 == 7.000000000000001 in binary: still 7
    (10, 1.0, 10),
])
def test_k_rounding(units, fraction, expected):
    assert resolve_k(units, fraction=fraction) == expected
    conductance = _rng(4).normal(size=(2, units))
    assert top_k_neurons(conductance, fraction=fraction).shape == (expected,)


def test_k_overrides_fraction():
    assert resolve_k(10, fraction=0.1, k=4) == 4
    assert top_k_neurons(HAND, fraction=0.1, k=3).shape == (3,)


@pytest.mark.parametrize(("bad", "match"), [
    (np.zeros(4), r"Expected the conductance matrix as a 2-D array of shape \(instances, neurons\); got shape \(4,\)\."),
    (np.zeros((2, 3, 3)), r"spatial maximum"),
    (np.zeros((0, 4)), r"with sizes >= 1 × >= 1; got shape \(0, 4\)\. .*skip it"),
    (np.zeros((3, 0)), r"with sizes >= 1 × >= 1; got shape \(3, 0\)\."),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), r"of finite values; got 1 NaN or infinite value\(s\)\."),
    (np.array([[1.0, np.inf]]), r"NaN or infinite"),
    (np.array([["a", "b"]]), r"of real numbers; got dtype <U1\."),
    (np.array([[True, False]]), r"of real numbers; got dtype bool\."),
])
def test_ranking_rejects_bad_conductance(bad, match):
    with pytest.raises(DiagnosticsError, match=match):
        neuron_rank_scores(bad)
    with pytest.raises(DiagnosticsError, match=match):
        top_k_neurons(bad)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"fraction": 0.0}, r"Expected fraction as a finite number in \(0, 1\] .*; got 0.0\."),
    ({"fraction": 1.5}, r"Expected fraction as a finite number in \(0, 1\] .*; got 1.5\."),
    ({"fraction": -0.1}, r"fraction"),
    ({"fraction": float("nan")}, r"fraction"),
    ({"fraction": "0.1"}, r"fraction"),
    ({"fraction": True}, r"fraction"),
    ({"k": 0}, r"Expected k as an integer in \[1, 4\] \(the layer has 4 neurons.*; got 0\."),
    ({"k": 5}, r"Expected k as an integer in \[1, 4\]"),
    ({"k": 2.0}, r"Expected k as an integer .*; got 2.0\."),
    ({"k": True}, r"Expected k as an integer .*; got True\."),
])
def test_top_k_rejects_bad_k_and_fraction(kwargs, match):
    with pytest.raises(DiagnosticsError, match=match):
        top_k_neurons(HAND, **kwargs)


@pytest.mark.parametrize("units", [0, -1, 2.0, True])
def test_resolve_k_rejects_bad_layer_size(units):
    with pytest.raises(DiagnosticsError, match=r"Expected the layer's number of neurons as an integer >= 1; got"):
        resolve_k(units)


# ---------------------------------------------------------------------------------------------------
# Neuron similarity and weight correspondence (§5.3.2)
# ---------------------------------------------------------------------------------------------------

def test_similarity_matches_a_literal_cosine():
    rng = _rng(5)
    source, target = rng.normal(size=(7, 5)), rng.normal(size=(7, 3)).astype(np.float32)
    got = neuron_similarity(source, target)
    assert got.shape == (5, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, _literal_cosine(source, target.astype(np.float64)), atol=1e-6)


def test_similarity_of_a_model_with_itself_peaks_on_the_diagonal():
    conductance = _rng(6).normal(size=(12, 6))
    sim = neuron_similarity(conductance, conductance)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-12)
    np.testing.assert_allclose(sim.max(axis=1), np.diag(sim), atol=0)
    np.testing.assert_allclose(sim, sim.T, atol=1e-12)
    assert np.all(np.abs(sim) <= 1.0)


def test_best_matches_recover_a_permutation_of_neurons():
    rng = _rng(7)
    source = rng.normal(size=(10, 8))
    permutation = rng.permutation(8)
    target = 2.5 * source[:, permutation]  # scaling does not change cosine
    sim = neuron_similarity(source, target)
    np.testing.assert_array_equal(best_matches(sim)[:, 0], permutation)
    np.testing.assert_array_equal(best_source_neurons(sim), permutation)
    top3 = best_matches(sim, k=3)
    assert top3.shape == (8, 3) and top3.dtype == np.int64
    for b in range(8):  # literal: source indices sorted by (-similarity, index)
        expected = sorted(range(8), key=lambda a: (-sim[a, b], a))[:3]
        np.testing.assert_array_equal(top3[b], expected)


def test_best_matches_break_ties_by_lower_index():
    sim = np.array([[0.5, 0.1],
                    [0.9, 0.1],
                    [0.9, 0.1]])
    np.testing.assert_array_equal(best_matches(sim, k=3), [[1, 2, 0], [0, 1, 2]])


def test_zero_attribution_vectors_have_similarity_zero_and_no_match():
    source = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    target = np.array([[0.0, 3.0], [0.0, 6.0], [0.0, 0.0]])
    sim = neuron_similarity(source, target)
    np.testing.assert_allclose(sim, [[0.0, 1.0], [0.0, 0.0]], atol=1e-12)
    assert sim[1].tolist() == [0.0, 0.0] and sim[0, 0] == 0.0  # zero vectors: exactly 0
    np.testing.assert_array_equal(best_source_neurons(sim), [NO_MATCH, 0])
    # The paper's plain argmax: every source neuron ties at 0 — ambiguous, so still no match (the
    # former rule let the first index win).
    np.testing.assert_array_equal(best_source_neurons(sim, min_similarity=-math.inf), [NO_MATCH, 0])


def test_negative_best_similarity_is_no_match_unless_asked():
    sim = np.array([[-0.2, 0.4], [-0.6, 0.3]])
    np.testing.assert_array_equal(best_source_neurons(sim), [NO_MATCH, 0])
    np.testing.assert_array_equal(best_source_neurons(sim, min_similarity=0.35), [NO_MATCH, 0])
    np.testing.assert_array_equal(best_source_neurons(sim, min_similarity=0.4), [NO_MATCH, NO_MATCH])
    np.testing.assert_array_equal(best_source_neurons(sim, min_similarity=-1.0), [0, 0])


def _important_weights(rng: np.random.Generator, n_i: int, n_next: int, count: int) -> np.ndarray:
    flat = rng.choice(n_i * n_next, size=count, replace=False)
    return np.stack([flat // n_next, flat % n_next], axis=1)


def test_identical_models_inherit_every_important_weight():
    rng = _rng(8)
    cond_i, cond_next = rng.normal(size=(15, 6)), rng.normal(size=(15, 5))
    weights = _important_weights(rng, 6, 5, 9)
    sim_i, sim_next = neuron_similarity(cond_i, cond_i), neuron_similarity(cond_next, cond_next)
    inherited = weight_correspondence(weights, weights, sim_i, sim_next)
    assert inherited.dtype == np.bool_ and inherited.shape == (9,)
    assert inherited.all()
    summary = layer_summary(sim_i, top_k_neurons(cond_i, k=2), inherited)
    assert summary == LayerComparison(9, 9, 1.0, 2, pytest.approx(1.0, abs=1e-12))


def test_permuted_target_inherits_the_permuted_weights():
    rng = _rng(9)
    src_i, src_next = rng.normal(size=(15, 6)), rng.normal(size=(15, 5))
    perm_i, perm_next = rng.permutation(6), rng.permutation(5)
    tgt_i, tgt_next = src_i[:, perm_i], src_next[:, perm_next]  # target neuron b is source perm[b]
    source_weights = _important_weights(rng, 6, 5, 8)
    inverse_i, inverse_next = np.argsort(perm_i), np.argsort(perm_next)
    inherited_part = np.stack([inverse_i[source_weights[:, 0]], inverse_next[source_weights[:, 1]]], axis=1)
    taken = {tuple(w) for w in inherited_part}
    fresh = [(a, b) for a in range(6) for b in range(5)
             if (perm_i[a], perm_next[b]) not in {tuple(w) for w in source_weights}][:4]
    target_weights = np.vstack([inherited_part, np.array(fresh)])
    assert not taken & set(fresh)
    got = weight_correspondence(target_weights, source_weights,
                                neuron_similarity(src_i, tgt_i), neuron_similarity(src_next, tgt_next))
    np.testing.assert_array_equal(got, [True] * 8 + [False] * 4)


def test_weight_correspondence_by_hand():
    # Layer i: target 0 -> source 1, target 1 -> source 0, target 2 -> nothing (all <= 0).
    sim_i = np.array([[0.1, 0.8, -0.1],
                      [0.9, 0.2, 0.0]])
    # Layer i+1: target 0 -> source 2, target 1 -> source 0.
    sim_next = np.array([[0.0, 0.7],
                         [0.3, 0.1],
                         [0.6, 0.2]])
    source_weights = np.array([[1, 2], [0, 0]])
    target_weights = np.array([[0, 0],   # -> (1, 2): important in source
                               [1, 1],   # -> (0, 0): important in source
                               [0, 1],   # -> (1, 0): not
                               [2, 0]])  # n1 has no match
    np.testing.assert_array_equal(
        weight_correspondence(target_weights, source_weights, sim_i, sim_next), [True, True, False, False])
    # Literal argmax: target 2 of layer i maps to source 1 (0.0 > -0.1), giving (1, 2): important.
    np.testing.assert_array_equal(
        weight_correspondence(target_weights, source_weights, sim_i, sim_next, min_similarity=-math.inf),
        [True, True, False, True])
    empty = np.empty((0, 2), dtype=np.int64)
    assert weight_correspondence(empty, source_weights, sim_i, sim_next).shape == (0,)
    assert not weight_correspondence(target_weights, empty, sim_i, sim_next).any()


def test_layer_summary_by_hand():
    sim = np.array([[0.1, 0.8, -0.1],
                    [0.9, 0.2, -0.3]])
    summary = layer_summary(sim, np.array([0, 2]), np.array([True, False, True, True]))
    assert summary.n_important_weights == 4 and summary.n_inherited_weights == 3
    assert summary.inherited_weight_share == 0.75
    assert summary.n_important_neurons == 2
    assert summary.mean_best_similarity == pytest.approx((0.9 + -0.1) / 2)
    last = layer_summary(sim, np.array([1]), np.array([], dtype=bool))
    assert last.n_important_weights == 0 and math.isnan(last.inherited_weight_share)
    assert last.mean_best_similarity == pytest.approx(0.8)


def test_similarity_rejects_bad_inputs():
    ok = np.ones((3, 2))
    with pytest.raises(DiagnosticsError, match=r"Expected source and target conductance of the same instances; got 3 rows \(source\) and 4 rows"):
        neuron_similarity(ok, np.ones((4, 2)))
    with pytest.raises(DiagnosticsError, match=r"Expected the source conductance as a 2-D array.*; got shape \(3,\)\."):
        neuron_similarity(np.ones(3), ok)
    with pytest.raises(DiagnosticsError, match=r"Expected the target conductance as a 2-D array .* with sizes >= 1 × >= 1; got shape \(3, 0\)\."):
        neuron_similarity(ok, np.ones((3, 0)))
    with pytest.raises(DiagnosticsError, match=r"of finite values; got 1 NaN or infinite value\(s\)\. Check the"):
        neuron_similarity(ok, np.array([[1.0], [np.nan], [0.0]]))
    with pytest.raises(DiagnosticsError, match=r"of real numbers; got dtype complex128\."):
        neuron_similarity(ok.astype(complex), ok)


@pytest.mark.parametrize("k", [0, 4, 1.0, True])
def test_best_matches_rejects_bad_k(k):
    with pytest.raises(DiagnosticsError, match=r"Expected k as an integer in \[1, 3\] \(the number of source neurons\); got"):
        best_matches(np.zeros((3, 2)), k=k)


def test_best_matches_rejects_bad_similarity():
    with pytest.raises(DiagnosticsError, match=r"Expected the similarity matrix as a 2-D array.*; got shape \(2, 2, 2\)\."):
        best_matches(np.zeros((2, 2, 2)))
    with pytest.raises(DiagnosticsError, match="got 1 NaN or infinite value"):
        best_source_neurons(np.array([[np.inf]]))


@pytest.mark.parametrize("threshold", [1.0, 2.0, float("nan"), "0", None, True])
def test_threshold_must_be_a_number_below_one(threshold):
    with pytest.raises(DiagnosticsError, match=r"Expected min_similarity as a number < 1 \(cosine similarities .*\); got "):
        best_source_neurons(np.zeros((2, 2)), min_similarity=threshold)
    with pytest.raises(DiagnosticsError, match="min_similarity"):
        weight_correspondence(np.zeros((0, 2), int), np.zeros((0, 2), int), np.zeros((2, 2)),
                              np.zeros((2, 2)), min_similarity=threshold)


@pytest.mark.parametrize(("target_w", "source_w", "match"), [
    (np.array([0, 1]), np.zeros((0, 2), int), r"Expected the important target weights as a 2-D array of shape \(K, 2\).*; got shape \(2,\)\."),
    (np.zeros((2, 3), int), np.zeros((0, 2), int), r"Expected the important target weights as .*; got shape \(2, 3\)\."),
    (np.zeros((0, 2), int), np.zeros((1, 1), int), r"Expected the important source weights .*; got shape \(1, 1\)\."),
    (np.array([[0.0, 1.0]]), np.zeros((0, 2), int), r"Expected the important target weights .* of integers; got dtype float64\."),
    (np.array([[3, 0]]), np.zeros((0, 2), int), r"Expected the important target weights' neuron indices of layer i in \[0, 3\)"),
    (np.array([[0, 4]]), np.zeros((0, 2), int), r"Expected the important target weights' neuron indices of layer i\+1 in \[0, 4\)"),
    (np.array([[-1, 0]]), np.zeros((0, 2), int), r"layer i in \[0, 3\).*; got values from -1"),
    (np.zeros((0, 2), int), np.array([[2, 0]]), r"Expected the important source weights' neuron indices of layer i in \[0, 2\)"),
    (np.zeros((0, 2), int), np.array([[0, 5]]), r"Expected the important source weights' neuron indices of layer i\+1 in \[0, 5\)"),
])
def test_weight_correspondence_rejects_bad_weights(target_w, source_w, match):
    sim_i, sim_next = np.zeros((2, 3)), np.zeros((5, 4))  # (source, target) sizes differ on purpose
    with pytest.raises(DiagnosticsError, match=match):
        weight_correspondence(target_w, source_w, sim_i, sim_next)


def test_weight_correspondence_rejects_bad_similarity():
    weights = np.zeros((1, 2), int)
    with pytest.raises(DiagnosticsError, match=r"Expected the similarity matrix of layer i as a 2-D array"):
        weight_correspondence(weights, weights, np.zeros(3), np.zeros((2, 2)))
    with pytest.raises(DiagnosticsError, match=r"Expected the similarity matrix of layer i\+1 as .* of finite values; got 4 NaN"):
        weight_correspondence(weights, weights, np.zeros((2, 2)), np.full((2, 2), np.nan))


@pytest.mark.parametrize(("neurons", "flags", "match"), [
    (np.array([], dtype=int), np.zeros(0, bool), r"Expected important_target_neurons as a 1-D array .* with sizes >= 1; got shape \(0,\)\."),
    (np.array([[0]]), np.zeros(0, bool), r"Expected important_target_neurons as a 1-D array.*; got shape \(1, 1\)\."),
    (np.array([0.0]), np.zeros(0, bool), r"Expected important_target_neurons as a 1-D array .* of integers; got dtype float64\."),
    (np.array([3]), np.zeros(0, bool), r"Expected important_target_neurons in \[0, 3\).*; got values from 3 to 3\."),
    (np.array([-1]), np.zeros(0, bool), r"Expected important_target_neurons in \[0, 3\)"),
    (np.array([0]), np.array([1, 0]), r"Expected correspondence as a 1-D array of booleans; got dtype int64\. Pass the array weight_correspondence"),
    (np.array([0]), np.zeros((2, 1), bool), r"Expected correspondence as a 1-D array; got shape \(2, 1\)\."),
])
def test_layer_summary_rejects_bad_inputs(neurons, flags, match):
    with pytest.raises(DiagnosticsError, match=match):
        layer_summary(np.zeros((2, 3)), neurons, flags)


# ---------------------------------------------------------------------------------------------------
# Unbiased linear CKA
# ---------------------------------------------------------------------------------------------------

def test_cka_of_a_representation_with_itself_is_one():
    x = _rng(10).normal(size=(30, 7))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert isinstance(linear_cka(x, x), float)


def test_cka_is_invariant_to_orthogonal_maps_scaling_and_shifts():
    rng = _rng(11)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(40, 9))
    y = y + 0.8 * np.hstack([x, x[:, :3]])  # related, so CKA is far from both 0 and 1
    q_x = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    q_y = np.linalg.qr(rng.normal(size=(9, 9)))[0]
    reference = linear_cka(x, y)
    assert 0.2 < reference < 0.95
    assert linear_cka(x @ q_x, y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x, y @ q_y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x + 100.0, y - 3.0) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(y, x) == pytest.approx(reference, abs=1e-12)


def test_cka_is_not_invariant_to_anisotropic_scaling():
    # Guards the invariance test: a map that is not orthogonal-times-scalar must move CKA.
    rng = _rng(12)
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    y = y + x
    assert abs(linear_cka(x * np.array([10.0, 1.0, 1.0, 0.1]), y) - linear_cka(x, y)) > 0.05


def test_cka_matches_song_et_al_formula_and_the_u_statistic():
    rng = _rng(13)
    for n, d1, d2 in [(4, 3, 2), (7, 2, 5), (25, 6, 4)]:
        x, y = rng.normal(size=(n, d1)) + 1.0, rng.normal(size=(n, d2))
        y[:, 0] += x[:, 0]
        assert linear_cka(x, y) == pytest.approx(_literal_cka(x, y), abs=1e-10)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 2))
    assert _literal_cka(x, y, _hsic1_u_statistic) == pytest.approx(_literal_cka(x, y), abs=1e-10)
    assert linear_cka(x, y) == pytest.approx(_literal_cka(x, y, _hsic1_u_statistic), abs=1e-10)


def test_cka_of_independent_features_is_near_zero_where_the_biased_one_is_not():
    rng = _rng(14)
    x, y = rng.normal(size=(500, 10)), rng.normal(size=(500, 10))
    assert abs(linear_cka(x, y)) < 0.1
    # Dimension comparable to n: the biased estimator reports clear similarity between noise.
    x, y = rng.normal(size=(100, 50)), rng.normal(size=(100, 50))
    assert abs(linear_cka(x, y)) < 0.1
    assert _biased_cka(x, y) > 0.25


def test_cka_matrix_equals_pairwise_cka():
    rng = _rng(15)
    base = rng.normal(size=(20, 5))
    source = {"conv1": rng.normal(size=(20, 8)), "fc": base}
    target = {"a": base @ np.linalg.qr(rng.normal(size=(5, 5)))[0], "b": rng.normal(size=(20, 3)),
              "c": np.hstack([base, rng.normal(size=(20, 2))]).astype(np.float32)}
    matrix = cka_matrix(source, target)
    assert matrix.shape == (2, 3) and matrix.dtype == np.float64
    for i, x in enumerate(source.values()):
        for j, y in enumerate(target.values()):
            assert matrix[i, j] == pytest.approx(linear_cka(x, y), abs=1e-12)
    assert matrix[1, 0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("x", "y", "match"), [
    (np.zeros((5, 2, 2)), np.ones((5, 1)), r"Expected the features of x as a 2-D array.*; got shape \(5, 2, 2\)\. .*reshape\(len\(features\), -1\)"),
    (np.zeros(5), np.ones((5, 1)), r"Expected the features of x as a 2-D array.*; got shape \(5,\)\."),
    (np.ones((5, 1)), np.zeros((5, 0)), r"Expected the features of y as .* with sizes >= 0 × >= 1; got shape \(5, 0\)\."),
    (np.ones((3, 2)), np.ones((3, 2)), r"Expected the features of x on at least 4 inputs .*; got 3\."),
    (np.ones((5, 2)), np.ones((6, 2)), r"Expected x and y on the same inputs; got 5 rows in x and 6 in y\."),
    (np.array([[1.0], [np.nan], [2.0], [3.0]]), np.ones((4, 1)), r"Expected the features of x as .* of finite values; got 1 NaN or infinite value\(s\)\."),
    (np.ones((4, 1), dtype=complex), np.ones((4, 1)), r"of real numbers; got dtype complex128\."),
])
def test_linear_cka_rejects_bad_inputs(x, y, match):
    with pytest.raises(DiagnosticsError, match=match):
        linear_cka(x, y)


def test_linear_cka_rejects_degenerate_representations():
    varied = _rng(16).normal(size=(6, 3))
    with pytest.raises(DiagnosticsError, match="x are the same for every input"):
        linear_cka(np.tile([1.0, -2.0, 3.0], (6, 1)), varied)
    with pytest.raises(DiagnosticsError, match="y are the same for every input"):
        linear_cka(varied, np.zeros((6, 2)))
    # Four one-hot rows: the Gram matrix is constant off the diagonal, so HSIC1(K, K) = 0.
    assert _hsic1_song(np.eye(4), np.eye(4)) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(DiagnosticsError, match="no variation that the unbiased estimator can measure"):
        linear_cka(np.eye(4), varied[:4])


def test_cka_matrix_rejects_bad_inputs():
    ok = {"a": _rng(17).normal(size=(6, 2))}
    with pytest.raises(DiagnosticsError, match=r"Expected source_features as a non-empty mapping.*; got dict with 0 layers\."):
        cka_matrix({}, ok)
    with pytest.raises(DiagnosticsError, match=r"Expected target_features as a non-empty mapping.*; got list\."):
        cka_matrix(ok, [np.ones((6, 2))])
    with pytest.raises(DiagnosticsError, match=r"Expected every layer on the same inputs \(the same number of rows\); got source layer 'a': 6, target layer 'b': 5\."):
        cka_matrix(ok, {"b": np.ones((5, 2))})
    with pytest.raises(DiagnosticsError, match=r"Expected the features of target_features\['b'\] as a 2-D.*reshape"):
        cka_matrix(ok, {"b": np.ones((6, 2, 2))})
    with pytest.raises(DiagnosticsError, match=r"target layer 'dead' are the same for every input"):
        cka_matrix(ok, {"dead": np.zeros((6, 3))})
    with pytest.raises(DiagnosticsError, match=r"source layer 'dead' are the same for every input"):
        cka_matrix({"dead": np.zeros((6, 3))}, ok)
