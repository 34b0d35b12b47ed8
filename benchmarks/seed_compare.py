"""Seed a real `mlflow server` with many diagnosed pairs, fast: the compare benchmark's data (issue 16).

``seed(uri, db, bundle)`` fills one experiment with ``n_pairs`` target runs and their diagnostics runs (plus a
source run per ten targets and ``n_sweeps`` sweep parents, the targets spread over the sweeps), with what the
pipeline logs: a target run gets the digits recipe's flat params (a sweep grid of ``target.lr`` ×
``target.freeze_depth`` × ``target.method``) and the data-size counts, the tags ``tracking.runs`` sets, an
accuracy history (5 epochs × 4 datasets) with its final/best values and LogME/LEEP; a diagnostics run gets the
pair's tags, ``transfer.layers`` and the ``transfer.summary`` tag (`tracking.compare.summary_tag`), the
per-depth inheritance history and the scalar metrics ``diagnose`` logs (``cka_mean`` and ``findings_count``
included). Values are drawn from a seeded generator; a few pairs are made worse by a planted rule so charts
show something.

Speed: MLflow's REST API takes three requests per run (~10 runs/s on this machine), so the bulk of the runs
is written straight into the server's sqlite store, into MLflow's own tables through its ORM models'
table definitions (`mlflow.store.tracking.dbmodels`: runs, tags, params, metrics, latest_metrics — the rows
``SqlAlchemyStore.create_run`` / ``log_batch`` / ``set_terminated`` write) in one transaction of bulk inserts. The experiment, the sweep parents and the ``n_real`` newest
pairs go through the server's REST API, and those pairs' diagnostics runs get a real bundle (``bundle``, a
folder copied from one tiny diagnosed pair, see `tiny_diagnosed_bundle`) logged under ``diagnostics/``, so
the app can open them and diff two.

Usage: ``python benchmarks/seed_compare.py --tracking-uri http://127.0.0.1:5000 --db /path/mlflow.db
[--pairs 1000]`` (the server must use ``--db`` as its backend store); prints the experiment and sweep ids.
`benchmarks/bench_ui.py --only compare` starts its own server and seeds it through `seed`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from mlflow_transfer.tags import TAGS  # noqa: E402
from mlflow_transfer.tracking.compare import summary_tag  # noqa: E402

DIGITS = [str(i) for i in range(10)]
DATASETS = ("source_train", "source_val", "target_train", "target_val")
LRS = ("0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1")
METHODS = ("finetune", "slice")
EPOCHS = 5


def tiny_diagnosed_bundle(root: Path) -> Path:
    """Train and diagnose the tests' tiny digits pair (tests/helpers/tracking.py) in a throw-away sqlite
    store under ``root`` and download its bundle to ``root/bundle/diagnostics``; returns that folder."""
    import mlflow
    from helpers.tracking import make_empty_store, sqlite_store, tiny_recipe

    from mlflow_transfer.diagnostics.engine import DiagnoseOptions
    from mlflow_transfer.tracking import run_pipeline
    from mlflow_transfer.tracking.diagnose import diagnose

    template = make_empty_store(root / "empty.db")
    with sqlite_store(root, "seed", template=template):
        pair = run_pipeline(tiny_recipe())
        options = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3,
                                  feature_vis_steps=1, sample_per_class=2)
        run_id = diagnose(target_run_id=pair.target_run_id, options=options)
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics",
                                                    dst_path=str(root / "bundle"))
    return Path(local)


def base_params() -> dict:
    """The digits recipe's flat values (``Recipe.flat``), read once."""
    from mlflow_transfer.config import load_recipe

    return load_recipe(REPO / "recipes" / "digits.yaml", []).flat()


def _recipe_params(base: dict, lr: str, depth: int, method: str) -> dict[str, str]:
    """``base`` with this setting, as ``tracking.runs`` logs a recipe's params (text; a tuple as JSON)."""
    flat = {**base, "target.lr": float(lr), "target.freeze_depth": depth, "target.method": method}
    return {k: "" if v is None else json.dumps(list(v)) if isinstance(v, tuple) else str(v) for k, v in flat.items()}


