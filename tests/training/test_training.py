"""`evaluate` and `fit`: exact accuracies, the per-epoch callback, learning, freezing, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.models import seeded, tiny_net
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mlflow_transfer.config import TrainConfig
from mlflow_transfer.data.domain import tensor_domain
from mlflow_transfer.models import freeze_layers
from mlflow_transfer.training.loops import EpochResult, evaluate, fit


pytestmark = pytest.mark.usefixtures("one_thread")


def two_constant_classes(n: int = 40, size: int = 8, seed: int = 0):
    """Class 0: dark grey images, class 1: light grey images (plus a little noise); alternating labels."""
    labels = np.arange(n) % 2
    g = torch.Generator().manual_seed(seed)
    level = torch.where(torch.from_numpy(labels) == 1, 0.8, 0.2)[:, None, None, None]
    images = (level + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return tensor_domain("toy", ["dark", "light"], images, labels).dataset


def run_fit(model, train, cfg, *, seed=0, eval_sets=None):
    results: list[EpochResult] = []
    fit(model, train, eval_sets if eval_sets is not None else {"train": train}, cfg, seed=seed,
        on_epoch=lambda r: results.append(EpochResult(r.epoch, dict(r.metrics), r.model)))
    return results


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def optimizer_steps():
    """Records (optimizer, lr of group 0) at every optimizer step, in any optimizer."""
    seen: list[tuple[torch.optim.Optimizer, float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((opt, opt.param_groups[0]["lr"])))
    yield seen
    handle.remove()


# --------------------------------------------------------------------------- evaluate


class MeanThreshold(nn.Module):
    """Predicts class 1 exactly when an image's mean is above 0.5; records its mode on each call."""

    def __init__(self):
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], dim=1)


def _threshold_dataset():
    means = (np.arange(11) + 0.3) / 11  # 0.027 .. 0.936, never near 0.5: no ties
    labels = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1])
    images = torch.from_numpy(means).float()[:, None, None, None].expand(11, 3, 4, 4).contiguous()
    return tensor_domain("t", ["lo", "hi"], images, labels).dataset, means, labels


@pytest.mark.parametrize("batch_size", [4, 256])
def test_evaluate_exact_fraction(batch_size):
    dataset, means, labels = _threshold_dataset()
    # predictions: means 0.027..0.482 -> 0 (items 0-5), 0.573..0.936 -> 1 (items 6-10)
    predicted = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert np.array_equal(predicted, (means > 0.5).astype(int))
    # labels 0 1 0 0 1 1 1 0 1 0 1: right at items 0, 2, 3 (label 0) and 6, 8, 10 (label 1)
    expected = 6 / 11
    model = MeanThreshold()
    assert evaluate(model, dataset, batch_size=batch_size) == pytest.approx(expected, abs=1e-12)


def test_evaluate_uses_eval_mode_and_restores_it():
    dataset, _, _ = _threshold_dataset()
    model = MeanThreshold().train()
    evaluate(model, dataset, batch_size=4)
    assert model.modes == [False, False, False]  # 11 items in batches of 4
    assert model.training
    model.eval()
    evaluate(model, dataset)
    assert not model.training


def test_evaluate_all_right_and_all_wrong():
    dataset, means, _ = _threshold_dataset()
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    right = tensor_domain("t", ["lo", "hi"], images, (means > 0.5).astype(int)).dataset
    wrong = tensor_domain("t", ["lo", "hi"], images, (means < 0.5).astype(int)).dataset
    assert evaluate(MeanThreshold(), right) == 1.0
    assert evaluate(MeanThreshold(), wrong) == 0.0


# --------------------------------------------------------------------------- fit: callback


