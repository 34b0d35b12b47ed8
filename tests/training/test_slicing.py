"""ReMoS slicing (`training.slicing`) against literal implementations: coverage by a per-sample Python loop,
the mask by a hand loop over every weight computing both ranks; a planted defect path; ratio edges."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from helpers.models import tiny_net
from torch import nn

from mlflow_transfer.errors import RecipeError
from mlflow_transfer.training.slicing import apply_slice, channel_coverage, conv_layers, slice_mask, \
    slice_model, slice_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def two_conv_net(seed: int = 0) -> nn.Sequential:
    """conv_a (3→4) → tanh → conv_b (4→6, two groups) → ReLU → pool → linear: a grouped conv checks which
    input channel each weight reads (tanh, not ReLU, so that conv_b's input channels differ in coverage)."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict([
        ("conv_a", nn.Conv2d(3, 4, 3, padding=1)), ("act_a", nn.Tanh()),
        ("conv_b", nn.Conv2d(4, 6, 3, padding=1, groups=2)), ("relu_b", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(6, 3)),
    ]))


def images(n: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


def literal_covered(t: torch.Tensor) -> list[int]:
    """One sample's (C, H, W) tensor: min-max over all its values, then channel c is covered when the mean
    of its scaled values > 0.5 — element by element in Python."""
    values = [float(v) for v in t.flatten()]
    low, high = min(values), max(values)
    covered = []
    for c in range(t.shape[0]):
        cells = [float(v) for v in t[c].flatten()]
        scaled = [(v - low) / (high - low) for v in cells] if high > low else [0.0] * len(cells)
        covered.append(int(sum(scaled) / len(scaled) > 0.5))
    return covered


def literal_coverage(net: nn.Sequential, x: torch.Tensor) -> dict:
    counts = {"conv_a": [[0] * 3, [0] * 4], "conv_b": [[0] * 4, [0] * 6]}
    with torch.no_grad():
        for sample in x:  # one sample at a time, every activation by hand
            s = sample[None]
            a = net.conv_a(s)
            b_in = net.act_a(a)
            b = net.conv_b(b_in)
            for name, (inp, out) in {"conv_a": (s, a), "conv_b": (b_in, b)}.items():
                for side, t in enumerate((inp, out)):
                    for c, hit in enumerate(literal_covered(t[0])):
                        counts[name][side][c] += hit
    return counts


def test_coverage_matches_a_per_sample_loop_and_restores_the_mode():
    net = two_conv_net().train()
    x = images()
    got = channel_coverage(net, x, batch_size=3)  # batches of 3: counts add up across batches
    want = literal_coverage(net, x)
    assert list(got) == ["conv_a", "conv_b"]
    for name in want:
        assert got[name].inputs.tolist() == want[name][0], name
        assert got[name].outputs.tolist() == want[name][1], name
        assert got[name].n_samples == len(x)
    assert net.training  # eval for the pass, then back
    assert all(not m._forward_hooks for m in net.modules())  # hooks removed


def test_coverage_takes_a_dataset_of_pairs():
    net = two_conv_net()
    x = images()
    dataset = torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    a, b = channel_coverage(net, dataset, batch_size=2), channel_coverage(net, x)
    assert all((a[k].outputs == b[k].outputs).all() and (a[k].inputs == b[k].inputs).all() for k in a)


def literal_average_ranks(values: list[float]) -> list[float]:
    """Rank from 0, ties sharing the mean of the positions they occupy."""
    return [sum(u < v for u in values) + (sum(u == v for u in values) - 1) / 2 for v in values]


def literal_mask(net: nn.Sequential, coverage: dict, ratio: float) -> dict:
    """ReMoS's choice by hand: over every conv weight, channel score = input coverage + output coverage;
    score = rank(channel score) − rank(|w|); the int(ratio · N) lowest go (ties: first position)."""
    weights = []  # (layer, index, channel score, |w|)
    for name in ("conv_a", "conv_b"):
        conv = getattr(net, name)
        w = conv.weight.detach()
        per_group_out, per_group_in = conv.out_channels // conv.groups, w.shape[1]
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                in_channel = (o // per_group_out) * per_group_in + i
                for h in range(w.shape[2]):
                    for k in range(w.shape[3]):
                        pair = coverage[name][0][in_channel] + coverage[name][1][o]
                        weights.append((name, (o, i, h, k), float(pair), abs(float(w[o, i, h, k]))))
    cov_rank = literal_average_ranks([p for _, _, p, _ in weights])
    w_rank = literal_average_ranks([m for _, _, _, m in weights])
    scores = [c - r for c, r in zip(cov_rank, w_rank)]
    order = sorted(range(len(weights)), key=lambda j: (scores[j], j))
    chosen = order[:int(ratio * len(weights))]
    mask = {name: np.zeros(tuple(getattr(net, name).weight.shape), dtype=bool) for name in ("conv_a", "conv_b")}
    for j in chosen:
        name, index, _, _ = weights[j]
        mask[name][index] = True
    return mask


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.77])
def test_slicing_zeroes_exactly_the_weights_a_literal_scoring_chooses(ratio):
    net = two_conv_net(seed=3)
    x = images(9)
    want = literal_mask(net, literal_coverage(net, x), ratio)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    mask, summary = slice_model(net, x, ratio)
    for name in ("conv_a", "conv_b"):
        assert (mask[name] == want[name]).all(), name
        w = getattr(net, name).weight.detach()
        assert (w[torch.as_tensor(want[name])] == 0).all()
        kept = torch.as_tensor(~want[name])
        assert torch.equal(w[kept], before[f"{name}.weight"][kept])  # nothing else moved
        assert torch.equal(getattr(net, name).bias, before[f"{name}.bias"])  # biases are not sliced
        assert summary[name] == {"weights": want[name].size, "zeroed": int(want[name].sum()),
                                 "ratio": want[name].sum() / want[name].size}
    total = sum(m.size for m in want.values())
    assert sum(s["zeroed"] for s in summary.values()) == int(ratio * total)  # one global threshold


