"""Transfer methods on the digits scenario (issue 13): does ReMoS slicing cut the defect inheritance rate, and
at what accuracy cost?

Trains the recipe's source model once (printed digits), then three students on the handwritten target
with the same target settings: finetune (the source's weights), slice (ReMoS at each --ratios value: profile
on the target train set, zero the lowest-scored conv weights, then fine-tune) and scratch (fresh weights,
seeded by the recipe). Prints each student's clean target-validation accuracy and its DIR — the share
of its clean-correct validation images that it misclassifies on L∞ PGD examples crafted on the teacher
(40 steps of 2.5·ε/steps, ε = 8/255; "output": the teacher's cross-entropy, "feature": its penultimate
features from a random start). The same code path as the runs (`tracking.runs` uses `slice_model` and
`build_model` the same way), without MLflow.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_remos.py [--ratios 0.05,0.1,0.2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mlflow_transfer.config import load_recipe  # noqa: E402
from mlflow_transfer.models import build_model  # noqa: E402
from mlflow_transfer.tracking.context import prepare_data  # noqa: E402
from mlflow_transfer.training import evaluate, fit  # noqa: E402
from mlflow_transfer.training.slicing import slice_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPSILON, STEPS = 8 / 255, 40

from mlflow_transfer.diagnostics.robustness import defect_inheritance  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "digits_remos.yaml"))
    parser.add_argument("--ratios", default="0.05,0.1,0.2", help="slice ratios (at most three)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(2)
    recipe = load_recipe(args.recipe, args.overrides)
    ratios = [float(r) for r in args.ratios.split(",")]
    data = prepare_data(recipe)
    classes = len(data.classes)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.node()} · torch {torch.__version__} "
          f"· load {os.getloadavg()[0]:.1f} before · recipe {Path(args.recipe).name} {' '.join(args.overrides)}")
    print("# DIR: diagnostics.robustness.defect_inheritance; "
          f"PGD L∞ ε = 8/255, {STEPS} steps of 2.5·ε/steps, crafted on the teacher (the source model)")

    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    teacher = build_model(recipe.model.name, classes, weights=recipe.model.weights)
    fit(teacher, data.source.train, {}, recipe.source, seed=recipe.seed, on_epoch=lambda r: None, desc="source")
    teacher.eval()
    val = data.target.val
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.as_tensor([int(val[i][1]) for i in range(len(val))])
    print(f"source trained in {time.perf_counter() - t0:.1f} s; teacher on the target validation set: "
          f"{evaluate(teacher, val):.3f} ({len(val)} images)")
    students = [("finetune", None), *[("slice", r) for r in ratios], ("scratch", None)]
    rows = []
    for method, ratio in students:
        t = time.perf_counter()
        if method == "scratch":
            torch.manual_seed(recipe.seed)
            model = build_model(recipe.model.name, classes)
        else:
            model = build_model(recipe.model.name, classes)
            model.load_state_dict(teacher.state_dict())
        note = ""
        if method == "slice":
            _, summary = slice_model(model, data.target.train, ratio)
            zeroed = sum(s["zeroed"] for s in summary.values())
            total = sum(s["weights"] for s in summary.values())
            note = f" (zeroed {zeroed}/{total} conv weights; per layer " + ", ".join(
                f"{k.split('.')[-1]} {s['ratio']:.3f}" for k, s in summary.items()) + ")"
        fit(model, data.target.train, {}, recipe.target, seed=recipe.seed, on_epoch=lambda r: None, desc=method)
        model.eval()
        acc = evaluate(model, val)
        dirs = {}
        for attack in ("output", "feature"):
            result = defect_inheritance(teacher, model, images, labels.numpy(), labels.numpy(), epsilon=EPSILON,
                                        steps=STEPS, attack=attack)
            row = list(result.table["class_index"]).index(-1)
            dirs[attack] = float(result.table["dir"][row])
            n_ok = int(result.table["n_clean_correct"][row])
        name = method if ratio is None else f"slice {ratio:g}"
        rows.append((name, acc, dirs))
        print(f"{name:<12} clean acc {acc:.3f}  DIR output {100 * dirs['output']:5.1f} %  "
              f"DIR feature {100 * dirs['feature']:5.1f} %  (of {n_ok} clean-correct; {time.perf_counter() - t:.1f} s){note}")
        sys.stdout.flush()
    base = rows[0]
    print("relative to finetune:")
    for name, acc, dirs in rows[1:]:
        cut = {a: (1 - dirs[a] / base[2][a]) if base[2][a] else math.nan for a in dirs}
        print(f"  {name:<12} accuracy {100 * (acc - base[1]):+5.1f} points; DIR output cut {100 * cut['output']:+5.1f} %"
              f" (ratio {dirs['output'] / base[2]['output']:.2f}), feature cut {100 * cut['feature']:+5.1f} %"
              f" (ratio {dirs['feature'] / base[2]['feature']:.2f})" if base[2]['output'] and base[2]['feature'] else
              f"  {name}: finetune's DIR is 0")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
