"""`diagnose` against a real sqlite tracking store: bundle logged whole, tags, metrics, bad input."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pytest
import torch
from helpers.models import seeded
from helpers.tracking import log_model, tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.errors import DiagnosticsError, ModelError, RunLookupError
from mlflow_transfer.models import build_model
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking import run_pipeline
from mlflow_transfer.tracking import diagnose as diagnose_module
from mlflow_transfer.tracking.diagnose import diagnose

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1)


@pytest.fixture(scope="module")
def pair(module_store):
    """A source and a target run of the tiny recipe (the pipeline without its diagnose)."""
    return run_pipeline(tiny_recipe())


def _bundle(run_id, tmp_path):
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(tmp_path))
    return PairBundle.open(local)


def test_diagnose_a_target_run(pair, tmp_path):
    from ui.report import write_report

    run_id = diagnose(target_run_id=pair.target_run_id, options=dataclasses.replace(FAST, sample_per_class=2), report_writer=write_report)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    # the self-contained report lands at the artifact root, beside the bundle
    assert {"diagnostics", "report.html"} <= {a.path for a in MlflowClient().list_artifacts(run_id)}
    tags = run.data.tags
    assert tags[TAGS.role] == "diagnostics" and tags["mlflow.parentRunId"] == pair.target_run_id
    assert tags[TAGS.source_run_id] == pair.source_run_id and tags[TAGS.pair_id] == pair.pair_id
    b = _bundle(run_id, tmp_path)
    m = b.manifest
    assert m["runs"] == {"source": pair.source_run_id, "target": pair.target_run_id, "diagnostics": run_id}
    assert m["software"]["torch"] == torch.__version__ and m["options"]["n_steps"] == 4
    # at most 2 per class, domain and split
    from mlflow_transfer.tracking.context import prepare_data

    data = prepare_data(tiny_recipe())
    expected = sum(min(2, int((d.domain.targets[idx] == c).sum()))
                   for d in (data.source, data.target) for idx in (d.train_indices, d.val_indices)
                   for c in range(10))
    assert len(b.instances()["label"]) == expected
    # class with fewer instances than CV folds: the fallback is said and recorded
    assert any("fold" in note for note in b.summary()["notes"])
    # the transferability score recomputed from the runs' metric histories, trained epochs only
    client = MlflowClient()
    best = {r: max(p.value for p in client.get_metric_history(rid, "acc_target_val") if p.step >= 1)
            for r, rid in (("s", pair.source_run_id), ("t", pair.target_run_id))}
    assert run.data.metrics["transferability_score"] == pytest.approx(best["t"] - best["s"])
    assert run.data.metrics["target_val_accuracy"] == pytest.approx(best["t"])
    hist = b.history()
    assert set(hist["model"]) == {"source", "target"}
    _check_whole_validation_sets(b, pair, data)
    # issue 13: robustness is on by default: the manifest block on the whole target validation set, and the
    # run metrics equal the records they summarise
    assert m["robustness"]["basis"] == f"target validation set, {len(data.target.val_indices)} instances"
    curves, dirs = b.reader.read_table("robustness/curves"), b.reader.read_table("robustness/dir")
    for model in ("source", "target"):
        for attack in ("fgsm", "pgd"):
            i = [k for k, (mo, at, e, c) in enumerate(zip(curves["model"], curves["attack"], curves["epsilon"],
                                                          curves["class_index"]))
                 if (mo, at, e, c) == (model, attack, max(curves["epsilon"]), -1)]
            assert run.data.metrics[f"adv_acc_{model}_{attack}"] == pytest.approx(curves["accuracy"][i[0]])
    for attack in ("output", "feature"):
        i = list(zip(dirs["attack"], dirs["class_index"])).index((attack, -1))
        if np.isfinite(dirs["dir"][i]):
            assert run.data.metrics[f"dir_{attack}"] == pytest.approx(dirs["dir"][i])


def _weighted(table: dict, column: str) -> float:
    """Per-class accuracies weighted by support: the accuracy on the whole set."""
    acc, support = np.asarray(table[column], float), np.asarray(table["support"], float)
    return float(np.nansum(acc * support) / support.sum())  # a class without instances weighs 0


def _check_whole_validation_sets(b, pair, data):
    """The confusion tables rest on both domains' whole validation sets, whatever the analysis cap: the
    per-class accuracies weighted by support reproduce the runs' logged final accuracies."""
    final = {r: MlflowClient().get_run(rid).data.metrics for r, rid in (("source", pair.source_run_id),
                                                                       ("target", pair.target_run_id))}
    target, source = b.domain_confusion("target"), b.domain_confusion("source")
    assert int(np.sum(target["support"])) == len(data.target.val_indices)
    assert int(np.sum(source["support"])) == len(data.source.val_indices)
    assert b.statistics_basis() == {"basis": "whole validation set", "validation_counts": {
        "target": len(data.target.val_indices), "source": len(data.source.val_indices)}}
    for model in ("source", "target"):
        assert _weighted(target, f"{model}_accuracy") == pytest.approx(final[model]["final_acc_target_val"], abs=1e-6)
        assert _weighted(source, f"{model}_accuracy") == pytest.approx(final[model]["final_acc_source_val"], abs=1e-6)


