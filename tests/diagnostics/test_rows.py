"""Which rows a diagnosis reads: the domain classifiers' equal-size samples, and conductance only there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import tiny_net

from mlflow_transfer.diagnostics.conductance import layer_conductance
from mlflow_transfer.diagnostics.discriminability import domain_discriminability
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from mlflow_transfer.diagnostics.rows import svm_note, svm_rows

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("a", "b")


def _labels_domains():
    # class a: 40 source, 5 target; class b: 3 source, 12 target
    labels = np.array([0] * 40 + [1] * 3 + [0] * 5 + [1] * 12)
    domain = np.array([0] * 43 + [1] * 17, dtype=np.int8)
    return labels, domain


def test_each_classifier_gets_equal_rows_per_domain_from_its_own_class_and_domain():
    labels, domain = _labels_domains()
    plan = svm_rows(labels, domain, CLASSES, list(CLASSES), 2000, np.random.default_rng(0))
    sizes = {cls: (len(s), len(t)) for cls, (s, t) in plan.items()}
    assert sizes == {"a": (5, 5), "b": (3, 3), "__all__": (17, 17)}
    for cls, (s, t) in plan.items():
        assert (domain[s] == 0).all() and (domain[t] == 1).all()
        assert len(set(s)) == len(s) and list(s) == sorted(s)
        if cls != "__all__":
            assert (labels[np.concatenate([s, t])] == CLASSES.index(cls)).all()
    # the cap applies to both domains; the same seed draws the same rows
    capped = svm_rows(labels, domain, CLASSES, list(CLASSES), 4, np.random.default_rng(0))
    assert {cls: (len(s), len(t)) for cls, (s, t) in capped.items()} == {"a": (4, 4), "b": (3, 3), "__all__": (4, 4)}
    again = svm_rows(labels, domain, CLASSES, list(CLASSES), 4, np.random.default_rng(0))
    assert all(np.array_equal(capped[c][i], again[c][i]) for c in capped for i in (0, 1))
    note = svm_note(plan, labels, domain, CLASSES, 0)
    assert "'a': 5 of 40 source, 5 of 5 target" in note and "'b': 3 of 3 source, 3 of 12 target" in note
    assert "all classes: 17 of 43 source, 17 of 17 target" in note


def test_balanced_domains_need_no_note():
    labels, domain = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1], dtype=np.int8)
    plan = svm_rows(labels, domain, CLASSES, list(CLASSES), 2000, np.random.default_rng(0))
    assert svm_note(plan, labels, domain, CLASSES, 0) == ""


def test_indistinguishable_domains_of_unequal_size_score_chance_not_the_majority_share():
    # planted truth: the source domain is the target's images again, nine times over (plus tiny noise),
    # so no classifier can tell them apart; on all rows the majority class alone scores 0.9
    g = torch.Generator().manual_seed(0)
    target = torch.rand(20, 3, 8, 8, generator=g)
    source = target.repeat(9, 1, 1, 1) + 1e-3 * torch.rand(180, 3, 8, 8, generator=g)
    images = torch.cat([source, target])
    labels = np.arange(200) % 2
    domain = np.array([0] * 180 + [1] * 20, dtype=np.int8)
    inst = Instances(images, labels, domain, (np.arange(200) % 4 == 0).astype(np.int8), np.arange(200))
    opts = DiagnoseOptions(n_steps=4, folds=5, tsne_gradient="bh", weight_max_instances=4, patches=1,
                           feature_vis_steps=0, stability_resamples=10)
    models = tiny_net(2, seed=0, dropout=0.0), tiny_net(2, seed=1, dropout=0.0)
    diag = diagnose_pair(*models, inst, CLASSES, opts)
    pooled = diag.discriminability["__all__"]
    assert (pooled.labels == 0).sum() == (pooled.labels == 1).sum() == 20
    assert pooled.cv_mean <= 0.7
    # the same neurons' conductance on every row: the majority share, which says nothing about the domains
    full = layer_conductance(models[1], images, torch.as_tensor(labels), n_steps=4)
    a = np.stack([full[layer][:, j] for layer, j in diag.discriminability_neurons["__all__"]], 1)
    everything = domain_discriminability(a[domain == 0], a[domain == 1], folds=5, seed=0)
    assert everything.cv_mean >= 0.88
    # conductance where something reads it, and only there: the target rows for both models, and
    # the classifiers' source rows (at most 20 all-class + 2 × 10 per class) for the target model
    finite = {r: np.isfinite(diag.conductance[r]["fc1"][:, 0]) for r in ("source", "target")}
    assert finite["source"][domain == 1].all() and not finite["source"][domain == 0].any()
    assert finite["target"][domain == 1].all() and 20 <= finite["target"][domain == 0].sum() <= 40
    rows = finite["target"]
    np.testing.assert_allclose(diag.conductance["target"]["fc1"][rows], full["fc1"][rows], rtol=1e-5, atol=1e-7)
