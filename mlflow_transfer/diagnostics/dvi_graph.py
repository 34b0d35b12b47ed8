"""DVI's graph inputs (private to :mod:`.timetravel`): boundary samples bisected through the head, the
exact kNN umap-learn builds its fuzzy simplicial set from, and that set as a weighted edge list."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

__all__ = ["BATCH", "PRUNE_EPOCHS", "boundary_samples", "graph_knn", "head_logits", "umap_edges"]

PRUNE_EPOCHS = 200  # umap-learn drops edges lighter than max weight / n_epochs (200 for its large-data default)
BATCH = 8192        # rows per head pass


def _device(module: torch.nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def head_logits(head: torch.nn.Module, x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The head's logits (float32, CPU) of rows ``x``, in batches on the head's device."""
    device = _device(head)
    x = torch.as_tensor(x, dtype=torch.float32)
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), BATCH):
            out.append(head(x[start:start + BATCH].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, 0))


def _rescaled_gap(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 of each row's logits after min-max rescaling the row to [0, 1]."""
    top = torch.topk(logits, 2, dim=1).values
    span = (logits.max(dim=1).values - logits.min(dim=1).values).clamp_min(1e-12)
    return (top[:, 0] - top[:, 1]) / span


def boundary_samples(representations: np.ndarray, predicted: np.ndarray, head: torch.nn.Module, count: int,
                     rng: np.random.Generator, *, gap: float = 0.1, steps: int = 8) -> np.ndarray:
    """Up to ``count`` points (B, D) float32 on the head's decision boundaries between the training points'
    predicted classes (``predicted``: the head's output index of each row); see the module docstring."""
    classes = np.unique(predicted)
    dim = representations.shape[1]
    if count <= 0 or len(classes) < 2:
        return np.zeros((0, dim), dtype=np.float32)
    pairs = [(c1, c2) for i, c1 in enumerate(classes) for c2 in classes[i + 1:]]
    # a quarter more pairs than wanted, so those whose bisection does not reach the gap can be dropped
    tries = math.ceil(1.25 * count)
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(math.ceil(tries / len(pairs)))])[:tries]
    members = {c: np.flatnonzero(predicted == c) for c in classes}
    first = np.array([rng.choice(members[pairs[o][0]]) for o in order])
    second = np.array([rng.choice(members[pairs[o][1]]) for o in order])
    c1 = torch.as_tensor([pairs[o][0] for o in order])
    r1 = torch.as_tensor(representations[first], dtype=torch.float32)
    r2 = torch.as_tensor(representations[second], dtype=torch.float32)
    lo, hi = torch.zeros(tries), torch.ones(tries)   # λ = 1 is r1 (class c1), λ = 0 is r2 (class c2)
    found = torch.zeros(tries, dtype=torch.bool)
    lam = torch.full((tries,), 0.5)
    for _ in range(steps):
        live = ~found
        lam = torch.where(live, (lo + hi) / 2, lam)
        mix = lam[:, None] * r1 + (1 - lam[:, None]) * r2
        logits = head_logits(head, mix)
        found |= _rescaled_gap(logits) < gap
        on_c1 = logits.argmax(dim=1) == c1
        hi = torch.where(live & on_c1, lam, hi)
        lo = torch.where(live & ~on_c1, lam, lo)
        if bool(found.all()):
            break
    mix = lam[:, None] * r1 + (1 - lam[:, None]) * r2
    return mix[found][:count].numpy().astype(np.float32)


def graph_knn(train: np.ndarray, extra: np.ndarray, k: int, k_metrics: int):
    """Exact kNN for umap-learn over the rows [train; extra] (self first, as umap-learn expects) and the
    training points' own k_metrics nearest among themselves (self left out) for the fidelity numbers."""
    n = len(train)
    k_own = min(max(k, k_metrics) + 1, n)
    d_tt, i_tt = NearestNeighbors(n_neighbors=k_own, algorithm="brute").fit(train).kneighbors(train)
    own = _self_first(i_tt, d_tt)
    train_knn = own[0][:, 1:]
    if len(extra):
        kb = min(k, len(extra))
        d_te, i_te = NearestNeighbors(n_neighbors=kb, algorithm="brute").fit(extra).kneighbors(train)
        dist = np.concatenate([own[1][:, :k], d_te], axis=1)
        idx = np.concatenate([own[0][:, :k], i_te + n], axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        idx_train, dist_train = np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)
        both = np.concatenate([train, extra])
        d_e, i_e = NearestNeighbors(n_neighbors=min(k, len(both)), algorithm="brute").fit(both).kneighbors(extra)
        i_e, d_e = _self_first(i_e, d_e, offset=n)
        knn_i, knn_d = np.concatenate([idx_train, i_e]), np.concatenate([dist_train, d_e])
    else:
        knn_i, knn_d = own[0][:, :k], own[1][:, :k]
    return knn_i, knn_d.astype(np.float32), train_knn


def _self_first(idx: np.ndarray, dist: np.ndarray, offset: int = 0):
    # a duplicate point can come before the point itself; umap-learn wants self in column 0
    rows = np.arange(len(idx))[:, None] + offset
    where = np.argmax(idx == rows, axis=1)
    has = (idx == rows).any(axis=1)
    idx, dist = idx.copy(), dist.copy()
    for i in np.flatnonzero(~has | (where != 0)):
        others = [j for j in idx[i] if j != rows[i, 0]][:idx.shape[1] - 1]
        idx[i] = [rows[i, 0]] + others
        dist[i] = np.concatenate([[0.0], np.sort(dist[i])[:idx.shape[1] - 1]])
    return idx, dist


def umap_edges(knn_i: np.ndarray, knn_d: np.ndarray, k: int, seed: int):
    from umap.umap_ import fuzzy_simplicial_set

    x = np.zeros((len(knn_i), 1), dtype=np.float32)  # unused: the kNN is given
    graph, _, _ = fuzzy_simplicial_set(x, k, np.random.RandomState(seed), "euclidean",
                                       knn_indices=knn_i, knn_dists=knn_d)
    graph = graph.tocoo()
    graph.sum_duplicates()
    keep = graph.data >= graph.data.max() / PRUNE_EPOCHS
    return graph.row[keep], graph.col[keep], graph.data[keep]
