"""Weight extraction (Ma et al. 2020, §5.3.1, Figure 3 B): activated levels, top-k counting, whole models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers.models import seeded, transfer_net, with_running_statistics
from torch import nn

from mlflow_transfer.diagnostics import weights as W
from mlflow_transfer.diagnostics.weights import (
    activated_weights, extract_important_weights, important_weights, layer_inputs)
from mlflow_transfer.errors import DiagnosticsError


pytestmark = pytest.mark.usefixtures("one_thread")


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------
# Slow literal references


def _literal_conv_levels(x, weight, stride, padding, dilation, pad_mode="constant"):
    """level[p, b, a] = max over output positions of the correlation of map a with kernel W[b, a]."""
    m, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode=pad_mode)
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    levels = np.empty((m, c_out, c_in))
    for p, b, a in itertools.product(range(m), range(c_out), range(c_in)):
        best = -np.inf
        for i, j in itertools.product(range(out_h), range(out_w)):
            total = 0.0
            for u, v in itertools.product(range(kh), range(kw)):
                total += weight[b, a, u, v] * xp[p, a, i * sh + u * dh, j * sw + v * dw]
            best = max(best, total)
        levels[p, b, a] = best
    return levels


def _literal_linear_levels(x, weight, n_prev):
    """level[p, b, a] = sum over the features f of channel a's block of W[b, f] * x[p, f]."""
    m, features = x.shape
    size = features // n_prev
    levels = np.zeros((m, weight.shape[0], n_prev))
    for p, b, f in itertools.product(range(m), range(weight.shape[0]), range(features)):
        levels[p, b, f // size] += weight[b, f] * x[p, f]
    return levels


def _literal_topk_mask(row, k):
    """Exactly k cells: larger values first, equal values in index order (a stable sort)."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
    mask = np.zeros(len(row), dtype=bool)
    mask[order] = True
    return mask


def _fixed(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return module


# ---------------------------------------------------------------------------------------------------
# activated_weights: each layer-pair kind against the literal reference


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), ((1, 2), (2, 1), (2, 1))])
def test_conv_conv_levels_match_the_literal_loop(stride, padding, dilation):
    conv = _fixed(nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, dilation=dilation))
    x = _rng().normal(size=(2, 3, 7, 6)).astype(np.float32)
    got = activated_weights(conv, x)
    want = _literal_conv_levels(x.astype(np.float64), conv.weight.detach().double().numpy(),
                                conv.stride, conv.padding, conv.dilation)
    assert got.shape == (2, 4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_levels_in_chunks_of_instances_and_output_channels(monkeypatch):
    conv = _fixed(nn.Conv2d(3, 5, 3, padding=1), seed=1)
    x = _rng(1).normal(size=(5, 3, 4, 4)).astype(np.float32)
    whole = activated_weights(conv, x, batch_size=64)
    # A cap of two output maps per instance forces blocks of output channels and one instance a chunk.
    monkeypatch.setattr(W, "_MAX_ELEMENTS", 2 * 3 * 16)
    chunked = activated_weights(conv, x, batch_size=2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-6)
    want = _literal_conv_levels(x.astype(np.float64), conv.weight.detach().double().numpy(),
                                (1, 1), (1, 1), (1, 1))
    np.testing.assert_allclose(chunked, want, rtol=1e-5, atol=1e-5)


def test_conv_levels_honour_the_padding_mode():
    conv = _fixed(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), seed=2)
    x = _rng(2).normal(size=(2, 2, 5, 5)).astype(np.float32)
    want = _literal_conv_levels(x.astype(np.float64), conv.weight.detach().double().numpy(),
                                (1, 1), (1, 1), (1, 1), pad_mode="reflect")
    np.testing.assert_allclose(activated_weights(conv, x), want, rtol=1e-5, atol=1e-5)


def test_conv_conv_levels_sum_to_the_conv_output_when_the_map_is_one_position():
    # With a single output position the max is that position, so sum_a level + bias = conv output.
    conv = _fixed(nn.Conv2d(4, 3, 3), seed=3)
    x = _rng(3).normal(size=(3, 4, 3, 3)).astype(np.float32)
    levels = activated_weights(conv, x)
    out = conv(torch.from_numpy(x)).detach().numpy()[:, :, 0, 0]
    np.testing.assert_allclose(levels.sum(axis=2) + conv.bias.detach().numpy(), out, rtol=1e-5, atol=1e-5)


def test_conv_linear_levels_match_the_literal_sum_and_decompose_the_output():
    linear = _fixed(nn.Linear(3 * 4, 5), seed=4)  # 3 channels of 2x2 maps, flattened
    x = _rng(4).normal(size=(4, 12)).astype(np.float32)
    levels = activated_weights(linear, x, n_prev=3, batch_size=3)
    want = _literal_linear_levels(x.astype(np.float64), linear.weight.detach().double().numpy(), 3)
    assert levels.shape == (4, 5, 3)
    np.testing.assert_allclose(levels, want, rtol=1e-5, atol=1e-5)
    out = linear(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(levels.sum(axis=2) + linear.bias.detach().numpy(), out, rtol=1e-5, atol=1e-5)


def test_conv_linear_blocks_follow_torch_flatten_order():
    # Channel a of a real conv map feeds exactly the features torch.flatten puts in block a.
    maps = torch.zeros(1, 3, 2, 2)
    maps[0, 1] = 1.0  # only channel 1 is active
    linear = _fixed(nn.Linear(12, 2), seed=5)
    levels = activated_weights(linear, nn.Flatten()(maps).numpy(), n_prev=3)
    np.testing.assert_allclose(levels[0, :, 1], linear.weight.detach().numpy()[:, 4:8].sum(axis=1), rtol=1e-6)
    assert np.all(levels[0, :, [0, 2]] == 0)


def test_linear_linear_levels_match_the_literal_product_and_decompose_the_output():
    linear = _fixed(nn.Linear(6, 4), seed=6)
    x = _rng(6).normal(size=(3, 6)).astype(np.float32)
    levels = activated_weights(linear, x)
    want = x[:, None, :].astype(np.float64) * linear.weight.detach().double().numpy()[None]
    np.testing.assert_allclose(levels, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(levels, activated_weights(linear, x, n_prev=6))
    out = linear(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(levels.sum(axis=2) + linear.bias.detach().numpy(), out, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Values worked out by hand


def test_hand_worked_linear_levels():
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        linear.bias.fill_(100.0)  # biases are not weights: no effect on the levels
    levels = activated_weights(linear, np.array([[2.0, 1.0]], dtype=np.float32))
    # level[b, a] = W[b, a] * x[a]
    np.testing.assert_array_equal(levels[0], [[2.0, 2.0], [6.0, -1.0]])


def test_hand_worked_conv_levels():
    conv = nn.Conv2d(2, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([
            [[[1, 0], [0, 1]], [[1, 1], [1, 1]]],    # b = 0: diagonal on map 0, box sum on map 1
            [[[-1, 0], [0, 0]], [[0, 0], [0, 2]]],   # b = 1
        ], dtype=torch.float32))
        conv.bias.fill_(100.0)
    x = np.zeros((1, 2, 3, 3), dtype=np.float32)
    x[0, 0] = np.diag([1.0, 2.0, 3.0])
    x[0, 1] = 1.0
    # b=0,a=0: windows give 1+2=3, 0, 0, 2+3=5 -> 5;  b=0,a=1: 4 everywhere -> 4
    # b=1,a=0: -x at each window's top-left: -1, 0, 0, -2 -> 0;  b=1,a=1: 2 everywhere -> 2
    np.testing.assert_array_equal(activated_weights(conv, x)[0], [[5.0, 4.0], [0.0, 2.0]])


def test_hand_worked_top_k_counts_with_ties():
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    levels = np.array([
        [[3, 1], [3, 0]],   # flat [3, 1, 3, 0]: top 2 = cells 0 and 2
        [[1, 1], [1, 5]],   # flat [1, 1, 1, 5]: 5 at cell 3, then the tie at 1 goes to cell 0
    ], dtype=np.float32)
    result = important_weights(levels, linear, k=2)
    np.testing.assert_array_equal(result.count_matrix, [[2, 0], [1, 1]])
    # count 2 at (b=0, a=0); the count-1 tie between cells 2 (b=1,a=0) and 3 (b=1,a=1) goes to cell 2
    np.testing.assert_array_equal(result.pairs, [[0, 0], [0, 1]])
    np.testing.assert_array_equal(result.counts, [2, 1])
    np.testing.assert_array_equal(result.weight_mean, [1.0, 3.0])
    np.testing.assert_array_equal(result.weight_max_abs, [1.0, 3.0])
    assert (result.kind, result.k, result.n_instances, result.sampled) == ("linear-linear", 2, 2, None)
    np.testing.assert_array_equal(result.instance_indices, [0, 1])
    # fraction 0.5 of 4 weights is the same k; keep=3 extends the list by the next tie in index order
    np.testing.assert_array_equal(important_weights(levels, linear, fraction=0.5).pairs, result.pairs)
    np.testing.assert_array_equal(important_weights(levels, linear, k=2, keep=3).pairs, [[0, 0], [0, 1], [1, 1]])


def test_weight_summaries_of_conv_kernels_and_linear_blocks():
    conv = nn.Conv2d(2, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1, -3], [2, 0]], [[4, 4], [4, 4]]]], dtype=torch.float32))
    levels = np.array([[[0.0, 1.0]]], dtype=np.float32)  # (1 instance, 1 output, 2 inputs)
    result = important_weights(levels, conv, k=1, keep=2)  # a=1 counted once, a=0 never
    np.testing.assert_array_equal(result.pairs, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(result.weight_max_abs, [4.0, 3.0])
    np.testing.assert_array_equal(result.weight_mean, [4.0, 0.0])
    np.testing.assert_array_equal(result.counts, [1, 0])

    linear = nn.Linear(4, 1, bias=False)  # 2 channels, blocks of 2 features
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -5.0, 2.0, 2.0]]))
    result = important_weights(np.array([[[3.0, 1.0]]]), linear, k=2)
    assert result.kind == "conv-linear"
    np.testing.assert_array_equal(result.pairs, [[0, 0], [1, 0]])
    np.testing.assert_array_equal(result.weight_max_abs, [5.0, 2.0])
    np.testing.assert_array_equal(result.weight_mean, [-2.0, 2.0])


def test_top_k_mask_matches_a_stable_sort_on_rows_full_of_ties():
    levels = _rng(7).integers(0, 4, size=(20, 3, 5)).astype(np.float32)
    for k in (1, 4, 7, 15):
        mask = W._topk_mask(levels, k)
        want = np.stack([_literal_topk_mask(row, k) for row in levels.reshape(20, -1)])
        np.testing.assert_array_equal(mask, want)


def test_important_weights_counts_against_the_literal_procedure():
    linear = nn.Linear(5, 3)
    levels = _rng(8).integers(-3, 3, size=(9, 3, 5)).astype(np.float64)
    result = important_weights(levels, linear, k=4, keep=6)
    counts = sum(_literal_topk_mask(row, 4).astype(int) for row in levels.reshape(9, -1))
    np.testing.assert_array_equal(result.count_matrix.reshape(-1), counts)
    best = sorted(range(15), key=lambda i: (-counts[i], i))[:6]
    np.testing.assert_array_equal(result.pairs, [[i % 5, i // 5] for i in best])
    np.testing.assert_array_equal(result.counts, counts[best])
    assert result.count_matrix.sum() == 9 * 4


# ---------------------------------------------------------------------------------------------------
# layer_inputs


def _alexnet(seed=0):
    # non-trivial batch-norm statistics, so eval vs train mode would differ
    return with_running_statistics(seeded("alexnet-32", 10, seed=seed), mean=(-0.1, 0.1), var=(0.5, 2.0))


def _images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_layer_inputs_equal_a_manual_forward():
    model = _alexnet()
    model.train()
    x = _images(5)
    got = layer_inputs(model, x.numpy(), model.analysis_layers, batch_size=2)
    want, targets = {}, {id(m): n for n, m in model.analysis_layers.items()}
    with torch.no_grad():
        h = x
        for module in list(model.embedding) + list(model.head):
            if id(module) in targets:
                want[targets[id(module)]] = h.numpy()
            h = module.eval()(h)
    model.train()
    assert list(got) == list(model.analysis_layers)
    for name in want:
        assert got[name].dtype == np.float32 and got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_layer_inputs_remove_hooks_when_the_model_fails():
    model = _alexnet()
    with pytest.raises(DiagnosticsError, match="model failed on inputs of shape"):
        layer_inputs(model, torch.zeros(2, 1, 32, 32), model.analysis_layers)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert model.training


def test_layer_inputs_errors():
    model = _alexnet()
    layers = model.analysis_layers
    with pytest.raises(DiagnosticsError, match="not modules of the model"):
        layer_inputs(model, _images(1), {"stranger": nn.Linear(2, 2)})
    with pytest.raises(DiagnosticsError, match="N >= 1 instances"):
        layer_inputs(model, torch.zeros(0, 3, 32, 32), layers)
    with pytest.raises(DiagnosticsError, match="NaN or infinite"):
        layer_inputs(model, torch.full((1, 3, 32, 32), float("nan")), layers)
    with pytest.raises(DiagnosticsError, match=r"Expected batch_size as an integer >= 1; got"):
        layer_inputs(model, _images(1), layers, batch_size=0)
    with pytest.raises(DiagnosticsError, match="non-empty mapping"):
        layer_inputs(model, _images(1), {})
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(shared, nn.ReLU(), shared)
    with pytest.raises(DiagnosticsError, match="called more than once"):
        layer_inputs(twice, torch.zeros(1, 4), {"shared": shared})
    unused = _OneOfTwo()
    with pytest.raises(DiagnosticsError, match="never called"):
        layer_inputs(unused, torch.zeros(1, 4), {"spare": unused.spare})


class _OneOfTwo(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.used(x)


# ---------------------------------------------------------------------------------------------------
# extract_important_weights on alexnet-32


def test_extract_on_alexnet32_has_every_consecutive_pair_and_matches_the_two_step_path():
    model = _alexnet()
    x = _images(6)
    result = extract_important_weights(model, x, batch_size=4)
    names = list(model.analysis_layers)
    assert list(result) == list(zip(names[:-1], names[1:]))
    kinds = [r.kind for r in result.values()]
    assert kinds == ["conv-conv"] * 4 + ["conv-linear"] + ["linear-linear"] * 2
    inputs = layer_inputs(model, x, model.analysis_layers)
    for (prev, nxt), r in result.items():
        module = model.analysis_layers[nxt]
        n_prev = W._n_out(model.analysis_layers[prev])
        n_next = W._n_out(module)
        k = int(np.ceil(0.01 * n_next * n_prev))
        assert r.count_matrix.shape == (n_next, n_prev) and r.pairs.shape == (k, 2) and r.k == k
        assert r.count_matrix.sum() == 6 * k and (r.n_instances, r.sampled) == (6, None)
        assert r.pairs[:, 0].max() < n_prev and r.pairs[:, 1].max() < n_next
        levels = activated_weights(module, inputs[nxt], n_prev)
        reference = important_weights(levels, module)
        np.testing.assert_array_equal(r.count_matrix, reference.count_matrix)
        np.testing.assert_allclose(r.mean_level, levels.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reference.mean_level, levels.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(r.pairs, reference.pairs)
        np.testing.assert_array_equal(r.weight_mean, reference.weight_mean)
    assert result[("conv5", "fc6")].count_matrix.shape == (256, 96)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_extract_samples_instances_when_there_are_too_many():
    model = _alexnet()
    x = _images(6)
    result = extract_important_weights(model, x, max_instances=4, seed=3, k=5)
    first = next(iter(result.values()))
    assert first.sampled == 4 and first.n_instances == 4
    indices = first.instance_indices
    assert len(set(indices.tolist())) == 4 and np.all(np.diff(indices) > 0) and indices.max() < 6
    again = extract_important_weights(model, x[torch.from_numpy(indices)], k=5)
    for pair, r in result.items():
        np.testing.assert_array_equal(r.count_matrix, again[pair].count_matrix)
        np.testing.assert_array_equal(r.instance_indices, indices)
        assert r.count_matrix.sum() == 4 * 5
    unsampled = extract_important_weights(model, x, max_instances=6, k=5)
    assert next(iter(unsampled.values())).sampled is None


# ---------------------------------------------------------------------------------------------------
# Error paths


def test_activated_weights_errors():
    with pytest.raises(DiagnosticsError, match=r"grouped convolutions \(groups=2\)"):
        activated_weights(nn.Conv2d(4, 4, 3, groups=2), np.zeros((1, 4, 5, 5)))
    with pytest.raises(DiagnosticsError, match="not a multiple of the previous layer's 3 channels"):
        activated_weights(nn.Linear(10, 2), np.zeros((1, 10)), n_prev=3)
    with pytest.raises(DiagnosticsError, match=r"as \(M, 4, H, W\)"):
        activated_weights(nn.Conv2d(4, 2, 3), np.zeros((1, 3, 5, 5)))
    with pytest.raises(DiagnosticsError, match=r"as \(M, 10\)"):
        activated_weights(nn.Linear(10, 2), np.zeros((2, 9)))
    with pytest.raises(DiagnosticsError, match="takes 4 input channels but the previous layer has 5"):
        activated_weights(nn.Conv2d(4, 2, 3), np.zeros((1, 4, 5, 5)), n_prev=5)
    with pytest.raises(DiagnosticsError, match=r"Expected n_prev as an integer >= 1; got"):
        activated_weights(nn.Linear(10, 2), np.zeros((1, 10)), n_prev=0)
    with pytest.raises(DiagnosticsError, match="nn.Conv2d or nn.Linear; got Conv1d"):
        activated_weights(nn.Conv1d(2, 2, 3), np.zeros((1, 2, 5)))
    with pytest.raises(DiagnosticsError, match="NaN or infinite"):
        activated_weights(nn.Linear(2, 2), np.array([[np.inf, 0.0]]))
    with pytest.raises(DiagnosticsError, match=r"Expected batch_size as an integer >= 1; got"):
        activated_weights(nn.Linear(2, 2), np.zeros((1, 2)), batch_size=True)
    with pytest.raises(DiagnosticsError, match="padding='same' and padding_mode='reflect'"):
        activated_weights(nn.Conv2d(2, 2, 3, padding="same", padding_mode="reflect"), np.zeros((1, 2, 5, 5)))


def test_important_weights_errors():
    linear = nn.Linear(2, 3)
    with pytest.raises(DiagnosticsError, match=r"Expected the activated levels as a 3-D array of shape \(instances, N_next, N_prev\); got shape \(3, 2\)\. Compute"):
        important_weights(np.zeros((3, 2)), linear)
    with pytest.raises(DiagnosticsError, match=r"shape \(instances, N_next, N_prev\) with sizes >= 1 × >= 1 × >= 1; got shape \(0, 3, 2\)\."):
        important_weights(np.zeros((0, 3, 2)), linear)
    with pytest.raises(DiagnosticsError, match=r"Expected levels with N_next = 3 \(the layer's output neurons\); got N_next=2\."):
        important_weights(np.zeros((1, 2, 2)), linear)
    with pytest.raises(DiagnosticsError, match="NaN or infinite"):
        important_weights(np.full((1, 3, 2), np.nan), linear)
    with pytest.raises(DiagnosticsError, match=r"Expected the activated levels as .* of real numbers; got dtype complex128\."):
        important_weights(np.zeros((1, 3, 2), dtype=complex), linear)
    with pytest.raises(DiagnosticsError, match=r"Expected k \(weights kept per instance\) as an integer in \[1, 6\] \(the layer pair has 6 weights\); got 7\."):
        important_weights(np.zeros((1, 3, 2)), linear, k=7)
    with pytest.raises(DiagnosticsError, match=r"Expected fraction as a finite number in \(0, 1\]"):
        important_weights(np.zeros((1, 3, 2)), linear, fraction=1.5)
    with pytest.raises(DiagnosticsError, match=r"Expected keep as an integer in \[1, 6\] \(the layer pair has 6 weights\); got 0\."):
        important_weights(np.zeros((1, 3, 2)), linear, keep=0)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_extract_errors_and_unsupported_pairs():
    block = _Residual()
    conv1, fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 2)
    body = [("conv1", conv1), ("relu", nn.ReLU()), ("block", block), ("pool", nn.AdaptiveAvgPool2d(1)),
            ("flat", nn.Flatten())]
    residual = transfer_net(body, [("fc", fc)], [("conv1", conv1), ("block.conv", block.conv), ("fc", fc)])
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DiagnosticsError, match="conv1 → block.conv is not supported.*non-sequential"):
        extract_important_weights(residual, x)
    assert extract_important_weights(residual, x, on_unsupported="skip", k=1) == {}

    conv2 = nn.Conv2d(4, 4, 1)
    mixing = transfer_net([("conv1", conv1), ("norm", nn.LocalResponseNorm(2)), ("conv2", conv2)], [],
                       [("conv1", conv1), ("conv2", conv2)])
    with pytest.raises(DiagnosticsError, match="LocalResponseNorm between them mixes channels"):
        extract_important_weights(mixing, x)

    lin, conv = nn.Linear(4, 4), nn.Conv2d(1, 2, 1)
    backwards = transfer_net([("lin", lin), ("shape", nn.Unflatten(1, (1, 2, 2)))], [("conv", conv)],
                          [("lin", lin), ("conv", conv)])
    with pytest.raises(DiagnosticsError, match="lin → conv is not supported"):
        extract_important_weights(backwards, torch.zeros(1, 4))

    a, b = nn.Linear(4, 6), nn.Linear(3, 2)
    mismatched = transfer_net([("a", a), ("pool", nn.MaxPool1d(2))], [("b", b)], [("a", a), ("b", b)])
    with pytest.raises(DiagnosticsError, match="MaxPool1d between them"):
        extract_important_weights(mismatched, torch.zeros(1, 4))
    skipped_pool = transfer_net([("a", a)], [("b", b)], [("a", a), ("b", b)])
    with pytest.raises(DiagnosticsError, match="a has 6 outputs but b takes 3 features"):
        extract_important_weights(skipped_pool, torch.zeros(1, 4))

    model = _alexnet()
    with pytest.raises(DiagnosticsError, match="needs `analysis_layers`"):
        extract_important_weights(nn.Linear(2, 2), torch.zeros(1, 2))
    with pytest.raises(DiagnosticsError, match=r"Expected max_instances as an integer >= 1; got"):
        extract_important_weights(model, _images(1), max_instances=0)
    with pytest.raises(DiagnosticsError, match=r"Expected on_unsupported as one of \('raise', 'skip'\); got"):
        extract_important_weights(model, _images(1), on_unsupported="ignore")
    with pytest.raises(DiagnosticsError, match=r"Expected k \(weights kept per instance\) as an integer in \[1, 1280\] \(layer pair fc7 → fc8 has 1280 weights\)"):
        extract_important_weights(model, _images(1), k=2000)


# ---------------------------------------------------------------------------------------------------
# The parameters behind each link (the network view's weight values and clicked feature maps)


def _planted_net():
    """conv1 (3→4, 3×3) → conv2 (4→2, 3×3) → 2×2 adaptive pool → fc1 (8→3) → fc2 (3→2), weights = arange."""
    conv1, conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)
    fc1, fc2 = nn.Linear(8, 3), nn.Linear(3, 2)
    with torch.no_grad():
        for m in (conv1, conv2, fc1, fc2):
            m.weight.copy_(torch.arange(m.weight.numel(), dtype=torch.float32).reshape(m.weight.shape) - 5)
    return transfer_net([("conv1", conv1), ("relu1", nn.ReLU()), ("conv2", conv2), ("pool", nn.AdaptiveAvgPool2d(2)),
                         ("flatten", nn.Flatten())], [("fc1", fc1), ("relu", nn.ReLU()), ("fc2", fc2)],
                        [("conv1", conv1), ("conv2", conv2), ("fc1", fc1), ("fc2", fc2)])


def test_link_kernels_by_hand_for_the_three_kinds_of_pair():
    net = _planted_net()
    cc = W.link_kernels(net, "conv1", "conv2")  # conv2's kernel of input channel a into output b
    assert cc.kind == "conv-conv" and cc.kernels.shape == (2, 4, 3, 3) and cc.note == ""
    first = np.arange(9, dtype=np.float32).reshape(3, 3) - 5  # W[0, 0]: elements 0..8, minus 5
    np.testing.assert_array_equal(cc.kernels[0, 0], first)
    np.testing.assert_array_equal(cc.rows, [0, 1])
    assert cc.values[0, 0] == first.sum() == -9.0 and cc.values[1, 3] == sum(range(63, 72)) - 45  # signed sums
    cl = W.link_kernels(net, "conv2", "fc1")  # fc1's 8 features = 2 channels × the pool's 2×2 map
    assert cl.kind == "conv-linear" and cl.kernels.shape == (3, 2, 2, 2)
    np.testing.assert_array_equal(cl.kernels[2, 1], np.array([[20, 21], [22, 23]]) - 5)  # W[2, 4:8]
    np.testing.assert_array_equal(cl.values, (np.arange(24).reshape(3, 2, 4) - 5).sum(-1))
    ll = W.link_kernels(net, "fc1", "fc2")
    assert ll.kind == "linear-linear" and ll.kernels.shape == (2, 3)
    np.testing.assert_array_equal(ll.kernels, np.arange(6).reshape(2, 3) - 5)
    np.testing.assert_array_equal(ll.values, ll.kernels)


def test_link_kernels_over_the_cap_keep_the_asked_rows_and_say_so():
    net = _planted_net()
    capped = W.link_kernels(net, "conv1", "conv2", keep_rows=[1, 7, -1], max_elements=40)  # a row = 36
    np.testing.assert_array_equal(capped.rows, [1])
    np.testing.assert_array_equal(capped.kernels[0], W.link_kernels(net, "conv1", "conv2").kernels[1])
    assert "1 of 2 conv2 neurons" in capped.note and capped.values.shape == (2, 4)  # values stay whole
    with pytest.raises(DiagnosticsError, match="analysis layers"):
        W.link_kernels(net, "conv1", "nope")


def test_map_shape_without_an_adaptive_pool_is_square_or_a_row():
    conv, fc = nn.Conv2d(3, 2, 3), nn.Linear(2 * 9, 2)
    net = transfer_net([("conv", conv), ("flatten", nn.Flatten())], [("fc", fc)], [("conv", conv), ("fc", fc)])
    assert W.link_kernels(net, "conv", "fc").kernels.shape == (2, 2, 3, 3)
    fc6 = nn.Linear(2 * 6, 2)
    net = transfer_net([("conv", conv), ("flatten", nn.Flatten())], [("fc", fc6)], [("conv", conv), ("fc", fc6)])
    assert W.link_kernels(net, "conv", "fc").kernels.shape == (2, 2, 1, 6)
