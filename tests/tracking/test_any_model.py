"""Any PyTorch classifier logged with plain `mlflow.pytorch.log_model` (pt2), diagnosed end to end
without --arch against a real sqlite store, and opened by the app's readers (issue 12, point 1)."""

from __future__ import annotations

import dataclasses
import subprocess

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from helpers import REPO
from helpers.cli import invoke
from helpers.servers import BIN
from helpers.models import foreign
from helpers.tracking import TINY, tiny_recipe
from mlflow import MlflowClient
from torch import nn

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.errors import DiagnosticsError, ModelError
from mlflow_transfer.models.adapter import AdaptedNet, adapt_classifier
from mlflow_transfer.tracking.diagnose import diagnose, resolve_pair

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=1, stability_resamples=10)
EXAMPLE = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _log(model: nn.Module) -> str:
    """Log ``model`` as a user would: plain log_model with an input example (MLflow's pt2 format)."""
    with mlflow.start_run():
        return mlflow.pytorch.log_model(model, name="model", input_example=EXAMPLE.numpy(),
                                        pip_requirements=["torch"]).model_uri


@pytest.fixture(scope="module")
def logged(module_store):
    """kind → (source URI, target URI, the source model): the target is the source with other weights."""
    return {kind: (_log(foreign(kind, seed=0)), _log(foreign(kind, seed=1)), foreign(kind, seed=0))
            for kind in ("cnn", "vit", "resnet18")}


def _bundle(run_id, tmp_path):
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(tmp_path))
    return PairBundle.open(local)


def _diagnostics_runs():
    return [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
            if r.data.tags.get("transfer.role") == "diagnostics"]


@pytest.mark.parametrize("kind, plain, not_plain", [
    ("cnn", [("stem", "body.mix"), ("body.mix", "classify")], []),
    ("vit", [("blocks.0.fc1", "blocks.0.fc2")], [("blocks.0.attn.qkv", "blocks.0.attn.proj")]),
    ("resnet18", [("layer1.0.conv1", "layer1.0.conv2")], [("layer1.0.conv2", "layer1.1.conv1")]),
])
def test_a_logged_classifier_is_diagnosed_without_arch(logged, tmp_path, kind, plain, not_plain):
    source_uri, target_uri, model = logged[kind]
    pair = resolve_pair(source_model_uri=source_uri, target_model_uri=target_uri, recipe=tiny_recipe())
    assert isinstance(pair.target_model, AdaptedNet)
    reference = adapt_classifier(model, EXAMPLE)  # the eager model, before logging
    names = list(reference.analysis_layers)
    assert list(pair.target_model.analysis_layers) == names
    # the loaded source computes what the logged eager model computes
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(pair.source_model(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)

    run_id = diagnose(source_model_uri=source_uri, target_model_uri=target_uri, recipe=tiny_recipe(), options=FAST)
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    b = _bundle(run_id, tmp_path)
    assert list(b.layers) == names
    assert b.manifest["model"] == pair.target_model.arch
    weight_pairs = {(w["layer"], w["next_layer"]) for w in _weight_rows(b)}
    assert set(plain) <= weight_pairs <= set(reference.plain_pairs)
    notes = b.summary()["notes"]
    for prev, nxt in not_plain:
        assert (prev, nxt) not in weight_pairs
        assert any(f"no weight records for {prev} → {nxt}" in n for n in notes), notes
    # everything else is still computed for every layer
    assert b.cka().shape == (len(names), len(names))
    assert len(b.instances()["label"]) > 0


def _weight_rows(b: PairBundle) -> list[dict]:
    table = b.weights()
    keys = list(table)
    return [dict(zip(keys, row)) for row in zip(*(table[k] for k in keys))]


def test_the_cnn_bundle_opens_in_the_network_tab(logged, tmp_path):
    from helpers.views import drawn

    from ui.readers import MemorySource
    from ui.state import AppState
    from ui.tabs.network import NetworkTab

    source_uri, target_uri, _ = logged["cnn"]
    run_id = diagnose(source_model_uri=source_uri, target_model_uri=target_uri, recipe=tiny_recipe(), options=FAST)
    folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(tmp_path))
    state = AppState(MemorySource({"1": "pairs"}, {"1": [{"diagnostics_run_id": run_id}]}, {run_id: folder}))
    layout = drawn(NetworkTab(state=state))
    text = " ".join(str(getattr(o, "object", "")) for o in layout.select(lambda o: hasattr(o, "object")))
    assert "body.mix" in text or "stem" in text


