"""Network comparison of Ma et al. (VAST 2020), section 5.3.2 and Figure 3 (C).

Both models are attributed on the SAME target instances of one class, so each neuron of layer i has an
attribution vector over those M instances: column j of the (M, U) conductance matrix. Two neurons,
one per model, are similar when their vectors point the same way (cosine similarity), giving the
(Us, Ut) matrix S_{c,i}. An important target weight n1 -> n2 (layer i -> i+1) is *inherited* when the
source neurons most similar to n1 and n2 are joined by an important source weight.

Matrices are indexed [source neuron, target neuron] throughout.

Correspondence rules (issue 11): a neuron with no conductance signal over the class's instances
(:func:`silent_neurons`) is *silent* and has no counterpart, and is never one; a target neuron whose
largest similarity is shared (within :data:`TIE_ATOL`) by several source neurons is *ambiguous* and has
no counterpart either. Neither rule looks at neuron indices: an earlier rule kept the same index on a
tie, which matched every silent neuron of a fine-tuned pair to itself and inflated the inherited share.
Ties among non-zero maxima arise when source columns point the same way (e.g. neurons that conduct on
one and the same instance only); picking one of them, by index or otherwise, would claim a
correspondence the attributions cannot tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics.pairwise import cosine_similarity

from mlflow_transfer.errors import DiagnosticsError

from ..validation import check_array, check_int, check_number

__all__ = [
    "LayerComparison",
    "best_matches",
    "best_source_neurons",
    "layer_summary",
    "neuron_similarity",
    "silent_neurons",
    "weight_correspondence",
]

NO_MATCH = -1
"""Value of :func:`best_source_neurons` for a target neuron that has no similar source neuron."""

SILENT_RTOL = 1e-6
"""A neuron is silent when its largest |conductance| over the class's instances is at most this share
of the layer's largest: conductance is stored as float32 (about 7 digits), so a column a million times
below the layer's peak is rounding, not signal — and its cosine, after normalisation, would be noise."""

TIE_ATOL = 1e-9
"""Similarities within this of a column's maximum tie with it: cosines of columns pointing the same
way differ by rounding only (about 1e-16 in float64)."""


@dataclass(frozen=True)
class LayerComparison:
    """How much of one target layer (for one class) has a counterpart in the source model.

    Attributes:
        n_important_weights: number of important target weights leaving this layer (K).
        n_inherited_weights: how many of them have a correspondence among the important source weights.
        inherited_weight_share: ``n_inherited_weights / n_important_weights`` in [0, 1]; NaN when K = 0
            (e.g. the last analysed layer, which has no outgoing weights).
        n_important_neurons: number of important target neurons summarised.
        mean_best_similarity: mean over the important target neurons of their largest cosine
            similarity to any source neuron of the same layer, in [-1, 1].
    """

    n_important_weights: int
    n_inherited_weights: int
    inherited_weight_share: float
    n_important_neurons: int
    mean_best_similarity: float


