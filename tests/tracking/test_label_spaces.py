"""Label spaces that differ (issue 12) end to end, against a real sqlite store: a source trained on digits
0–4 fine-tuned with a new head for 5–9 (nothing shared), and one trained on 0–9 fine-tuned for 0–4 (given
in reverse order, so the target's label of a class is not the source's: the mapping by name is seen).
Each pair is trained, diagnosed, and read back by the bundle reader, the app's tabs and the report."""

from __future__ import annotations


import mlflow
import numpy as np
import panel as pn
import pytest
import torch
from captum.attr import LayerConductance
from helpers.tracking import tiny_recipe
from helpers.views import drawn, find
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking import run_pipeline
from mlflow_transfer.tracking.context import prepare_data
from mlflow_transfer.tracking.diagnose import diagnose
from mlflow_transfer.tracking.lookup import load_model_weights, logged_model_uri

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=3)
DISJOINT = ("source.classes=[0,1,2,3,4]", "target.classes=[5,6,7,8,9]", "target.new_head=true")
SUBSET = ("target.classes=[4,3,2,1,0]", "target.new_head=true")


class _Pairs(dict):
    """name → (recipe, pipeline result, diagnostics run id, opened bundle, report path), each pair trained
    and diagnosed when a test first asks for it."""

    def __init__(self, folders):
        super().__init__()
        self.folders = folders

    def __missing__(self, name):
        from ui.report import write_report

        recipe = tiny_recipe(*{"disjoint": DISJOINT, "subset": SUBSET}[name])
        result = run_pipeline(recipe)
        run_id = diagnose(target_run_id=result.target_run_id, options=FAST, report_writer=write_report)
        local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(self.folders.mktemp(name)))
        self[name] = (recipe, result, run_id, PairBundle.open(f"{local}/diagnostics"), f"{local}/report.html")
        return self[name]


@pytest.fixture(scope="module")
def pairs(module_store, tmp_path_factory):
    return _Pairs(tmp_path_factory)


def _metrics(run_id):
    return MlflowClient().get_run(run_id).data


def test_runs_record_both_label_spaces_and_evaluate_only_what_each_model_knows(pairs):
    recipe, result, _, _, _ = pairs["disjoint"]
    source, target = _metrics(result.source_run_id), _metrics(result.target_run_id)
    assert source.tags[TAGS.classes] == '["0", "1", "2", "3", "4"]'
    assert target.tags[TAGS.classes] == '["5", "6", "7", "8", "9"]'
    assert target.tags[TAGS.source_classes] == '["0", "1", "2", "3", "4"]' and target.tags[TAGS.new_head] == "true"
    # nothing shared: neither model is scored on the other domain's classes it cannot predict
    assert not any(k.startswith(("acc_target", "best_acc_target")) for k in source.metrics)
    assert not any(k.startswith(("acc_source", "best_acc_source")) for k in target.metrics)
    # the target model holds the source's weights below a fresh 5-way head
    t = load_model_weights(logged_model_uri(MlflowClient().get_run(result.target_run_id)), "alexnet-32", 5)
    assert t.analysis_layers["fc8"].out_features == 5
    # the subset pair: the source (10 classes) is evaluated on the target's classes, mapped by name
    _, sub, _, _, _ = pairs["subset"]
    metrics = _metrics(sub.source_run_id).metrics
    assert "acc_target_val" in metrics and "acc_source_val" in metrics


def test_nothing_shared_diagnoses_the_layers_and_says_there_are_no_class_level_records(pairs):
    _, result, run_id, b, report = pairs["disjoint"]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    spaces = b.label_spaces()
    assert spaces == {"source": list("01234"), "target": list("56789"), "shared": [], "differ": True}
    assert b.classes == list("5678901234")  # the target's classes first, then the source's others
    # class-level records: none, and a note says why
    assert b.compared_classes == [] and len(b.important_neurons()["neuron"]) == 0
    assert len(b.weights()["model"]) == 0
    assert any("no shared classes" in n for n in b.summary()["notes"])
    # layer-level records: CKA, the pooled comparison, the instances of both domains, all-class discriminability
    assert b.cka().shape == (8, 8) and np.isfinite(b.cka()).all()
    comparison = b.layer_comparison()
    assert set(comparison["class_index"]) == {-1}
    share = dict(zip(comparison["layer"], comparison["inherited_weight_share"]))
    assert np.isfinite(share["conv2"]) and np.isnan(share["fc7"])  # nothing inherited into the new head
    assert set(b.instances()["domain"]) == {0, 1}
    assert np.isfinite(b.discriminability("__all__")["cv_mean"])
    # the source model's accuracy on classes it does not know is undefined, not 0
    confusion = b.confusion()
    assert np.isnan(confusion["source_accuracy"]).all()
    # the score compares each model on its own task, and says so
    client = MlflowClient()
    best = {k: max(p.value for p in client.get_metric_history(rid, metric) if p.step >= 1)
            for k, rid, metric in (("s", result.source_run_id, "acc_source_val"),
                                   ("t", result.target_run_id, "acc_target_val"))}
    assert _metrics(run_id).metrics["transferability_score"] == pytest.approx(best["t"] - best["s"])
    assert "own" in b.transferability_basis()
    page = open(report, encoding="utf-8").read()
    assert "No shared classes" in page and "shared classes" in page


