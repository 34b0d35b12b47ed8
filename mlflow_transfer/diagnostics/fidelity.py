"""How far a 2-D projection can be trusted (DVI's fidelity numbers; private to :mod:`.timetravel`).

NN@k counts shared neighbours: for each point, |its k nearest in high dimension ∩ its k nearest in 2-D|
(itself excluded), averaged — a count in [0, k]; random layouts give about k² / n. PPR is the share of
points whose prediction through decode(encode(x)) is the model's prediction of x.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors

from ..regions import FIDELITY_METRICS

__all__ = ["METRICS", "knn_indices", "knn_overlap", "neighbour_preservation", "temporal_correlation",
           "trustworthiness_of"]

METRICS = FIDELITY_METRICS


def knn_indices(points: np.ndarray, k: int, queries: np.ndarray | None = None) -> np.ndarray:
    """Exact Euclidean k nearest of each query among ``points`` (N, k) int64; with no ``queries`` the
    points query themselves and each point's own row is left out."""
    points = np.asarray(points, dtype=np.float32)
    own = queries is None
    k_fit = min(k + own, len(points))
    nn = NearestNeighbors(n_neighbors=k_fit, algorithm="brute" if points.shape[1] > 3 else "auto")
    nn.fit(points)
    idx = nn.kneighbors(points if own else np.asarray(queries, dtype=np.float32), return_distance=False)
    if not own:
        return idx
    return _drop_self(idx, k)


def _drop_self(idx: np.ndarray, k: int) -> np.ndarray:
    # exact duplicates may put a twin before the point itself, so remove the point by value
    rows = np.arange(len(idx))[:, None]
    keep = idx != rows
    out = np.empty((len(idx), min(k, idx.shape[1] - 1)), dtype=np.int64)
    for i in range(len(idx)):
        out[i] = idx[i][keep[i]][:out.shape[1]]
    return out


def knn_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, |a_i ∩ b_i| for two (N, k) index arrays (a count in [0, k])."""
    a, b = np.sort(a, axis=1), np.sort(b, axis=1)
    # a row holds each index once, so a membership test per entry counts the intersection
    return np.array([np.intersect1d(x, y, assume_unique=True).size for x, y in zip(a, b)], dtype=np.float64)


def neighbour_preservation(high: np.ndarray, low: np.ndarray, ks: tuple[int, ...],
                           high_knn: np.ndarray | None = None) -> dict[int, float]:
    """NN@k for each k in ``ks`` among the points given (at least k + 1 of them, else NaN)."""
    out = {k: float("nan") for k in ks}
    usable = [k for k in ks if len(high) > k]
    if not usable:
        return out
    kmax = max(usable)
    hk = high_knn[:, :kmax] if high_knn is not None and high_knn.shape[1] >= kmax else knn_indices(high, kmax)
    lk = knn_indices(low, kmax)
    for k in usable:
        out[k] = float(knn_overlap(hk[:, :k], lk[:, :k]).mean())
    return out


def boundary_preservation(high_train: np.ndarray, low_train: np.ndarray, high_boundary: np.ndarray,
                          low_boundary: np.ndarray, k: int = 15) -> float:
    """Mean over boundary samples of |k nearest training points in high-D ∩ in 2-D|."""
    if len(high_boundary) == 0 or len(high_train) < k:
        return float("nan")
    hk = knn_indices(high_train, k, queries=high_boundary)
    lk = knn_indices(low_train, k, queries=low_boundary)
    return float(knn_overlap(hk, lk).mean())


def temporal_correlation(high_now: np.ndarray, high_before: np.ndarray | None, low_now: np.ndarray,
                         low_before: np.ndarray | None) -> float:
    """Spearman ρ across points of high-D displacement vs 2-D displacement (NaN with no previous epoch,
    a dimension change, or a constant displacement)."""
    if high_before is None or low_before is None or high_before.shape != high_now.shape:
        return float("nan")
    dh = np.linalg.norm(np.asarray(high_now, np.float64) - high_before, axis=1)
    dl = np.linalg.norm(np.asarray(low_now, np.float64) - low_before, axis=1)
    if len(dh) < 3 or np.ptp(dh) == 0 or np.ptp(dl) == 0:
        return float("nan")
    return float(spearmanr(dh, dl).statistic)


def trustworthiness_of(high: np.ndarray, low: np.ndarray, k: int = 15) -> float:
    """scikit-learn's trustworthiness with ``k`` neighbours (NaN when k ≥ n / 2, where it is undefined)."""
    if k >= len(high) / 2:
        return float("nan")
    return float(trustworthiness(np.asarray(high, np.float32), np.asarray(low, np.float32), n_neighbors=k))