def test_cli_diagnoses_model_uris_without_arch(logged):
    source_uri, target_uri, _ = logged["cnn"]
    done = invoke("diagnose", "--source-model-uri", source_uri, "--target-model-uri", target_uri,
                  "--recipe", "recipes/digits.yaml", "--set", TINY, "--sample-per-class", "1", "--n-steps", "4",
                  "--feature-vis-steps", "0", "--embedding-layer", "pool")
    assert done.returncode == 0, done.stderr[-2000:]
    run_id = done.stdout.split("diagnostics run ")[1].split(":")[0]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_mlproject_diagnose_takes_model_uris(logged, module_store):
    # the MLproject entry point passes the model-URI pair through to the same command
    source_uri, target_uri, _ = logged["cnn"]
    params = {"source_model_uri": source_uri, "target_model_uri": target_uri, "recipe": "recipes/digits.yaml",
              "set": TINY, "sample_per_class": "1", "n_steps": "4", "feature_vis_steps": "0",
              "embedding_layer": "pool", "completeness_tolerance": "0.05"}
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "diagnose",
                           "--experiment-name", module_store.experiment,
                           *[a for k, v in params.items() for a in ("-P", f"{k}={v}")]],
                          cwd=module_store.root, env=module_store.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = MlflowClient().get_run(proc.stdout.split("diagnostics run ")[1].split(":")[0])
    assert run.info.status == "FINISHED" and run.data.params["embedding_layer"] == "pool"
    assert run.data.params["source_model_uri"] == source_uri


def test_bad_input_leaves_no_run(logged, module_store):
    source_uri, target_uri, _ = logged["cnn"]
    before = len(_diagnostics_runs())
    # a --layers name that is not a module: the discovered names are listed
    with pytest.raises(DiagnosticsError, match=r"analysis layers .*'stem', 'body.mix', 'classify'.*unknown layer\(s\) \['conv9'\]"):
        diagnose(source_model_uri=source_uri, target_model_uri=target_uri, recipe=tiny_recipe(),
                 options=dataclasses.replace(FAST, layers=("conv9",)))
    # an embedding layer that is not a module
    with pytest.raises(ModelError, match="embedding-layer.*'nope'"):
        diagnose(source_model_uri=source_uri, target_model_uri=target_uri, recipe=tiny_recipe(),
                 embedding_layer="nope", options=FAST)
    # an output size that matches no class list (7 outputs, 10 digits)
    seven = _log(foreign("cnn", 7))
    with pytest.raises(DiagnosticsError, match="predict 7 classes but the recipe's domains have 10"):
        diagnose(source_model_uri=seven, target_model_uri=seven, recipe=tiny_recipe(), options=FAST)
    # an input size the model was not logged for
    with pytest.raises(DiagnosticsError, match="logged for 32×32 inputs; set data.image_size=32"):
        diagnose(source_model_uri=source_uri, target_model_uri=target_uri, recipe=tiny_recipe("data.image_size=16"),
                 options=FAST)
    # a PyTorch model that is not a classifier (feature maps out)
    maps = _log(nn.Sequential(nn.Conv2d(3, 4, 3)).eval())
    with pytest.raises(ModelError, match=r"classifier returning logits \(N, classes\)"):
        diagnose(source_model_uri=maps, target_model_uri=maps, recipe=tiny_recipe(), options=FAST)
    # not a PyTorch model at all
    from sklearn.linear_model import LogisticRegression

    with mlflow.start_run():
        clf = LogisticRegression().fit(np.eye(2), [0, 1])
        sk = mlflow.sklearn.log_model(clf, name="model", pip_requirements=["scikit-learn"]).model_uri
    with pytest.raises(ModelError, match="PyTorch model"):
        diagnose(source_model_uri=sk, target_model_uri=sk, recipe=tiny_recipe(), options=FAST)
    # two different architectures
    with pytest.raises(DiagnosticsError, match="same analysis layers"):
        diagnose(source_model_uri=source_uri, target_model_uri=logged["vit"][0], recipe=tiny_recipe(), options=FAST)
    assert len(_diagnostics_runs()) == before
    assert not [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if r.info.status == "RUNNING"]


