"""Time of `diagnose`'s robustness stage (issue 13) on the demo pair, against the rest of `diagnose` in
the same run (goal: the stage ≤ 2 min on 2 cores).

Data: the digits recipe's own domains and splits (`recipes/digits.yaml`: printed digits → handwritten
digits, 32×32), the analysed sample as `diagnose` draws it (``--sample-per-class``, default 10) and the
target validation set (270 images) the stage attacks. The pair: alexnet-32 trained on the source
training split and fine-tuned on the target's (``--epochs`` each, Adam; not timed). ``--breakdown``
times the stage's parts again one by one with the same options (curves per model, DIR per attack, the
conductance shift's attack and conductance).

    .venv/bin/python benchmarks/bench_robustness.py
    .venv/bin/python benchmarks/bench_robustness.py --robustness-pgd-steps 5 --breakdown
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mlflow_transfer.config import load_recipe
from mlflow_transfer.diagnostics.engine import DiagnoseOptions, diagnose_pair
from mlflow_transfer.diagnostics.predictions import ValidationSets
from mlflow_transfer.models import build_model
from mlflow_transfer.runtime import keep_freed_memory
from mlflow_transfer.tracking.context import prepare_data
from mlflow_transfer.tracking.diagnose import build_instances


def _train(model, dataset, indices, epochs: int, seed: int):
    torch.manual_seed(seed)
    x = torch.stack([dataset[int(i)][0] for i in indices])
    y = torch.as_tensor([int(dataset[int(i)][1]) for i in indices])
    opt = torch.optim.Adam(model.parameters(), 5e-4)
    model.train()
    for _ in range(epochs):
        for b in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval()


def _accuracy(model, dataset) -> float:
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    y = np.array([int(dataset[i][1]) for i in range(len(dataset))])
    with torch.no_grad():
        return float((model(x).argmax(1).numpy() == y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/digits.yaml")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each model (not timed)")
    p.add_argument("--sample-per-class", type=int, default=DiagnoseOptions.sample_per_class)
    p.add_argument("--robustness-pgd-steps", type=int, default=DiagnoseOptions.robustness_pgd_steps)
    p.add_argument("--dir-pgd-steps", type=int, default=DiagnoseOptions.dir_pgd_steps)
    p.add_argument("--breakdown", action="store_true", help="time the stage's parts one by one as well")
    p.add_argument("--pair-cache", default="", help="a .pt file: the trained pair's weights are saved there, "
                   "and read back (weights_only) when it exists, so a rerun skips the training")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    keep_freed_memory()

    data = prepare_data(load_recipe(args.recipe, []))
    t0 = time.perf_counter()
    source, target = build_model("alexnet-32", 10), build_model("alexnet-32", 10)
    if args.pair_cache and Path(args.pair_cache).is_file():
        saved = torch.load(args.pair_cache, weights_only=True)
        source.load_state_dict(saved["source"]), target.load_state_dict(saved["target"])
        source.eval(), target.eval()
    else:
        source = _train(source, data.source.domain.dataset, data.source.train_indices, args.epochs, args.seed)
        target.load_state_dict(source.state_dict())
        target = _train(target, data.target.domain.dataset, data.target.train_indices, args.epochs, args.seed + 1)
        if args.pair_cache:
            torch.save({"source": source.state_dict(), "target": target.state_dict()}, args.pair_cache)
    print(f"pair: alexnet-32, {args.epochs} epoch(s) each ({time.perf_counter() - t0:.0f} s, not timed); target "
          f"validation accuracy: source {_accuracy(source, data.target.val):.3f}, "
          f"target {_accuracy(target, data.target.val):.3f}; torch threads {torch.get_num_threads()}")

    inst = build_instances(data, args.sample_per_class, args.seed)
    options = DiagnoseOptions(sample_per_class=args.sample_per_class, robustness_pgd_steps=args.robustness_pgd_steps,
                              dir_pgd_steps=args.dir_pgd_steps, seed=args.seed)
    validation = ValidationSets(target=data.target.val, source=data.source.val)
    t0 = time.perf_counter()
    diag = diagnose_pair(source, target, inst, tuple(data.pair_classes), options, validation=validation)
    total = time.perf_counter() - t0
    stage = diag.timings["robustness"]
    rest = total - stage
    r = diag.robustness
    print(f"diagnose: {total:.1f} s in all, {len(inst.labels)} analysed instances; robustness basis: {r.info['basis']}")
    print(f"robustness stage: {stage:.1f} s = {stage / 60:.2f} min (goal <= 2 min); the rest of diagnose: "
          f"{rest:.1f} s; ratio stage / rest = {stage / rest:.2f}")
    print(f"  curve PGD steps {options.robustness_pgd_steps}, DIR PGD steps {options.dir_pgd_steps}, "
          f"epsilons {[round(e * 255, 2) for e in options.robustness_epsilons]}/255, DIR epsilon "
          f"{options.dir_epsilon * 255:.0f}/255, conductance steps "
          f"{ {k: v.n_steps for k, v in diag.conductance_steps.items()} }")
    for k, v in sorted(r.metrics().items()):
        print(f"  {k:<22} {v:.3f}")
    for stage_name, seconds in sorted(diag.timings.items(), key=lambda kv: -kv[1]):
        print(f"  stage {stage_name:<12} {seconds:8.1f} s")

    if args.breakdown:
        from mlflow_transfer.diagnostics.attacks import attack_images
        from mlflow_transfer.diagnostics.robustness import defect_inheritance, robustness_curves
        from mlflow_transfer.diagnostics.robustness_pair import robustness_set

        rs = robustness_set(validation, inst, len(data.pair_classes), options.robustness_max_rows, options.seed)
        print("breakdown (the parts again, one by one):")
        for role, model in (("source", source), ("target", target)):
            for attack in ("fgsm", "pgd"):
                t0 = time.perf_counter()
                robustness_curves(model, rs.images, rs.labels, epsilons=options.robustness_epsilons, attacks=(attack,),
                                  pgd_steps=options.robustness_pgd_steps)
                print(f"  curves {role} {attack:<4} {time.perf_counter() - t0:7.1f} s")
        for attack in ("output", "feature"):
            t0 = time.perf_counter()
            defect_inheritance(source, target, rs.images, rs.labels, rs.labels, epsilon=options.dir_epsilon,
                               steps=options.dir_pgd_steps, attack=attack, seed=options.seed)
            print(f"  DIR {attack:<7}        {time.perf_counter() - t0:7.1f} s")
        rows = np.flatnonzero(inst.domain == 1)
        t0 = time.perf_counter()
        attack_images(source, inst.images[rows], inst.labels[rows], attack="pgd", epsilon=options.dir_epsilon,
                      steps=options.dir_pgd_steps)
        print(f"  shift: the attack on {len(rows)} analysed target rows {time.perf_counter() - t0:7.1f} s "
              "(plus one conductance pass per model)")


if __name__ == "__main__":
    main()