def test_diagnose_a_pair_logged_outside_the_recipes(module_store, tmp_path):
    src, tgt = seeded(seed=1).eval(), build_model("alexnet-32", 10).eval()
    uris = []
    for model in (src, tgt):
        with mlflow.start_run():  # a user's own script: plain MLflow, no mlflow-transfer tags
            uris.append(log_model(model).model_uri)
    run_id = diagnose(source_model_uri=uris[0], target_model_uri=uris[1], recipe=tiny_recipe(), arch="alexnet-32",
                      options=dataclasses.replace(FAST, sample_per_class=2))
    b = _bundle(run_id, tmp_path)
    assert b.manifest["runs"]["source"] is None and b.layers == list(src.analysis_layers)
    with torch.no_grad():  # the bundle's predictions are those of the logged target model
        x = torch.stack([torch.zeros(3, 32, 32)])
        assert tgt(x).argmax(1).item() in range(10)
    assert b.cka().shape == (8, 8)


def test_unknown_layer_and_class(pair):
    with pytest.raises(DiagnosticsError, match="unknown layer"):
        diagnose(target_run_id=pair.target_run_id, options=DiagnoseOptions(layers=("conv9",), sample_per_class=1))
    with pytest.raises(DiagnosticsError, match="unknown class"):
        diagnose(target_run_id=pair.target_run_id, options=DiagnoseOptions(classes=("eleven",), sample_per_class=1))


def test_run_without_model_and_unresolvable_uri(pair):
    with mlflow.start_run() as bare:
        mlflow.set_tags({TAGS.role: "target", TAGS.source_run_id: pair.source_run_id})
    with pytest.raises(RunLookupError, match="no logged model"):
        diagnose(target_run_id=bare.info.run_id, recipe=tiny_recipe(), options=FAST)
    with pytest.raises(ModelError, match="does not resolve"):
        diagnose(source_model_uri="models:/m-doesnotexist", target_model_uri="models:/m-doesnotexist",
                 recipe=tiny_recipe(), options=FAST)
    with pytest.raises(RunLookupError, match="not a target run"):
        diagnose(target_run_id=pair.source_run_id, options=FAST)


def test_recipe_that_does_not_fit_the_models(pair):
    with pytest.raises(DiagnosticsError, match="do not fit the models"):
        diagnose(target_run_id=pair.target_run_id, recipe=tiny_recipe("data.image_size=16"), options=dataclasses.replace(FAST, sample_per_class=1))


def test_incompatible_architectures(module_store):
    with mlflow.start_run():
        uri = log_model().model_uri
    with pytest.raises(ModelError, match="does not match architecture 'vgg11_bn'"):
        diagnose(source_model_uri=uri, target_model_uri=uri, recipe=tiny_recipe(), arch="vgg11_bn", options=FAST)


