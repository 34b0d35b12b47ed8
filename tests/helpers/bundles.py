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
                      seed: int = 0, history: dict = TINY_HISTORY, meta: dict | None = None,
                      robustness: bool = False) -> Path:
    """A bundle of two untrained alexnet-32 models over ``n_instances`` random images, the first half
    in the source domain (labels cycling through all classes), the second half in the target domain
    (cycling through all but the last class, which so has no target-domain instances); every fourth
    instance is in the test split. ``seed`` seeds the models, the images and the diagnostics.
    ``meta`` defaults to runs s1/t1/d1 and a transferability score of 0.4. ``robustness`` adds the
    planted robustness records of `add_robustness_records` (issue 13).

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
        # robustness computed off: the app's tests read planted records (`add_robustness_records`) or none
        opts = DiagnoseOptions(n_steps=2, folds=3, tsne_gradient="bh", weight_max_instances=4, patches=2, seed=seed,
                               feature_vis_steps=2, robustness=False)
        diag = diagnose_pair(source, target, inst, tuple(classes), opts)
    finally:
        torch.set_num_threads(threads)
    write_pair_bundle(root, diag, history=history, meta=meta or TINY_META)
    if robustness:
        add_robustness_records(root, n_classes=len(classes), layers=tuple(diag.layers[:2]))
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


ROBUSTNESS_EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)


def planted_accuracy(model: str, attack: str, eps_index: int, class_index: int) -> float:
    """The planted accuracy of `add_robustness_records`: distinct per key, and *not* non-increasing in ε
    (the views must not assume it); NaN for the source model's last class (a class it does not know)."""
    if model == "source" and class_index == 2:
        return float("nan")
    base = 0.9 - 0.1 * eps_index + (0.15 if eps_index == 3 else 0.0)
    return round(base - (0.03 if model == "source" else 0.0) - (0.05 if attack == "pgd" else 0.0)
                 - 0.01 * (class_index + 1), 6)


def planted_dir(attack: str, class_index: int) -> float:
    """The planted DIR: NaN for class 2 (no clean-correct sample), else distinct per attack and class."""
    if class_index == 2:
        return float("nan")
    return round((0.5 if attack == "output" else 0.3) + 0.1 * (class_index + 1), 6)


def add_robustness_records(root: Path, *, n_classes: int = 3, layers: tuple[str, ...] = ("conv1", "conv2"),
                           image_size: int = 32, block: dict | None = None) -> Path:
    """Add contract-shaped robustness records (issue 13) with the planted values above to the bundle at
    ``root``: ``robustness/curves`` (source and target, fgsm and pgd, five ε, all classes (-1) and each
    class), ``robustness/dir`` (output and feature attacks), ``robustness/neurons`` (classes 0 and 1,
    each model and ``layers``, 4 neurons each, shift = 0.1·(neuron+1)·(±1 alternating)·(1 + layer index/2), rank
    by |shift| within model and class),
    ``robustness/examples/{output,feature}`` (two rows of solid tiles: clean (row, 0, 0), adversarial
    (0, row, 0), perturbation (0, 0, row) for validation rows 5 and 7 — only the output attack has
    examples) and the manifest block ``robustness`` (``block``
    replaces it, e.g. a malformed one)."""
    import json
    import shutil
    import tempfile

    from mlflow_transfer.bundle.io import BundleWriter

    rows = {k: [] for k in ("model", "attack", "epsilon", "class_index", "accuracy", "n")}
    for model in ("source", "target"):
        for attack in ("fgsm", "pgd"):
            for e, eps in enumerate(ROBUSTNESS_EPSILONS):
                for c in range(-1, n_classes):
                    for k, v in zip(rows, (model, attack, eps, c, planted_accuracy(model, attack, e, c), 10)):
                        rows[k].append(v)
    dir_rows = {k: [] for k in ("attack", "class_index", "dir", "n_clean_correct", "n_inherited", "teacher_success")}
    for attack in ("output", "feature"):
        for c in range(-1, n_classes):
            d = planted_dir(attack, c)
            correct = 0 if c == 2 else 10
            for k, v in zip(dir_rows, (attack, c, d, correct, 0 if c == 2 else round(d * 10),
                                       0.8 if c != 2 else float("nan"))):
                dir_rows[k].append(v)
    neurons = {k: [] for k in ("model", "class_index", "layer", "neuron", "clean", "adversarial", "shift", "rank")}
    for model in ("source", "target"):
        for c in (0, 1):
            keys = [(layer, j, 0.1 * (j + 1) * (-1) ** j * (1 + 0.5 * li)) for li, layer in enumerate(layers)
                    for j in range(4)]
            order = sorted(keys, key=lambda key: -abs(key[2]))
            for layer, j, shift in keys:
                clean = 1.0 + j
                rank = order.index((layer, j, shift)) + 1
                for k, v in zip(neurons, (model, c, layer, j, clean, clean + shift, shift, rank)):
                    neurons[k].append(v)
    s = image_size
    sprite = np.zeros((2 * s, 3 * s, 3), np.uint8)
    for i, row in enumerate((5, 7)):
        for t in range(3):
            sprite[i * s:(i + 1) * s, t * s:(t + 1) * s, t] = 100 + row
    examples = {"row": [5, 7], "class_index": [0, 1], "student_clean": [0, 1], "student_adversarial": [1, 0],
                "teacher_clean": [0, 1], "teacher_adversarial": [2, -1]}
    with tempfile.TemporaryDirectory() as tmp:
        w = BundleWriter(Path(tmp) / "r")
        w.write_table("robustness/curves", {k: (np.asarray(v, np.int64) if k in ("class_index", "n") else v)
                                            for k, v in rows.items()})
        w.write_table("robustness/dir", {k: (np.asarray(v, np.int64) if k.startswith("n_") or k == "class_index"
                                             else v) for k, v in dir_rows.items()})
        w.write_table("robustness/neurons", {k: (np.asarray(v, np.int64) if k in ("class_index", "neuron", "rank")
                                                 else v) for k, v in neurons.items()})
        w.write_png("robustness/examples/output", sprite)
        w.write_table("robustness/examples/output/table", {k: np.asarray(v, np.int64) for k, v in examples.items()})
        added = w.finish()
        manifest_path = Path(root) / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        for entry in added["files"]:
            (Path(root) / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / "r" / entry["path"], Path(root) / entry["path"])
        manifest["files"] = sorted(manifest["files"] + added["files"], key=lambda e: e["path"])
    manifest["robustness"] = block if block is not None else {
        "epsilons": list(ROBUSTNESS_EPSILONS), "attacks": ["fgsm", "pgd"], "curve_pgd_steps": 10,
        "curve_step_size": "2.5*eps/steps", "dir_attacks": ["output", "feature"], "dir_pgd_steps": 40,
        "dir_epsilon": 8 / 255, "basis": "target validation set, 10 instances", "seconds": 1.5}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return Path(root)