def test_on_epoch_protocol():
    train = two_constant_classes(20)
    val = two_constant_classes(10, seed=1)
    model = tiny_net()
    cfg = TrainConfig(epochs=3, lr=0.01, batch_size=8, schedule="constant")
    results = run_fit(model, train, cfg, eval_sets={"train": train, "val": val})
    assert [r.epoch for r in results] == [0, 1, 2, 3]
    assert set(results[0].metrics) == {"acc_train", "acc_val"}
    for r in results[1:]:
        assert set(r.metrics) == {"loss", "acc_train", "acc_val"}
        assert math.isfinite(r.metrics["loss"]) and r.metrics["loss"] > 0
    for r in results:
        assert r.model is model
        for key in ("acc_train", "acc_val"):
            value = r.metrics[key]
            assert 0.0 <= value <= 1.0
            # accuracies of 20 and 10 items are multiples of 1/20 and 1/10
            n = 20 if key == "acc_train" else 10
            assert value * n == pytest.approx(round(value * n))
    # The reported accuracies are those of the model as it is after the last epoch.
    assert results[-1].metrics["acc_val"] == evaluate(model, val)
    assert results[-1].metrics["acc_train"] == evaluate(model, train)


def test_epoch_zero_reports_the_untrained_model():
    train = two_constant_classes(20)
    model = tiny_net(seed=3)
    before = evaluate(model, train)
    results = run_fit(model, train, TrainConfig(epochs=1, lr=0.01, batch_size=8))
    assert results[0].metrics["acc_train"] == before


def test_no_eval_sets_reports_only_loss():
    train = two_constant_classes(10)
    results = run_fit(tiny_net(), train, TrainConfig(epochs=2, batch_size=4), eval_sets={})
    assert [r.metrics for r in results[:1]] == [{}]
    assert all(set(r.metrics) == {"loss"} for r in results[1:])


def test_loss_is_the_mean_cross_entropy_per_item():
    # With a negligible learning rate the weights stay put, so the epoch-1 loss must equal the
    # cross-entropy of the initial model averaged over the 10 items. Batches hold 4, 4 and 2 items
    # and one item (the only "light" one) has a very different loss: a mean of batch means would
    # give it a weight of 1/12 or 1/6 instead of 1/10.
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    g = torch.Generator().manual_seed(0)
    level = torch.where(torch.from_numpy(labels) == 1, 0.8, 0.2)[:, None, None, None]
    images = level + 0.01 * torch.rand(10, 3, 8, 8, generator=g)
    train = tensor_domain("toy", ["dark", "light"], images, labels).dataset
    model = tiny_net(dropout=0.0)
    with torch.no_grad():
        per_item = nn.functional.cross_entropy(model(images), torch.from_numpy(labels), reduction="none")
    spread = float(per_item[3] - per_item[labels == 0].mean())
    assert abs(spread) > 0.05  # so the two weightings differ by > 0.05 / 60
    results = run_fit(model, train, TrainConfig(epochs=1, lr=1e-8, batch_size=4, schedule="constant"))
    assert results[1].metrics["loss"] == pytest.approx(float(per_item.mean()), abs=2e-5)


# --------------------------------------------------------------------------- fit: learning


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.02), ("sgd", 0.1)])
def test_learns_a_tiny_problem(optimizer, lr, optimizer_steps):
    train = two_constant_classes(40)
    val = two_constant_classes(20, seed=5)
    model = tiny_net(seed=1)
    cfg = TrainConfig(epochs=8, lr=lr, batch_size=8, optimizer=optimizer, momentum=0.9)
    results = run_fit(model, train, cfg, eval_sets={"train": train, "val": val})
    assert results[-1].metrics["acc_train"] == 1.0
    assert results[-1].metrics["acc_val"] == 1.0
    assert results[-1].metrics["loss"] < results[1].metrics["loss"]
    # The configured optimiser did the steps: 8 epochs x 5 batches.
    optimizers = {id(opt): opt for opt, _ in optimizer_steps}
    assert len(optimizer_steps) == 8 * 5 and len(optimizers) == 1
    (opt,) = optimizers.values()
    assert isinstance(opt, torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)
    if optimizer == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def test_alexnet32_trains():
    train = two_constant_classes(16, size=32)
    model = seeded("alexnet-32", 2)
    before = snapshot(model)
    results = run_fit(model, train, TrainConfig(epochs=2, lr=1e-3, batch_size=8))
    assert [r.epoch for r in results] == [0, 1, 2]
    assert results[2].metrics["loss"] < results[1].metrics["loss"]
    after = model.state_dict()
    assert not torch.equal(before["head.fc8.weight"], after["head.fc8.weight"])


