"""The 2-D t-SNE projection of instance embeddings (paper §5.2), numpy + openTSNE only (no torch).

The diagnostics engine stores it for every instance; the app (`ui/projection.py`) re-projects a subset
of classes with the same function and parameters.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DiagnosticsError
from .validation import check_choice

__all__ = ["BH_BELOW", "tsne_projection"]

BH_BELOW = 1_000  # points: below this Barnes–Hut gradients are faster, the FFT grid's fixed cost dominating


def tsne_projection(embedding: np.ndarray, *, seed: int = 0, perplexity: float = 40.0,
                    learning_rate: float | str = "auto", n_jobs: int | None = None,
                    gradient: str = "auto") -> np.ndarray:
    """2-D openTSNE projection of ``embedding`` (N, D) → float32 (N, 2).

    Perplexity 40 follows the public viewer; it is lowered to (N − 1) / 3 for small N, as t-SNE
    needs 3·perplexity neighbours. ``gradient``: ``"fft"`` (FFT-accelerated interpolation), ``"bh"``
    (Barnes–Hut) or ``"auto"``, Barnes–Hut below `BH_BELOW` points and FFT from there on. ``n_jobs``:
    openTSNE's threads; None: ``$OMP_NUM_THREADS`` when set (a sweep task runs on one core, issue 15),
    else every core.
    """
    from openTSNE import TSNE

    x = np.asarray(embedding, dtype=np.float64)
    if x.ndim != 2 or len(x) < 4:
        raise DiagnosticsError(f"Expected the embedding as a 2-D array of at least 4 instances (t-SNE needs "
                               f"neighbours); got shape {x.shape}.")
    if check_choice(gradient, "the t-SNE gradient", ("auto", "fft", "bh")) == "auto":
        gradient = "bh" if len(x) < BH_BELOW else "fft"
    perplexity = float(min(perplexity, (len(x) - 1) / 3))
    if n_jobs is None:
        threads = os.environ.get("OMP_NUM_THREADS", "")
        n_jobs = int(threads) if threads.isdigit() and int(threads) > 0 else -1
    tsne = TSNE(n_components=2, perplexity=perplexity, learning_rate=learning_rate,
                negative_gradient_method=gradient, random_state=seed, n_jobs=n_jobs, verbose=False)
    return np.asarray(tsne.fit(x), dtype=np.float32)
