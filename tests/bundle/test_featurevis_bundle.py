"""Feature visualisations through the engine (the "featurevis" stage: the patch neurons, the option,
the cache across pairs) and the bundle (``features/{model}/{layer}/vis`` and ``PairBundle.feature_vis``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from helpers.models import seeded
from PIL import Image

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.writer import write_pair_bundle
from mlflow_transfer.diagnostics import featurevis
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.errors import BundleError, DiagnosticsError

CLASSES = ("a", "b", "c")
OPTS = DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=2,
                       layers=("conv2", "fc7"), feature_vis_steps=2)


def _instances(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = np.arange(n)
    return Instances(torch.rand(n, 3, 32, 32, generator=g), idx % 3, (idx >= n // 2).astype(np.int8),
                     (idx % 4 == 0).astype(np.int8), idx)


class _Counter:
    """Wraps featurevis.visualise_neurons: how many images were optimised (not read from the cache)."""

    def __init__(self, monkeypatch):
        self.count, real = 0, featurevis.visualise_neurons

        def counted(model, layer, neurons, **kw):
            self.count += len(neurons)
            return real(model, layer, neurons, **kw)

        monkeypatch.setattr(featurevis, "visualise_neurons", counted)


@pytest.fixture(scope="module")
def pair():
    return seeded("alexnet-32", 3, seed=1).eval(), seeded("alexnet-32", 3, seed=2).eval()


@pytest.fixture(scope="module")
def diag(pair):
    return diagnose_pair(*pair, _instances(), CLASSES, OPTS)


def test_the_stage_visualises_exactly_the_patch_neurons_and_is_timed(diag):
    assert "featurevis" in diag.timings
    for model in ("source", "target"):
        for layer, per_neuron in diag.patches[model].items():
            neurons, images = diag.feature_vis[model][layer]
            assert list(neurons) == sorted(per_neuron)
            assert images.shape == (len(neurons), 32, 32, 3) and images.dtype == np.uint8


def test_a_second_pair_of_the_same_source_reuses_its_images(pair, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRANSFER_FEATUREVIS_CACHE", str(tmp_path / "cache"))
    source, target = pair
    counter = _Counter(monkeypatch)
    first = diagnose_pair(source, target, _instances(), CLASSES, OPTS)
    made = counter.count
    assert made == sum(len(v[0]) for m in first.feature_vis.values() for v in m.values())
    other = seeded("alexnet-32", 3, seed=3).eval()  # another fine-tuned model of the same source run
    counter.count = 0
    second = diagnose_pair(seeded("alexnet-32", 3, seed=1).eval(), other, _instances(), CLASSES, OPTS)
    target_made = sum(len(v[0]) for v in second.feature_vis["target"].values())
    new_source = sum(len(set(second.feature_vis["source"][n][0]) - set(first.feature_vis["source"][n][0]))
                     for n in second.feature_vis["source"])
    assert counter.count == target_made + new_source  # every source image seen before came from the cache
    for layer, (neurons, images) in second.feature_vis["source"].items():
        old = dict(zip(first.feature_vis["source"][layer][0], first.feature_vis["source"][layer][1]))
        for n, image in zip(neurons, images):
            if n in old:
                np.testing.assert_array_equal(image, old[n])


def test_zero_steps_turns_it_off_and_a_negative_count_is_refused(pair, monkeypatch):
    counter = _Counter(monkeypatch)
    off = diagnose_pair(*pair, _instances(), CLASSES, dataclasses.replace(OPTS, feature_vis_steps=0,
                                                                          layers=("conv2",)))
    assert off.feature_vis == {} and counter.count == 0
    with pytest.raises(DiagnosticsError, match="feature_vis_steps as an integer >= 0"):
        diagnose_pair(*pair, _instances(), CLASSES, dataclasses.replace(OPTS, feature_vis_steps=-1))


def test_bundle_round_trip_and_manifest(diag, tmp_path):
    manifest = write_pair_bundle(tmp_path / "b", diag)
    assert manifest["options"]["feature_vis_steps"] == 2
    b = PairBundle.open(tmp_path / "b")
    for model in ("source", "target"):
        for layer, (neurons, images) in diag.feature_vis[model].items():
            got = b.feature_vis(model, layer)
            np.testing.assert_array_equal(got["neurons"], neurons)
            np.testing.assert_array_equal(got["neurons"], b.patches(model, layer)["neurons"])
            np.testing.assert_array_equal(got["images"], images)


def test_a_bundle_without_them_reads_as_none(diag, tmp_path):
    older = dataclasses.replace(diag, feature_vis={})  # feature visualisation off, or written before it
    write_pair_bundle(tmp_path / "b", older)
    b = PairBundle.open(tmp_path / "b")
    assert all(b.feature_vis(m, layer) is None for m in ("source", "target") for layer in b.layers)
    assert b.patches("target", b.layers[0])["sprite"].size  # the patches are still there


def test_a_vis_sprite_of_the_wrong_shape_is_a_bundle_error(diag, tmp_path):
    root = tmp_path / "b"
    write_pair_bundle(root, diag)
    layer = diag.layers[0]
    path = root / "features" / "target" / layer / "vis.png"
    Image.fromarray(np.zeros((33, 32, 3), np.uint8)).save(path)  # not one 32-px tile per neuron
    manifest = json.loads((root / "manifest.json").read_text())  # re-sign it: only the shape is wrong
    for entry in manifest["files"]:
        if entry["path"] == f"features/target/{layer}/vis.png":
            entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="one square RGB tile per neuron"):
        PairBundle.open(root).feature_vis("target", layer)
