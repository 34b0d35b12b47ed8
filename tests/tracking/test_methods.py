"""Transfer methods (issue 13) end to end against a real sqlite store: one source run, a ReMoS-sliced and a
from-scratch target run from it (`run_pipeline(methods=...)`, as `main --methods` and the `remos` entry
point run it), each diagnosed; their tags, the slicing artifacts against the source model's weights, the
scratch run's fresh start; and the bad inputs that must stop before any run opens."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from helpers.cli import invoke, one_error_line
from helpers.tracking import TINY, Store, log_model, tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.errors import RecipeError
from mlflow_transfer.models import build_model
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking import run_pipeline
from mlflow_transfer.tracking.context import prepare_data
from mlflow_transfer.tracking.lookup import load_checkpoint, load_model_weights, logged_model_uri
from mlflow_transfer.training.slicing import slice_model

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=3)


@pytest.fixture(scope="module")
def methods(module_store):
    recipe = tiny_recipe("target.slice_ratio=0.05")
    result = run_pipeline(recipe, methods=("slice", "scratch"), diagnose_options=FAST)
    return recipe, result


def _run(run_id):
    return MlflowClient().get_run(run_id)


def test_one_source_run_one_target_run_per_method_all_finished_and_tagged(methods):
    recipe, result = methods
    assert list(result.method_runs) == ["slice", "scratch"]
    (slice_id, slice_diag), (scratch_id, scratch_diag) = result.method_runs.values()
    assert result.target_run_id == slice_id and result.diagnostics_run_id == slice_diag
    runs = {rid: _run(rid) for rid in (result.source_run_id, slice_id, scratch_id, slice_diag, scratch_diag,
                                       result.pipeline_run_id)}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    sliced, scratch = runs[slice_id].data.tags, runs[scratch_id].data.tags
    assert sliced[TAGS.method] == "slice" and sliced[TAGS.slice_ratio] == "0.05"
    assert TAGS.teacher_only not in sliced
    assert scratch[TAGS.method] == "scratch" and scratch[TAGS.teacher_only] == "true"
    assert TAGS.slice_ratio not in scratch
    # both from the one source run, which stays each pair's teacher; all nested under the pipeline run
    assert sliced[TAGS.source_run_id] == scratch[TAGS.source_run_id] == result.source_run_id
    for rid in (result.source_run_id, slice_id, scratch_id):
        assert runs[rid].data.tags["mlflow.parentRunId"] == result.pipeline_run_id
    pipeline = runs[result.pipeline_run_id].data.tags
    assert json.loads(pipeline[TAGS.method_runs]) == {"slice": slice_id, "scratch": scratch_id}
    assert runs[slice_id].data.params["target.method"] == "slice"  # each run logs its own recipe
    assert runs[scratch_id].data.params["target.method"] == "scratch"


def test_mask_artifact_loads_without_pickle_and_is_what_was_zeroed_in_the_source_weights(methods, tmp_path):
    recipe, result = methods
    slice_id = result.method_runs["slice"][0]
    folder = mlflow.artifacts.download_artifacts(run_id=slice_id, artifact_path="slicing", dst_path=str(tmp_path))
    with np.load(f"{folder}/mask.npz", allow_pickle=False) as npz:
        mask = {k: npz[k] for k in npz.files}
    summary = json.loads(open(f"{folder}/summary.json").read())
    source = load_model_weights(logged_model_uri(_run(result.source_run_id)), "alexnet-32", 10)
    start = load_checkpoint(slice_id, 0)  # the sliced model, before its first fine-tuning step
    src, got = source.state_dict(), start.state_dict()
    convs = {n for n, m in source.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(mask) == convs
    for name, m in mask.items():
        assert m.dtype == bool and m.shape == tuple(src[f"{name}.weight"].shape)
        w = got[f"{name}.weight"]
        assert (w[torch.as_tensor(m)] == 0).all()  # the masked weights start at zero
        assert torch.equal(w[torch.as_tensor(~m)], src[f"{name}.weight"][torch.as_tensor(~m)])  # the rest: source's
        assert summary["layers"][name] == {"weights": int(m.size), "zeroed": int(m.sum()), "ratio": m.sum() / m.size}
    total = sum(m.size for m in mask.values())
    assert summary["zeroed"] == sum(int(m.sum()) for m in mask.values()) == int(0.05 * total)
    assert summary["ratio"] == 0.05
    # and it is ReMoS's choice on the source model profiled on the target train set
    again, _ = slice_model(source, prepare_data(recipe).target.train, 0.05)
    assert all((again[k] == mask[k]).all() for k in mask)


def test_scratch_starts_from_fresh_seeded_weights_not_the_sources(methods):
    recipe, result = methods
    scratch_id = result.method_runs["scratch"][0]
    start = load_checkpoint(scratch_id, 0).state_dict()
    source = load_model_weights(logged_model_uri(_run(result.source_run_id)), "alexnet-32", 10).state_dict()
    torch.manual_seed(recipe.seed)
    fresh = build_model("alexnet-32", 10).state_dict()
    weights = [k for k in start if k.endswith(".weight")]
    assert all(torch.equal(start[k], fresh[k]) for k in weights)
    assert not any(torch.equal(start[k], source[k]) for k in weights)


def test_each_method_pair_diagnoses_like_any_other(methods):
    _, result = methods
    for method, (target_id, diag_id) in result.method_runs.items():
        diag = _run(diag_id)
        assert diag.info.status == "FINISHED", method
        assert diag.data.tags[TAGS.target_run_id] == target_id
        assert diag.data.tags[TAGS.source_run_id] == result.source_run_id
        assert "transferability_score" in diag.data.metrics


# --------------------------------------------------------------------------- bad input: no run opens


def _one_error(proc, *fragments):
    one_error_line(proc, *fragments)
    assert [r.info.run_id for r in Store.runs() if r.info.status == "RUNNING"] == []


@pytest.mark.parametrize("value", ["0", "1", "-1"])
def test_a_bad_slice_ratio_is_one_error_and_no_run(tracking_store, value):
    _one_error(invoke("main", "--set", f"{TINY},target.method=slice,target.slice_ratio={value}"),
               "Expected `target.slice_ratio` strictly between 0.0 and 1.0")
    assert tracking_store.runs() == []


@pytest.mark.parametrize("override", ["source.method=slice", "source.slice_ratio=0.1"])
def test_a_method_on_the_source_is_one_error_and_no_run(tracking_store, override):
    key = override.split("=")[0]
    _one_error(invoke("train-source", "--set", f"{TINY},{override}"), f"Expected `{key}` to be unset",
               f"set `target.{key.split('.')[1]}` instead")
    assert tracking_store.runs() == []


@pytest.mark.parametrize("methods, fragment", [("finetune,prune", "unknown ['prune']"),
                                               ("slice,slice", "a repeat in ['slice', 'slice']"),
                                               (",", "got nothing")])
def test_a_bad_methods_list_is_one_error_and_no_run(tracking_store, methods, fragment):
    _one_error(invoke("main", "--set", TINY, "--methods", methods),
               "Expected --methods as comma-separated transfer methods", fragment, "['finetune', 'slice', 'scratch']")
    assert tracking_store.runs() == []


def test_scratch_from_a_foreign_source_is_refused_before_the_run(tracking_store):
    from mlflow_transfer.tracking import finetune

    with mlflow.start_run() as run:  # a finished source run that imported another tool's model
        mlflow.set_tags({TAGS.role: "source", TAGS.model: "OwnNamesCNN",
                         TAGS.classes: json.dumps([str(d) for d in range(10)])})
        log_model()
    with pytest.raises(RecipeError, match=r"Expected `target\.method` finetune or slice .* got scratch"):
        finetune(tiny_recipe("target.method=scratch"), run.info.run_id)
    assert [r.info.run_id for r in tracking_store.runs()] == [run.info.run_id]


def test_main_methods_from_the_command_line_shares_one_source(tracking_store):
    proc = invoke("main", "--set", TINY, "--methods", "finetune,scratch", "--no-diagnose")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {r.data.tags[TAGS.role]: r for r in tracking_store.runs() if r.data.tags[TAGS.role] != "target"}
    targets = [r for r in tracking_store.runs() if r.data.tags[TAGS.role] == "target"]
    assert sorted(r.data.tags[TAGS.method] for r in targets) == ["finetune", "scratch"]
    assert {r.data.tags[TAGS.source_run_id] for r in targets} == {runs["source"].info.run_id}
    for r in targets:
        assert f"method {r.data.tags[TAGS.method]}: target run {r.info.run_id}" in proc.stdout


def test_the_remos_entry_point_parses_as_main_with_three_methods():
    import shlex

    import yaml
    from helpers import REPO

    from mlflow_transfer.cli import main

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["remos"]
    values = {k: shlex.quote(str(v["default"])) for k, v in entry["parameters"].items()}  # as mlflow run quotes
    args = shlex.split(entry["command"].format(**values))
    assert args[:3] == ["python", "-m", "mlflow_transfer.cli"]
    sub = main.make_context("mlflow-transfer", args[3:], resilient_parsing=True)
    name, command, rest = main.resolve_command(sub, args[3:])
    ctx = command.make_context(name, rest)
    assert name == "main" and ctx.params["methods"] == "finetune,slice,scratch"
    assert ctx.params["recipe"] == "recipes/digits_remos.yaml" and (REPO / ctx.params["recipe"]).is_file()