def neuron_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Cosine similarity between the attribution vectors of every source and every target neuron.

    Args:
        source: (M, Us) conductance of the source model's layer on M target instances of one class.
        target: (M, Ut) conductance of the target model's layer on the same M instances, same order.

    Returns:
        (Us, Ut) float64 array in [-1, 1]; entry [a, b] is the cosine of the angle between column a of
        ``source`` and column b of ``target``. A neuron whose vector is all zero (it never conducts on
        these instances) has similarity 0 to every neuron, itself included — sklearn leaves zero
        vectors unnormalised rather than dividing by zero.

    Raises:
        DiagnosticsError: if an input is not a 2-D finite real array with at least one row and column,
            or the two disagree on the number of instances M.
    """
    src = _check_matrix(source, "source conductance", "(instances, source neurons)")
    tgt = _check_matrix(target, "target conductance", "(instances, target neurons)")
    if src.shape[0] != tgt.shape[0]:
        raise DiagnosticsError(
            f"Expected source and target conductance of the same instances; got {src.shape[0]} rows "
            f"(source) and {tgt.shape[0]} rows (target). Attribute both models on the same target "
            "instances of the class, in the same order.")
    return _cosine(src, tgt)


def best_matches(similarity: np.ndarray, k: int = 1) -> np.ndarray:
    """For each target neuron, the k most similar source neurons, most similar first.

    Args:
        similarity: (Us, Ut) matrix from :func:`neuron_similarity`, indexed [source, target].
        k: how many source neurons to return per target neuron, in [1, Us].

    Returns:
        (Ut, k) int64 array of source neuron indices; row b lists the k largest entries of column b.
        Equal similarities are ordered by lower source index first.

    Raises:
        DiagnosticsError: if ``similarity`` is not a 2-D finite array or k is outside [1, Us].
    """
    sim = _check_matrix(similarity, "similarity matrix", "(source neurons, target neurons)")
    k = check_int(k, "k", low=1, high=sim.shape[0], doc="(the number of source neurons)")
    # Stable sort on negated values: ties keep ascending source index.
    order = np.argsort(-sim, axis=0, kind="stable")[:k]
    return order.T.astype(np.int64)


def best_source_neurons(similarity: np.ndarray, min_similarity: float = 0.0, *,
                        silent_source: np.ndarray | None = None,
                        silent_target: np.ndarray | None = None) -> np.ndarray:
    """For each target neuron, its most similar source neuron, or ``NO_MATCH`` (-1) if there is none.

    This is the n -> n' lookup of section 5.3.2, with the module's correspondence rules: a target
    neuron is matched only when its best similarity is strictly greater than ``min_similarity`` (with
    the default 0, a zero attribution vector — similarity 0 to everything — or a neuron that only
    anti-correlates has no counterpart), it is not silent, and exactly one source neuron reaches that
    best similarity (within :data:`TIE_ATOL`); silent source neurons are never candidates. Pass
    ``min_similarity=-math.inf`` for the paper's plain argmax (ties still have no match).

    Args:
        similarity: (Us, Ut) matrix from :func:`neuron_similarity`, indexed [source, target].
        min_similarity: threshold in [-inf, 1); a match needs a similarity above it.
        silent_source: (Us,) bool, the source neurons without signal (:func:`silent_neurons`); None: none.
        silent_target: (Ut,) bool, likewise for the target neurons.

    Returns:
        (Ut,) int64 array of source neuron indices, or -1.

    Raises:
        DiagnosticsError: if ``similarity`` is not a 2-D finite array, the threshold is not a number
            below 1, or a silent mask is not a bool array of its side's length.
    """
    sim = _check_matrix(similarity, "similarity matrix", "(source neurons, target neurons)")
    threshold = _check_threshold(min_similarity)
    return _best_source(sim, threshold, _check_mask(silent_source, sim.shape[0], "silent_source"),
                        _check_mask(silent_target, sim.shape[1], "silent_target"))


def silent_neurons(conductance: np.ndarray, rtol: float = SILENT_RTOL) -> np.ndarray:
    """Which neurons have no conductance signal over the given instances (one class's).

    Args:
        conductance: (M, U) conductance of one model's layer on the class's M instances.
        rtol: neuron j is silent when ``max_p |c[p, j]| <= rtol * max_{p, j} |c[p, j]|``; every neuron
            of an all-zero layer is silent. In [0, 1).

    Returns:
        (U,) bool array, True for a silent neuron.

    Raises:
        DiagnosticsError: if the array is not 2-D, has no row or column, or is not finite.
    """
    array = _check_matrix(conductance, "conductance", "(instances, neurons)")
    rtol = check_number(rtol, "rtol", low=0.0, high=1.0, high_open=True)
    peak = np.abs(array).max(axis=0)
    return peak <= rtol * peak.max()


def weight_correspondence(
    target_weights: np.ndarray,
    source_weights: np.ndarray,
    sim_i: np.ndarray,
    sim_next: np.ndarray,
    min_similarity: float = 0.0,
    *,
    silent_i: tuple[np.ndarray, np.ndarray] | None = None,
    silent_next: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Whether each important target weight is inherited from an important source weight.

    For an important target weight n1 -> n2 between layers i and i+1, n1' and n2' are the source
    neurons most similar to n1 (in ``sim_i``) and to n2 (in ``sim_next``), as in
    :func:`best_source_neurons` (silent and ambiguous neurons have none); the weight is inherited when
    (n1', n2') is one of the important source weights. A weight one of whose ends has no counterpart
    is not inherited. No rule prefers the same neuron index, even for a fine-tuned pair.

    Args:
        target_weights: (K, 2) integer array of important target weights, rows (n1, n2) with n1 a
            neuron of layer i and n2 of layer i+1 (target model indices). K may be 0.
        source_weights: (Ks, 2) integer array of important source weights, same layout (source model
            indices). Ks may be 0.
        sim_i: (Us_i, Ut_i) neuron similarity of layer i, indexed [source, target].
        sim_next: (Us_{i+1}, Ut_{i+1}) neuron similarity of layer i+1, indexed [source, target].
        min_similarity: threshold of :func:`best_source_neurons` (default 0).
        silent_i: (source mask (Us_i,), target mask (Ut_i,)) of silent neurons of layer i
            (:func:`silent_neurons` of each model's conductance on the class); None: none silent.
        silent_next: the same for layer i+1.

    Returns:
        (K,) bool array, True where the target weight has a correspondence in the source model.

    Raises:
        DiagnosticsError: if a weight list is not an integer (K, 2) array, an index falls outside its
            layer, a similarity matrix is not a 2-D finite array, the threshold is not below 1, or a
            silent mask does not fit its layer.
    """
    s_i = _check_matrix(sim_i, "similarity matrix of layer i", "(source neurons, target neurons)")
    s_next = _check_matrix(sim_next, "similarity matrix of layer i+1", "(source neurons, target neurons)")
    tgt = _check_weights(target_weights, "target", bounds=(s_i.shape[1], s_next.shape[1]))
    src = _check_weights(source_weights, "source", bounds=(s_i.shape[0], s_next.shape[0]))
    threshold = _check_threshold(min_similarity)
    masks = [(_check_mask(None if pair is None else pair[0], s.shape[0], f"{name}[0] (source)"),
              _check_mask(None if pair is None else pair[1], s.shape[1], f"{name}[1] (target)"))
             for pair, s, name in ((silent_i, s_i, "silent_i"), (silent_next, s_next, "silent_next"))]
    return _correspondence(tgt, src, _best_source(s_i, threshold, *masks[0]),
                           _best_source(s_next, threshold, *masks[1]),
                           n_source_next=s_next.shape[0])


def layer_summary(
    similarity: np.ndarray,
    important_target_neurons: np.ndarray,
    correspondence: np.ndarray,
) -> LayerComparison:
    """Per-layer figures of the comparison: share of inherited weights and mean best neuron similarity.

    Args:
        similarity: (Us, Ut) neuron similarity of this layer, indexed [source, target].
        important_target_neurons: (k,) integer indices of the important target neurons of this layer
            (e.g. :func:`~mlflow_transfer.diagnostics.ranking.top_k_neurons` of the target
            conductance), k >= 1, each in [0, Ut).
        correspondence: (K,) bool array from :func:`weight_correspondence` for the important target
            weights leaving this layer; may be empty (last layer).

    Returns:
        A :class:`LayerComparison`.

    Raises:
        DiagnosticsError: if ``similarity`` is not a 2-D finite array, the neuron indices are empty,
            not integers or out of range, or ``correspondence`` is not a 1-D bool array.
    """
    sim = _check_matrix(similarity, "similarity matrix", "(source neurons, target neurons)")
    neurons = check_array(important_target_neurons, "important_target_neurons", ndim=1,
                          layout="(target neuron indices,)", kind="integer", min_shape=(1,))
    if neurons.min() < 0 or neurons.max() >= sim.shape[1]:
        raise DiagnosticsError(
            f"Expected important_target_neurons in [0, {sim.shape[1]}) (the layer's target neurons); "
            f"got values from {neurons.min()} to {neurons.max()}.")
    flags = check_array(correspondence, "correspondence", ndim=1, kind="bool",
                        hints={"shape": "Pass the array weight_correspondence returns.",
                               "kind": "Pass the array weight_correspondence returns."})
    n_weights = int(flags.size)
    n_inherited = int(np.count_nonzero(flags))
    return LayerComparison(
        n_important_weights=n_weights,
        n_inherited_weights=n_inherited,
        inherited_weight_share=n_inherited / n_weights if n_weights else math.nan,
        n_important_neurons=int(neurons.size),
        mean_best_similarity=float(sim[:, neurons].max(axis=0).mean()),
    )


def _cosine(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    # Rounding can put |cos| a few ulps above 1; clip so downstream colour scales and tests can rely
    # on the documented range.
    return np.clip(cosine_similarity(src.T, tgt.T), -1.0, 1.0)


def _best_source(sim: np.ndarray, threshold: float, silent_source: np.ndarray | None = None,
                 silent_target: np.ndarray | None = None) -> np.ndarray:
    if silent_source is not None:
        sim = np.where(silent_source[:, None], -np.inf, sim)  # never a candidate
    best = np.argmax(sim, axis=0)
    columns = np.arange(sim.shape[1])
    best_value = sim[best, columns]
    tied = np.count_nonzero(sim >= best_value - TIE_ATOL, axis=0) > 1
    ok = (best_value > threshold) & ~tied
    if silent_target is not None:
        ok &= ~silent_target
    return np.where(ok, best, NO_MATCH).astype(np.int64)


def _correspondence(
    tgt: np.ndarray, src: np.ndarray, match_i: np.ndarray, match_next: np.ndarray, n_source_next: int
) -> np.ndarray:
    n1 = match_i[tgt[:, 0]]
    n2 = match_next[tgt[:, 1]]
    # Encode each (row, column) pair as one integer so membership is a single np.isin.
    source_keys = src[:, 0] * n_source_next + src[:, 1]
    mapped_keys = n1 * n_source_next + n2
    return (n1 != NO_MATCH) & (n2 != NO_MATCH) & np.isin(mapped_keys, source_keys)


def _check_matrix(array: np.ndarray, what: str, layout: str) -> np.ndarray:
    return check_array(array, f"the {what}", ndim=2, layout=layout, min_shape=(1, 1),
                       hints={"finite": "Check the attribution step that produced it."})


def _check_weights(weights: np.ndarray, side: str, bounds: tuple[int, int]) -> np.ndarray:
    what = f"the important {side} weights"
    layout = "(K, 2), rows (neuron in layer i, neuron in layer i+1)"
    pairs = check_array(weights, what, ndim=2, layout=layout, kind="integer")
    if pairs.shape[1] != 2:
        raise DiagnosticsError(f"Expected {what} as a 2-D array of shape {layout}; got shape {pairs.shape}.")
    for column, (bound, layer) in enumerate(zip(bounds, ("i", "i+1"))):
        values = pairs[:, column]
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise DiagnosticsError(
                f"Expected {what}' neuron indices of layer {layer} in [0, {bound}) (the {side} side of "
                f"that layer's similarity matrix); got values from {values.min()} to {values.max()}. "
                "Are the weights and similarity matrices of the same layers?")
    return pairs


def _check_mask(mask, size: int, name: str) -> np.ndarray | None:
    if mask is None:
        return None
    flags = check_array(mask, name, ndim=1, kind="bool", layout=f"({size},)",
                        hints={"kind": "Pass the array silent_neurons returns."})
    if flags.shape[0] != size:
        raise DiagnosticsError(f"Expected {name} as a bool array of one flag per neuron ({size}); got "
                               f"{flags.shape[0]}. Pass silent_neurons of the same model's layer.")
    return flags


def _check_threshold(min_similarity: float) -> float:
    return check_number(min_similarity, "min_similarity", high=1.0, high_open=True, finite=False,
                        doc="(cosine similarities lie in [-1, 1]; use -math.inf for the paper's plain argmax)")
