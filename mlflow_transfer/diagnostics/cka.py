"""Linear centered kernel alignment (CKA) between whole layers, with the unbiased HSIC estimator.

CKA compares two representations of the SAME n inputs — e.g. a layer of the source model and a layer
of the target model, both run on the same target instances — and is invariant to orthogonal
transforms and isotropic scaling of either one (Kornblith et al. 2019). With Gram matrices
K = X Xᵀ and L = Y Yᵀ,

    CKA(K, L) = HSIC₁(K, L) / sqrt(HSIC₁(K, K) · HSIC₁(L, L)),

where HSIC₁ is the unbiased estimator of Song et al. (2012), as used by Nguyen, Raghu & Kornblith
(2021, "Do wide and deep networks learn the same things?"): with K̃, L̃ the Gram matrices whose
diagonals are set to zero,

    HSIC₁(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK̃L̃1] / (n(n-3)).

The biased estimator tr(KHLH)/(n-1)² gives clearly positive CKA to unrelated features when n is not
much larger than the feature dimension; the unbiased one is centred on 0 there (and may be slightly
negative). It needs n >= 4.

The core computes HSIC₁ as a Frobenius inner product of "U-centred" Gram matrices (Székely & Rizzo
2014): n(n-3)·HSIC₁(K, L) = <U(K), U(L)>, so each layer's U(K) is built once and every CKA is a dot
product. Memory is n² float64 per layer held (8 MB at n = 1000).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mlflow_transfer.errors import DiagnosticsError
from mlflow_transfer.validation import check_array

__all__ = ["cka_matrix", "linear_cka"]

MIN_SAMPLES = 4
# A U-centred Gram matrix this small relative to the Gram matrix itself is rounding noise: the layer
# carries no usable variation across the inputs and its CKA is undefined.
_DEGENERATE_RTOL = 1e-10


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased linear CKA between two feature matrices of the same inputs.

    Args:
        x: (n, d1) features of n inputs (rows) from one layer. Flatten conv maps first, e.g.
            ``acts.reshape(len(acts), -1)`` for (n, C, H, W) activations.
        y: (n, d2) features of the SAME n inputs, in the same order, from another layer or model.

    Returns:
        CKA in [-1, 1] (a Python float, computed in float64): 1 for representations equal up to an
        orthogonal transform, isotropic scaling and a shift; about 0 for unrelated ones.

    Raises:
        DiagnosticsError: if an input is not a 2-D finite real array, the row counts differ, n < 4, or
            a representation is degenerate (e.g. the same vector for every input), where CKA is
            undefined.
    """
    fx = _check_features(x, "x")
    fy = _check_features(y, "y")
    if fx.shape[0] != fy.shape[0]:
        raise DiagnosticsError(
            f"Expected x and y on the same inputs; got {fx.shape[0]} rows in x and {fy.shape[0]} in y. "
            "Run both layers on the same inputs, in the same order.")
    ux = _normalised_u_gram(fx, "x")
    uy = _normalised_u_gram(fy, "y")
    return _clip(float(np.vdot(ux, uy)))


def cka_matrix(
    source_features: Mapping[str, np.ndarray], target_features: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Unbiased linear CKA between every layer of one model and every layer of another.

    Args:
        source_features: layer name -> (n, d_a) features (conv maps flattened, see :func:`linear_cka`),
            in the order the rows of the result should follow (e.g. forward order).
        target_features: layer name -> (n, d_b) features of the SAME n inputs, in column order.

    Returns:
        (La, Lb) float64 array; entry [a, b] is ``linear_cka(source[a], target[b])`` with a and b taken
        in the mappings' iteration order.

    Raises:
        DiagnosticsError: if a mapping is empty, a layer's features are bad (see :func:`linear_cka`),
            the layers do not all share the same n, or a layer is degenerate.
    """
    sources = _check_mapping(source_features, "source_features")
    targets = _check_mapping(target_features, "target_features")
    counts = {f"{side} layer {name!r}": feats.shape[0]
              for side, layers in (("source", sources), ("target", targets))
              for name, feats in layers.items()}
    if len(set(counts.values())) != 1:
        listing = ", ".join(f"{where}: {n}" for where, n in counts.items())
        raise DiagnosticsError(
            f"Expected every layer on the same inputs (the same number of rows); got {listing}. "
            "Collect all layers' features from one pass over the same inputs.")
    # Target side stacked once (Lb, n²); each source layer is then one matrix-vector product.
    stacked = np.stack([_normalised_u_gram(feats, f"target layer {name!r}").ravel()
                        for name, feats in targets.items()])
    rows = [stacked @ _normalised_u_gram(feats, f"source layer {name!r}").ravel()
            for name, feats in sources.items()]
    return np.clip(np.vstack(rows), -1.0, 1.0)


def _normalised_u_gram(features: np.ndarray, what: str) -> np.ndarray:
    """U(K) / ||U(K)||_F for K = X Xᵀ; raises when the norm is zero up to rounding."""
    if not np.any(np.ptp(features, axis=0)):
        raise DiagnosticsError(
            f"The features of {what} are the same for every input (every column is constant), so CKA "
            "is undefined. Is the layer dead (e.g. all-zero ReLU output) or were the inputs identical?")
    # Column centring changes K only by terms a·1ᵀ + 1·bᵀ, which U-centring removes; it is done for
    # accuracy, since large shared offsets (all-positive ReLU maps) would otherwise dominate K.
    centred = features - features.mean(axis=0, keepdims=True)
    gram = centred @ centred.T
    u_gram = _u_centre(gram)
    norm = np.linalg.norm(u_gram)
    if not norm > _DEGENERATE_RTOL * np.linalg.norm(gram):
        raise DiagnosticsError(
            f"The features of {what} have no variation that the unbiased estimator can measure "
            "(HSIC(K, K) is zero up to rounding, e.g. n = 4 one-hot rows), so CKA is undefined. "
            "Use more inputs.")
    return u_gram / norm


def _u_centre(gram: np.ndarray) -> np.ndarray:
    n = gram.shape[0]
    off = gram.copy()
    np.fill_diagonal(off, 0.0)
    sums = off.sum(axis=0)  # K is symmetric, so row and column sums agree
    u = off - sums[:, None] / (n - 2) - sums[None, :] / (n - 2) + sums.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def _clip(value: float) -> float:
    # Cauchy–Schwarz bounds CKA by 1; rounding can overshoot by an ulp.
    return min(1.0, max(-1.0, value))


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
    array = check_array(features, f"the features of {what}", ndim=2, layout="(inputs, features)",
                        min_shape=(0, 1), hints={"shape": "Flatten conv maps first: "
                                                          "features.reshape(len(features), -1)."})
    if array.shape[0] < MIN_SAMPLES:
        raise DiagnosticsError(
            f"Expected the features of {what} on at least {MIN_SAMPLES} inputs (the unbiased CKA estimator "
            f"needs n > 3); got {array.shape[0]}. Pass more inputs.")
    return array


def _check_mapping(features: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    if not isinstance(features, Mapping) or len(features) == 0:
        got = f"{type(features).__name__} with 0 layers" if isinstance(features, Mapping) \
            else type(features).__name__
        raise DiagnosticsError(f"Expected {what} as a non-empty mapping of layer name -> (n, d) features; "
                               f"got {got}.")
    return {name: _check_features(feats, f"{what}[{name!r}]") for name, feats in features.items()}
