"""The neurons of the other model most similar to one neuron (paper §5.3.3's detail panel).

Plain numpy, no torch: the diagnostics engine chooses the feature patches it stores with it, and the
app (through `PairBundle.most_similar`) shows the same neighbours beside a clicked neuron.
"""

from __future__ import annotations

import numpy as np

__all__ = ["most_similar"]


def most_similar(similarity: np.ndarray, model: str, neuron: int, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` neurons of the other model most similar to ``neuron`` of ``model`` — the ones the
    paper's detail panel (§5.3.3) shows beside a clicked neuron.

    Args:
        similarity: (Us, Ut) matrix indexed [source, target]
            (`mlflow_transfer.diagnostics.similarity.neuron_similarity`).
        model: ``"source"`` (``neuron`` is a row) or ``"target"`` (a column).
    Returns:
        (indices, values), most similar first; ties keep the lower index first, NaN comes last.
    """
    row = similarity[neuron, :] if model == "source" else similarity[:, neuron]
    order = np.argsort(-np.nan_to_num(row, nan=-np.inf), kind="stable")[:k]
    return order, row[order]
