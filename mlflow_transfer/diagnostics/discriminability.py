"""Domain discriminability of neurons (Ma et al., VAST 2020, §5.4.1 and Algorithm 1).

A linear SVM learns to tell source-domain from target-domain instances using the conductance of P
important neurons; its coefficients are the neurons' domain discriminability (large |coef|: the
neuron's attribution depends on the domain; near 0: domain-invariant). The "Domain Discriminability
Plot" projects the instances onto [SVM normal, first principal component] and draws each neuron's
original axis as a biplot line.

Choices follow the public viewer (see REFERENCES.md): per-neuron min-max scaling to [-1, 1],
``SVC(kernel="linear", C=100)``, basis orthonormalised with QR; the paper adds 10-fold CV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.preprocessing import MinMaxScaler
from sklearn.svm import SVC

from ..errors import DiagnosticsError
from ..validation import check_array, check_int, check_number

__all__ = ["Discriminability", "domain_discriminability", "rank_neurons", "scale_conductance"]

SOURCE, TARGET = 0, 1


@dataclass(frozen=True)
class Discriminability:
    """Result of :func:`domain_discriminability`. M = Ms + Mt rows (source rows first), P neurons.

    Attributes:
        labels: (M,) int64 domain label per row: 0 = source, 1 = target.
        scaled: (M, P) float64 conductance min-max scaled per neuron to [-1, 1] over all M rows;
            constant neurons are 0. This is the matrix the SVM and the PCA see.
        data_min, data_max: (P,) float64 per-neuron minimum / maximum of the unscaled conductance
            (the scaling is ``2 (a - data_min) / (data_max - data_min) - 1``).
        coef: (P,) float64 signed SVM weights, the domain discriminability values of Algorithm 1
            (per unit of scaled conductance). Positive: higher conductance pushes towards target.
        abs_coef: (P,) float64 ``|coef|``; the magnitude used to rank neurons.
        ranked: (P,) int64 neuron indices by decreasing ``|coef|`` (ties in index order).
        intercept: SVM intercept (decision value at scaled conductance 0; > 0 means target).
        train_accuracy: accuracy of the SVM fitted on all rows, in [0, 1].
        cv_scores: (folds_used,) float64 held-out accuracy of each stratified CV fold, in [0, 1].
        cv_mean, cv_std: mean and (population) standard deviation of ``cv_scores``.
        folds_used: number of CV folds actually used (``folds`` unless the smaller domain has fewer
            rows; see ``note``).
        unit_normal: (P,) float64 ``u = coef / ||coef||``.
        principal: (P,) float64 ``g``, first principal component of ``scaled`` (unit length, sign as
            sklearn's PCA returns it).
        basis: (P, 2) float64 ``W``: columns orthonormal, the first equal to ``+u``, the second the
            part of ``g`` orthogonal to ``u`` (normalised, sign so that it points along ``g``).
            When P == 1 the second column is 0 (there is no second direction).
        coordinates: (M, 2) float64 ``scaled @ basis``: x = signed distance along the SVM normal
            (the decision boundary is the vertical line x = -intercept / ||coef||), y = position
            along the principal direction. Units: scaled conductance.
        axes: (P, 2) float64 biplot line of each neuron: row j of ``basis`` (neuron j's original
            axis projected on [u, g]) times one factor for all, ``1 / max_j ||basis_j||``, so the
            longest line has length 1. Its horizontal part is ``u_j`` times that factor, so the lines'
            horizontal lengths are proportional to ``|coef_j|`` (§5.4.2: "the lengths of the axes
            lines on the horizontal direction indicate their domain discriminability").
        hist_source, hist_target: (P, bins) int64 per-neuron histogram counts of the *unscaled*
            conductance of source / target rows; each row sums to Ms / Mt.
        hist_edges: (P, bins + 1) float64 bin edges shared by both domains (units of conductance).
        note: human-readable remarks (CV-fold fallback, P == 1), "" when there are none.
    """

    labels: np.ndarray
    scaled: np.ndarray
    data_min: np.ndarray
    data_max: np.ndarray
    coef: np.ndarray
    abs_coef: np.ndarray
    ranked: np.ndarray
    intercept: float
    train_accuracy: float
    cv_scores: np.ndarray
    cv_mean: float
    cv_std: float
    folds_used: int
    unit_normal: np.ndarray
    principal: np.ndarray
    basis: np.ndarray
    coordinates: np.ndarray
    axes: np.ndarray
    hist_source: np.ndarray
    hist_target: np.ndarray
    hist_edges: np.ndarray
    note: str


def rank_neurons(coef: np.ndarray) -> np.ndarray:
    """(P,) int64 neuron indices, most domain-discriminative (largest |coef|) first; ties by index."""
    return np.argsort(-np.abs(np.asarray(coef, dtype=np.float64)), kind="stable").astype(np.int64)


def scale_conductance(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Min-max scale each column of ``a`` (M, P) to [-1, 1]; constant columns become 0.

    Returns ``(scaled, data_min, data_max)`` with shapes (M, P), (P,), (P,).
    """
    scaler = MinMaxScaler(feature_range=(-1.0, 1.0)).fit(a)
    scaled = scaler.transform(a)
    constant = scaler.data_range_ == 0
    # MinMaxScaler maps a constant column to the lower bound (-1); 0 keeps such a neuron neutral
    # for the SVM and out of the PCA's way.
    scaled[:, constant] = 0.0
    return scaled, scaler.data_min_.astype(np.float64), scaler.data_max_.astype(np.float64)


def _matrix(values, name: str) -> np.ndarray:
    array = check_array(values, f"{name} conductance", ndim=2, layout="(instances, P neurons)",
                        hints={"shape": "Reshape a single neuron's values to (-1, 1).",
                               "finite": "Recompute or drop those rows."})
    if array.shape[0] < 2:
        raise DiagnosticsError(f"Expected {name} conductance of at least 2 instances (stratified CV needs 2 "
                               f"folds per domain); got {array.shape[0]} rows.")
    return array


def domain_discriminability(source: np.ndarray, target: np.ndarray, *, folds: int = 10,
                            C: float = 100.0, seed: int = 0, bins: int = 20) -> Discriminability:
    """Domain discriminability of P neurons (Algorithm 1) and the data of its plot (§5.4.1).

    Args:
        source: (Ms, P) conductance of the P selected neurons (columns) on Ms source-domain
            instances (rows); Ms ≥ 2.
        target: (Mt, P) conductance of the same P neurons, same column order, on Mt target-domain
            instances; Mt ≥ 2.
        folds: number of stratified CV folds (paper: 10), ≥ 2. When the smaller domain has fewer
            rows than ``folds``, that row count is used instead and ``note`` says so.
        C: SVM regularisation parameter, > 0 (viewer: 100).
        seed: shuffling seed of the CV folds.
        bins: number of histogram bins per neuron, ≥ 1.

    Returns:
        A :class:`Discriminability`; see its attributes for shapes and units.

    Raises:
        DiagnosticsError: non-2-D or non-finite inputs, mismatched P, P == 0, a domain with fewer
            than 2 rows, every neuron constant over all rows, or bad ``folds``/``C``/``bins``.
    """
    a_source = _matrix(source, "source")
    a_target = _matrix(target, "target")
    if a_source.shape[1] != a_target.shape[1]:
        raise DiagnosticsError(f"Expected source and target conductance of the same neurons (columns); got "
                               f"P = {a_source.shape[1]} and P = {a_target.shape[1]}.")
    if a_source.shape[1] == 0:
        raise DiagnosticsError("Expected at least one neuron; got P == 0. Select at least one neuron per layer.")
    folds = check_int(folds, "folds", low=2)
    bins = check_int(bins, "bins", low=1)
    C = check_number(C, "C", low=0.0, low_open=True)
    return _domain_discriminability(a_source, a_target, folds, C, int(seed), bins)


def _domain_discriminability(a_source: np.ndarray, a_target: np.ndarray, folds: int, C: float,
                             seed: int, bins: int) -> Discriminability:
    ms, mt = len(a_source), len(a_target)
    p = a_source.shape[1]
    a = np.vstack([a_source, a_target])
    labels = np.concatenate([np.full(ms, SOURCE), np.full(mt, TARGET)]).astype(np.int64)
    scaled, data_min, data_max = scale_conductance(a)
    if not np.any(data_max > data_min):
        raise DiagnosticsError(f"Expected neurons whose conductance varies; got all {p} neurons constant "
                               f"over all {ms + mt} instances, so nothing can discriminate the domains. "
                               "Select other neurons (e.g. not dead units).")

    notes = []
    folds_used = min(folds, ms, mt)
    if folds_used < folds:
        notes.append(f"{folds}-fold cross-validation needs at least {folds} rows per domain but the "
                     f"smaller domain has {min(ms, mt)}; used {folds_used} folds instead")
    cv = StratifiedKFold(folds_used, shuffle=True, random_state=seed)
    cv_scores = cross_val_score(SVC(kernel="linear", C=C), scaled, labels, cv=cv)

    svm = SVC(kernel="linear", C=C).fit(scaled, labels)
    coef = svm.coef_.ravel().astype(np.float64)
    norm = float(np.linalg.norm(coef))
    if norm == 0.0:
        raise DiagnosticsError("The domain classifier learnt all-zero weights: the two domains are "
                               "indistinguishable to a linear classifier on these neurons (e.g. "
                               "identical rows in both), so no discriminability axis exists. "
                               "Check that source and target hold different instances.")
    unit_normal = coef / norm
    principal = PCA(n_components=1).fit(scaled).components_[0].astype(np.float64)

    if p == 1:
        notes.append("only one neuron (P == 1): the plot's vertical axis is 0")
        basis = np.array([[1.0 if unit_normal[0] > 0 else -1.0, 0.0]])
    else:
        q, r = np.linalg.qr(np.column_stack([unit_normal, principal]))
        # QR fixes each column only up to sign; flip so the first is +u and the second points along g.
        signs = np.where(np.diag(r) < 0, -1.0, 1.0)
        basis = q * signs
    abs_coef = np.abs(coef)
    axes = basis / np.linalg.norm(basis, axis=1).max()  # one factor: horizontal parts stay ∝ |coef|

    hist_source = np.empty((p, bins), dtype=np.int64)
    hist_target = np.empty((p, bins), dtype=np.int64)
    hist_edges = np.empty((p, bins + 1), dtype=np.float64)
    for j in range(p):
        edges = np.histogram_bin_edges(a[:, j], bins=bins)
        hist_edges[j] = edges
        hist_source[j] = np.histogram(a_source[:, j], bins=edges)[0]
        hist_target[j] = np.histogram(a_target[:, j], bins=edges)[0]

    return Discriminability(
        labels=labels, scaled=scaled, data_min=data_min, data_max=data_max, coef=coef,
        abs_coef=abs_coef, ranked=rank_neurons(coef), intercept=float(svm.intercept_[0]),
        train_accuracy=float(svm.score(scaled, labels)), cv_scores=cv_scores.astype(np.float64),
        cv_mean=float(cv_scores.mean()), cv_std=float(cv_scores.std()), folds_used=folds_used,
        unit_normal=unit_normal, principal=principal, basis=basis, coordinates=scaled @ basis,
        axes=axes, hist_source=hist_source, hist_target=hist_target, hist_edges=hist_edges,
        note="; ".join(notes))