def test_interrupted_diagnose_leaves_no_bundle_and_a_failed_run(pair, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(diagnose_module, "write_pair_bundle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diagnose(target_run_id=pair.target_run_id, options=dataclasses.replace(FAST, sample_per_class=1))
    run = mlflow.search_runs(filter_string=f"tags.`{TAGS.role}` = 'diagnostics'", output_format="list",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "FAILED"
    assert MlflowClient().list_artifacts(run.info.run_id, "diagnostics") == []


def test_list_pairs_and_fetch_once_into_the_cache(pair, tmp_path):
    import shutil
    from pathlib import Path

    from mlflow_transfer.errors import BundleError
    from mlflow_transfer.tracking.bundles import fetch_bundle, list_diagnosed_pairs

    run_id = diagnose(target_run_id=pair.target_run_id, options=dataclasses.replace(FAST, sample_per_class=1))
    listed = list_diagnosed_pairs(page_size=1)  # several pages
    assert run_id in [p["diagnostics_run_id"] for p in listed]
    assert all(p["pair_id"] == pair.pair_id for p in listed if p["target_run_id"] == pair.target_run_id)
    first = fetch_bundle(run_id, tmp_path / "cache")
    # remove the server's copy: the second fetch must come from the cache
    remote = Path(mlflow.get_run(run_id).info.artifact_uri.replace("file://", "")) / "diagnostics"
    shutil.rmtree(remote)
    second = fetch_bundle(run_id, tmp_path / "cache")
    assert second.manifest == first.manifest
    np.testing.assert_array_equal(second.cka(), first.cka())
    # a tampered cache copy is refused and (the server copy being gone) reported clearly
    (tmp_path / "cache" / run_id / "cka" / "matrix.npy").write_bytes(b"x")
    with pytest.raises(BundleError, match="no diagnostics bundle"):
        fetch_bundle(run_id, tmp_path / "cache")


def test_recipe_with_other_classes_than_the_models(pair, tmp_path):
    from PIL import Image

    for domain in ("a", "b"):
        for cls in ("cat", "dog"):
            (tmp_path / domain / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(tmp_path / domain / cls / f"{i}.png")
    recipe = tiny_recipe(f"data.source={{name: imagefolder, root: {tmp_path}, subset: a}}",
                  f"data.target={{name: imagefolder, root: {tmp_path}, subset: b}}", "data.per_class_cap=null")
    with pytest.raises(DiagnosticsError, match="predict 10 classes but the recipe's domains have 2"):
        diagnose(target_run_id=pair.target_run_id, recipe=recipe, options=dataclasses.replace(FAST, sample_per_class=1))


# ------------------------------------------------------------------ the transferability score (issue 11)

# The source domain is the target one, so the source model is already good on the target validation set;
# fine-tuning with a learning rate far too high then wrecks it: negative transfer, made of recipe options.
HURT = ("data.source.name=handwritten-digits", "data.source.size=null", "data.per_class_cap=40",
        "source.epochs=5", "source.lr=0.002", "target.lr=0.05")


def _app_badge(bundle_dir) -> str:
    """The transferability badge as the app's statistics tab draws it over ``bundle_dir``."""
    import panel as pn
    from helpers.views import drawn, find

    from ui.readers import MemorySource
    from ui.state import AppState
    from ui.tabs.statistics import StatisticsTab

    row = {"diagnostics_run_id": "d1", "recipe": "r", "model": "alexnet-32", "source_domain": "s",
           "target_domain": "t", "start_time": 1_700_000_000_000, "transferability_score": None,
           "target_accuracy": None, "frozen_layers": "[]"}
    state = AppState(MemorySource({"1": "e"}, {"1": [row]}, {"d1": bundle_dir}))
    return str(find(drawn(StatisticsTab(state=state)), pn.pane.HTML, "transferability").object)


def test_fine_tuning_that_hurts_gives_a_negative_score_shown_negative(module_store, tmp_path):
    hurt = run_pipeline(tiny_recipe(*HURT))
    client = MlflowClient()
    history = {r: {p.step: p.value for p in client.get_metric_history(rid, "acc_target_val")}
               for r, rid in (("source", hurt.source_run_id), ("target", hurt.target_run_id))}
    fine_tuned = max(v for s, v in history["target"].items() if s >= 1)
    trained = max(v for s, v in history["source"].items() if s >= 1)
    # the planted truth: the target's step 0 (the source model itself) beats every fine-tuned epoch, so
    # a score that counted it (the old one) would be near 0 instead of this
    assert history["target"][0] > fine_tuned + 0.3 and trained > fine_tuned + 0.3
    run_id = diagnose(target_run_id=hurt.target_run_id, options=dataclasses.replace(FAST, sample_per_class=1))
    b = _bundle(run_id, tmp_path)
    score = b.manifest["scores"]["transferability_score"]
    assert score == pytest.approx(fine_tuned - trained) and score < -0.3
    assert client.get_run(run_id).data.metrics["transferability_score"] == pytest.approx(score)
    assert "transferability_note" not in b.manifest
    badge = _app_badge(b.reader.root)
    assert f"{score:+.3f}".startswith("-") and f"{score:+.3f}" in badge and "#c0392b" in badge  # minus, red


def test_a_target_without_a_fine_tuned_epoch_gets_a_reason_instead_of_a_score(pair, tmp_path):
    from ui.report import write_report

    with mlflow.start_run() as bare:  # a target run logged by hand, stopped before its first epoch
        log_model(build_model("alexnet-32", 10).eval())
        mlflow.set_tags({TAGS.role: "target", TAGS.source_run_id: pair.source_run_id, TAGS.model: "alexnet-32"})
        mlflow.log_metric("acc_target_val", 0.3, step=0)
    run_id = diagnose(target_run_id=bare.info.run_id, recipe=tiny_recipe(),
                      options=dataclasses.replace(FAST, sample_per_class=1))
    b = _bundle(run_id, tmp_path)
    assert "transferability_score" not in b.manifest["scores"] and "target_val_accuracy" not in b.manifest["scores"]
    note = b.manifest["transferability_note"]
    assert "only step 0" in note and "before fine-tuning" in note and "target.epochs >= 1" in note
    assert b.summary()["transferability_note"] == note and b.transferability() == (None, note)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert "transferability_score" not in metrics and "target_val_accuracy" not in metrics
    assert "only step 0" in _app_badge(b.reader.root)
    page = write_report(b.reader.root, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "no score" in page and "only step 0" in page


def test_diagnose_records_the_device_and_each_models_chosen_steps(pair, tmp_path):
    # issue 12: the resolved device in the tag and the manifest; n_steps auto per model in the manifest,
    # the run's params and metrics (a loose tolerance keeps the search at its first candidate)
    options = dataclasses.replace(FAST, sample_per_class=2, n_steps="auto", completeness_tolerance=0.9)
    run_id = diagnose(target_run_id=pair.target_run_id, options=options, device="cpu")
    run = MlflowClient().get_run(run_id)
    assert run.data.tags[TAGS.device] == "cpu"
    m = _bundle(run_id, tmp_path).manifest
    assert m["runtime"]["device"] == "cpu" and m["runtime"]["device_option"] == "cpu"
    assert m["options"]["n_steps"] == "auto" and m["options"]["completeness_tolerance"] == 0.9
    for role in ("source", "target"):
        steps = m["conductance_steps"][role]
        assert (steps["n_steps"], steps["mode"], steps["met"]) == (8, "auto", True)
        assert run.data.params[f"n_steps_{role}"] == "8"
        assert run.data.metrics[f"completeness_error_{role}"] == pytest.approx(steps["completeness_error"])
    for trained in (pair.source_run_id, pair.target_run_id):  # the pipeline trained on auto = this CPU
        data = MlflowClient().get_run(trained).data
        assert data.tags[TAGS.device] == "cpu" and data.params["runtime.device"] == "auto"
