"""LogME and LEEP (issue 15): hand-worked LEEP values, LogME against a slow literal evidence
maximisation (tests/helpers/transferability.py) and scipy's Gaussian density, planted rankings,
known invariances, bad input, and `estimate_transferability` on a real model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from torch import nn
from torch.utils.data import TensorDataset

from helpers.models import foreign, seeded, tiny_net, transfer_net
from helpers.transferability import log_evidence, maximised_evidence, slow_logme
from mlflow_transfer.diagnostics.instances import model_outputs
from mlflow_transfer.diagnostics.transferability import estimate_transferability, leep, logme
from mlflow_transfer.errors import DiagnosticsError


def _planted_features(n=300, classes=5, seed=0):
    """Three feature sets for the same labels: the labels themselves (one-hot + small noise), weakly
    informative ones (a faint one-hot under strong noise, plus noise dimensions) and random ones."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    onehot = np.eye(classes)[labels]
    return labels, {
        "labels": onehot + 0.05 * rng.standard_normal((n, classes)),
        "weak": np.hstack([0.5 * onehot + rng.standard_normal((n, classes)), rng.standard_normal((n, 11))]),
        "random": rng.standard_normal((n, 16)),
    }


def _planted_probabilities(n=300, classes=5, source_classes=8, seed=0):
    """Three source softmaxes for the same labels: one whose argmax source class is a function of the
    label (a label-determined one), a weakly informative one and a random one (Dirichlet rows)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    mapping = rng.permutation(source_classes)[:classes]  # target class c -> source class mapping[c]

    def softmax(logits):
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    decided = np.zeros((n, source_classes))
    decided[np.arange(n), mapping[labels]] = 8.0
    weak = np.zeros((n, source_classes))
    weak[np.arange(n), mapping[labels]] = 1.0
    return labels, {
        "labels": softmax(decided + 0.1 * rng.standard_normal((n, source_classes))),
        "weak": softmax(weak + rng.standard_normal((n, source_classes))),
        "random": rng.dirichlet(np.ones(source_classes), n),
    }


# --------------------------------------------------------------------------- LEEP, hand-worked


def test_leep_hand_worked_symmetric_case():
    # Four instances, two target classes, two source classes:
    #   i  y  θ(x)
    #   0  0  (1.0, 0.0)
    #   1  0  (0.5, 0.5)
    #   2  1  (0.0, 1.0)
    #   3  1  (0.5, 0.5)
    # P̂(y=0, z) = ((1 + 0.5)/4, 0.5/4) = (0.375, 0.125); P̂(y=1, z) = (0.125, 0.375); P̂(z) = (0.5, 0.5)
    # P̂(y=0 | z) = (0.75, 0.25); P̂(y=1 | z) = (0.25, 0.75)
    # EEP: i0 1·0.75 = 0.75; i1 0.5·0.75 + 0.5·0.25 = 0.5; i2 0.75; i3 0.5
    # LEEP = (2 log 0.75 + 2 log 0.5)/4 = log(0.375)/2 = −0.490415...
    theta = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]
    assert leep(theta, [0, 0, 1, 1]) == pytest.approx(math.log(0.375) / 2, abs=1e-12)
    assert leep(theta, [0, 0, 1, 1]) == pytest.approx(-0.4904146265058631, abs=1e-12)


def test_leep_hand_worked_asymmetric_case():
    # Three instances, two target classes, three source classes:
    #   i  y  θ(x)
    #   0  0  (0.6, 0.4, 0.0)
    #   1  1  (0.2, 0.2, 0.6)
    #   2  1  (0.0, 0.5, 0.5)
    # N P̂(y=0, z) = (0.6, 0.4, 0.0); N P̂(y=1, z) = (0.2, 0.7, 1.1); N P̂(z) = (0.8, 1.1, 1.1)
    # P̂(y=0 | z) = (3/4, 4/11, 0); P̂(y=1 | z) = (1/4, 7/11, 1)
    # EEP: i0 0.6·3/4 + 0.4·4/11 = 0.45 + 1.6/11 = 6.55/11
    #      i1 0.2·1/4 + 0.2·7/11 + 0.6·1 = 0.05 + 1.4/11 + 0.6 = 8.55/11
    #      i2 0.5·7/11 + 0.5·1 = 9/11
    # LEEP = (log(6.55/11) + log(8.55/11) + log(9/11))/3
    theta = [[0.6, 0.4, 0.0], [0.2, 0.2, 0.6], [0.0, 0.5, 0.5]]
    expected = (math.log(6.55 / 11) + math.log(8.55 / 11) + math.log(9 / 11)) / 3
    assert leep(theta, [0, 1, 1]) == pytest.approx(expected, abs=1e-12)


def test_leep_is_zero_when_the_source_class_decides_the_label():
    # One-hot θ whose source class is a function of y (two source classes both meaning target 1):
    # P̂(y | z) is 1 for the right y, so every EEP is 1.
    labels = np.array([0, 1, 1, 2, 0, 1])
    source = np.array([3, 0, 2, 1, 3, 2])  # target 0 -> 3, 1 -> {0, 2}, 2 -> 1
    assert leep(np.eye(4)[source], labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_of_uninformative_source_is_log_of_label_shares():
    # Every θ the same: P̂(y | z) = the share of class y, so LEEP = Σ_y share_y log share_y (−entropy).
    labels = np.array([0, 0, 0, 1, 2, 2])
    theta = np.tile([0.2, 0.3, 0.5], (6, 1))
    shares = np.bincount(labels) / 6
    assert leep(theta, labels) == pytest.approx(float((shares * np.log(shares)).sum()), abs=1e-12)


# --------------------------------------------------------------------------- LEEP, invariances


def test_leep_unchanged_by_permuting_source_classes_instances_or_target_labels():
    labels, sets = _planted_probabilities(n=120)
    theta = sets["weak"]
    base = leep(theta, labels)
    rng = np.random.default_rng(1)
    assert leep(theta[:, rng.permutation(theta.shape[1])], labels) == pytest.approx(base, abs=1e-12)
    order = rng.permutation(len(labels))
    assert leep(theta[order], labels[order]) == pytest.approx(base, abs=1e-12)
    relabel = rng.permutation(5)
    assert leep(theta, relabel[labels]) == pytest.approx(base, abs=1e-12)


def test_leep_planted_ranking():
    labels, sets = _planted_probabilities()
    scores = {name: leep(theta, labels) for name, theta in sets.items()}
    assert scores["labels"] > scores["weak"] > scores["random"], scores
    assert scores["labels"] > -0.05  # nearly the maximum, 0
    assert max(scores.values()) <= 0.0


# --------------------------------------------------------------------------- LogME


def test_evidence_formula_is_the_gaussian_marginal_likelihood():
    # The helper's evidence is log N(y; 0, I/β + FFᵀ/α): w integrated out of y = Fw + ε.
    rng = np.random.default_rng(0)
    f, y = rng.standard_normal((30, 4)), rng.standard_normal(30)
    for alpha, beta in [(1.0, 1.0), (0.3, 4.0), (7.0, 0.2)]:
        cov = np.eye(30) / beta + f @ f.T / alpha
        assert log_evidence(f, y, alpha, beta) == pytest.approx(
            multivariate_normal(np.zeros(30), cov).logpdf(y), abs=1e-9)


@pytest.mark.parametrize("n, d, rank", [(200, 12, 12), (40, 90, 40), (80, 20, 6), (30, 60, 10), (50, 1, 1)],
                         ids=["tall", "wide", "rank-deficient", "wide-rank-deficient", "one-feature"])
def test_logme_matches_the_slow_literal_maximisation(n, d, rank):
    rng = np.random.default_rng(n + d)
    labels = rng.permutation(np.arange(n) % 4)
    # Some signal in a rank-`rank` feature space (labels never exactly in its span: no perfect fit).
    f = (rng.standard_normal((n, rank)) + 0.8 * np.eye(4)[labels] @ rng.standard_normal((4, rank))) \
        @ rng.standard_normal((rank, d))
    assert np.linalg.matrix_rank(f) == rank
    assert logme(f, labels) == pytest.approx(slow_logme(f, labels), abs=1e-6)


def test_logme_fixed_point_has_converged_to_a_maximum():
    # At the α, β the fixed point stops at, the evidence is (within the 1 % stop) a maximum: moving
    # either by 20 % lowers it.
    labels, sets = _planted_features(n=150)
    f, y = sets["weak"], (labels == 2).astype(np.float64)
    best, alpha, beta = maximised_evidence(f, y, max_iterations=200, tolerance=1e-10)
    for a, b in [(alpha * 1.2, beta), (alpha / 1.2, beta), (alpha, beta * 1.2), (alpha, beta / 1.2)]:
        assert log_evidence(f, y, a, b) / len(f) < best
    assert maximised_evidence(f, y)[0] == pytest.approx(best, abs=1e-3)


def test_logme_planted_ranking():
    labels, sets = _planted_features()
    scores = {name: logme(f, labels) for name, f in sets.items()}
    assert scores["labels"] > scores["weak"] > scores["random"], scores


def test_logme_unchanged_by_rotating_features_or_permuting_instances():
    # The evidence depends on F only through FFᵀ: an orthogonal map of the feature space keeps it.
    labels, sets = _planted_features(n=100)
    f = sets["weak"]
    base = logme(f, labels)
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((f.shape[1], f.shape[1])))
    assert logme(f @ q, labels) == pytest.approx(base, abs=1e-9)
    order = rng.permutation(len(labels))
    assert logme(f[order], labels[order]) == pytest.approx(base, abs=1e-9)


def test_logme_leaves_absent_classes_out_of_the_mean():
    labels, sets = _planted_features(n=100, classes=3)
    f = sets["weak"]
    assert logme(f, labels, n_classes=6) == pytest.approx(logme(f, labels), abs=1e-12)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [logme, leep], ids=["logme", "leep"])
def test_one_class_only_is_one_clear_error(fn):
    x = np.full((6, 3), 1 / 3)
    with pytest.raises(DiagnosticsError, match=r"^Expected target labels of at least two classes .+; got 1 "
                                               r"class\(es\) in 6 instance\(s\)\. Pass target data"):
        fn(x, np.zeros(6, int))


@pytest.mark.parametrize("fn", [logme, leep], ids=["logme", "leep"])
def test_nan_is_one_clear_error(fn):
    x = np.full((6, 3), 1 / 3)
    x[2, 1] = np.nan
    with pytest.raises(DiagnosticsError, match=r"^Expected the (features|source probabilities) as a 2-D array "
                                               r".+ of finite values; got 1 NaN or infinite value\(s\)\. Check"):
        fn(x, [0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("fn", [logme, leep], ids=["logme", "leep"])
@pytest.mark.parametrize("x, labels, pattern", [
    (np.full((6,), 0.5), [0, 1, 0, 1, 0, 1], r"as a 2-D array .+; got shape \(6,\)"),
    (np.full((6, 2), 0.5), [0, 1, 0, 1, 0], r"with 6 entries \(one per instance\); got 5"),
    (np.full((6, 2), 0.5), [[0, 1, 0, 1, 0, 1]], r"target labels as a 1-D array .+; got shape \(1, 6\)"),
    (np.full((6, 2), 0.5), [0.5, 1, 0, 1, 0, 1], r"of integers; got dtype float64"),
    (np.full((6, 2), 0.5), [0, 1, 0, -1, 0, 1], r"class indices >= 0; got -1"),
], ids=["features-1d", "labels-short", "labels-2d", "labels-float", "labels-negative"])
def test_bad_shapes_are_one_clear_error(fn, x, labels, pattern):
    with pytest.raises(DiagnosticsError, match="^Expected .*" + pattern):
        fn(x, labels)


def test_labels_beyond_n_classes_are_refused():
    with pytest.raises(DiagnosticsError, match=r"^Expected the target labels as class indices in \[0, 2\); "
                                               r"got values in \[0, 3\]"):
        leep(np.full((4, 2), 0.5), [0, 1, 3, 0], n_classes=2)


@pytest.mark.parametrize("theta, pattern", [
    ([[2.0, -1.0], [0.5, 0.5]], r"got a negative value in row 0 \(-1\)\. Pass softmax outputs, not logits"),
    ([[0.7, 0.7], [0.5, 0.5]], r"got row 0 summing to 1\.4 \(1 row\(s\) off by more than 0\.001\)"),
], ids=["negative", "not-summing-to-one"])
def test_leep_refuses_scores_that_are_not_probabilities(theta, pattern):
    with pytest.raises(DiagnosticsError, match=r"^Expected the source probabilities as probabilities .*" + pattern):
        leep(theta, [0, 1])


def test_logme_refuses_all_zero_features():
    with pytest.raises(DiagnosticsError, match=r"^Expected features with at least one non-zero value; got all "
                                               r"zeros\. .+check the model\.$"):
        logme(np.zeros((6, 4)), [0, 1, 0, 1, 0, 1])


# --------------------------------------------------------------------------- on a model


def _dataset(n=90, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    return TensorDataset(torch.rand(n, 3, 12, 12, generator=g), labels)


def test_estimate_transferability_is_logme_and_leep_of_the_model_outputs():
    model = tiny_net(num_classes=4, channels=6, hidden=10)
    data = _dataset()
    images, labels = data.tensors
    out = model_outputs(model, images)
    result = estimate_transferability(model, data, batch_size=32)
    assert set(result) == {"logme", "leep", "n", "seconds"}
    assert result["n"] == 90 and result["seconds"] > 0
    # Batching (32 rows) and the float32 softmax change nothing beyond rounding.
    assert result["logme"] == pytest.approx(logme(out.embedding.astype(np.float64), labels.numpy()), abs=1e-6)
    assert result["leep"] == pytest.approx(leep(out.probabilities.astype(np.float64), labels.numpy()), abs=1e-6)
    assert model.training  # mode restored


def test_estimate_transferability_max_rows_is_a_seeded_subset():
    model = seeded("alexnet-32", 10)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.rand(60, 3, 32, 32, generator=g), torch.arange(60) % 10)
    a = estimate_transferability(model, data, max_rows=40, seed=5)
    b = estimate_transferability(model, data, max_rows=40, seed=5)
    c = estimate_transferability(model, data, max_rows=40, seed=6)
    assert a["n"] == 40 and (a["logme"], a["leep"]) == (b["logme"], b["leep"])
    assert (a["logme"], a["leep"]) != (c["logme"], c["leep"])
    assert estimate_transferability(model, data, max_rows=1000)["n"] == 60


def _row_reader(channel: int, classes: int, size: int) -> nn.Linear:
    """A Linear over flattened (3, size, size) images giving the mean of each of the first ``classes``
    rows of ``channel``."""
    reader = nn.Linear(3 * size * size, classes, bias=False)
    with torch.no_grad():
        reader.weight.zero_()
        for c in range(classes):
            start = (channel * size + c) * size
            reader.weight[c, start:start + size] = 1.0 / size
    return reader


def test_a_source_model_whose_features_are_the_labels_scores_highest():
    # Planted: image i of class c has row c of channel 0 lit (plus noise everywhere). The "labels"
    # model reads those rows (embedding ≈ one-hot of the label, head a sharp identity); the "blind"
    # model reads the same rows of channel 1 (noise only); "random" is a seeded untrained tiny_net.
    classes, size, n = 5, 8, 200
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    images = 0.1 * torch.rand(n, 3, size, size, generator=g)
    images[torch.arange(n), 0, labels, :] += 0.8
    data = TensorDataset(images, labels)

    def reader_net(channel):
        reader, head = _row_reader(channel, classes, size), nn.Linear(classes, classes)
        with torch.no_grad():
            head.weight.copy_(20 * torch.eye(classes))
            head.bias.fill_(-10.0)
        return transfer_net([("flatten", nn.Flatten()), ("reader", reader)], [("head", head)],
                            [("reader", reader), ("head", head)])

    models = {"labels": reader_net(0), "blind": reader_net(1), "random": tiny_net(num_classes=classes)}
    scores = {name: estimate_transferability(model, data) for name, model in models.items()}
    for key in ("logme", "leep"):
        ranked = sorted(scores, key=lambda name: scores[name][key], reverse=True)
        assert ranked[0] == "labels", (key, {name: scores[name][key] for name in scores})
    assert scores["labels"]["leep"] > -0.05  # the source class decides the label: near LEEP's maximum 0


def test_estimate_transferability_takes_an_adapted_foreign_classifier():
    # An AdaptedNet gives embedding and logits from one pass (embed_and_logits): the same numbers as
    # LogME of its embedding and LEEP of its softmax computed here from the wrapped net's own pieces.
    from mlflow_transfer.models.adapter import adapt_classifier

    net = foreign("cnn", num_classes=5)
    data = _dataset(n=40, classes=4)
    images, labels = data.tensors
    adapted = adapt_classifier(net, images[:2])
    emb, logits = adapted.embed_and_logits(images)
    result = estimate_transferability(adapted, data, batch_size=16)
    assert result["logme"] == pytest.approx(logme(emb.detach().numpy(), labels.numpy()), abs=1e-6)
    assert result["leep"] == pytest.approx(
        leep(torch.softmax(logits, 1).detach().double().numpy(), labels.numpy()), abs=1e-6)
    np.testing.assert_allclose(torch.softmax(logits, 1).detach().numpy(),
                               torch.softmax(net(images), 1).detach().numpy(), atol=1e-6)


def test_estimate_transferability_refuses_a_non_model_and_tiny_data():
    with pytest.raises(DiagnosticsError, match=r"^Expected model as a torch.nn.Module; got str"):
        estimate_transferability("alexnet", _dataset())
    with pytest.raises(DiagnosticsError, match=r"^Expected the target data as a map-style torch Dataset of "
                                               r"\(image, label\) items; got generator\."):
        estimate_transferability(tiny_net(), (item for item in _dataset()))
    with pytest.raises(DiagnosticsError, match=r"^Expected a target dataset of at least two items; got 1"):
        estimate_transferability(tiny_net(), _dataset(n=1))
