"""Transferability estimated before fine-tuning (issue 15): LogME and LEEP of a source model on the
labelled target data.

- ``logme`` (You et al., ICML 2021): how well the frozen features explain the target labels, as the
  maximised evidence of a Bayesian linear model per class (one-vs-rest), per instance.
- ``leep`` (Nguyen et al., ICML 2020): how well the source model's softmax, through the empirical
  conditional P̂(y | z) of target label given source class, predicts the target labels (a mean
  log-likelihood, at most 0).
- ``estimate_transferability``: both for a model over a torch Dataset of (image, label).

Both are cheap (one forward pass, then one eigen-decomposition), so they can rank settings before any
training.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import DiagnosticsError
from ..validation import check_array, check_int, check_labels, check_probabilities

# The authors' reference code stops after 11 fixed-point steps; the 1 % test on α/β ends it earlier
# in practice.
MAX_ITERATIONS = 11
TOLERANCE = 0.01


def _n_classes(labels: np.ndarray, n_classes) -> int:
    if n_classes is None:
        return int(labels.max()) + 1 if labels.size else 0
    return check_int(n_classes, "n_classes", low=2, doc="(the number of target classes)")


def _checked_labels(labels, n: int, n_classes, what: str) -> tuple[np.ndarray, int]:
    raw = check_array(labels, "the target labels", ndim=1, layout="(instances,)", kind="integer", finite=False,
                      hints={"kind": "Pass integer class indices, not scores or names."})
    if raw.size and raw.min() < 0:
        raise DiagnosticsError(f"Expected the target labels as class indices >= 0; got {int(raw.min())}. "
                               f"Map class names to 0..C-1 first.")
    k = _n_classes(raw, n_classes)
    labels = check_labels(raw, "the target labels", max(k, 1), length=n)
    present = np.unique(labels)
    if len(present) < 2:
        raise DiagnosticsError(f"Expected target labels of at least two classes for {what} (a score of "
                               f"telling classes apart); got {len(present)} class(es) in {n} instance(s). "
                               f"Pass target data that holds several classes.")
    return labels, k


# --------------------------------------------------------------------------- LogME


def _log_evidence(z: np.ndarray, y_norm2: float, s: np.ndarray, n: int, d: int,
                  max_iterations: int, tolerance: float) -> float:
    """The maximised log evidence / n of y ≈ F m, given F's non-zero singular values ``s`` and
    z = uᵀy, y's coordinates along F's left singular vectors (F = u diag(s) vᵀ).

    Each fixed-point step costs O(rank): with σ = s² and m in v's basis, m̃ = βsz/(α+βσ),
    ‖y − Fm‖² = ‖y‖² − ‖z‖² + ‖z − s m̃‖² and log|αI + βFᵀF| = Σ log(α + βσ) + (d − rank) log α.
    """
    sigma = s * s
    outside = max(y_norm2 - float(z @ z), 0.0)  # the part of y no feature combination reaches
    tiny = np.finfo(np.float64).tiny

    def moments(alpha, beta):
        m = beta * s * z / (alpha + beta * sigma)
        residual = outside + float(((z - s * m) ** 2).sum())
        return float(m @ m), residual

    alpha, beta = 1.0, 1.0
    for _ in range(max_iterations):
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        m2, residual = moments(alpha, beta)
        alpha, beta, previous = gamma / max(m2, tiny), (n - gamma) / max(residual, tiny), alpha / beta
        alpha, beta = max(alpha, tiny), max(beta, tiny)
        if abs(alpha / beta - previous) / previous < tolerance:
            break
    # The evidence at the final (α, β), with its own posterior mean.
    m2, residual = moments(alpha, beta)
    log_det = float(np.log(alpha + beta * sigma).sum()) + (d - len(s)) * np.log(alpha)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - beta / 2 * residual
                - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence) / n


def _spectral_coordinates(f: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, z): F's numerically non-zero singular values and z = uᵀY, the targets' (N, C) coordinates
    along the matching left singular vectors, from one ``eigh`` of the smaller Gram matrix (FᵀF when
    N >= D, else FFᵀ; half the time of the SVD of F at the demo's 1,527 × 1,536, and u is never formed)."""
    n, d = f.shape
    gram, w = (f.T @ f, f.T @ targets) if n >= d else (f @ f.T, targets)
    values, vectors = np.linalg.eigh(gram)
    keep = values > values.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    s = np.sqrt(values[keep])
    coords = vectors[:, keep].T @ w
    z = coords / s[:, None] if n >= d else coords  # u = F v / s when G = FᵀF
    return s, z


