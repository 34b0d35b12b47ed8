"""Time travel's numerics (issue 14, points 2–4): boundary samples, the DVI visualisation model, decision
regions and the fidelity numbers.

References: planted truths (a head linear on a 2-D embedding, four clusters in its four regions, lifted
to 16 dimensions by a fixed orthonormal map: every point's prediction and every cell's true region are
known), slow literal implementations of NN@k and PPR (loops over points, Python sets), scikit-learn's
trustworthiness and scipy's Spearman ρ, and with/without comparisons at one seed for the temporal term.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.manifold import trustworthiness

from mlflow_transfer.diagnostics import timetravel as tt
from mlflow_transfer.diagnostics.fidelity import METRICS, boundary_preservation
from mlflow_transfer.diagnostics.timetravel import (
    EpochInput,
    TimeTravelOptions,
    boundary_samples,
    penultimate_split,
    project_timeline,
)
from mlflow_transfer.errors import DiagnosticsError

pytestmark = pytest.mark.usefixtures("one_thread")

# small and quick; the defaults' numbers on real representations are in benchmarks/results_timetravel.txt
FAST = dict(steps_first=300, steps_later=100, hidden=64, pca_dims=16, edges_per_step=2048)
CENTRES = np.array([[3.0, 3.0], [-3.0, 3.0], [-3.0, -3.0], [3.0, -3.0]])
# logits (x + y, −x + y, −x − y, x − y): class c wins exactly in quadrant c — the true linear boundaries
# are the two axes
W2 = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])


def planted(n_per_class: int = 60, dim: int = 16, seed: int = 0):
    """Four clusters in the four quadrants of a 2-D embedding, lifted by a fixed orthonormal 2 × dim map;
    the head is linear on the embedding (composed with the lift), so its regions are the quadrants."""
    rng = np.random.default_rng(seed)
    emb = np.concatenate([c + rng.normal(scale=0.7, size=(n_per_class, 2)) for c in CENTRES])
    emb = emb[np.all(np.abs(emb) > 0.3, axis=1)]          # keep every point clearly inside its quadrant
    labels = np.argmax(emb @ W2.T, axis=1)
    lift = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T if dim > 2 else np.eye(2)
    head = torch.nn.Linear(dim, 4, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(W2 @ lift, dtype=torch.float32))
    train = rng.random(len(emb)) < 0.75
    return (emb @ lift).astype(np.float32), head.eval(), labels, train, lift


def project(reps, head, train, options, labels=None, epochs=1):
    return list(project_timeline([EpochInput(reps, head, np.arange(4))] * epochs, train, options, labels=labels))


def literal_nn(high: np.ndarray, low: np.ndarray, k: int) -> float:
    """Mean over points of |k nearest in high-D ∩ k nearest in 2-D| as sets, one point at a time."""
    total = 0
    for i in range(len(high)):
        dh = [(float(np.sum((high[i] - high[j]) ** 2)), j) for j in range(len(high)) if j != i]
        dl = [(float(np.sum((low[i] - low[j]) ** 2)), j) for j in range(len(low)) if j != i]
        total += len({j for _, j in sorted(dh)[:k]} & {j for _, j in sorted(dl)[:k]})
    return total / len(high)


def rescaled_gap(logits: np.ndarray) -> np.ndarray:
    scaled = (logits - logits.min(axis=1, keepdims=True)) / np.ptp(logits, axis=1, keepdims=True)
    top = np.sort(scaled, axis=1)
    return top[:, -1] - top[:, -2]


def test_planted_linear_head_gives_ppr_one_and_regions_on_the_true_boundaries():
    reps, head, labels, train, lift = planted()
    (frame,) = project(reps, head, train, TimeTravelOptions(**FAST), labels=labels)
    assert frame.metrics["ppr"] == 1.0 and frame.metrics["accuracy"] == 1.0
    assert np.array_equal(frame.prediction, labels)
    # each cell's true class: the quadrant of the decoded point, found independently of the head module
    model_state = tt._project_epoch(reps, head, np.arange(4), train, labels, TimeTravelOptions(**FAST), None,
                                    torch.Generator().manual_seed(0), np.random.default_rng([0, 0]))[1]
    g = frame.grid_class.shape[0]
    x0, x1, y0, y1 = frame.extent
    xs = x0 + (np.arange(g) + 0.5) * (x1 - x0) / g
    ys = y1 - (np.arange(g) + 0.5) * (y1 - y0) / g
    cells = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.float32)
    with torch.no_grad():
        decoded = model_state.basis.lift(model_state.model.decoder(torch.from_numpy(cells))).numpy()
    quadrant = np.argmax((decoded @ lift.T) @ W2.T, axis=1).reshape(g, g)
    assert np.mean(quadrant == frame.grid_class) >= 0.999
    # and the regions sit where the points are: the cell under each point has the point's class
    col = np.clip(((frame.coords[:, 0] - x0) / (x1 - x0) * g).astype(int), 0, g - 1)
    row = np.clip(((y1 - frame.coords[:, 1]) / (y1 - y0) * g).astype(int), 0, g - 1)
    assert np.mean(frame.grid_class[row, col] == labels) >= 0.98
    # all four regions drawn, each a sizeable share, and the gap is 0 only near boundaries
    shares = np.bincount(frame.grid_class.ravel(), minlength=4) / g ** 2
    assert shares.min() > 0.05
    assert frame.grid_gap.min() >= 0 and frame.grid_gap.max() <= 1
    assert np.median(frame.grid_gap[row, col]) > 0.9


def test_the_encoder_decoder_reconstructs_training_points():
    reps, head, labels, train, _ = planted()
    options = TimeTravelOptions(**FAST)
    _, state = tt._project_epoch(reps, head, np.arange(4), train, labels, options, None,
                                 torch.Generator().manual_seed(0), np.random.default_rng([0, 0]))
    with torch.no_grad():
        coords = state.model.encoder(torch.from_numpy(state.basis.project(reps[train])))
        back = state.basis.lift(state.model.decoder(coords)).numpy()
    error = np.sum((back - reps[train]) ** 2, axis=1).mean()
    spread = np.sum((reps[train] - reps[train].mean(axis=0)) ** 2, axis=1).mean()
    # stated tolerance: 5 % of the points' variance (the data are 2-D, so a 2-D code can hold them)
    assert error / spread < 0.05


def test_nn_at_k_and_ppr_match_slow_literal_implementations():
    rng = np.random.default_rng(3)
    reps, head, labels, train, _ = planted(n_per_class=30)
    reps = reps + rng.normal(scale=0.3, size=reps.shape).astype(np.float32)   # neighbourhoods not only 2-D
    options = TimeTravelOptions(**FAST)
    frame, state = tt._project_epoch(reps, head, np.arange(4), train, labels, options, None,
                                     torch.Generator().manual_seed(0), np.random.default_rng([0, 0]))
    for k in (10, 15, 20):
        assert frame.metrics[f"nn_train_{k}"] == pytest.approx(literal_nn(reps[train], frame.coords[train], k))
        assert frame.metrics[f"nn_val_{k}"] == pytest.approx(literal_nn(reps[~train], frame.coords[~train], k))
    same = []
    for i in range(len(reps)):   # one point at a time: encode, decode, lift, head
        with torch.no_grad():
            z = torch.from_numpy(state.basis.project(reps[i:i + 1]))
            back = state.basis.lift(state.model.decoder(state.model.encoder(z)))
            same.append(int(head(back).argmax()) == int(head(torch.from_numpy(reps[i:i + 1])).argmax()))
    same = np.array(same)
    assert frame.metrics["ppr"] == pytest.approx(same.mean())
    assert frame.metrics["ppr_train"] == pytest.approx(same[train].mean())
    assert frame.metrics["ppr_val"] == pytest.approx(same[~train].mean())
    assert frame.metrics["trustworthiness"] == pytest.approx(
        trustworthiness(reps[train], frame.coords[train], n_neighbors=15), abs=1e-6)


def test_boundary_nn_matches_a_literal_count():
    rng = np.random.default_rng(1)
    high, low = rng.normal(size=(40, 5)), rng.normal(size=(40, 2))
    hb, lb = rng.normal(size=(6, 5)), rng.normal(size=(6, 2))
    counts = []
    for i in range(len(hb)):
        near_h = set(np.argsort(np.sum((high - hb[i]) ** 2, axis=1))[:15])
        near_l = set(np.argsort(np.sum((low - lb[i]) ** 2, axis=1))[:15])
        counts.append(len(near_h & near_l))
    assert boundary_preservation(high, low, hb, lb, 15) == pytest.approx(np.mean(counts))


def test_boundary_samples_lie_on_the_heads_boundaries_across_class_pairs():
    reps, head, labels, train, _ = planted()
    samples = boundary_samples(reps[train], labels[train], head, 60, np.random.default_rng(0))
    assert 48 <= len(samples) <= 60
    with torch.no_grad():
        logits = head(torch.from_numpy(samples)).numpy()
    assert np.all(rescaled_gap(logits) < 0.1)
    top2 = {tuple(sorted(np.argsort(row)[-2:])) for row in logits}
    assert len(top2) >= 4       # of the 6 class pairs: the mixes are spread over them


def test_the_temporal_term_reduces_movement_between_identical_epochs():
    reps, head, labels, train, _ = planted()
    moved = {}
    for name, weights in (("with", {}), ("without", dict(weight_change_weight=0.0, movement_weight=0.0))):
        first, second = project(reps, head, train, TimeTravelOptions(**{**FAST, **weights}), epochs=2)
        spread = np.sqrt(np.sum(np.var(first.coords, axis=0)))
        moved[name] = float(np.mean(np.linalg.norm(second.coords - first.coords, axis=1)) / spread)
    assert moved["with"] < 0.5 * moved["without"], moved


def test_metric_names_nan_at_the_first_position_and_determinism():
    reps, head, labels, train, _ = planted(dim=2)
    options = TimeTravelOptions(**FAST)
    shifted = reps + np.random.default_rng(0).normal(scale=0.2, size=reps.shape).astype(np.float32)
    epochs = [EpochInput(reps, head, np.arange(4)), EpochInput(shifted, head, np.arange(4))]
    lines = []
    runs = [list(project_timeline(epochs, train, options, progress=lines.append)) for _ in range(2)]
    first, second = runs
    assert len(lines) == 4 and lines[0].startswith("time travel: position 0")
    for a, b in zip(first, second):
        assert tuple(a.metrics) == METRICS
        assert np.array_equal(a.coords, b.coords) and np.array_equal(a.grid_class, b.grid_class)
        assert a.coords.dtype == np.float32 and a.prediction.dtype == np.int16
        assert a.grid_class.shape == (200, 200) and a.grid_class.dtype == np.int16
        assert a.grid_gap.dtype == np.float32 and a.boundary.shape[1] == 2
    assert math.isnan(first[0].metrics["temporal_corr"]) and math.isnan(first[0].metrics["accuracy"])
    expected = spearmanr(np.linalg.norm(shifted - reps, axis=1),
                         np.linalg.norm(first[1].coords - first[0].coords, axis=1)).statistic
    assert first[1].metrics["temporal_corr"] == pytest.approx(expected)
    x0, x1, y0, y1 = first[0].extent
    assert x0 < first[0].coords[:, 0].min() and first[0].coords[:, 1].max() < y1
    # the class map renames the head's outputs
    (mapped,) = list(project_timeline([EpochInput(reps, head, np.array([7, 6, 5, 4]))], train, options))
    assert np.array_equal(mapped.prediction, 7 - first[0].prediction)
    assert set(np.unique(mapped.grid_class)) <= {4, 5, 6, 7}


@pytest.mark.parametrize("bad, message", [
    (dict(grid=100), "grid"), (dict(n_neighbors=1), "n_neighbors"), (dict(nn_ks=()), "nn_ks"),
    (dict(boundary_fraction=1.5), "boundary_fraction"), (dict(min_dist=0.0), "min_dist"),
])
def test_bad_options_say_what_was_expected(bad, message):
    with pytest.raises(DiagnosticsError, match=message):
        TimeTravelOptions(**bad)


def test_bad_epochs_say_what_was_expected():
    reps, head, labels, train, _ = planted()
    with pytest.raises(DiagnosticsError, match="Embed the same sample"):
        next(project_timeline([EpochInput(reps[:-1], head, np.arange(4))], train))
    with pytest.raises(DiagnosticsError, match="head has 4 outputs"):
        next(project_timeline([EpochInput(reps, head, np.arange(3))], train))
    with pytest.raises(DiagnosticsError, match="training points"):
        next(project_timeline([EpochInput(reps, head, np.arange(4))], np.zeros(len(reps), bool)))


def test_penultimate_split_keeps_the_heads_function():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    x = torch.randn(4, 6)
    pre, last = penultimate_split(head)
    assert last is head[-1] and torch.allclose(last(pre(x)), head(x))
    linear = torch.nn.Linear(6, 3)
    pre, last = penultimate_split(linear)
    assert last is linear and torch.equal(pre(x), x)
    other = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.Softmax(dim=1))
    pre, last = penultimate_split(other)
    assert last is other and isinstance(pre, torch.nn.Identity)


def test_the_penultimate_layer_is_projected_by_default():
    """An embedding with a two-layer head projects exactly as its penultimate layer with the last Linear."""
    reps, last, labels, train, _ = planted(n_per_class=30)
    torch.manual_seed(0)
    lift = torch.nn.Linear(16, 24)                  # invertible enough: the embedding is 24-D
    pinv = torch.linalg.pinv(lift.weight.detach())
    pre = torch.nn.Linear(24, 16)
    with torch.no_grad():
        pre.weight.copy_(pinv)
        pre.bias.copy_(-pinv @ lift.bias.detach())
    head = torch.nn.Sequential(pre, last).eval()
    with torch.no_grad():
        embedding = lift(torch.from_numpy(reps)).numpy()
        penultimate = pre(torch.from_numpy(embedding)).numpy()
    options = TimeTravelOptions(**FAST)
    (split,) = project_timeline([EpochInput(embedding, head, np.arange(4))], train, options)
    (given,) = project_timeline([EpochInput(penultimate, last, np.arange(4))], train, options)
    assert np.array_equal(split.coords, given.coords)
    np.testing.assert_equal(split.metrics, given.metrics)   # NaN where both are undefined
    (whole,) = project_timeline([EpochInput(embedding, head, np.arange(4))], train,
                                TimeTravelOptions(**FAST, penultimate=False))
    assert not np.array_equal(whole.coords, given.coords)


def test_a_collapsed_epoch_and_a_single_predicted_class_still_project():
    """Early epochs can embed every image alike or predict one class for all: no boundary samples then
    (boundary NN is NaN), and the layout and regions stay finite."""
    rng = np.random.default_rng(0)
    train = rng.random(120) < 0.75
    one = torch.nn.Linear(6, 3)
    with torch.no_grad():
        one.weight.zero_()
        one.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    options = TimeTravelOptions(**{**FAST, "pca_dims": 6})
    collapsed = EpochInput(np.ones((120, 6), np.float32), one, np.arange(3))
    spread = EpochInput(rng.normal(size=(120, 6)).astype(np.float32), one, np.arange(3))
    for frame in project_timeline([collapsed, spread], train, options):
        assert len(frame.boundary) == 0 and math.isnan(frame.metrics["boundary_nn_15"])
        assert np.isfinite(frame.coords).all() and frame.metrics["ppr"] == 1.0
        assert set(np.unique(frame.grid_class)) == {0}
