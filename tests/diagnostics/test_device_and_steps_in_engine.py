"""Devices and adaptive steps through the engine (issue 12, points 3 and 4): on a CPU machine, training
and a diagnosis on the resolved ``auto`` device are bit-identical to the device-less path they were
before; the engine uses each model's chosen n_steps and the bundle manifest records the choice; a
bundle without the record reads as "not in this bundle"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.models import seeded, tiny_net

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.writer import write_pair_bundle
from mlflow_transfer.config import TrainConfig
from mlflow_transfer.data.domain import tensor_domain
from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.errors import DiagnosticsError
from mlflow_transfer.runtime import resolve_device
from mlflow_transfer.training.loops import fit

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(resolve_device("auto").type != "cpu", reason="the CPU-machine equalities")]
CLASSES = ("a", "b", "c")
FAST = dict(folds=3, tsne_gradient="bh", weight_max_instances=4, patches=1, feature_vis_steps=0,
            stability_resamples=10)


def _train(device):
    g = torch.Generator().manual_seed(0)
    labels = np.arange(24) % 2
    data = tensor_domain("toy", ["x", "y"], torch.rand(24, 3, 8, 8, generator=g), labels).dataset
    model, metrics = tiny_net(seed=3, dropout=0.5), []
    fit(model, data, {"train": data}, TrainConfig(epochs=2, lr=0.01, batch_size=5), seed=1,
        on_epoch=lambda r: metrics.append(dict(r.metrics)), device=device)
    return model.state_dict(), metrics


def test_training_on_the_auto_device_of_a_cpu_machine_equals_the_device_less_path_bit_for_bit():
    (before, m_before), (after, m_after) = _train(None), _train(resolve_device("auto"))
    assert m_before == m_after
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def _instances(n=36):
    g = torch.Generator().manual_seed(0)
    idx = np.arange(n)
    return Instances(torch.rand(n, 3, 32, 32, generator=g), idx % 3, (idx >= n // 2).astype(np.int8),
                     (idx % 4 == 0).astype(np.int8), idx)


@pytest.fixture(scope="module")
def pair():
    return seeded("alexnet-32", 3, seed=0).eval(), seeded("alexnet-32", 3, seed=1).eval()


def test_a_fixed_n_steps_diagnosis_on_the_auto_device_equals_the_conductance_computed_as_before(pair):
    inst = _instances()
    device = resolve_device("auto")
    diag = diagnose_pair(pair[0].to(device), pair[1].to(device), inst, CLASSES, DiagnoseOptions(n_steps=3, **FAST))
    # the rows something reads: the target domain for both; for the target model also the domain
    # classifier's source rows (all of them here, fewer than svm_max_rows); NaN elsewhere
    computed = {"source": inst.domain == 1, "target": np.ones(len(inst.labels), dtype=bool)}
    for role, model in zip(("source", "target"), pair):
        rows = computed[role]
        direct = layer_conductance(model, inst.images[rows], torch.as_tensor(inst.labels[rows]), n_steps=3,
                                   batch_size=DiagnoseOptions.batch_size)
        for layer, values in direct.items():
            np.testing.assert_array_equal(diag.conductance[role][layer][rows], values)
            assert np.isnan(diag.conductance[role][layer][~rows]).all()
        choice = diag.conductance_steps[role]
        assert (choice.n_steps, choice.mode) == (3, "fixed")


def test_auto_steps_are_chosen_per_model_used_and_recorded_in_the_manifest(pair, tmp_path):
    inst = _instances()
    diag = diagnose_pair(*pair, inst, CLASSES, DiagnoseOptions(completeness_tolerance=0.9, **FAST))
    for role, model in zip(("source", "target"), pair):
        choice = diag.conductance_steps[role]
        assert choice.mode == "auto" and choice.met and choice.n_steps == 8  # 90 %: the first candidate
        assert choice.completeness_error <= 0.9 and choice.probe_size == 16
        rows = inst.domain == 1  # both models compute at least these
        direct = layer_conductance(model, inst.images[rows], torch.as_tensor(inst.labels[rows]), n_steps=8,
                                   batch_size=DiagnoseOptions.batch_size)
        np.testing.assert_array_equal(diag.conductance[role]["conv3"][rows], direct["conv3"])
    write_pair_bundle(tmp_path / "b", diag)
    record = PairBundle.open(tmp_path / "b").conductance_steps()
    assert set(record) == {"source", "target"}
    assert record["target"]["n_steps"] == 8 and record["target"]["tolerance"] == 0.9
    assert record["target"]["completeness_error"] == pytest.approx(diag.conductance_steps["target"].completeness_error)
    assert list(record["target"]["candidates"]) == ["8"] and record["target"]["layers"][0] == "conv1"
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["options"]["n_steps"] == "auto"


def test_a_bundle_without_the_record_reads_none(tiny_bundle, tmp_path):
    import shutil

    old = shutil.copytree(tiny_bundle, tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest["conductance_steps"]["target"]["mode"] == "fixed"  # the tiny bundle fixes n_steps 2
    del manifest["conductance_steps"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert PairBundle.open(old).conductance_steps() is None


@pytest.mark.parametrize("bad", [dict(n_steps=0), dict(n_steps="many"), dict(completeness_tolerance=0.0),
                                 dict(completeness_tolerance=float("nan"))])
def test_bad_step_options_fail_before_any_stage(pair, bad):
    with pytest.raises(DiagnosticsError, match="Expected"):
        diagnose_pair(*pair, _instances(6), CLASSES, DiagnoseOptions(**{**FAST, **bad}))
