"""Transferability estimated before fine-tuning (issue 15) on real target runs of the tiny recipe: each
target run logs ``logme``, ``leep`` and ``transferability_estimate_seconds``, equal to
`estimate_transferability` recomputed on the source model and the target training data; a scratch run
is scored on its teacher (the source model, not its fresh start); an estimate that cannot be made leaves
a note and the run goes on."""

from __future__ import annotations

import mlflow
import pytest
import torch
from helpers.tracking import tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.diagnostics.transferability import estimate_transferability
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking.context import prepare_data
from mlflow_transfer.tracking.lookup import load_logged_model, resolve_source_run
from mlflow_transfer.tracking.runs import finetune, log_transferability_estimates, train_source


@pytest.fixture(scope="module")
def runs(module_store):
    recipe = tiny_recipe()
    data = prepare_data(recipe)
    source_id = train_source(recipe, data=data)
    target_id = finetune(recipe, source_id, data=data)
    scratch_id = finetune(tiny_recipe("target.method=scratch"), source_id, data=data)
    return recipe, data, source_id, target_id, scratch_id


def test_target_run_logs_both_estimates_equal_to_a_recomputation_on_the_source_model(runs, one_thread):
    recipe, data, source_id, target_id, _ = runs
    metrics = MlflowClient().get_run(target_id).data.metrics
    assert {"logme", "leep", "transferability_estimate_seconds"} <= set(metrics)
    source = load_logged_model(resolve_source_run(source_id))
    expected = estimate_transferability(source, data.target.train)
    assert expected["n"] == len(data.target.train_indices)
    assert metrics["logme"] == pytest.approx(expected["logme"], rel=1e-5, abs=1e-6)
    assert metrics["leep"] == pytest.approx(expected["leep"], rel=1e-5, abs=1e-6)
    assert metrics["transferability_estimate_seconds"] > 0
    assert -torch.log(torch.tensor(10.0)).item() - 1e-6 <= metrics["leep"] <= 0  # a 10-class source, mean log-prob
    # logged once, before training (step 0, one value)
    assert [m.step for m in MlflowClient().get_metric_history(target_id, "logme")] == [0]


def test_the_estimate_is_of_the_source_model_not_the_trained_target(runs, one_thread):
    recipe, data, source_id, target_id, _ = runs
    from mlflow_transfer.tracking.lookup import load_model_weights, logged_model_uri

    trained = load_model_weights(logged_model_uri(MlflowClient().get_run(target_id)), "alexnet-32", 10)
    after = estimate_transferability(trained, data.target.train)
    logged = MlflowClient().get_run(target_id).data.metrics
    assert after["logme"] != pytest.approx(logged["logme"], rel=1e-5)  # the run logged the starting point


def test_scratch_run_is_estimated_on_its_teacher(runs):
    _, _, _, target_id, scratch_id = runs
    finetuned, scratch = (MlflowClient().get_run(r).data.metrics for r in (target_id, scratch_id))
    assert MlflowClient().get_run(scratch_id).data.tags[TAGS.method] == "scratch"
    assert scratch["logme"] == pytest.approx(finetuned["logme"], rel=1e-6)
    assert scratch["leep"] == pytest.approx(finetuned["leep"], rel=1e-6)


class _OneClass(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i)), 0


def test_an_estimate_that_cannot_be_made_leaves_a_note_and_no_metric(module_store, caplog):
    from mlflow_transfer.models import build_model

    with mlflow.start_run() as run:
        got = log_transferability_estimates(build_model("alexnet-32", 10), _OneClass())
    assert got is None
    finished = MlflowClient().get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert "at least two classes" in finished.data.tags[TAGS.estimate_note]
    assert not {"logme", "leep"} & set(finished.data.metrics)
    assert any("no transferability estimate" in r.getMessage() for r in caplog.records)
