"""Receptive fields and top activating patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import seeded
from torch import nn

from mlflow_transfer.diagnostics.features import receptive_field, top_patches
from mlflow_transfer.errors import DiagnosticsError
from mlflow_transfer.models import build_model


def _gradient_box(model, layer, i, j, size=32):
    # Reference: the input pixels that can influence unit (i, j), found by back-propagation with
    # every ReLU made the identity and every max-pool an average pool (same window), so that no
    # gradient is zeroed by an inactive unit or a non-maximal window element.
    x = torch.ones(1, 3, size, size, requires_grad=True)
    out = {}
    h = layer.register_forward_hook(lambda m, a, o: out.__setitem__("o", o))
    relus = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
    for r in relus:
        r.forward = (lambda t: t) if isinstance(r, nn.ReLU) else (
            lambda t, r=r: nn.functional.avg_pool2d(t, r.kernel_size, r.stride, r.padding))
    try:
        model.eval()(x)
        out["o"][0, 0, i, j].backward()
    finally:
        h.remove()
        for r in relus:
            del r.forward
    nz = x.grad[0].abs().sum(0).nonzero()
    return nz[:, 0].min().item(), nz[:, 1].min().item(), nz[:, 0].max().item() + 1, nz[:, 1].max().item() + 1


@pytest.mark.parametrize("name", ["conv1", "conv2", "conv3", "conv5"])
def test_receptive_field_matches_gradient_support(name):
    model = seeded("alexnet-32", 10)
    layer = model.analysis_layers[name]
    size, jump, start = receptive_field(model, layer)
    for i, j in [(1, 2), (3, 3)]:
        top, left = start + i * jump, start + j * jump
        expected = _gradient_box(model, layer, i, j)
        assert expected == (max(top, 0), max(left, 0), min(top + size, 32), min(left + size, 32))


def test_linear_and_unknown_chains_use_whole_image():
    model = build_model("alexnet-32", 10)
    assert receptive_field(model, model.analysis_layers["fc6"]) is None
    resnet = build_model("resnet18", 10)
    assert receptive_field(resnet, resnet.analysis_layers["layer2.0.conv1"]) is None


def test_top_patches_pick_the_strongest_images_and_crop_their_box():
    model = seeded("alexnet-32", 10).eval()
    images = torch.rand(20, 3, 32, 32)
    layer = model.analysis_layers["conv2"]
    res = top_patches(model, layer, images, [0, 5], k=4, patch_size=8)
    with torch.no_grad():
        acts = {}
        h = layer.register_forward_hook(lambda m, a, o: acts.__setitem__("o", o))
        model(images)
        h.remove()
    peak = acts["o"].amax(dim=(2, 3)).numpy()
    for n in (0, 5):
        expected = np.argsort(-peak[:, n], kind="stable")[:4]
        np.testing.assert_array_equal(res[n].indices, expected)
        np.testing.assert_allclose(res[n].values, peak[expected, n], rtol=1e-5)
        assert res[n].patches.shape == (4, 8, 8, 3) and res[n].patches.dtype == np.uint8
        top, left, bottom, right = res[n].boxes[0]
        assert 0 <= top < bottom <= 32 and 0 <= left < right <= 32


def test_linear_neurons_use_whole_images():
    model = build_model("alexnet-32", 10).eval()
    images = torch.rand(6, 3, 32, 32)
    res = top_patches(model, model.analysis_layers["fc8"], images, [3], k=2)
    np.testing.assert_array_equal(res[3].boxes, [[0, 0, 32, 32]] * 2)
    with torch.no_grad():
        logits = model(images)[:, 3].numpy()
    np.testing.assert_array_equal(res[3].indices, np.argsort(-logits, kind="stable")[:2])


def test_errors():
    model = build_model("alexnet-32", 10)
    with pytest.raises(DiagnosticsError, match=r"Expected images as a non-empty \(N, 3, H, W\) tensor; got shape \(0, 3, 32, 32\)\."):
        top_patches(model, model.analysis_layers["conv1"], torch.rand(0, 3, 32, 32), [0])
    with pytest.raises(DiagnosticsError, match=r"Expected neuron indices of layer layer in \[0, 48\); got \[999\]\."):
        top_patches(model, model.analysis_layers["conv1"], torch.rand(2, 3, 32, 32), [999])
