"""`diagnose` stores the pair's findings (issue 16) on a real sqlite store: the bundle's ``findings`` record
(schema 1.7.0), what `compute_findings` makes of the logged bundle, and the run's ``findings_count``. The pair
is the tiny recipe with a fine-tuning that hurts (the planted truth: its transferability score is below
zero), so the negative-transfer finding must be there, with the score as evidence."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle import findings as fm
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.tracking import run_pipeline
from mlflow_transfer.tracking.diagnose import diagnose

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=2, robustness=False)
HURT = ("data.source.name=handwritten-digits", "data.source.size=null", "data.per_class_cap=40",
        "source.epochs=5", "source.lr=0.002", "target.lr=0.05")


def test_diagnose_stores_the_findings_and_logs_their_count(module_store, tmp_path):
    from helpers.tracking import tiny_recipe

    hurt = run_pipeline(tiny_recipe(*HURT))
    run_id = diagnose(target_run_id=hurt.target_run_id, options=FAST)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(tmp_path))
    b = PairBundle.open(local)  # verified: the record is listed in the manifest with its hash
    assert b.manifest["schema_version"] == "1.7.0"
    assert "findings.json" in {f["path"] for f in b.manifest["files"]}
    stored = b.findings()
    assert stored == fm.compute_findings(b)[0]  # what the bundle says, recomputed from the logged bundle
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics["findings_count"] == len(stored)
    score = metrics["transferability_score"]
    assert score < 0
    (negative,) = [f for f in stored if f["kind"] == "negative_transfer"]
    assert negative["evidence"]["transferability_score"] == pytest.approx(score, abs=1e-4)
    assert negative["score"] == pytest.approx(-score / fm.UNITS["negative_transfer"], abs=1e-3)
    assert [f["score"] for f in stored] == sorted((f["score"] for f in stored), reverse=True)
    record = b.reader.read_json("findings")
    assert record["thresholds"] == fm.THRESHOLDS and record["seconds"] < 60

