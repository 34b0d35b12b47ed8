"""§5.1's statistics on whole validation sets: both models' predictions streamed batch by batch
(`predict_validation`), and `diagnose_pair(validation=...)` whose confusion tables rest on them, checked
against scikit-learn's confusion matrix over every instance, and written to / read from a bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import tiny_net
from sklearn.metrics import confusion_matrix
from torch.utils.data import TensorDataset

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.writer import write_pair_bundle
from mlflow_transfer.diagnostics.engine import (
    SAMPLE,
    WHOLE,
    DiagnoseOptions,
    Instances,
    diagnose_pair,
)
from mlflow_transfer.diagnostics.predictions import ValidationSets, predict_validation
from mlflow_transfer.errors import DiagnosticsError

pytestmark = pytest.mark.usefixtures("one_thread")

C = 3


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % C


def _models():
    return {"source": tiny_net(C, seed=1), "target": tiny_net(C, seed=2)}


def _expected(models, x):
    with torch.no_grad():
        return {r: m.eval()(x).argmax(1).numpy() for r, m in models.items()}


def test_predictions_of_a_dataset_and_of_streamed_batches_are_the_models_own():
    models = _models()
    models["target"].train()  # the mode is restored afterwards; dropout off while predicting
    x, y = _data(23, 0)
    expected = _expected(models, x)
    models["target"].train()
    got = predict_validation(models, TensorDataset(x, y), C, batch_size=5)
    np.testing.assert_array_equal(got.labels, y.numpy())
    for role in models:
        np.testing.assert_array_equal(got.predictions[role], expected[role])
    assert models["target"].training and not models["source"].training

    pulled = []

    def batches():  # a generator: the set is never held whole, only read batch by batch
        for start in range(0, 23, 4):
            pulled.append(start)
            yield x[start:start + 4], y[start:start + 4].numpy()

    streamed = predict_validation(models, batches(), C)
    assert pulled == list(range(0, 23, 4))
    np.testing.assert_array_equal(streamed.labels, y.numpy())
    np.testing.assert_array_equal(streamed.predictions["source"], expected["source"])


@pytest.mark.parametrize("data, match", [
    (42, r"Expected the target validation set as a torch Dataset .* or an iterable of \(images, labels\) batches; got int"),
    ([torch.rand(2, 3, 8, 8)], r"as images \(B, C, H, W\) and B labels; got images \(3, 8, 8\)"),
    ([(torch.rand(2, 3, 8, 8), torch.tensor([0]))], r"got images \(2, 3, 8, 8\) and 1 labels"),
    ([(torch.rand(2, 3, 8, 8), torch.tensor([0, 3]))], r"labels as class indices in \[0, 3\); got int64 values in batch 0"),
    ([(torch.rand(1, 3, 8, 8), torch.tensor([0.5]))], r"labels as class indices"),
    ([5], r"Expected each batch of the target validation set as \(images, labels\); got int in batch 0"),
    ([], r"Expected a non-empty target validation set; got no instances"),
])
def test_bad_validation_sets_are_refused_with_one_message(data, match):
    with pytest.raises(DiagnosticsError, match=match):
        predict_validation(_models(), data, C)


@pytest.fixture(scope="module")
def diagnosed():
    """One pair diagnosed twice over a capped sample (8 target rows, 8 source rows; 2 validation rows per
    domain): with both domains' whole validation sets (30 and 21 instances) and without them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _diagnosed()
    finally:
        torch.set_num_threads(threads)


def _diagnosed():
    models = _models()
    xs, ys = _data(16, 3)
    domain = (np.arange(16) >= 8).astype(np.int8)
    split = (np.arange(16) % 4 == 0).astype(np.int8)
    inst = Instances(xs, ys.numpy(), domain, split, np.arange(16))
    val = {"target": _data(30, 4), "source": _data(21, 5)}
    opts = DiagnoseOptions(n_steps=2, folds=2, tsne_gradient="bh", weight_max_instances=2, patches=1, patch_size=4)
    whole = diagnose_pair(models["source"], models["target"], inst, ("a", "b", "c"), opts,
                          validation=ValidationSets(target=TensorDataset(*val["target"]),
                                                    source=list(zip(val["source"][0].split(7), val["source"][1].split(7)))))
    sample = diagnose_pair(models["source"], models["target"], inst, ("a", "b", "c"), opts)
    return models, inst, val, whole, sample