def test_finetune_from_a_model_someone_else_logged(logged):
    from mlflow_transfer.tags import TAGS
    from mlflow_transfer.tracking import run_pipeline
    from mlflow_transfer.tracking.lookup import load_classifier, logged_model_uri

    source_uri, _, model = logged["cnn"]
    result = run_pipeline(tiny_recipe(f"source.model_uri={source_uri}"), diagnose_options=FAST)
    client = MlflowClient()
    source, target = client.get_run(result.source_run_id), client.get_run(result.target_run_id)
    assert source.data.tags[TAGS.source_model_uri] == source_uri
    assert source.data.tags[TAGS.model] == target.data.tags[TAGS.model] == "pytorch:OwnNamesCNN"
    # the source run's one evaluation is the imported model's own accuracy, at step 0 and step 1
    history = client.get_metric_history(result.source_run_id, "acc_target_val")
    assert sorted(p.step for p in history) == [0, 1] and len({p.value for p in history}) == 1
    # the source run re-logs the same model under the original names; the target was trained from it
    again = load_classifier(logged_model_uri(source), 10, image_size=32)
    tuned = load_classifier(logged_model_uri(target), 10, image_size=32)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    assert list(tuned.analysis_layers) == ["stem", "body.mix", "classify"]
    assert not torch.equal(tuned.analysis_layers["stem"].weight, model.stem.weight)
    assert client.get_run(result.diagnostics_run_id).info.status == "FINISHED"
    assert "transferability_score" in client.get_run(result.diagnostics_run_id).data.metrics


def test_a_pickled_foreign_model_only_with_the_opt_in(module_store):
    """A module pickled by log_model(serialization_format="pickle") runs code when loaded: refused unless
    trusted; trusted, it is adapted as the eager module it is (its graph read by torch.export)."""
    with mlflow.start_run():
        uri = mlflow.pytorch.log_model(foreign("cnn"), name="model", input_example=EXAMPLE.numpy(),
                                       serialization_format="pickle", pip_requirements=["torch"]).model_uri
    with pytest.raises(ModelError, match="trust-pickled-models"):
        resolve_pair(source_model_uri=uri, target_model_uri=uri, recipe=tiny_recipe())
    pair = resolve_pair(source_model_uri=uri, target_model_uri=uri, recipe=tiny_recipe(), trust_pickled=True)
    assert isinstance(pair.source_model, AdaptedNet) and type(pair.source_model.net).__name__ == "OwnNamesCNN"
    assert pair.source_model.plain_pairs == {("stem", "body.mix"), ("body.mix", "classify")}


def test_a_model_exported_for_one_batch_size_is_refused(module_store):
    """A forward that fixes the batch size (here a reshape to the input example's 2 rows) makes
    torch.export specialise it: such a model cannot be diagnosed in batches, and the message says why."""
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 8, stride=8), nn.Linear(4 * 16, 10)

        def forward(self, x):
            return self.head(self.conv(x).reshape(2, -1))

    uri = _log(Fixed().eval())
    with pytest.raises(ModelError, match="take any batch size"):
        resolve_pair(source_model_uri=uri, target_model_uri=uri, recipe=tiny_recipe())
