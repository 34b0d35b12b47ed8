"""Runs of the compare listing (issue 16) logged by hand through `MlflowClient`: target, diagnostics and sweep
runs with the tags, params and metrics the pipeline writes, one second apart, for tests of the listing."""

from __future__ import annotations

import json

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking.compare import summary_tag

DIGITS = [str(i) for i in range(10)]


class Runs:
    """Runs logged by hand into experiment ``experiment_id`` (of ``tracking_uri``, default MLflow's current
    one), each started one second after the last."""

    def __init__(self, experiment_id: str, tracking_uri: str | None = None):
        self.client, self.experiment_id, self.clock = MlflowClient(tracking_uri), experiment_id, 1_700_000_000_000

    def _run(self, name, tags, params=None, metrics=None, status="FINISHED") -> str:
        self.clock += 1000
        run = self.client.create_run(self.experiment_id, start_time=self.clock, tags=tags, run_name=name)
        self.client.log_batch(run.info.run_id, metrics=[Metric(k, v, self.clock, 0) for k, v in (metrics or {}).items()],
                              params=[Param(k, str(v)) for k, v in (params or {}).items()])
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def target(self, name, *, lr="0.0005", model="alexnet-32", classes=DIGITS, status="FINISHED",
               sweep=None, extra_tags=None, **metrics) -> str:
        tags = {TAGS.role: "target", TAGS.model: model, TAGS.classes: json.dumps(classes),
                TAGS.source_run_id: "a" * 32, TAGS.source_domain: "printed", TAGS.target_domain: "handwritten",
                **({TAGS.sweep_id: sweep} if sweep else {}), **(extra_tags or {})}
        params = {"target.lr": lr, "target.epochs": "5", "model.name": model, "n_target_train": "120"}
        return self._run(name, tags, params, {"best_acc_target_val": 0.5, "logme": -1.0, "leep": -2.0, **metrics},
                         status)

    def diagnostics(self, target_run_id, *, status="FINISHED", summary="default", classes=DIGITS,
                    target_tag=None, **metrics) -> str:
        if summary == "default":
            summary = summary_tag(["conv1", "fc"], [0.9, 0.25], [0.8, float("nan")], classes)
        tags = {TAGS.role: "diagnostics", TAGS.target_run_id: target_tag or target_run_id,
                **({TAGS.summary: summary} if summary is not None else {})}
        return self._run("diag", tags, metrics={"target_val_accuracy": 0.75, "transferability_score": 0.1,
                                                 **metrics}, status=status)

    def sweep(self, name) -> str:
        run_id = self._run(name, {TAGS.role: "sweep"})
        self.client.set_tag(run_id, TAGS.sweep_id, run_id)
        return run_id
