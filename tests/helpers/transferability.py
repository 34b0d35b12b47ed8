"""A slow, literal LogME: MacKay's evidence maximisation written with plain matrix inverses.

The reference the fast SVD version (`diagnostics.transferability.logme`) is tested against. Same
schedule as the fast one (α = β = 1 at the start, at most 11 fixed-point steps, stop once α/β moves
less than 1 %, evidence at the final α, β), but every quantity straight from its definition in You
et al. (2021): A = αI + βFᵀF, m = βA⁻¹Fᵀy, γ = Σᵢ βσᵢ/(α + βσᵢ) = D − α·tr(A⁻¹).
"""

from __future__ import annotations

import numpy as np


def log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) of the Bayesian linear model y = Fw + ε, w ~ N(0, I/α), ε ~ N(0, I/β)."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.inv(a) @ f.T @ y
    _, log_det = np.linalg.slogdet(a)
    return float(d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2
                 - beta / 2 * np.sum((y - f @ m) ** 2) - alpha / 2 * m @ m - n / 2 * np.log(2 * np.pi))


def maximised_evidence(f: np.ndarray, y: np.ndarray, max_iterations: int = 11,
                       tolerance: float = 0.01) -> tuple[float, float, float]:
    """(log evidence / N, α, β) after MacKay's fixed point from α = β = 1."""
    f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    for _ in range(max_iterations):
        a_inv = np.linalg.inv(alpha * np.eye(d) + beta * f.T @ f)
        m = beta * a_inv @ f.T @ y
        gamma = d - alpha * np.trace(a_inv)
        previous = alpha / beta
        alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((y - f @ m) ** 2)
        if abs(alpha / beta - previous) / previous < tolerance:
            break
    return log_evidence(f, y, alpha, beta) / n, alpha, beta


def slow_logme(features, labels) -> float:
    """Mean over the classes present of the maximised one-vs-rest log evidence per instance."""
    labels = np.asarray(labels)
    return float(np.mean([maximised_evidence(features, (labels == c).astype(np.float64))[0]
                          for c in np.unique(labels)]))
