"""Neuron extraction of Ma et al. (VAST 2020), section 5.3.1 and Figure 3 (A).

For one class c and one layer i, the input is the conductance matrix of shape (M, U): one row per
target instance of class c, one column per neuron (a conv channel reduced to its spatial maximum, as
the paper does, or a fully-connected unit). Each row is ranked ascending — the neuron with the largest
conductance on that instance gets rank U, tied values share their average rank — and the ranks are
summed over the instances. The neurons with the top-k sums (k = 10 % of the layer in the paper) are
the important neurons of class c in layer i.

Note the paper's matrix A_{c,i} is (neurons × instances); ours is its transpose, (instances × neurons),
the layout the conductance code returns.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from ..validation import check_array, check_fraction, check_int

__all__ = ["neuron_rank_scores", "top_k_neurons", "resolve_k"]

# Digits kept before ceil(fraction * U): fraction * U carries binary rounding error
# (0.07 * 100 == 7.000000000000001), which must not turn k = 7 into k = 8.
_K_ROUND_DIGITS = 9


def neuron_rank_scores(conductance: np.ndarray) -> np.ndarray:
    """Importance of every neuron of one layer for one class: per-instance ranks summed over instances.

    Args:
        conductance: (M, U) float array, layer conductance of U neurons on M instances of one class
            (units of the model's output score). Any real values; M >= 1, U >= 1, all finite.

    Returns:
        (U,) float64 array. Entry j is ``sum_p rank_p(j)`` where ``rank_p`` ranks row p ascending from
        1 to U and tied values share the average of the ranks they span. Values lie in [M, M·U];
        a larger score means a more important neuron.

    Raises:
        DiagnosticsError: if the array is not 2-D, is empty, or holds NaN or infinity.
    """
    array = _conductance(conductance)
    return _rank_scores(array)


def top_k_neurons(conductance: np.ndarray, fraction: float = 0.1, k: int | None = None) -> np.ndarray:
    """Indices of the k most important neurons of one layer for one class, most important first.

    Args:
        conductance: (M, U) float array as in :func:`neuron_rank_scores`.
        fraction: share of the layer to keep when ``k`` is None, in (0, 1]; the paper uses 0.1.
            ``k = max(1, ceil(fraction · U))``.
        k: exact number of neurons to keep, in [1, U]; overrides ``fraction`` when given.

    Returns:
        (k,) int64 array of neuron (column) indices sorted by descending rank score; equal scores are
        ordered by lower index first, so the result is deterministic.

    Raises:
        DiagnosticsError: for a bad conductance array (see :func:`neuron_rank_scores`), a fraction
            outside (0, 1], or a k outside [1, U].
    """
    array = _conductance(conductance)
    count = resolve_k(array.shape[1], fraction=fraction, k=k)
    scores = _rank_scores(array)
    # A stable sort on the negated scores keeps equal scores in index order.
    return np.argsort(-scores, kind="stable")[:count].astype(np.int64)


def resolve_k(num_neurons: int, fraction: float = 0.1, k: int | None = None) -> int:
    """The number of neurons to keep in a layer of ``num_neurons``: ``k`` or ``max(1, ceil(fraction·U))``.

    Exposed so the weight extraction and the UI pick the same k as :func:`top_k_neurons`.

    Raises:
        DiagnosticsError: if ``num_neurons`` < 1, ``fraction`` is outside (0, 1] or ``k`` outside [1, U].
    """
    num_neurons = check_int(num_neurons, "the layer's number of neurons", low=1)
    if k is not None:
        return check_int(k, "k", low=1, high=num_neurons, doc=f"(the layer has {num_neurons} neurons; "
                                                             f"or k=None to use `fraction`)")
    fraction = check_fraction(fraction, "fraction", doc="(0.1 keeps 10 % of the layer, as in the paper)")
    return max(1, math.ceil(round(fraction * num_neurons, _K_ROUND_DIGITS)))


def _conductance(conductance) -> np.ndarray:
    return check_array(conductance, "the conductance matrix", ndim=2, layout="(instances, neurons)",
                       min_shape=(1, 1), hints={
                           "shape": "Reduce conv maps to one value per channel (the spatial maximum) first; "
                                    "a class with no instances has no important neurons: skip it.",
                           "finite": "Check the attribution step (e.g. a diverged model or too few "
                                     "integration steps)."})


def _rank_scores(array: np.ndarray) -> np.ndarray:
    return rankdata(array, method="average", axis=1).sum(axis=0)