def test_confusion_tables_rest_on_the_whole_validation_sets(diagnosed):
    models, _, val, whole, _ = diagnosed
    assert whole.statistics_basis == WHOLE
    for domain, table in (("target", whole.confusion), ("source", whole.confusion_source_domain)):
        x, y = val[domain]
        expected = _expected(models, x)
        labels = list(range(C))
        np.testing.assert_array_equal(table.matrix_source, confusion_matrix(y, expected["source"], labels=labels))
        np.testing.assert_array_equal(table.matrix_target, confusion_matrix(y, expected["target"], labels=labels))
        assert table.support.sum() == len(y)  # every instance, not the 2 analysed validation rows
        # per-class accuracies weighted by support give the model's accuracy on the whole set
        for role, acc in (("source", table.source_accuracy), ("target", table.target_accuracy)):
            assert float(np.sum(acc * table.support) / table.support.sum()) == \
                pytest.approx(float(np.mean(expected[role] == y.numpy())), abs=1e-12)


def test_without_validation_sets_the_tables_rest_on_the_analysed_sample_and_say_so(diagnosed):
    models, inst, _, _, sample = diagnosed
    assert sample.statistics_basis == SAMPLE
    for code, table in ((1, sample.confusion), (0, sample.confusion_source_domain)):
        rows = (inst.domain == code) & (inst.split == 1)
        expected = _expected(models, inst.images[torch.as_tensor(rows)])
        np.testing.assert_array_equal(table.matrix_target,
                                      confusion_matrix(inst.labels[rows], expected["target"], labels=range(C)))


def test_the_bundle_holds_both_domains_tables_and_what_they_rest_on(diagnosed, tmp_path):
    _, _, val, whole, sample = diagnosed
    b = PairBundle.open(write_pair_bundle(tmp_path / "whole", whole, meta={"scores": {}}) and tmp_path / "whole")
    assert b.statistics_basis() == {"basis": "whole validation set", "validation_counts": {"target": 30, "source": 21}}
    src = b.domain_confusion("source")
    np.testing.assert_array_equal(src["support"], whole.confusion_source_domain.support)
    np.testing.assert_allclose(src["target_accuracy"], whole.confusion_source_domain.target_accuracy)
    np.testing.assert_array_equal(b.reader.read_array("statistics/source_domain/confusion_target"),
                                  whole.confusion_source_domain.matrix_target)
    np.testing.assert_array_equal(b.domain_confusion("target")["support"], whole.confusion.support)
    with pytest.raises(Exception, match="Expected domain 'source' or 'target'"):
        b.domain_confusion("other")
    s = PairBundle.open(write_pair_bundle(tmp_path / "sample", sample, meta={"scores": {}}) and tmp_path / "sample")
    assert s.statistics_basis() == {"basis": "analysed sample", "validation_counts": {"target": 2, "source": 2}}
    counts = s.analysed_counts()  # class × domain × split
    assert counts.shape == (C, 2, 2) and counts.sum() == 16 and counts[:, :, 1].sum() == 4
    # a pair without source validation rows (or a bundle from before the record) has no such table
    import dataclasses

    none = dataclasses.replace(sample, confusion_source_domain=None)
    old = PairBundle.open(write_pair_bundle(tmp_path / "old", none, meta={"scores": {}}) and tmp_path / "old")
    assert old.domain_confusion("source") is None and old.domain_confusion("target") is not None
    assert old.statistics_basis()["validation_counts"] == {"target": 2, "source": None}


def test_diagnose_pair_refuses_validation_sets_without_a_target_set():
    models = _models()
    x, y = _data(4, 0)
    inst = Instances(x, y.numpy(), np.array([0, 0, 1, 1], np.int8), np.array([0, 1, 0, 1], np.int8), np.arange(4))
    for bad, match in ((ValidationSets(target=None), "with the target validation set; got ValidationSets without a target set"),
                       ({"target": x}, "Expected validation as ValidationSets.*; got dict")):
        with pytest.raises(DiagnosticsError, match=match):
            diagnose_pair(models["source"], models["target"], inst, ("a", "b", "c"),
                          DiagnoseOptions(n_steps=2, folds=2, tsne_gradient="bh", patches=1, patch_size=4),
                          validation=bad)
