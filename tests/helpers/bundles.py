"""One factory for the small real pair bundles the app's tests read without a tracking server, and the
UI benchmark's bundles (``benchmarks/bench_ui.py``, more classes and instances)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_HISTORY = {("source", "target_val"): ([0, 1, 2], [0.2, 0.4, 0.5]),
                ("target", "target_val"): ([0, 1], [0.5, 0.9]),
                ("source", "source_train"): ([0, 1, 2], [0.3, 0.8, 0.95])}
TINY_META = {"runs": {"source": "s1", "target": "t1", "diagnostics": "d1"}, "scores": {"transferability_score": 0.4}}


def write_tiny_bundle(root: Path, classes: tuple[str, ...] = ("a", "b", "c"), *, n_instances: int = 48,
                      seed: int = 0, history: dict = TINY_HISTORY, meta: dict | None = None) -> Path:
    """A bundle of two untrained alexnet-32 models over ``n_instances`` random images, the first half
    in the source domain (labels cycling through all classes), the second half in the target domain
    (cycling through all but the last class, which so has no target-domain instances); every fourth
    instance is in the test split. ``seed`` seeds the models, the images and the diagnostics.
    ``meta`` defaults to runs s1/t1/d1 and a transferability score of 0.4.

    The defaults are the app tests' bundle (conftest's ``tiny_bundle``: 3 classes a/b/c, 48 instances,
    class 'c' only in the source domain, seed 0). Computed on one thread: the tensors are small and
    the machine's cores are shared."""
    from mlflow_transfer.bundle.writer import write_pair_bundle
    from mlflow_transfer.diagnostics.engine import (
        DiagnoseOptions,
        Instances,
        diagnose_pair,
    )
    from mlflow_transfer.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        source = build_model("alexnet-32", len(classes)).eval()
        target = build_model("alexnet-32", len(classes)).eval()
        g = torch.Generator().manual_seed(seed)
        idx = np.arange(n_instances)
        domain = (idx >= n_instances // 2).astype(np.int8)
        labels = np.where(domain == 1, idx % (len(classes) - 1), idx % len(classes))
        inst = Instances(torch.rand(n_instances, 3, 32, 32, generator=g), labels, domain,
                         (idx % 4 == 0).astype(np.int8), idx)
        opts = DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=2, seed=seed,
                               feature_vis_steps=2)
        diag = diagnose_pair(source, target, inst, tuple(classes), opts)
    finally:
        torch.set_num_threads(threads)
    write_pair_bundle(root, diag, history=history, meta=meta or TINY_META)
    return root


def without_records(root: Path, *names: str) -> Path:
    """Make the bundle at ``root`` look older: delete the records ``names`` (e.g. "neurons/stability")
    and their manifest entries, as a bundle written before those records existed."""
    import json

    manifest_path = Path(root) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    kept = []
    for entry in manifest["files"]:
        stem = entry["path"].rsplit(".", 1)[0]
        if stem in names:
            (Path(root) / entry["path"]).unlink()
        else:
            kept.append(entry)
    manifest["files"] = kept
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return Path(root)