def logme(features, labels, n_classes: int | None = None) -> float:
    """LogME of ``features`` (N, D) for ``labels`` (N,): the mean over the classes present of the
    maximised log evidence per instance of a one-vs-rest linear model (You et al., 2021).

    Higher is better; comparable between feature extractors on the same target data. Computed in
    float64 from one eigen-decomposition of the smaller Gram matrix of the features, shared by all
    classes; directions with a numerically zero singular value count as zero (they add log α to the
    evidence's determinant). The evidence is taken at the final α, β with its own posterior mean (the
    authors' code reuses the mean of the step before). Classes in ``range(n_classes)`` with no instance
    are left out of the mean (their evidence is undefined).
    """
    f = check_array(features, "the features", ndim=2, layout="(instances, dimensions)", min_shape=(2, 1),
                    hints={"finite": "Check the model's embedding for NaN (a diverged run).",
                           "shape": "Pass one feature row per instance (flatten each embedding)."})
    y, k = _checked_labels(labels, len(f), n_classes, "LogME")
    if not np.any(f):
        raise DiagnosticsError("Expected features with at least one non-zero value; got all zeros. The "
                               "embedding carries no information (e.g. every ReLU is off): check the model.")
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)  # one-vs-rest, one column per class
    s, z = _spectral_coordinates(f, targets)
    n, d = f.shape
    scores = [_log_evidence(z[:, j], float(targets[:, j].sum()), s, n, d, MAX_ITERATIONS, TOLERANCE)
              for j in range(len(classes))]
    return float(np.mean(scores))


# --------------------------------------------------------------------------- LEEP


def leep(source_probs, labels, n_classes: int | None = None) -> float:
    """LEEP of a source model's softmax ``source_probs`` (N, Z) for target ``labels`` (N,)
    (Nguyen et al., 2020): with P̂(y, z) = (1/N) Σ_{i: yᵢ = y} θ(xᵢ)_z and P̂(y | z) = P̂(y, z)/P̂(z),
    LEEP = (1/N) Σᵢ log Σ_z P̂(yᵢ | z) θ(xᵢ)_z. At most 0; 0 when the source class decides the label.
    """
    theta = check_probabilities(source_probs, "the source probabilities", layout="(instances, source classes)")
    y, k = _checked_labels(labels, len(theta), n_classes, "LEEP")
    n = len(theta)
    joint = np.zeros((k, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= n
    marginal = joint.sum(0)
    # A source class no instance gives any probability has θ_z = 0 everywhere: its column never counts.
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = (theta * conditional[y]).sum(1)
    return float(np.log(eep).mean())


# --------------------------------------------------------------------------- a model on a dataset


def estimate_transferability(model, dataset, *, batch_size: int = 256, max_rows: int | None = None,
                             seed: int = 0) -> dict:
    """LogME of ``model``'s embedding and LEEP of its softmax on ``dataset`` (items (image, label)).

    ``model`` is a `TransferNet` (``embedding``, ``head``) or has ``embed_and_logits``; it runs in
    eval mode, batch by batch (`instances.model_outputs`). ``max_rows`` keeps a seeded random subset.
    Returns ``{"logme", "leep", "n", "seconds"}``.
    """
    import torch

    from ..validation import check_module
    from .instances import model_outputs

    started = time.perf_counter()
    check_module(model)
    batch_size = check_int(batch_size, "batch_size", low=1)
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DiagnosticsError(f"Expected the target data as a map-style torch Dataset of (image, label) items; "
                               f"got {type(dataset).__name__}. Pass e.g. the target domain's training split.")
    total = len(dataset)
    if total < 2:
        raise DiagnosticsError(f"Expected a target dataset of at least two items; got {total}. "
                               f"Pass the target training data.")
    rows = np.arange(total)
    if max_rows is not None:
        max_rows = check_int(max_rows, "max_rows", low=2, doc="(instances scored; None for all)")
        if max_rows < total:
            rows = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))
    features, probs, labels = [], [], []
    for start in range(0, len(rows), batch_size):
        items = [dataset[int(i)] for i in rows[start:start + batch_size]]
        images = torch.stack([torch.as_tensor(image) for image, _ in items])
        out = model_outputs(model, images, batch_size=batch_size)
        features.append(out.embedding)
        probs.append(out.probabilities)
        labels.extend(int(label) for _, label in items)
    features, probs, labels = np.concatenate(features), np.concatenate(probs), np.asarray(labels, np.int64)
    return {"logme": logme(features.reshape(len(features), -1), labels),
            "leep": leep(probs.astype(np.float64), labels),
            "n": int(len(labels)), "seconds": time.perf_counter() - started}