def test_planted_defect_channel_is_sliced_first():
    """An output channel the target data never covers (a large negative bias keeps it at the bottom of
    every sample's range) with the largest weights: important to the teacher, unused by the target — the
    weights ReMoS removes first. A reversed rank direction would keep them."""
    net = two_conv_net(seed=4)
    with torch.no_grad():
        net.conv_a.weight[0] = 3.0 * torch.sign(net.conv_a.weight[0])
        net.conv_a.bias[0] = -100.0
    x = images(12)
    cov = channel_coverage(net, x)
    assert cov["conv_a"].outputs[0] == 0 and cov["conv_a"].outputs[1:].sum() > 0
    n_planted = net.conv_a.weight[0].numel()
    total = net.conv_a.weight.numel() + net.conv_b.weight.numel()
    # a quarter of the weights (2 × the planted ones): the planted channel goes whole; unplanted, it keeps most
    mask = slice_mask(slice_scores(net, cov), 2 * n_planted / total)
    assert mask["conv_a"][0].all()
    plain = two_conv_net(seed=4)
    assert slice_mask(slice_scores(plain, channel_coverage(plain, x)), 2 * n_planted / total)["conv_a"][0].mean() < 0.5


def test_ratio_edges():
    net = two_conv_net()
    scores = slice_scores(net, channel_coverage(net, images()))
    n = sum(s.size for s in scores.values())
    assert sum(m.sum() for m in slice_mask(scores, 0.5 / n).values()) == 0  # int(ratio · N) = 0: none
    assert sum(m.sum() for m in slice_mask(scores, 1 - 0.5 / n).values()) == n - 1
    for bad in (0, 1, -1, 1.5, math.nan, "0.1", True):
        with pytest.raises(RecipeError, match=r"Expected the slice ratio \(target\.slice_ratio\) as a finite "
                                              r"number in \(0, 1\)"):
            slice_mask(scores, bad)


def test_bad_ratio_is_said_before_profiling():
    net = two_conv_net()
    with pytest.raises(RecipeError, match="slice ratio"):
        slice_model(net, object(), 0.0)  # the images are never read


def test_model_without_conv_layers_is_one_clear_error():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(RecipeError, match=r"Expected a model with Conv2d layers for `target\.method: slice`.*"
                                          r"Use `target\.method: finetune`"):
        slice_model(net, torch.rand(2, 3, 2, 2), 0.05)


def test_mask_that_does_not_fit_the_model_is_refused():
    net = two_conv_net()
    with pytest.raises(RecipeError, match=r"slice mask of 'conv_a'"):
        apply_slice(net, {"conv_a": np.zeros((2, 2), dtype=bool)})
    with pytest.raises(RecipeError, match=r"slice mask of 'fc'"):
        apply_slice(net, {"fc": np.zeros((3, 6), dtype=bool)})


def test_transfer_net_layers_are_module_paths():
    net = tiny_net(channels=4)
    assert list(conv_layers(net)) == ["embedding.conv1"]
    mask, summary = slice_model(net, images(5), 0.25)
    assert set(mask) == {"embedding.conv1"} and summary["embedding.conv1"]["zeroed"] == int(0.25 * 108)
    assert int((net.embedding.conv1.weight == 0).sum()) >= summary["embedding.conv1"]["zeroed"]


def test_an_adapted_foreign_classifier_is_sliced_by_its_module_paths():
    from helpers.models import foreign

    from mlflow_transfer.models.adapter import adapt_classifier

    net = adapt_classifier(foreign("cnn"), torch.rand(2, 3, 32, 32))
    mask, summary = slice_model(net, images(6).repeat(1, 1, 6, 6)[:, :, :32, :32], 0.05)
    assert list(mask) == list(conv_layers(net)) == ["net.stem", "net.body.mix"]
    total = sum(s["weights"] for s in summary.values())
    assert sum(s["zeroed"] for s in summary.values()) == int(0.05 * total)
    modules = dict(net.named_modules())
    assert all((modules[k].weight.detach()[torch.as_tensor(m)] == 0).all() for k, m in mask.items())
