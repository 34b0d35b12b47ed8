"""End to end through the real commands: `mlflow run` entry points and the `mlflow-transfer` CLI,
each a subprocess against a temporary sqlite tracking store."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
from helpers import REPO
from helpers.cli import one_error_line, run_command
from helpers.servers import BIN
from helpers.tracking import TINY
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.tags import TAGS

pytestmark = pytest.mark.slow


def test_mlflow_run_main_logs_a_source_and_a_target_run(tracking_store):
    tmp, env = tracking_store.root, tracking_store.env
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local",
                           "--experiment-name", "e2e", "-P", f"set={TINY}", "-P", "sample_per_class=3",
                           "-P", "n_steps=4", "-P", "feature_vis_steps=1"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r.data.tags.get(TAGS.role): r for r in tracking_store.runs()}
    assert set(runs) == {"pipeline", "source", "target", "diagnostics"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    pipeline, source, target = runs["pipeline"], runs["source"], runs["target"]
    diag = runs["diagnostics"]
    assert diag.data.tags["mlflow.parentRunId"] == target.info.run_id  # nested under the target run
    assert diag.data.tags[TAGS.source_run_id] == source.info.run_id
    layers = [m.step for m in MlflowClient().get_metric_history(diag.info.run_id, "mean_best_similarity")]
    assert sorted(layers) == list(range(8))  # one point per analysis layer of alexnet-32
    local = mlflow.artifacts.download_artifacts(run_id=diag.info.run_id, artifact_path="diagnostics",
                                                dst_path=str(tmp / "dl"))
    bundle = PairBundle.open(local)
    assert bundle.manifest["runs"]["target"] == target.info.run_id
    assert bundle.manifest["sample_per_class"] == 3 and bundle.manifest["options"]["n_steps"] == 4
    assert bundle.manifest["options"]["feature_vis_steps"] == 1 and bundle.feature_vis("target", "conv1") is not None
    assert pipeline.data.params["set"] == TINY  # logged by `mlflow run` itself
    assert target.data.tags[TAGS.source_run_id] == source.info.run_id
    assert target.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert pipeline.data.tags[TAGS.pair_id] == target.data.tags[TAGS.pair_id]
    steps = [m.step for m in MlflowClient().get_metric_history(target.info.run_id, "acc_target_val")]
    assert sorted(steps) == [0, 1]
    assert source.info.run_id in proc.stdout and target.info.run_id in proc.stdout  # the summary
    # the summary says where report.html is, and it is there
    assert f"report at runs:/{diag.info.run_id}/report.html" in proc.stdout
    assert "report.html" in {a.path for a in MlflowClient().list_artifacts(diag.info.run_id)}
    # issue 14: main adds the pair's timeline to its diagnostics run (MLproject parameter timetravel, default on)
    assert "timetravel/manifest.json" in {a.path for a in MlflowClient().list_artifacts(diag.info.run_id, "timetravel")}
    assert f"timeline at runs:/{diag.info.run_id}/timetravel" in proc.stdout
    assert [m.step for m in MlflowClient().get_metric_history(diag.info.run_id, "timetravel_target_ppr")] == [1]
    # ... and report.html again, now with the timeline strip
    report = mlflow.artifacts.download_artifacts(run_id=diag.info.run_id, artifact_path="report.html",
                                                 dst_path=str(tmp / "report"))
    assert "<h2>Training timeline</h2>" in Path(report).read_text()
    assert "report_error.txt" not in {a.path for a in MlflowClient().list_artifacts(diag.info.run_id)}


def test_mlflow_run_finetune_with_unknown_run_fails_cleanly(tracking_store):
    tmp, env = tracking_store.root, tracking_store.env
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "finetune",
                           "-P", "source_run_id=doesnotexist", "-P", f"set={TINY}"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "mlflow-transfer: error: run 'doesnotexist' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr.split("mlflow-transfer: error")[0][-2000:]
    (run,) = tracking_store.runs()
    assert run.info.status == "FAILED"


@pytest.mark.parametrize("args, message", [
    (["main", "--set", "source.epoch=2"], "unknown key(s) `source.epoch`"),
    (["main", "--set", "model.name=vgg99"], "`model.name` must be one of"),
    (["main", "--recipe", "recipes/svhn_mnist.yaml", "--data-root", "/nonexistent"], "svhn: missing"),
    (["finetune", "--source-run-id", "0" * 32], "does not exist"),
])
def test_cli_user_errors_are_one_line(tracking_store, args, message):
    one_error_line(run_command(tracking_store.env, *args), message)


def test_interrupted_run_is_marked_failed(tracking_store):
    proc = subprocess.Popen([str(BIN / "mlflow-transfer"), "train-source", "--set",
                             TINY + ",source.epochs=200"], cwd=REPO, env=tracking_store.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    run = None
    while time.time() < deadline:  # wait until the run has logged its first epoch
        time.sleep(1)
        runs = tracking_store.runs()
        if runs and "loss" in runs[0].data.metrics:
            run = runs[0]
            break
    assert run is not None, "the run never logged an epoch"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted" in err
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
