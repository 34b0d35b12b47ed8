"""DVI's visualisation model: an MLP encoder to 2-D and its mirrored decoder, trained per epoch on the
UMAP fuzzy graph of that epoch's representations (private to :mod:`.timetravel`).

Representations are centred and scaled by one number (so Euclidean neighbourhoods stay as they are),
then projected on their top principal axes (``basis``, D × p): the encoder's first and the decoder's
last linear maps are this fixed projection, so every training step costs p, not D, per point and the
whole sample fits one batch. Decoding maps back through the basis to the original scale, so a decoded
point can go through the model's real head.

Loss per step (all points of the graph encoded at once):
- UMAP cross-entropy: positive edges drawn by weight, −log q on each, and ``negative_samples`` uniform
  random points per edge with −log(1 − q), q = 1 / (1 + a·d^(2b)) (a, b from ``find_ab_params``);
- reconstruction: mean squared error of decode(encode(z)) in the projected, scaled space (a random
  subset of the points decoded per step);
- prediction preservation: the head's cross-entropy on decoded training points (lifted back to the
  original scale) against its own prediction of the originals — what PPR measures, so the held-out
  points' PPR is the honest check;
- temporal (from the second epoch on, warm-started from the previous model): the squared change of
  every weight from the previous model's, times the mean kNN overlap of the points between the two
  epochs, plus each point's squared 2-D movement from its previous position (over the previous
  layout's variance) times that point's own kNN overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Basis", "Prediction", "Temporal", "VisModel", "fit_basis", "train_vis_model"]


@dataclass(frozen=True)
class Basis:
    """Centre ``mean`` (D,), one ``scale``, principal axes ``axes`` (D, p): z = (x − mean) / scale · axes."""

    mean: np.ndarray
    scale: float
    axes: np.ndarray

    def project(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale) @ self.axes

    def lift(self, z: torch.Tensor) -> torch.Tensor:
        """Projected points back to the representation space in its original scale."""
        axes = torch.from_numpy(self.axes)
        return (z @ axes.T) * self.scale + torch.from_numpy(self.mean)


def fit_basis(x: np.ndarray, dims: int) -> Basis:
    """The top ``dims`` principal axes of ``x`` (N, D) (fewer when N or D is smaller)."""
    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=0)
    centred = x - mean
    scale = float(np.sqrt((centred ** 2).sum(axis=1).mean())) or 1.0
    p = max(1, min(dims, x.shape[1], x.shape[0]))
    # the D × D covariance route is cheaper than an SVD of N × D when D < N, and exact
    if x.shape[1] <= x.shape[0]:
        cov = (centred.T.astype(np.float64) @ centred) / max(1, len(x))
        vals, vecs = np.linalg.eigh(cov)
        axes = vecs[:, ::-1][:, :p]
    else:
        _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
        axes = vt[:p].T
    return Basis(mean.astype(np.float32), scale, np.ascontiguousarray(axes, dtype=np.float32))


def _mlp(sizes: list[int], gen: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        bound = 1.0 / math.sqrt(a)
        with torch.no_grad():  # seeded from the generator, not the global RNG
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VisModel(nn.Module):
    """Encoder p → h → h → 2 and the mirrored decoder 2 → h → h → p, over one `Basis`."""

    def __init__(self, p: int, hidden: int, gen: torch.Generator):
        super().__init__()
        self.encoder = _mlp([p, hidden, hidden, 2], gen)
        self.decoder = _mlp([2, hidden, hidden, p], gen)

    def rebase(self, rotation: torch.Tensor) -> None:
        """Carry the model over to a new basis: ``rotation`` = old axesᵀ · new axes (p_old, p_new). The
        encoder's first layer and the decoder's last keep the same map of the representation space as far
        as the new axes span it."""
        first, last = self.encoder[0], self.decoder[-1]
        with torch.no_grad():
            first.weight = nn.Parameter(first.weight @ rotation)
            last.weight = nn.Parameter(rotation.T @ last.weight)
            last.bias = nn.Parameter(rotation.T @ last.bias)


@dataclass(frozen=True)
class Temporal:
    """What the temporal term needs from the previous epoch: its model's weights (already rebased), the
    points' previous 2-D positions (rows of the graph's first ``len(previous)`` points), each such point's
    kNN overlap in [0, 1], and the two weights."""

    weights: dict[str, torch.Tensor]
    previous: torch.Tensor
    overlap: torch.Tensor
    weight_change: float
    movement: float


def _umap_loss(emb: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, negatives: torch.Tensor,
               a: float, b: float) -> torch.Tensor:
    eps = 1e-4
    d_pos = ((emb[head] - emb[tail]) ** 2).sum(dim=1)
    q_pos = 1.0 / (1.0 + a * d_pos.clamp_min(1e-12) ** b)
    d_neg = ((emb[head].unsqueeze(1) - emb[negatives]) ** 2).sum(dim=2)
    q_neg = 1.0 / (1.0 + a * d_neg.clamp_min(1e-12) ** b)
    attract = -torch.log(q_pos.clamp(eps, 1.0)).mean()
    repel = -torch.log((1.0 - q_neg).clamp(eps, 1.0)).sum(dim=1).mean()
    return attract + repel


@dataclass(frozen=True)
class Prediction:
    """The prediction-preserving term: the head's cross-entropy on decoded points against the head's own
    prediction of the originals (``targets``, for the graph's first ``len(targets)`` rows), on ``points``
    random rows per step."""

    head: nn.Module
    basis: Basis
    targets: torch.Tensor
    weight: float
    points: int


def _head_logits(prediction: Prediction, decoded: torch.Tensor) -> torch.Tensor:
    first = next(prediction.head.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    return prediction.head(prediction.basis.lift(decoded).to(device)).float().cpu()


def train_vis_model(model: VisModel, z: torch.Tensor, edges: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                    a: float, b: float, steps: int, edges_per_step: int, negative_samples: int,
                    reconstruction: float, lr: float, gen: torch.Generator, decoded_per_step: int,
                    temporal: Temporal | None = None, prediction: Prediction | None = None) -> dict[str, float]:
    """Train ``model`` in place on projected points ``z`` (n, p) and the graph ``edges`` (head, tail,
    weight); returns the last step's loss terms. Each step encodes every point (the edges touch most of
    them) but decodes ``decoded_per_step`` random ones. The head's own weights are never changed (nor their
    gradients touched)."""
    head_all = torch.from_numpy(edges[0].astype(np.int64))
    tail_all = torch.from_numpy(edges[1].astype(np.int64))
    weight = torch.from_numpy(edges[2].astype(np.float64))
    n = len(z)
    per_step = min(edges_per_step, max(1, len(head_all)))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    frozen = [] if prediction is None else [p for p in prediction.head.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        return _steps(model, z, head_all, tail_all, weight, n, per_step, optimiser, a, b, steps, negative_samples,
                      reconstruction, gen, min(decoded_per_step, n), temporal, prediction)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _steps(model, z, head_all, tail_all, weight, n, per_step, optimiser, a, b, steps, negative_samples,
           reconstruction, gen, n_decoded, temporal, prediction) -> dict[str, float]:
    terms: dict[str, float] = {}
    if temporal is not None:
        spread = temporal.previous.var(dim=0).sum().clamp_min(1e-12)
        n_prev = len(temporal.previous)
        mean_overlap = float(temporal.overlap.mean())
    model.train()
    for _ in range(steps):
        pick = torch.multinomial(weight, per_step, replacement=True, generator=gen)
        negatives = torch.randint(0, n, (per_step, negative_samples), generator=gen)
        emb = model.encoder(z)
        umap = _umap_loss(emb, head_all[pick], tail_all[pick], negatives, a, b)
        rows = torch.randperm(n, generator=gen)[:n_decoded]
        decoded = model.decoder(emb[rows])
        rec = ((decoded - z[rows]) ** 2).sum(dim=1).mean()
        loss = umap + reconstruction * rec
        terms = {"umap": float(umap.detach()), "reconstruction": float(rec.detach())}
        if prediction is not None and prediction.weight > 0:
            # the decoded rows that have a target (training points, not boundary samples)
            labelled = torch.nonzero(rows < len(prediction.targets)).squeeze(1)[:prediction.points]
            if len(labelled):
                logits = _head_logits(prediction, decoded[labelled])
                ce = nn.functional.cross_entropy(logits, prediction.targets[rows[labelled]])
                loss = loss + prediction.weight * ce
                terms["prediction"] = float(ce.detach())
        if temporal is not None:
            change = sum(((p - temporal.weights[name]) ** 2).sum() for name, p in model.named_parameters())
            move = (temporal.overlap * ((emb[:n_prev] - temporal.previous) ** 2).sum(dim=1)).mean() / spread
            loss = loss + temporal.weight_change * mean_overlap * change + temporal.movement * move
            terms.update(weight_change=float(change.detach()), movement=float(move.detach()))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    return terms
