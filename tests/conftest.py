"""Shared fixtures."""

import pytest
import torch


@pytest.fixture()
def one_thread():
    """Run a test's torch work on one thread: the tensors in unit tests are small, and the machine's
    two cores are shared with other processes, where two threads each thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A real pair bundle of two tiny alexnet-32 models (3 classes, 48 instances, class 'c' only in the
    source domain) with an accuracy history: what the app's tests read without a tracking server."""
    import numpy as np

    from mlflow_transfer.bundle import write_pair_bundle
    from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
    from mlflow_transfer.models import build_model

    torch.manual_seed(0)
    source = build_model("alexnet-32", 3).eval()
    target = build_model("alexnet-32", 3).eval()
    g = torch.Generator().manual_seed(0)
    idx = np.arange(48)
    domain = (idx >= 24).astype(np.int8)
    labels = np.where(domain == 1, idx % 2, idx % 3)  # the target domain has no class 'c'
    inst = Instances(torch.rand(48, 3, 32, 32, generator=g), labels, domain, (idx % 4 == 0).astype(np.int8), idx)
    opts = DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=2)
    diag = diagnose_pair(source, target, inst, ("a", "b", "c"), opts)
    history = {("source", "target_val"): ([0, 1, 2], [0.2, 0.4, 0.5]),
               ("target", "target_val"): ([0, 1], [0.5, 0.9]),
               ("source", "source_train"): ([0, 1, 2], [0.3, 0.8, 0.95])}
    root = tmp_path_factory.mktemp("bundle") / "diagnostics"
    write_pair_bundle(root, diag, history=history,
                      meta={"runs": {"source": "s1", "target": "t1", "diagnostics": "d1"},
                            "scores": {"transferability_score": 0.4}})
    return root
