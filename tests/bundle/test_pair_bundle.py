"""A whole pair diagnosis on tiny models: engine results are consistent and round-trip the bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import seeded

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.writer import write_pair_bundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.diagnostics.similarity import NO_MATCH, best_source_neurons
from mlflow_transfer.errors import BundleError, DiagnosticsError
from mlflow_transfer.models import build_model

CLASSES = ("a", "b", "c")


def _instances(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = np.arange(n)
    return Instances(torch.rand(n, 3, 32, 32, generator=g), idx % 3, (idx >= n // 2).astype(np.int8),
                     (idx % 4 == 0).astype(np.int8), idx)


@pytest.fixture(scope="module")
def identical_models():
    model = seeded("alexnet-32", 3).eval()
    twin = build_model("alexnet-32", 3).eval()
    twin.load_state_dict(model.state_dict())
    return model, twin


@pytest.fixture(scope="module")
def identical(identical_models):
    opts = DiagnoseOptions(n_steps=4, folds=3, tsne_gradient="bh", weight_max_instances=8, feature_vis_steps=2)
    return diagnose_pair(*identical_models, _instances(), CLASSES, opts)


def test_identical_models_inherit_every_weight_whose_ends_have_a_counterpart(identical):
    d = identical
    rows = d.instances.domain == 1  # where both models have conductance
    for layer in d.layers:
        np.testing.assert_allclose(d.conductance["source"][layer][rows], d.conductance["target"][layer][rows])
        for cls in CLASSES:
            np.testing.assert_array_equal(d.important["source"][cls][layer], d.important["target"][cls][layer])
    table = d.layer_summary_table()
    assert np.isnan(table["inherited_weight_share"][-1])  # the last layer has no outgoing weights
    # Every neuron with a counterpart is matched to itself, and an important weight is inherited exactly
    # when both its ends have one: a silent neuron, or one whose attribution vector several neurons
    # share (an untrained net's neurons that conduct on one and the same instance), has none.
    share = {}
    for cls, pairs in d.correspondence.items():
        match = {n: best_source_neurons(d.similarity[cls][n], silent_source=d.silent["source"][cls][n],
                                        silent_target=d.silent["target"][cls][n]) for n in d.layers}
        for n in d.layers:
            ok = match[n] != NO_MATCH
            np.testing.assert_array_equal(match[n][ok], np.flatnonzero(ok))
            np.testing.assert_array_equal(d.silent["source"][cls][n], d.silent["target"][cls][n])
        for (n, nxt), flags in pairs.items():
            w = d.weights["target"][cls][(n, nxt)].pairs
            np.testing.assert_array_equal(flags, (match[n][w[:, 0]] != NO_MATCH) & (match[nxt][w[:, 1]] != NO_MATCH))
            share.setdefault(n, []).append(flags.mean())
    assert share["conv1"] == [1.0] * len(CLASSES)  # no silent or tied neuron this early: the whole share
    np.testing.assert_allclose(np.diag(d.cka), 1.0, atol=1e-6)
    np.testing.assert_array_equal(d.outputs["source"].prediction, d.outputs["target"].prediction)
    # the confusion table covers the target validation rows
    val = (d.instances.domain == 1) & (d.instances.split == 1)
    assert d.confusion.matrix_target.sum() == val.sum()


def test_bundle_round_trip(identical, identical_models, tmp_path):
    d = identical
    history = {("source", "target_val"): ([0, 1, 2], [0.1, 0.4, 0.5]), ("target", "target_val"): ([0, 1], [0.5, 0.9])}
    manifest = write_pair_bundle(tmp_path / "b", d, history=history, meta={"runs": {"source": "s", "target": "t"}})
    b = PairBundle.open(tmp_path / "b")
    assert b.classes == list(CLASSES) and b.layers == list(d.layers) and manifest["runs"]["target"] == "t"
    hist = b.history()
    assert list(hist["epoch"]) == [0, 1, 2, 0, 1] and list(hist["model"]) == ["source"] * 3 + ["target"] * 2
    inst = b.instances()
    np.testing.assert_array_equal(inst["label"], d.instances.labels)
    np.testing.assert_allclose(np.stack([inst["x"], inst["y"]], 1), d.projection)
    assert inst["thumbnail"][0] == d.thumbnails[0]
    np.testing.assert_array_equal(b.embedding("target"), d.outputs["target"].embedding)
    for layer in d.layers:
        np.testing.assert_array_equal(b.conductance("source", layer), d.conductance["source"][layer])
        np.testing.assert_array_equal(b.similarity("b", layer), d.similarity["b"][layer].astype(np.float32))
    imp = b.important_neurons()
    sel = [(m == "target" and c == 1 and l == "conv2") for m, c, l in zip(imp["model"], imp["class_index"], imp["layer"])]
    np.testing.assert_array_equal(np.asarray(imp["neuron"])[sel], d.important["target"]["b"]["conv2"])
    w = b.weights()
    tw = d.weights["target"]["a"][("conv1", "conv2")]
    sel = [(m == "target" and c == 0 and l == "conv1") for m, c, l in zip(w["model"], w["class_index"], w["layer"])]
    np.testing.assert_array_equal(np.stack([np.asarray(w["a"])[sel], np.asarray(w["b"])[sel]], 1), tw.pairs)
    assert all(np.asarray(w["inherited"], dtype=object)[sel])
    matrices = b.weight_matrices("target", "a", "conv1")
    np.testing.assert_array_equal(matrices["counts"], tw.count_matrix)
    np.testing.assert_array_equal(matrices["levels"], tw.mean_level)
    assert b.weight_matrices("target", "a", d.layers[-1]) is None  # the last layer has no next layer
    # the parameters behind each link, per model, as the modules hold them (float16 in the bundle)
    layers = d.layers
    for prev, nxt, shape in ((layers[0], layers[1], (96, 48, 3, 3)), ("conv5", "fc6", (256, 96, 4, 4)),
                             ("fc6", "fc7", (128, 256))):
        for m, model in (("source", identical_models[0]), ("target", identical_models[1])):
            found = b.weight_kernels(m, prev)
            weight = model.analysis_layers[nxt].weight.detach().numpy().reshape(shape[0], -1)
            assert found["kernels"].dtype == np.float16 and found["kernels"].shape == shape
            np.testing.assert_array_equal(found["rows"], np.arange(shape[0]))
            np.testing.assert_allclose(found["kernels"].reshape(shape[0], -1), weight, rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(found["values"], weight.reshape(shape[0], shape[1], -1).sum(-1),
                                       rtol=1e-2, atol=1e-3)
            a, bb = 5, 7
            np.testing.assert_array_equal(b.link_kernel(m, prev, a, bb),
                                          found["kernels"][bb] if len(shape) == 2 else found["kernels"][bb, a])
    assert b.weight_kernels("target", d.layers[-1]) is None and b.link_kernel("target", "conv1", 999, 0) is None
    # A, the matrix the domain classifier was trained on
    np.testing.assert_allclose(b.discriminability("a")["scaled"], d.discriminability["a"].scaled, atol=1e-6)
    comp = b.layer_comparison()
    assert len(comp["layer"]) == (len(CLASSES) + 1) * len(d.layers)
    disc = b.discriminability("__all__")
    np.testing.assert_allclose(disc["coef"], d.discriminability["__all__"].coef)
    assert disc["cv_mean"] == pytest.approx(d.discriminability["__all__"].cv_mean)
    feats = b.patches("target", "conv3")
    assert feats["sprite"].shape == (len(feats["neurons"]) * 2 * 24, 9 * 24, 3)
    np.testing.assert_allclose(b.cka(), d.cka)
    np.testing.assert_array_equal(b.confusion_matrix("target"), d.confusion.matrix_target)
    with pytest.raises(BundleError, match="not in this bundle"):
        b.similarity("zzz", "conv1")


def test_incompatible_pair_and_unknown_layer():
    a, b = build_model("alexnet-32", 3), build_model("alexnet-32", 4)
    with pytest.raises(DiagnosticsError, match="incompatible architectures"):
        diagnose_pair(a, b, _instances(12), CLASSES)
    with pytest.raises(DiagnosticsError, match="unknown layer"):
        diagnose_pair(a, build_model("alexnet-32", 3), _instances(12), CLASSES, DiagnoseOptions(layers=("conv9",)))
    with pytest.raises(DiagnosticsError, match="unknown class"):
        diagnose_pair(a, build_model("alexnet-32", 3), _instances(12), CLASSES, DiagnoseOptions(classes=("q",)))


def test_patches_cover_the_most_similar_neurons_of_every_important_neuron(tiny_bundle):
    """The detail panel shows a clicked neuron's 5 most similar neurons of the other model with their
    patches: the bundle must hold patches for them (two different random models, not a planted case)."""
    import pandas as pd

    b = PairBundle.open(tiny_bundle)
    imp = pd.DataFrame(b.important_neurons())
    checked = 0
    for c, cls in enumerate(b.classes):
        if not ((imp["class_index"] == c) & (imp["model"] == "target")).any():
            continue  # no target instances: no similarity for this class
        for layer in b.layers:
            sim = b.similarity(cls, layer)  # (source units, target units)
            stored = {m: set(b.patches(m, layer)["neurons"].tolist()) for m in ("source", "target")}
            for model, other, matrix in (("target", "source", sim), ("source", "target", sim.T)):
                rows = imp[(imp["class_index"] == c) & (imp["model"] == model) & (imp["layer"] == layer)]
                for j in rows["neuron"]:
                    top5 = np.argsort(-matrix[:, j], kind="stable")[:5]
                    assert set(top5.tolist()) <= stored[other], (cls, layer, model, j)
                    checked += 1
    assert checked > 20


def test_stability_and_silent_neurons_round_trip(identical, tmp_path):
    d = identical
    write_pair_bundle(tmp_path / "b", d)
    b = PairBundle.open(tmp_path / "b")
    for model in ("source", "target"):
        for cls in ("a", "b"):
            read = b.stability(cls, model)
            assert list(read) == list(d.layers)
            for layer, r in read.items():
                s = d.stability[model][cls][layer]
                assert r == {"stability": s.stability, "k": s.k, "n_instances": s.n_instances,
                             "n_resamples": s.n_resamples, "reason": ""}
                assert r["n_instances"] == 8 and r["n_resamples"] == 20 and 0.0 <= r["stability"] <= 1.0
            silent = b.silent_neurons(cls, model)
            assert silent == {layer: (int(d.silent[model][cls][layer].sum()), d.silent[model][cls][layer].size)
                              for layer in d.layers}
    # identical models: the same stability and silent neurons
    assert b.stability("a", "source") == b.stability("a", "target")
    assert b.silent_neurons("b", "source") == b.silent_neurons("b", "target")
    # a class without target instances in the bundle would read as empty; unknown classes are refused
    with pytest.raises(BundleError, match="not in this bundle"):
        b.stability("zzz")


def test_a_class_with_too_few_instances_has_stability_not_computed_with_the_reason(tmp_path):
    model = seeded("alexnet-32", 3).eval()
    inst = _instances(48)
    keep = ~((inst.domain == 1) & (inst.labels == 2)) | (inst.index < 36)  # class c keeps 4 target rows
    rows = np.flatnonzero(keep)
    few = Instances(inst.images[rows], inst.labels[rows], inst.domain[rows], inst.split[rows], inst.index[rows])
    assert ((few.domain == 1) & (few.labels == 2)).sum() == 4
    d = diagnose_pair(model, seeded("alexnet-32", 3, seed=1).eval(), few, CLASSES,
                      DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=1))
    write_pair_bundle(tmp_path / "b", d)
    b = PairBundle.open(tmp_path / "b")
    reason = "only 4 analysed instance(s); the bootstrap needs at least 5 (raise the analysis cap)"
    for layer, r in b.stability("c").items():
        assert np.isnan(r["stability"]) and r["reason"] == reason and r["n_resamples"] == 0
    assert all(r["reason"] == "" for r in b.stability("a").values())
    assert f"class 'c': stability of the important neurons not computed: {reason}" in d.notes


def test_a_bundle_without_the_records_reads_as_not_in_this_bundle(identical, tmp_path):
    from helpers.bundles import without_records

    write_pair_bundle(tmp_path / "b", identical)
    b = PairBundle.open(without_records(tmp_path / "b", "neurons/stability", "neurons/silent"))
    assert b.stability("a") is None and b.silent_neurons("a", "source") is None
