"""One factory for the small real pair bundles the app's tests read without a tracking server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_HISTORY = {("source", "target_val"): ([0, 1, 2], [0.2, 0.4, 0.5]),
                ("target", "target_val"): ([0, 1], [0.5, 0.9]),
                ("source", "source_train"): ([0, 1, 2], [0.3, 0.8, 0.95])}


def write_tiny_bundle(root: Path, classes: tuple[str, str, str] = ("a", "b", "c"), *, history: dict = TINY_HISTORY,
                      meta: dict | None = None) -> Path:
    """A bundle of two untrained alexnet-32 models (seeded) over 48 random instances, 24 per domain; the
    third class has no target-domain instances. Computed on one thread: the tensors are tiny and the
    machine's cores are shared."""
    from mlflow_transfer.bundle.writer import write_pair_bundle
    from mlflow_transfer.diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
    from mlflow_transfer.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        source = build_model("alexnet-32", 3).eval()
        target = build_model("alexnet-32", 3).eval()
        g = torch.Generator().manual_seed(0)
        idx = np.arange(48)
        domain = (idx >= 24).astype(np.int8)
        labels = np.where(domain == 1, idx % 2, idx % 3)  # the target domain has no third class
        inst = Instances(torch.rand(48, 3, 32, 32, generator=g), labels, domain, (idx % 4 == 0).astype(np.int8), idx)
        opts = DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=2)
        diag = diagnose_pair(source, target, inst, tuple(classes), opts)
    finally:
        torch.set_num_threads(threads)
    write_pair_bundle(root, diag, history=history,
                      meta=meta or {"runs": {"source": "s1", "target": "t1", "diagnostics": "d1"},
                                    "scores": {"transferability_score": 0.4}})
    return root
