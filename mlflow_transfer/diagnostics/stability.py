"""How stable the important neurons of one class and layer are (issue 11, beside §5.3.1's ranking).

The important set is the top-k of the rank sums over the class's analysed instances
(:mod:`.ranking`). With a small sample that set may be noise. We bootstrap the instances: draw M
rows with replacement, recompute the top-k set with the same k and the same tie rule, and report
the mean Jaccard overlap |A ∩ B| / |A ∪ B| between each resample's set B and the full sample's set A.

Why against the full sample rather than mean pairwise between resamples: A is the set the views show,
so the question a user asks is "how far would *this* set move with other instances of the class".
The number is a bootstrap estimate, so it is optimistic for pure noise (a resample shares ~63 % of
its rows with the sample): independent noise columns give about 0.3–0.4 whatever M, while a real
signal approaches 1 as M grows. Two random k-sets of U neurons overlap by about k / (2U − k).

Ranking is cheap on stored conductance: ranks are per row, so a resample's rank sums are its row
multiplicities times the row ranks, one (R, M) × (M, U) product for all resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from ..validation import check_array, check_int

__all__ = ["MIN_INSTANCES", "Stability", "bootstrap_jaccard", "important_set_stability"]

MIN_INSTANCES = 5
"""Fewest analysed instances a class needs: with fewer, the M^M resamples are too few and too alike
(M = 2 has three distinct multisets) for their overlap to mean anything."""


@dataclass(frozen=True)
class Stability:
    """Stability of one important set.

    Attributes:
        stability: mean Jaccard overlap in [0, 1]; NaN when not computed.
        k: size of the important set.
        n_instances: analysed instances (rows) of the class.
        n_resamples: bootstrap resamples drawn (0 when not computed).
        reason: why it was not computed ("" when it was).
    """

    stability: float
    k: int
    n_instances: int
    n_resamples: int
    reason: str = ""


def important_set_stability(conductance: np.ndarray, k: int, *, n_resamples: int = 20, seed: int = 0,
                            min_instances: int = MIN_INSTANCES) -> Stability:
    """Bootstrap stability of the top-``k`` neurons of one layer for one class.

    Args:
        conductance: (M, U) float array as in :func:`~.ranking.neuron_rank_scores` (finite).
        k: size of the important set, in [1, U] (:func:`~.ranking.resolve_k` of the layer).
        n_resamples: bootstrap resamples, >= 10.
        seed: seeds the resampling (same inputs and seed, same result).
        min_instances: fewest rows for which it is computed (>= 2).

    Returns:
        A :class:`Stability`; with fewer than ``min_instances`` rows its ``stability`` is NaN and
        ``reason`` says why.

    Raises:
        DiagnosticsError: for a bad array, k outside [1, U], fewer than 10 resamples.
    """
    array = check_array(conductance, "the conductance matrix", ndim=2, layout="(instances, neurons)",
                        min_shape=(0, 1), hints={"finite": "Check the attribution step."})
    k = check_int(k, "k", low=1, high=array.shape[1], doc=f"(the layer has {array.shape[1]} neurons)")
    n_resamples = check_int(n_resamples, "n_resamples", low=10,
                            doc="(the issue asks for at least 10 bootstrap resamples; 20 is the default)")
    min_instances = check_int(min_instances, "min_instances", low=2)
    m = array.shape[0]
    if m < min_instances:
        return Stability(math.nan, k, m, 0, f"only {m} analysed instance(s); the bootstrap needs at "
                                             f"least {min_instances} (raise the analysis cap)")
    rows = np.random.default_rng(seed).integers(0, m, size=(n_resamples, m))
    return Stability(bootstrap_jaccard(array, k, rows), k, m, n_resamples)


def bootstrap_jaccard(conductance: np.ndarray, k: int, resamples: np.ndarray) -> float:
    """Mean Jaccard overlap of the top-``k`` sets of given resamples with the full sample's top-``k``.

    The numeric core, with explicit resamples so that a hand-worked case can be checked.

    Args:
        conductance: (M, U) finite array (unchecked).
        k: set size in [1, U].
        resamples: (R, M') int array of row indices, one resample per row.
    """
    ranks = rankdata(conductance, method="average", axis=1)            # (M, U)
    m = conductance.shape[0]
    weights = np.zeros((len(resamples), m))
    np.add.at(weights, (np.arange(len(resamples))[:, None], resamples), 1.0)  # row multiplicities
    full = _top_mask(ranks.sum(axis=0)[None, :], k)[0]
    boot = _top_mask(weights @ ranks, k)
    inter = np.count_nonzero(boot & full, axis=1)
    return float(np.mean(inter / (2 * k - inter)))


def _top_mask(scores: np.ndarray, k: int) -> np.ndarray:
    # The tie rule of top_k_neurons: stable sort on the negated scores, lower index first. Rank sums
    # are multiples of 0.5, so products with integer multiplicities compare exactly.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask
