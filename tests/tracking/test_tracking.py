"""Source training, fine-tuning, the pipeline and their error paths, against a real sqlite store."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from helpers.tracking import tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.errors import DataError, ModelError, RunLookupError
from mlflow_transfer.plugin import transfer_context
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking import finetune, load_checkpoint, resolve_source_run, run_pipeline, train_source
from mlflow_transfer.tracking.lookup import logged_model_uri


def tiny(*extra):
    return tiny_recipe("source.epochs=2", *extra)  # two source epochs: a checkpoint to fine-tune from


@pytest.fixture(scope="module")
def source_id(module_store):
    return train_source(tiny())


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_source_run_logs_metrics_tags_checkpoints_and_model(source_id):
    client = MlflowClient()
    run = client.get_run(source_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[TAGS.role] == "source" and tags[TAGS.recipe] == "digits"
    assert tags[TAGS.source_domain] == "printed-digits" and tags[TAGS.target_domain] == "handwritten-digits"
    assert json.loads(tags[TAGS.classes]) == [str(d) for d in range(10)]
    assert tags[TAGS.model] == "alexnet-32" and TAGS.version in tags  # version: the run-context plugin
    for name in ("acc_source_train", "acc_source_val", "acc_target_train", "acc_target_val"):
        steps = [m.step for m in client.get_metric_history(source_id, name)]
        assert sorted(steps) == [0, 1, 2]
    assert sorted(m.step for m in client.get_metric_history(source_id, "loss")) == [1, 2]
    assert {"final_acc_target_val", "final_acc_target_train"} <= set(run.data.metrics)
    assert run.data.params["source.epochs"] == "2"
    ckpts = sorted(a.path for a in client.list_artifacts(source_id, "checkpoints"))
    assert ckpts == [f"checkpoints/epoch_{e:03d}.pt" for e in range(3)]

    # The logged model (pt2, with a signature) computes what the last checkpoint computes.
    uri = logged_model_uri(run)
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and info.flavors["pytorch"]
    exported = mlflow.pytorch.load_model(uri)
    last = load_checkpoint(source_id, 2).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), last(x))


def test_final_metrics_match_last_epoch(source_id):
    client = MlflowClient()
    run = client.get_run(source_id)
    history = client.get_metric_history(source_id, "acc_target_val")
    last = max(history, key=lambda m: m.step).value
    assert run.data.metrics["final_acc_target_val"] == pytest.approx(last)


def test_finetune_starts_from_the_source_model_and_freezes(source_id):
    target_id = finetune(tiny("target.freeze_depth=2"), source_id)
    run = MlflowClient().get_run(target_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAGS.role] == "target" and run.data.tags[TAGS.source_run_id] == source_id
    assert run.data.tags[TAGS.pair_id].endswith(target_id[:8])
    source_final = _state(load_checkpoint(source_id, 2))
    start = _state(load_checkpoint(target_id, 0))
    assert all(torch.equal(source_final[k], start[k]) for k in source_final)
    end = _state(load_checkpoint(target_id, 1))
    for layer in ("conv1", "conv2"):  # frozen: bit-identical to the source
        assert torch.equal(end[f"embedding.{layer}.weight"], source_final[f"embedding.{layer}.weight"])
    assert not torch.equal(end["head.fc8.weight"], source_final["head.fc8.weight"])
    assert json.loads(run.data.tags[TAGS.frozen_layers]) == ["conv1", "conv2"]


def test_finetune_from_a_source_checkpoint(source_id):
    target_id = finetune(tiny(), source_id, source_epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(_state(load_checkpoint(source_id, 1)).values(),
                                                   _state(load_checkpoint(target_id, 0)).values()))


def test_pipeline_reuses_an_identical_finished_source(module_store):
    # seed 3: no other test trained this source in the module's experiment
    first = run_pipeline(tiny("seed=3"))
    second = run_pipeline(tiny("seed=3", "target.lr=0.0001"))  # only the target differs
    assert not first.source_reused and second.source_reused
    assert second.source_run_id == first.source_run_id
    third = run_pipeline(tiny("seed=3", "source.lr=0.002"))
    assert not third.source_reused and third.source_run_id != first.source_run_id
    parent = MlflowClient().get_run(first.pipeline_run_id)
    assert parent.data.tags[TAGS.role] == "pipeline" and parent.data.tags[TAGS.pair_id] == first.pair_id
    child = MlflowClient().get_run(first.target_run_id)
    assert child.data.tags["mlflow.parentRunId"] == first.pipeline_run_id


def test_finetune_rejects_unknown_run(module_store):
    with pytest.raises(RunLookupError, match="does not exist"):
        finetune(tiny(), "0123456789abcdef0123456789abcdef")


def test_finetune_rejects_a_run_that_is_not_a_source(source_id):
    target_id = finetune(tiny(), source_id)
    with pytest.raises(RunLookupError, match="not a source run"):
        resolve_source_run(target_id)


def test_finetune_rejects_a_source_without_model(module_store):
    with mlflow.start_run() as run:
        mlflow.set_tags({TAGS.role: "source", TAGS.model: "alexnet-32", TAGS.classes: json.dumps(list("0123456789"))})
    with pytest.raises(RunLookupError, match="no logged model"):
        finetune(tiny(), run.info.run_id)


def test_finetune_rejects_a_failed_source(module_store):
    with pytest.raises(ModelError):
        train_source(tiny("model.weights=/nonexistent/weights.pt"))
    failed = mlflow.search_runs(filter_string=f"tags.`{TAGS.role}` = 'source'", output_format="list",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert failed.info.status == "FAILED"  # a run that failed never looks FINISHED
    with pytest.raises(RunLookupError, match="FAILED"):
        finetune(tiny(), failed.info.run_id)


def test_corrupt_checkpoint_is_reported(module_store, tmp_path):
    bad = tmp_path / "epoch_001.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with mlflow.start_run() as run:
        mlflow.set_tags({TAGS.model: "alexnet-32", TAGS.classes: json.dumps(list("0123456789"))})
        mlflow.log_artifact(str(bad), "checkpoints")
    with pytest.raises(ModelError, match="unreadable"):
        load_checkpoint(run.info.run_id, 1)
    with pytest.raises(RunLookupError, match="no checkpoint for epoch 7"):
        load_checkpoint(run.info.run_id, 7)


def test_class_mismatch_between_source_run_and_recipe(source_id, tmp_path):
    # An ImageFolder target with other classes than the digits the source was trained on.
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "web" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / "web" / cls / f"{i}.png")
    recipe = tiny(f"data.target={{name: imagefolder, root: {tmp_path}, subset: web}}")
    with pytest.raises(DataError, match="only in the source"):
        finetune(recipe, source_id)


def test_run_context_plugin_tags_only_package_runs(module_store):
    with transfer_context(**{TAGS.recipe: "x"}), mlflow.start_run() as inside:
        pass
    with mlflow.start_run() as outside:
        pass
    tags_in = MlflowClient().get_run(inside.info.run_id).data.tags
    tags_out = MlflowClient().get_run(outside.info.run_id).data.tags
    assert TAGS.version in tags_in and tags_in[TAGS.recipe] == "x"
    assert TAGS.version not in tags_out
