"""Do LogME and LEEP, measured before fine-tuning, rank the built-in sources as fine-tuning does?

For each source (`printed-digits`, `printed-digits-clean`, and no training at all as a floor): an
alexnet-32 trained on the source domain (short schedule, seeded), then LogME and LEEP of it on the
target training data (handwritten-digits, split as recipes/digits.yaml, with `--label-budget` labelled
images per class, as recipes/digits_remos.yaml: with all 1,527 even an untrained model reaches ~98 %),
then the same model fine-tuned on that data and scored on the whole target validation set. The
defaults are the recipes' training settings. Prints one row per source and Spearman's rank
correlation of each estimate with the fine-tuned accuracy (three sources: a sanity check, not a study).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_transferability_sources.py \\
        [--source-epochs 8 --target-epochs 5 --size 4000 --label-budget 10]
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.stats import spearmanr

from mlflow_transfer.config import TrainConfig
from mlflow_transfer.data import align_classes, load_domain, split_domain
from mlflow_transfer.diagnostics.transferability import estimate_transferability
from mlflow_transfer.models import build_model
from mlflow_transfer.training.loops import evaluate, fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--target-epochs", type=int, default=5)
    p.add_argument("--size", type=int, default=4000, help="images rendered per source domain")
    p.add_argument("--label-budget", type=int, default=10, help="labelled target images per class (0: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    seed = args.seed
    target = load_domain("handwritten-digits", image_size=32, seed=seed)
    target_splits = split_domain(target, val_fraction=0.15, seed=seed, label_budget=args.label_budget or None)
    print(f"target: {len(target_splits.train)} labelled training images, {len(target_splits.val)} validation",
          flush=True)
    source_cfg = TrainConfig(epochs=args.source_epochs, lr=5e-4, batch_size=32)
    target_cfg = TrainConfig(epochs=args.target_epochs, lr=5e-4, batch_size=32)
    rows = []
    for name in ("untrained", "printed-digits", "printed-digits-clean"):
        started = time.perf_counter()
        torch.manual_seed(seed)
        model = build_model("alexnet-32", 10)
        source_acc = float("nan")
        if name != "untrained":
            source = align_classes(target, load_domain(name, image_size=32, seed=seed, size=args.size))
            splits = split_domain(source, val_fraction=0.15, seed=seed)
            fit(model, splits.train, {}, source_cfg, seed=seed, on_epoch=lambda r: None, desc=name)
            source_acc = evaluate(model, splits.val)
        estimate = estimate_transferability(model, target_splits.train)
        fit(model, target_splits.train, {}, target_cfg, seed=seed, on_epoch=lambda r: None, desc="target")
        rows.append((name, source_acc, estimate["logme"], estimate["leep"], estimate["seconds"],
                     evaluate(model, target_splits.val), time.perf_counter() - started))
        print(f"{name:<22} source val acc {source_acc:.3f}  LogME {estimate['logme']:8.4f}  LEEP "
              f"{estimate['leep']:8.4f}  ({estimate['seconds']:.1f} s)  fine-tuned target val acc {rows[-1][5]:.3f}  "
              f"[{rows[-1][6]:.0f} s]", flush=True)
    accuracy = [r[5] for r in rows]
    for label, column in (("LogME", 2), ("LEEP", 3)):
        rho = spearmanr([r[column] for r in rows], accuracy).statistic
        print(f"Spearman rank correlation of {label} with the fine-tuned target accuracy: {rho:+.2f} "
              f"({len(rows)} sources)")


if __name__ == "__main__":
    main()