class _Plan:
    """The seeded runs as plain dicts: ``{"run_id", "name", "start", "status", "tags", "params", "metrics":
    {key: [(step, value), ...]}}``."""

    def __init__(self, n_pairs: int, sweeps: list[str], layers: list[str], base: dict, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.runs: list[dict] = []
        self.sweeps, self.layers = sweeps, layers
        self.now = int(time.time() * 1000) - (n_pairs * 4 + 100) * 1000
        self.params, self.base = {}, base

    def clock(self) -> int:
        self.now += 1000
        return self.now

    def run(self, name: str, tags: dict, params: dict | None = None, metrics: dict | None = None,
            status: str = "FINISHED", run_id: str | None = None) -> str:
        run_id = run_id or uuid.uuid4().hex
        self.runs.append({"run_id": run_id, "name": name, "start": self.clock(), "status": status,
                          "tags": {"mlflow.runName": name, TAGS.version: "0.16.0", TAGS.host: "bench",
                                   TAGS.pid: "1", TAGS.code_version: "0" * 16, TAGS.device: "cpu", **tags},
                          "params": params or {}, "metrics": metrics or {}})
        return run_id

    def setting(self, i: int) -> tuple[str, int, str]:
        return LRS[i % len(LRS)], (i // len(LRS)) % 5, METHODS[(i // (len(LRS) * 5)) % 2]

    def pair(self, i: int, source_id: str, *, diagnose: bool = True, diag_status: str = "FINISHED",
             target_id: str | None = None, diag_id: str | None = None) -> tuple[str, str | None]:
        lr, depth, method = self.setting(i)
        key = (lr, depth, method)
        if key not in self.params:
            self.params[key] = _recipe_params(self.base, lr, depth, method)
        sweep = self.sweeps[i % len(self.sweeps)] if self.sweeps else None
        rng = self.rng
        quality = 0.9 - 0.3 * abs(np.log10(float(lr)) + 3) / 2 - (0.15 if method == "slice" and depth > 2 else 0)
        history = {f"acc_{ds}": [(e, float(np.clip(quality * (0.6 + 0.4 * e / EPOCHS) + rng.normal(0, 0.02), 0, 1)))
                                 for e in range(EPOCHS + 1)] for ds in DATASETS}
        best = {f"best_{k}": max(v for s, v in h if s >= 1) for k, h in history.items()}
        final = {f"final_{k}": h[-1][1] for k, h in history.items()}
        target_tags = {TAGS.role: "target", TAGS.model: "alexnet-32", TAGS.classes: json.dumps(DIGITS),
                       TAGS.source_classes: json.dumps(DIGITS), TAGS.new_head: "false",
                       TAGS.source_domain: "printed-digits", TAGS.target_domain: "handwritten-digits",
                       TAGS.source_run_id: source_id, TAGS.method: method, TAGS.recipe: "digits",
                       TAGS.frozen_layers: json.dumps(self.layers[:depth]), "mlflow.parentRunId": sweep or source_id,
                       **({TAGS.slice_ratio: "0.05"} if method == "slice" else {}),
                       **({TAGS.sweep_id: sweep, TAGS.sweep_key: uuid.uuid4().hex[:16],
                           TAGS.sweep_setting: json.dumps({"target.freeze_depth": depth, "target.lr": float(lr),
                                                           "target.method": method}, sort_keys=True)}
                          if sweep else {})}
        logme, leep = float(rng.normal(quality, 0.1)), float(rng.normal(-2 + quality, 0.2))
        target_metrics = {**history, **{k: [(0, v)] for k, v in {**best, **final}.items()},
                          "logme": [(0, logme)], "leep": [(0, leep)], "transferability_estimate_seconds": [(0, 1.5)]}
        params = {**self.params[key], "n_source_train": "850", "n_source_val": "150", "n_target_train": "1528",
                  "n_target_val": "269"}
        target_id = self.run(f"digits-target-{i}", target_tags, params, target_metrics, run_id=target_id)
        if not diagnose:
            return target_id, None
        n = len(self.layers)
        share = [float(np.clip(1 - depth_i / n * (1.2 - quality) + rng.normal(0, 0.05), 0, 1)) for depth_i in range(n)]
        cka = [float(np.clip(1 - depth_i / n * 0.6 + rng.normal(0, 0.05), 0, 1)) for depth_i in range(n)]
        summary = summary_tag(self.layers, share, cka, DIGITS)
        score = best["best_acc_target_val"] - float(rng.normal(0.5, 0.05))
        diag_tags = {TAGS.role: "diagnostics", TAGS.target_run_id: target_id, TAGS.source_run_id: source_id,
                     TAGS.pair_id: f"digits/{source_id[:8]}/{target_id[:8]}", TAGS.model: "alexnet-32",
                     TAGS.classes: json.dumps(DIGITS), TAGS.source_domain: "printed-digits",
                     TAGS.target_domain: "handwritten-digits", TAGS.recipe: "digits", "mlflow.parentRunId": target_id,
                     TAGS.layers: json.dumps(self.layers), **({TAGS.sweep_id: sweep} if sweep else {})}
        if diag_status == "FINISHED":
            diag_tags[TAGS.summary] = summary
        scalars = {"target_val_accuracy": best["best_acc_target_val"], "transferability_score": score,
                   "logme": logme, "leep": leep, "domain_cv_accuracy": float(rng.uniform(0.6, 0.99)),
                   "cka_mean": float(np.mean(cka)), "findings_count": float(rng.integers(0, 8)),
                   "completeness_error_source": 0.01, "completeness_error_target": 0.02,
                   **{f"seconds_{s}": float(rng.uniform(0.5, 30)) for s in ("instances", "conductance", "weights",
                                                                          "embedding", "discriminability", "cka")}}
        diag_metrics = {"inherited_weight_share": list(enumerate(share)),
                        "mean_best_similarity": [(d, float(rng.uniform(0.3, 0.9))) for d in range(n)],
                        **{k: [(0, v)] for k, v in scalars.items()}}
        diag_id = self.run(f"digits-diagnostics-{i}", diag_tags, {"n_steps_source": "16", "n_steps_target": "16"},
                           diag_metrics, status=diag_status, run_id=diag_id)
        return target_id, diag_id


def _insert(db: Path, experiment_id: str, artifact_location: str, runs: list[dict]) -> None:
    """``runs`` as rows of MLflow's own tables (the ORM models' ``__table__``) in the sqlite store ``db``, in one
    transaction of bulk inserts (see the module docstring)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
    from sqlalchemy import create_engine

    tables = {t: [] for t in ("runs", "tags", "params", "metrics", "latest_metrics")}
    for r in runs:
        run_id, start = r["run_id"], r["start"]
        tables["runs"].append({
            "run_uuid": run_id, "name": r["name"], "source_type": "UNKNOWN", "source_name": "",
            "entry_point_name": "", "user_id": "bench", "status": r["status"], "start_time": start,
            "end_time": None if r["status"] == "RUNNING" else start + 900, "deleted_time": None,
            "source_version": "", "lifecycle_stage": "active", "experiment_id": int(experiment_id),
            "artifact_uri": f"{artifact_location.rstrip('/')}/{run_id}/artifacts"})
        tables["tags"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in r["tags"].items()]
        tables["params"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in r["params"].items()]
        for key, points in r["metrics"].items():
            tables["metrics"] += [{"key": key, "value": v, "timestamp": start + s, "step": s, "is_nan": False,
                                   "run_uuid": run_id} for s, v in points]
            s, v = max(points)
            tables["latest_metrics"].append({"key": key, "value": v, "timestamp": start + s, "step": s,
                                             "is_nan": False, "run_uuid": run_id})
    models = {"runs": SqlRun, "tags": SqlTag, "params": SqlParam, "metrics": SqlMetric,
              "latest_metrics": SqlLatestMetric}
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as connection:
        for name, rows in tables.items():  # runs first: the others refer to them
            if rows:
                connection.execute(models[name].__table__.insert(), rows)
    engine.dispose()


def seed(uri: str, db: Path, bundle: Path | None, *, n_pairs: int = 1000, n_sweeps: int = 3, n_real: int = 4,
         experiment: str = "compare-bench", seed_value: int = 0, base: dict | None = None) -> dict:
    """Seed ``n_pairs`` pairs into a new experiment of the server at ``uri`` whose store is ``db``; returns
    ``{"experiment_id", "sweeps": [ids], "real": [(target id, diagnostics id)], "runs", "seconds" (the
    writing; ``base``, the recipe's flat values, is read before when not given)}``."""
    base = base or base_params()
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    t0 = time.perf_counter()
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(experiment)
    location = client.get_experiment(experiment_id).artifact_location
    layers = json.loads((bundle / "manifest.json").read_text())["layers"] if bundle else \
        ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1", "classifier.4",
         "classifier.6"]
    sweeps = []
    for s in range(n_sweeps):
        run = client.create_run(experiment_id, run_name=f"digits-sweep-{s}", tags={TAGS.role: "sweep"})
        client.set_tag(run.info.run_id, TAGS.sweep_id, run.info.run_id)
        client.set_terminated(run.info.run_id)
        sweeps.append(run.info.run_id)
    plan = _Plan(n_pairs, sweeps, layers, base, seed_value)
    source = None
    bulk = n_pairs - (n_real if bundle else 0)
    for i in range(bulk):
        if i % 10 == 0:
            source = plan.run(f"digits-source-{i // 10}", {TAGS.role: "source", TAGS.model: "alexnet-32",
                                                            TAGS.classes: json.dumps(DIGITS)},
                              metrics={"final_acc_source_val": [(0, 0.9)]})
        # every 50th pair not yet diagnosed, every 97th with a failed diagnosis: the listing's other rows
        plan.pair(i, source, diagnose=i % 50 != 49, diag_status="FAILED" if i % 97 == 96 else "FINISHED")
    _insert(db, experiment_id, location, plan.runs)
    real = []
    if bundle:  # the newest pairs, through the REST API, each with a copy of the real bundle
        for i in range(bulk, n_pairs):
            before = len(plan.runs)
            ids = {role: client.create_run(experiment_id, run_name=f"digits-{role}-{i}").info.run_id
                   for role in ("target", "diagnostics")}
            plan.pair(i, source, target_id=ids["target"], diag_id=ids["diagnostics"])
            for r in plan.runs[before:]:
                client.log_batch(r["run_id"], params=[Param(k, v) for k, v in r["params"].items()],
                                 tags=[RunTag(k, v) for k, v in r["tags"].items() if k != "mlflow.runName"],
                                 metrics=[Metric(k, v, r["start"] + s, s) for k, pts in r["metrics"].items()
                                          for s, v in pts])
            client.log_artifacts(ids["diagnostics"], str(bundle), "diagnostics")
            for run_id in ids.values():
                client.set_terminated(run_id)
            real.append((ids["target"], ids["diagnostics"]))
    return {"experiment_id": experiment_id, "sweeps": sweeps, "real": real, "runs": len(plan.runs) + n_sweeps,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True, help="the running mlflow server (http://127.0.0.1:PORT)")
    parser.add_argument("--db", type=Path, required=True, help="the sqlite file the server uses as its store")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--no-bundles", action="store_true", help="no real bundles (skips the tiny pipeline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = None if args.no_bundles else tiny_diagnosed_bundle(Path(tmp))
        found = seed(args.tracking_uri, args.db, bundle, n_pairs=args.pairs, n_sweeps=args.sweeps)
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