# --------------------------------------------------------------------------- fit: freezing


def test_frozen_layers_stay_bit_identical(optimizer_steps):
    train = two_constant_classes(16, size=32)
    model = seeded("alexnet-32", 2)
    frozen = freeze_layers(model, 2)
    assert frozen == ["conv1", "conv2"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen_names = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_names == {"embedding.conv1.weight", "embedding.conv1.bias",
                            "embedding.conv2.weight", "embedding.conv2.bias"}
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=8, optimizer="sgd", weight_decay=0.01)
    run_fit(model, train, cfg, eval_sets={})
    after = dict(model.named_parameters())
    for name in frozen_names:
        assert torch.equal(before[name], after[name]), name
    for layer in list(model.analysis_layers)[2:]:
        name = next(n for n, p in model.named_parameters() if p is model.analysis_layers[layer].weight)
        assert not torch.equal(before[name], after[name]), name
    # Frozen parameters are not even handed to the optimiser.
    (opt,) = {id(o): o for o, _ in optimizer_steps}.values()
    handed = {id(p) for group in opt.param_groups for p in group["params"]}
    assert handed == {id(p) for p in model.parameters() if p.requires_grad}


# --------------------------------------------------------------------------- fit: schedule, determinism


def test_learning_rate_schedules(optimizer_steps):
    train = two_constant_classes(20)  # batches of 8, 8, 4 -> 3 steps per epoch
    lr, epochs = 0.05, 2
    steps = epochs * 3
    run_fit(tiny_net(), train, TrainConfig(epochs=epochs, lr=lr, batch_size=8, schedule="constant"),
            eval_sets={})
    assert [value for _, value in optimizer_steps] == [lr] * steps
    optimizer_steps.clear()
    run_fit(tiny_net(), train, TrainConfig(epochs=epochs, lr=lr, batch_size=8, schedule="cosine"),
            eval_sets={})
    expected = [lr * (1 + math.cos(math.pi * k / steps)) / 2 for k in range(steps)]
    assert [value for _, value in optimizer_steps] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_same_seed_same_weights(schedule):
    train = two_constant_classes(24)
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=5, schedule=schedule)
    runs = []
    for _ in range(2):
        model = tiny_net(seed=4, dropout=0.5)
        results = run_fit(model, train, cfg, seed=11)
        runs.append((snapshot(model), [r.metrics for r in results]))
    (a, metrics_a), (b, metrics_b) = runs
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metrics_a == metrics_b

    # The seed matters (shuffling and dropout): another seed trains to other weights.
    other = tiny_net(seed=4, dropout=0.5)
    run_fit(other, train, cfg, seed=12)
    assert any(not torch.equal(a[k], v) for k, v in other.state_dict().items())


def test_same_seed_same_weights_alexnet32():
    train = two_constant_classes(12, size=32)
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=4)
    states = []
    for _ in range(2):
        model = seeded("alexnet-32", 2)
        run_fit(model, train, cfg, seed=2, eval_sets={})
        states.append(snapshot(model))
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_schedules_give_different_weights():
    train = two_constant_classes(24)
    finals = []
    for schedule in ("constant", "cosine"):
        model = tiny_net(seed=4)
        run_fit(model, train, TrainConfig(epochs=2, lr=0.01, batch_size=6, schedule=schedule),
                seed=0, eval_sets={})
        finals.append(snapshot(model))
    assert any(not torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
