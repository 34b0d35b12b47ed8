"""Feature visualisation (activation maximisation) and its image cache.

Reference: planted neurons. A Linear unit over the flattened image with weights = a known pattern is
maximised (under a sigmoid-bounded image) by the pattern itself (bright where the weight is positive), so
its optimised image must correlate with the pattern, while the image of another unit, or a random image,
must not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import seeded, transfer_net
from torch import nn

from mlflow_transfer.diagnostics import featurevis, viscache
from mlflow_transfer.diagnostics.featurevis import visualise_layers, visualise_neurons
from mlflow_transfer.errors import DiagnosticsError

S = 16


def _patterns() -> np.ndarray:
    """(3, S, S) zero-mean patterns: an 8-px checkerboard, a left-to-right gradient, a bright disc."""
    y, x = np.mgrid[0:S, 0:S] + 0.5
    checker = np.where(((y // 8) + (x // 8)) % 2 == 0, 1.0, -1.0)
    gradient = x / S * 2 - 1
    disc = np.where((y - S / 2) ** 2 + (x - S / 2) ** 2 < (S / 4) ** 2, 1.0, -0.3)
    return np.stack([p - p.mean() for p in (checker, gradient, disc)])


def _planted_net() -> nn.Module:
    """Unit i of ``fc`` = pattern i in every colour channel."""
    fc = nn.Linear(3 * S * S, 3)
    with torch.no_grad():
        w = torch.as_tensor(_patterns(), dtype=torch.float32)[:, None].expand(3, 3, S, S)
        fc.weight.copy_(w.reshape(3, -1) / 50)
        fc.bias.zero_()
    return transfer_net([("flatten", nn.Flatten())], [("fc", fc)], [("fc", fc)])


def _corr(image: np.ndarray, pattern: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(-1)
    return float(np.corrcoef(grey.ravel(), pattern.ravel())[0, 1])


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "fvis-cache"
    monkeypatch.setenv(viscache.CACHE_ENV, str(root))
    return root


def test_planted_unit_yields_its_pattern_and_others_do_not(one_thread):
    model, patterns = _planted_net(), _patterns()
    images = visualise_neurons(model, model.analysis_layers["fc"], [0, 1, 2], image_size=S, steps=32, seed=0)
    assert images.shape == (3, S, S, 3) and images.dtype == np.uint8
    corr = np.array([[_corr(images[i], patterns[j]) for j in range(3)] for i in range(3)])
    assert np.all(np.diag(corr) > 0.7), corr                     # each unit's image is its pattern
    assert np.all(np.abs(corr[~np.eye(3, dtype=bool)]) < 0.3), corr  # not another unit's
    noise = np.random.default_rng(0).integers(0, 256, (S, S, 3), dtype=np.uint8)
    assert all(abs(_corr(noise, p)) < 0.3 for p in patterns)        # nor a random image


def test_planted_conv_channel_draws_its_orientation(one_thread):
    # A conv channel whose kernel is a vertical edge detector (dark left, bright right) is maximised on
    # average by vertical stripes: the image's spectrum holds far more energy in pure x frequencies
    # (columns alternate) than in pure y frequencies; the horizontal detector the other way round.
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, :, 0], conv.weight[0, :, :, 2] = -1.0, 1.0   # vertical edges
        conv.weight[1, :, 0, :], conv.weight[1, :, 2, :] = -1.0, 1.0   # horizontal edges
        conv.bias.zero_()
    model = transfer_net([("conv", conv), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)),
                          ("flatten", nn.Flatten())], [("fc", nn.Linear(2, 2))], [("conv", conv)])
    images = visualise_neurons(model, conv, [0, 1], image_size=S, steps=32).astype(np.float64).mean(-1)
    power = np.abs(np.fft.fft2(images)) ** 2
    along_x, along_y = power[:, 0, 1:].sum(1), power[:, 1:, 0].sum(1)
    assert along_x[0] > 4 * along_y[0] and along_y[1] > 4 * along_x[1], (along_x, along_y)


def test_seeded_deterministic_and_model_left_as_found(one_thread):
    model = seeded("alexnet-32", 10)
    model.train()
    model.analysis_layers["conv1"].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = model.analysis_layers["conv2"]
    a = visualise_neurons(model, layer, [3, 1], image_size=32, steps=3, seed=5, batch_size=1)
    b = visualise_neurons(model, layer, [1, 3], image_size=32, steps=3, seed=5)
    c = visualise_neurons(model, layer, [3], image_size=32, steps=3, seed=6)
    assert np.array_equal(a[0], b[1]) and np.array_equal(a[1], b[0])  # its own seed, whatever the chunk
    assert not np.array_equal(a[0], c[0])
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert not layer._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, match", [
    ({"neurons": [96]}, r"\[0, 96\)"), ({"neurons": [[1]]}, "1-D"), ({"steps": 0}, "steps"),
    ({"image_size": 4}, "image_size"), ({"layer": "bn"}, "Conv2d or Linear"),
    ({"layer": "foreign"}, "not modules of the model")])
def test_bad_input_is_one_clear_message(kwargs, match):
    model = seeded("alexnet-32", 10)
    args = {"neurons": [0], "steps": 1, "image_size": 32, "layer": "conv2", **kwargs}
    layer = {"bn": model.embedding.bn2, "foreign": nn.Conv2d(3, 3, 1)}.get(args["layer"]) or \
        model.analysis_layers[args.pop("layer")]
    args.pop("layer", None)
    with pytest.raises(DiagnosticsError, match=match):
        visualise_neurons(model, layer, args.pop("neurons"), **args)


def _count_forwards(model):
    calls = []
    model.embedding.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_cache_reused_for_same_weights_not_for_changed(cache, one_thread):
    model = seeded("alexnet-32", 10)
    req = {"conv1": (model.analysis_layers["conv1"], [2, 0])}
    first = visualise_layers(model, req, image_size=32, steps=2)
    assert (first.computed, first.cached) == (2, 0)
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 2 and not list(cache.glob(".tmp-*"))
    stamps = [f.stat().st_mtime_ns for f in files]

    twin = seeded("alexnet-32", 10)  # another object, the same weights: a second pair of one source run
    calls = _count_forwards(twin)
    second = visualise_layers(twin, {"conv1": (twin.analysis_layers["conv1"], [2, 0])}, image_size=32, steps=2)
    assert (second.computed, second.cached) == (0, 2) and not calls
    assert np.array_equal(second.images["conv1"], first.images["conv1"])
    assert [f.stat().st_mtime_ns for f in files] == stamps

    with torch.no_grad():
        twin.analysis_layers["fc8"].bias.add_(1.0)  # changed weights anywhere: a new key
    third = visualise_layers(twin, {"conv1": (twin.analysis_layers["conv1"], [2, 0])}, image_size=32, steps=2)
    assert (third.computed, third.cached) == (2, 0) and len(list(cache.glob("*.npy"))) == 4
    more = visualise_layers(model, req, image_size=32, steps=3)  # other settings: a new key too
    assert more.computed == 2


@pytest.mark.parametrize("content", [b"not a numpy file", "pickled", "wrong shape", "symlink"])
def test_corrupt_or_foreign_cache_file_is_a_miss(cache, content, tmp_path, one_thread):
    model = seeded("alexnet-32", 10)
    req = {"conv1": (model.analysis_layers["conv1"], [1])}
    clean = visualise_layers(model, req, image_size=32, steps=2, cache_dir=False).images["conv1"]
    visualise_layers(model, req, image_size=32, steps=2)
    (path,) = cache.glob("*.npy")
    path.unlink()
    if content == "pickled":  # an object-dtype header, as np.save writes for pickled arrays; no pickle needed
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (1,)})
            fh.write(b"\x80\x04payload that must never be unpickled")
    elif content == "wrong shape":
        np.save(path, np.zeros((8, 8, 3), np.uint8))
    elif content == "symlink":
        outside = tmp_path / "outside.npy"
        np.save(outside, np.full((32, 32, 3), 7, np.uint8))
        path.symlink_to(outside)
    else:
        path.write_bytes(content)
    again = visualise_layers(model, req, image_size=32, steps=2)
    assert (again.computed, again.cached) == (1, 0)
    assert np.array_equal(again.images["conv1"], clean)
    assert viscache.load(cache, path.stem, (32, 32, 3)) is not None  # replaced by a good file
    if content == "symlink":
        assert np.load(tmp_path / "outside.npy").max() == 7  # the link's target untouched


def test_unwritable_cache_warns_and_still_returns_images(tmp_path, one_thread):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    model = seeded("alexnet-32", 10)
    with pytest.warns(UserWarning, match="not written"):
        out = visualise_layers(model, {"conv1": (model.analysis_layers["conv1"], [0])}, image_size=32, steps=1,
                               cache_dir=blocker / "cache")
    assert out.images["conv1"].shape == (1, 32, 32, 3)


def test_default_cache_dir_follows_the_environment(cache):
    assert viscache.default_cache_dir() == cache
    assert featurevis.ALGORITHM  # part of every key