def test_shared_classes_are_analysed_with_each_models_own_index_of_the_class(pairs):
    recipe, result, run_id, b, report = pairs["subset"]
    spaces = b.label_spaces()
    assert spaces["shared"] == list("43210") and spaces["target"] == list("43210")
    assert spaces["source"] == list("0123456789")
    assert b.compared_classes == list("43210")
    assert set(b.important_neurons()["class_index"]) == {0, 1, 2, 3, 4}
    # conductance towards the right logit: class "3" is the target's label 1 and the source's label 3
    data = prepare_data(recipe)
    table = b.instances()
    rows = np.flatnonzero((np.asarray(table["domain"]) == 1) & (np.asarray(table["label"]) == b.classes.index("3")))
    images = torch.stack([data.target.domain.dataset[int(table["index"][r])][0] for r in rows])
    uri = {r: logged_model_uri(MlflowClient().get_run(rid))
           for r, rid in (("source", result.source_run_id), ("target", result.target_run_id))}
    models = {"source": load_model_weights(uri["source"], "alexnet-32", 10),
              "target": load_model_weights(uri["target"], "alexnet-32", 5)}

    def captum(model, logit):
        # the trapezoid rule from captum: the mean of its left-point sums run both ways along the path
        lc = LayerConductance(model, model.analysis_layers["fc7"])
        forward, backward = (lc.attribute(x, base, target=logit, n_steps=FAST.n_steps,
                                          method="riemann_trapezoid").detach().numpy()
                             for x, base in ((images, 0.0), (torch.zeros_like(images), images)))
        return (forward - backward) / 2

    for model, own, other in (("source", 3, 1), ("target", 1, 3)):
        stored = b.conductance(model, "fc7")[rows]
        ref = captum(models[model], own)
        scale = np.abs(ref).max()
        assert np.abs(stored - ref).max() <= 1e-3 * scale, model
        assert np.abs(stored - captum(models[model], other)).max() > 1e-2 * scale, model  # the wrong logit differs
    # predictions are stored in the pair's label space: the source's argmax index, mapped by name
    pred = np.asarray(table["pred_source"])[rows]
    with torch.no_grad():
        own_pred = models["source"](images).argmax(1).numpy()
    assert [b.classes[p] for p in pred] == [data.source_classes[p] for p in own_pred]
    page = open(report, encoding="utf-8").read()
    assert "Shared classes" in page and "No shared classes" not in page
    # the source knows every target class: the paper's score, the source on the target validation set
    client = MlflowClient()
    best = {k: max(p.value for p in client.get_metric_history(rid, "acc_target_val") if p.step >= 1)
            for k, rid in (("s", result.source_run_id), ("t", result.target_run_id))}
    assert _metrics(run_id).metrics["transferability_score"] == pytest.approx(best["t"] - best["s"])
    assert b.transferability_basis() is None


def test_the_app_says_which_classes_are_shared_and_offers_only_those(pairs):
    from ui.readers import MemorySource
    from ui.state import AppState
    from ui.tabs.features import FeaturesTab
    from ui.tabs.network import NetworkTab
    from ui.tabs.statistics import StatisticsTab

    def state(bundle):
        row = {"diagnostics_run_id": "d1", "recipe": "digits", "model": "alexnet-32", "source_domain": "s",
               "target_domain": "t", "start_time": 1_700_000_000_000, "transferability_score": None,
               "target_accuracy": None, "frozen_layers": "[]"}
        return AppState(MemorySource({"1": "pairs"}, {"1": [row]}, {"d1": bundle}))

    disjoint, subset = pairs["disjoint"][3], pairs["subset"][3]
    note = str(find(drawn(StatisticsTab(state=state(disjoint))), pn.pane.HTML, "label-spaces").object)
    assert "No shared classes" in note and "5, 6, 7, 8, 9" in note
    network = NetworkTab(state=state(disjoint))
    drawn(network)
    assert network._select.options == [] and network._select.disabled
    message = str(find(drawn(network), pn.pane.Markdown, "network").object)
    assert "not known to both models" in message
    note = str(find(drawn(StatisticsTab(state=state(subset))), pn.pane.HTML, "label-spaces").object)
    assert "Shared classes" in note and "4, 3, 2, 1, 0" in note
    network = NetworkTab(state=state(subset))
    drawn(network)
    assert network._select.options == list("43210")
    features = FeaturesTab(state=state(subset))
    drawn(features)
    assert list(features._select.options) == ["all classes", *"43210"]
    # nothing shared: every tab still draws (the all-class and layer-level views), without an error box
    from ui.tabs.instances import InstancesTab

    for tab in (FeaturesTab, InstancesTab, StatisticsTab, NetworkTab):
        layout = drawn(tab(state=state(disjoint)))
        assert [a for a in layout.select(pn.pane.Alert) if a.name == "view-error"] == [], tab.__name__
    features = FeaturesTab(state=state(disjoint))
    drawn(features)
    assert list(features._select.options) == ["all classes"]
