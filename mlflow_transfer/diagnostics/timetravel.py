"""Time travel (issue 14): DeepVisualInsight's epoch-by-epoch projection of a fixed sample, with the
decision regions of each epoch's head drawn behind it.

Per epoch (:func:`project_timeline` streams them, keeping only what the temporal term needs; steps 1–2 in
:mod:`.dvi_graph`):
1. Boundary samples: pairs of training points the head predicts differently (classes c1, c2; the pairs
   spread over the class pairs, seeded) are mixed in representation space, r = λ·r1 + (1 − λ)·r2, and λ
   bisected (at most ``bisection_steps``) through the head alone until the min-max rescaled top-1 and top-2
   logits differ by less than ``boundary_gap``. Those that do not get there are dropped.
2. Graph: exact kNN of the training points and boundary samples (scikit-learn), umap-learn's fuzzy
   simplicial set from them (k = ``n_neighbors``), as an edge list pruned below max / 200 as umap-learn does.
3. Visualisation model (:mod:`.dvi_model`): encoder to 2-D and mirrored decoder, UMAP cross-entropy +
   reconstruction + the temporal term, warm-started from the previous epoch's model.
4. Decision regions: a ``grid`` × ``grid`` lattice over the 2-D extent of the points plus 10 % each side,
   decoded and classified by the head; row 0 is the top (largest y).
5. Fidelity (:mod:`.fidelity`): every name in `METRICS`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import DiagnosticsError
from ..validation import check_array, check_fraction, check_int, check_labels, check_module, check_number
from .dvi_graph import BATCH, boundary_samples, graph_knn, head_logits, umap_edges
from .dvi_model import Basis, Prediction, Temporal, VisModel, fit_basis, train_vis_model
from .fidelity import (METRICS, boundary_preservation, knn_overlap, neighbour_preservation,
                       temporal_correlation, trustworthiness_of)

__all__ = ["METRICS", "EpochInput", "EpochProjection", "TimeTravelOptions", "boundary_samples",
           "penultimate_split", "project_timeline"]



@dataclass(frozen=True)
class TimeTravelOptions:
    """Settings of the time-travel projection (all recorded in the timeline's manifest).

    Beyond the issue's (k = 15, min_dist 0.1, 5 negatives, grid ≥ 200): ``hidden`` width of the encoder
    and decoder; ``pca_dims`` principal axes the model works in; ``steps_first`` full-batch training steps
    of the first epoch, ``steps_later`` of each warm-started one; ``edges_per_step`` positive edges drawn
    per step; ``decoded_per_step`` points decoded per step for the reconstruction and (of those, at most
    ``prediction_points``) the prediction-preserving term, weighted ``prediction_weight``;
    ``train_threads`` torch threads while the model trains (0: leave torch's setting; its layers are small,
    so more threads mostly add synchronisation, which costs many times more on a loaded machine);
    ``reconstruction_weight``; ``weight_change_weight`` and ``movement_weight`` of the temporal
    term; ``warm_start`` from the previous epoch's model; ``boundary_gap`` and ``bisection_steps`` of the
    boundary samples; ``penultimate``: project the input of the head's last Linear with that Linear as the
    head (`penultimate_split`, DVI's layer) rather than the representations as given.
    """

    n_neighbors: int = 15
    min_dist: float = 0.1
    negative_samples: int = 5
    boundary_fraction: float = 0.1
    grid: int = 200
    nn_ks: tuple[int, ...] = (10, 15, 20)
    seed: int = 0
    hidden: int = 128
    pca_dims: int = 64
    steps_first: int = 300
    steps_later: int = 200
    edges_per_step: int = 4096
    learning_rate: float = 0.01
    reconstruction_weight: float = 1.0
    weight_change_weight: float = 0.01
    movement_weight: float = 0.1
    prediction_weight: float = 1.0
    prediction_points: int = 512
    decoded_per_step: int = 2048
    train_threads: int = 1
    warm_start: bool = True
    penultimate: bool = True
    boundary_gap: float = 0.1
    bisection_steps: int = 8

    def __post_init__(self):
        for name, low in (("n_neighbors", 2), ("negative_samples", 1), ("grid", 200), ("seed", 0), ("hidden", 2),
                          ("pca_dims", 1), ("steps_first", 1), ("steps_later", 0), ("edges_per_step", 1),
                          ("prediction_points", 1), ("decoded_per_step", 1), ("train_threads", 0),
                          ("bisection_steps", 1)):
            check_int(getattr(self, name), f"the time-travel option {name}", low=low)
        check_number(self.min_dist, "the time-travel option min_dist", low=0.0, high=1.0, low_open=True)
        check_fraction(self.boundary_fraction, "the time-travel option boundary_fraction", allow_zero=True)
        check_fraction(self.boundary_gap, "the time-travel option boundary_gap")
        check_number(self.learning_rate, "the time-travel option learning_rate", low=0.0, low_open=True)
        for name in ("reconstruction_weight", "weight_change_weight", "movement_weight", "prediction_weight"):
            check_number(getattr(self, name), f"the time-travel option {name}", low=0.0)
        if not isinstance(self.nn_ks, tuple) or not self.nn_ks:
            raise DiagnosticsError(f"Expected nn_ks as a non-empty tuple of neighbour counts; got {self.nn_ks!r}.")
        for k in self.nn_ks:
            check_int(k, "a neighbour count in nn_ks", low=1)
        for name in ("warm_start", "penultimate"):
            if not isinstance(getattr(self, name), bool):
                raise DiagnosticsError(f"Expected {name} as True or False; got {getattr(self, name)!r}.")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["nn_ks"] = list(self.nn_ks)
        return out


@dataclass(frozen=True)
class EpochInput:
    """One epoch of the timeline: the sample's representations (N, D), the head (embedding → logits, eval
    mode, on any device) and the timeline class of each of the head's C outputs."""

    representations: np.ndarray
    head: torch.nn.Module
    class_map: np.ndarray


@dataclass(frozen=True)
class EpochProjection:
    """One epoch's projection; see the module docstring. ``grid_class``/``grid_gap`` row 0 is the top."""

    coords: np.ndarray
    prediction: np.ndarray
    boundary: np.ndarray
    grid_class: np.ndarray
    grid_gap: np.ndarray
    extent: tuple[float, float, float, float]
    metrics: dict[str, float]
    seconds: float


@dataclass
class _State:
    """What the next epoch needs from this one."""

    model: VisModel
    basis: Basis
    coords: np.ndarray        # (N, 2)
    representations: np.ndarray
    train_knn: np.ndarray     # (n_train, n_neighbors) without self


def penultimate_split(head: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(pre, last)`` with ``head(x) == last(pre(x))`` and ``last`` the head's final Linear, when the head
    is a Linear or an ``nn.Sequential`` ending in one (every registry model); else ``(Identity, head)``.

    DVI projects the penultimate layer (``pre(embedding)``, the last Linear's input) with that Linear as
    the head: the classes are linearly separable there, so neighbourhoods agree with predictions and the
    head is one cheap layer. A deeper head over the embedding gives the projection mixed neighbourhoods
    and costs more per training step (benchmarks/results_timetravel.txt has both).
    """
    if isinstance(head, torch.nn.Linear):
        return torch.nn.Identity(), head
    if isinstance(head, torch.nn.Sequential) and len(head) and isinstance(head[-1], torch.nn.Linear):
        return head[:-1], head[-1]
    return torch.nn.Identity(), head


def _grid(model: VisModel, basis: Basis, head: torch.nn.Module, class_map: np.ndarray,
          extent: tuple[float, float, float, float], g: int):
    x_min, x_max, y_min, y_max = extent
    xs = x_min + (np.arange(g) + 0.5) * (x_max - x_min) / g
    ys = y_max - (np.arange(g) + 0.5) * (y_max - y_min) / g   # row 0 = top
    cells = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    classes, gaps = [], []
    with torch.inference_mode():
        for start in range(0, len(cells), BATCH):
            decoded = basis.lift(model.decoder(torch.from_numpy(cells[start:start + BATCH])))
            probs = torch.softmax(head_logits(head, decoded), dim=1)
            top = torch.topk(probs, min(2, probs.shape[1]), dim=1)
            classes.append(top.indices[:, 0].numpy())
            gaps.append((top.values[:, 0] - (top.values[:, 1] if probs.shape[1] > 1 else 0)).numpy())
    grid_class = class_map[np.concatenate(classes)].reshape(g, g).astype(np.int16)
    grid_gap = np.clip(np.concatenate(gaps), 0.0, 1.0).reshape(g, g).astype(np.float32)
    return grid_class, grid_gap


def _extent(points: np.ndarray) -> tuple[float, float, float, float]:
    lo, hi = points.min(axis=0).astype(np.float64), points.max(axis=0).astype(np.float64)
    pad = np.maximum(hi - lo, 1e-6) * 0.1
    return float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1])


def _share(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


def _project_epoch(reps: np.ndarray, head: torch.nn.Module, class_map: np.ndarray, train: np.ndarray,
                   labels: np.ndarray | None, options: TimeTravelOptions, state: _State | None,
                   gen: torch.Generator, rng: np.random.Generator):
    k = options.n_neighbors
    logits = head_logits(head, reps)
    if logits.ndim != 2 or logits.shape[1] != len(class_map):
        raise DiagnosticsError(f"Expected the class map with one timeline class per head output (the "
                               f"head has {logits.shape[-1]} outputs); got {len(class_map)} entries.")
    raw = logits.argmax(dim=1).numpy()
    prediction = class_map[raw].astype(np.int16)
    train_reps = reps[train]
    n_train = len(train_reps)
    boundary = boundary_samples(train_reps, raw[train], head, round(options.boundary_fraction * n_train), rng,
                                gap=options.boundary_gap, steps=options.bisection_steps)
    knn_i, knn_d, train_knn = graph_knn(train_reps, boundary, k, max(options.nn_ks))
    head_e, tail_e, weight_e = umap_edges(knn_i, knn_d, k, options.seed)
    fit = np.concatenate([train_reps, boundary])
    basis = fit_basis(fit, options.pca_dims)
    z = torch.from_numpy(basis.project(fit))

    temporal = None
    if state is not None and options.warm_start and state.basis.axes.shape[0] == basis.axes.shape[0]:
        model = state.model
        model.rebase(torch.from_numpy(state.basis.axes.T @ basis.axes))
        overlap = knn_overlap(train_knn[:, :k], state.train_knn[:, :k]) / k
        temporal = Temporal(weights={n: p.detach().clone() for n, p in model.named_parameters()},
                            previous=torch.from_numpy(state.coords[train].astype(np.float32)),
                            overlap=torch.from_numpy(overlap.astype(np.float32)),
                            weight_change=options.weight_change_weight, movement=options.movement_weight)
        steps = options.steps_later
    else:
        model = VisModel(basis.axes.shape[1], options.hidden, gen)
        steps = options.steps_first
    from umap.umap_ import find_ab_params

    a, b = find_ab_params(1.0, options.min_dist)
    threads = torch.get_num_threads()
    if options.train_threads:
        torch.set_num_threads(options.train_threads)
    try:
        train_vis_model(model, z, (head_e, tail_e, weight_e), a=float(a), b=float(b), steps=steps,
                        edges_per_step=options.edges_per_step, negative_samples=options.negative_samples,
                        reconstruction=options.reconstruction_weight, lr=options.learning_rate, gen=gen,
                        decoded_per_step=options.decoded_per_step, temporal=temporal,
                        prediction=Prediction(head, basis, torch.from_numpy(raw[train].astype(np.int64)),
                                              options.prediction_weight, options.prediction_points))
    finally:
        torch.set_num_threads(threads)

    with torch.inference_mode():
        coords = model.encoder(torch.from_numpy(basis.project(reps))).numpy().astype(np.float32)
        boundary_2d = model.encoder(torch.from_numpy(basis.project(boundary))).numpy().astype(np.float32) \
            if len(boundary) else np.zeros((0, 2), np.float32)
        decoded = basis.lift(model.decoder(torch.from_numpy(coords)))
    same = head_logits(head, decoded).argmax(dim=1).numpy() == raw
    extent = _extent(np.concatenate([coords, boundary_2d]))
    grid_class, grid_gap = _grid(model, basis, head, class_map, extent, options.grid)

    val = ~train
    nn_train = neighbour_preservation(train_reps, coords[train], options.nn_ks, high_knn=train_knn)
    nn_val = neighbour_preservation(reps[val], coords[val], options.nn_ks)
    metrics = {f"nn_train_{kk}": nn_train[kk] for kk in options.nn_ks}
    metrics.update({f"nn_val_{kk}": nn_val[kk] for kk in options.nn_ks})
    metrics["boundary_nn_15"] = boundary_preservation(train_reps, coords[train], boundary, boundary_2d, 15)
    metrics.update(ppr=_share(same), ppr_train=_share(same[train]), ppr_val=_share(same[val]))
    same_dim = state is not None and state.representations.shape == reps.shape
    metrics["temporal_corr"] = temporal_correlation(reps, state.representations if same_dim else None, coords,
                                                    state.coords if same_dim else None)
    metrics["trustworthiness"] = trustworthiness_of(train_reps, coords[train], 15)
    metrics["accuracy"] = _share(prediction == labels) if labels is not None else float("nan")
    metrics = {name: float(metrics.get(name, float("nan"))) for name in METRICS}
    projection = EpochProjection(coords, prediction, boundary_2d, grid_class, grid_gap, extent, metrics, 0.0)
    return projection, _State(model, basis, coords, reps, train_knn[:, :k])


def _checked_epoch(epoch: EpochInput, n: int, position: int) -> tuple[np.ndarray, torch.nn.Module, np.ndarray]:
    where = f"(timeline position {position})"
    if not isinstance(epoch, EpochInput):
        raise DiagnosticsError(f"Expected each epoch as an EpochInput {where}; got {type(epoch).__name__}.")
    reps = check_array(epoch.representations, f"the representations {where}", layout="(points, features)",
                       min_shape=(1, 1)).astype(np.float32)
    if len(reps) != n:
        raise DiagnosticsError(f"Expected representations of the {n} sample points {where}; got {len(reps)} rows. "
                               "Embed the same sample at every epoch.")
    head = check_module(epoch.head, f"the head {where}")
    class_map = check_array(epoch.class_map, f"the class map {where}", ndim=1, layout="(head outputs,)",
                            kind="integer", min_shape=(2,))
    if class_map.min() < 0:
        raise DiagnosticsError(f"Expected the class map {where} as timeline class indices (>= 0); got "
                               f"{int(class_map.min())}.")
    return reps, head, class_map


def project_timeline(epochs: Iterable[EpochInput], train: np.ndarray, options: TimeTravelOptions = TimeTravelOptions(),
                     progress: Callable[[str], None] | None = None, *,
                     labels: np.ndarray | None = None) -> Iterator[EpochProjection]:
    """Project each epoch of a timeline, one at a time (a generator: it holds one epoch's inputs and the
    previous epoch's model, layout and neighbours, never the whole timeline).

    Args:
        epochs: the timeline's epochs in order, each the same N sample points.
        train: (N,) bool, the points the visualisation model trains on; the rest are only encoded.
        options: see `TimeTravelOptions`.
        progress: called with one line per finished epoch (None: silent).
        labels: (N,) timeline class of each point, for ``accuracy`` (None: NaN).
    """
    if not isinstance(options, TimeTravelOptions):
        raise DiagnosticsError(f"Expected options as TimeTravelOptions; got {type(options).__name__}.")
    train = check_array(train, "the training-point mask", ndim=1, layout="(points,)", kind="bool")
    n_train = int(train.sum())
    if n_train <= options.n_neighbors:
        raise DiagnosticsError(f"Expected more than n_neighbors = {options.n_neighbors} training points; got "
                               f"{n_train}. Take a larger sample (more points per class).")
    if labels is not None:
        labels = check_labels(labels, "the sample labels", np.iinfo(np.int64).max, length=len(train))
    gen = torch.Generator().manual_seed(options.seed)
    state = None
    for position, epoch in enumerate(epochs):
        start = time.perf_counter()
        reps, head, class_map = _checked_epoch(epoch, len(train), position)
        if options.penultimate:
            pre, head = penultimate_split(head)
            if not isinstance(pre, torch.nn.Identity):
                reps = head_logits(pre, reps).numpy()
        rng = np.random.default_rng([options.seed, position])
        projection, state = _project_epoch(reps, head, class_map, train, labels, options, state, gen, rng)
        seconds = time.perf_counter() - start
        projection = EpochProjection(**{**projection.__dict__, "seconds": seconds})
        if progress is not None:
            m = projection.metrics
            progress(f"time travel: position {position} in {seconds:.1f} s, NN@15 train {m['nn_train_15']:.2f}, "
                     f"PPR {m['ppr']:.3f}")
        yield projection
