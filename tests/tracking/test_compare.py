"""The compare listing (issue 16) against a real sqlite store: a tiny diagnosed pair (its summary tag checked
against its bundle) and hand-made runs logged through MlflowClient (join, settings that differ,
comparability, undiagnosed and failed pairs, paging, the sweep filter, damaged tags)."""

from __future__ import annotations

import hashlib
import json
import math

import mlflow
import numpy as np
import pytest
from helpers.compare import DIGITS, Runs
from helpers.servers import mlflow_server
from helpers.tracking import tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.errors import RunLookupError, TrackingUnavailableError
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking import run_pipeline
from mlflow_transfer.tracking.compare import (
    OUTCOMES,
    ROW_KEYS,
    SUMMARY_LIMIT,
    classes_hash,
    list_compare_rows,
    parse_summary,
    summary_tag,
)
from mlflow_transfer.tracking.diagnose import diagnose

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=2)


@pytest.fixture(scope="module")
def diagnosed(module_store):
    """The tiny recipe's pair, diagnosed: (pipeline result, diagnostics run id)."""
    pair = run_pipeline(tiny_recipe())
    return pair, diagnose(target_run_id=pair.target_run_id, options=FAST)


def test_the_summary_tag_agrees_with_the_bundle(diagnosed, tmp_path):
    pair, run_id = diagnosed
    run = MlflowClient().get_run(run_id)
    raw = run.data.tags[TAGS.summary]
    assert len(raw) < SUMMARY_LIMIT and json.loads(raw)["v"] == 1
    summary = parse_summary(raw)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(tmp_path))
    bundle = PairBundle.open(local)
    table = bundle.layer_comparison()
    overall = np.asarray(table["class_index"]) == -1  # the "__all__" rows, one per depth
    share = np.asarray(table["inherited_weight_share"], dtype=float)[overall]
    depth = np.asarray(table["depth"])[overall]
    assert summary["layers"] == list(bundle.layers) == json.loads(run.data.tags[TAGS.layers])
    np.testing.assert_allclose(np.array(summary["inherited_share"], dtype=float), share[np.argsort(depth)])
    diagonal = [float(bundle.cka()[i, i]) for i in range(len(bundle.layers))]
    assert len(summary["cka"]) == len(diagonal)
    for got, want in zip(summary["cka"], diagonal):
        assert (got is None and not math.isfinite(want)) or got == pytest.approx(want)
    finite = [x for x in diagonal if math.isfinite(x)]
    assert finite, "the tiny pair has CKA values to average"
    assert run.data.metrics["cka_mean"] == pytest.approx(sum(finite) / len(finite))
    assert summary["cka_mean"] == pytest.approx(sum(finite) / len(finite))
    # the target label space, hashed as the contract says, and as the target run's classes tag hashes
    target_classes = json.loads(MlflowClient().get_run(pair.target_run_id).data.tags[TAGS.classes])
    assert summary["classes_hash"] == hashlib.sha256(json.dumps(target_classes).encode()).hexdigest()[:12]
    assert summary["n_classes"] == len(target_classes) == 10


def test_a_diagnosed_pair_is_a_row_of_its_runs_outcomes(diagnosed, module_store):
    pair, run_id = diagnosed
    listing = list_compare_rows(module_store.experiment_id)
    assert [r["target_run_id"] for r in listing.rows] == [pair.target_run_id]
    row = listing.rows[0]
    diag = MlflowClient().get_run(run_id)
    target = MlflowClient().get_run(pair.target_run_id)
    assert row["diagnostics_run_id"] == run_id and row["source_run_id"] == pair.source_run_id
    assert row["diagnostics_status"] == row["target_status"] == "FINISHED" and row["command"] is None
    assert row["model"] == "alexnet-32" and row["method"] == "finetune" and row["sweep_id"] is None
    assert row["name"] == target.info.run_name and row["experiment_id"] == module_store.experiment_id
    assert row["target_accuracy"] == diag.data.metrics["target_val_accuracy"]
    assert row["transferability_score"] == diag.data.metrics["transferability_score"]
    assert row["logme"] == target.data.metrics["logme"] and row["cka_mean"] == diag.data.metrics["cka_mean"]
    assert row["domain_cv_accuracy"] == diag.data.metrics["domain_cv_accuracy"]
    assert row["layers"] == parse_summary(diag.data.tags[TAGS.summary])["layers"]
    # the setting is the recipe as the target run logged it, without the data-size counts
    flat = tiny_recipe().flat()
    assert set(row["setting"]) == set(flat)
    assert row["setting"]["target.lr"] == str(flat["target.lr"]) and "n_target_train" not in row["setting"]
    assert listing.settings == [] and listing.left_out == [] and listing.sweeps == []


# --- hand-made runs: what a compare table must make of them ---

@pytest.fixture()
def runs(tracking_store) -> Runs:
    return Runs(tracking_store.experiment_id)


def _by_id(listing) -> dict:
    return {r["target_run_id"]: r for r in listing.rows}


def test_join_settings_that_differ_and_an_undiagnosed_pair(runs):
    a = runs.target("a", lr="0.001")
    b = runs.target("b", lr="0.01", findings_count=3)  # a target run's own metric is not an outcome of it
    c = runs.target("c", lr="0.01")
    da = runs.diagnostics(a, cka_mean=0.8, findings_count=2, dir_output=0.3)
    db = runs.diagnostics(b, summary=None)  # an older diagnosis without the tag: no per-depth lists
    listing = list_compare_rows(runs.experiment_id)
    assert [r["target_run_id"] for r in listing.rows] == [c, b, a]  # newest first
    assert listing.settings == ["target.lr"]
    rows = _by_id(listing)
    assert rows[a]["diagnostics_run_id"] == da and rows[a]["target_accuracy"] == 0.75
    assert rows[a]["cka_mean"] == 0.8 and rows[a]["findings_count"] == 2 and rows[a]["dir_output"] == 0.3
    assert rows[a]["layers"] == ["conv1", "fc"] and rows[a]["inherited_share"] == [0.9, 0.25]
    assert rows[a]["cka"] == [0.8, None] and rows[a]["classes_hash"] == classes_hash(DIGITS)
    assert rows[a]["setting"] == {"model.name": "alexnet-32", "target.epochs": "5", "target.lr": "0.001"}
    assert rows[b]["diagnostics_run_id"] == db and rows[b]["layers"] == [] and rows[b]["findings_count"] is None
    # never diagnosed: its run outcomes, and the command that diagnoses it
    assert rows[c]["diagnostics_run_id"] is None and rows[c]["diagnostics_status"] is None
    assert rows[c]["target_accuracy"] == 0.5 and rows[c]["logme"] == -1.0 and rows[c]["transferability_score"] is None
    assert rows[c]["command"] == f"mlflow-transfer diagnose --target-run-id {c}"
    assert set(OUTCOMES) <= set(rows[c]) and all(list(r) == list(ROW_KEYS) for r in rows.values())


def test_a_failed_diagnosis_gives_the_command_and_an_older_finished_one_wins(runs):
    failed_only = runs.target("failed-only")
    runs.diagnostics(failed_only, status="FAILED", target_val_accuracy=0.99)
    redone = runs.target("redone")
    finished = runs.diagnostics(redone)
    runs.diagnostics(redone, status="FAILED")  # newer, but failed: the finished one stands
    running = runs.target("running")
    runs.diagnostics(running, status="RUNNING")
    rows = _by_id(list_compare_rows(runs.experiment_id))
    assert rows[failed_only]["diagnostics_status"] == "FAILED" and rows[failed_only]["diagnostics_run_id"] is None
    assert rows[failed_only]["command"].endswith(failed_only)
    assert rows[failed_only]["target_accuracy"] == 0.5  # the failed run's metrics are not read
    assert rows[redone]["diagnostics_run_id"] == finished and rows[redone]["command"] is None
    assert rows[running]["diagnostics_status"] == "RUNNING" and rows[running]["command"] is not None


def test_pairs_of_another_model_or_label_space_are_left_out_with_the_reason(runs):
    kept = [runs.target(f"digits-{i}") for i in range(3)]
    resnet = runs.target("resnet", model="resnet-18")
    letters = runs.target("letters", classes=["a", "b"])
    runs.diagnostics(letters, classes=["a", "b"])
    listing = list_compare_rows(runs.experiment_id)
    assert sorted(r["target_run_id"] for r in listing.rows) == sorted(kept)
    reasons = {x["target_run_id"]: x["reason"] for x in listing.left_out}
    assert set(reasons) == {resnet, letters}
    assert "model 'resnet-18'" in reasons[resnet] and "label space" not in reasons[resnet]
    assert "label space" in reasons[letters] and "model" not in reasons[letters].split("(")[0]
    assert {x["name"] for x in listing.left_out} == {"resnet", "letters"}


def test_a_tie_keeps_the_newest_rows_group(runs):
    runs.target("old", model="resnet-18")
    new = runs.target("new")
    listing = list_compare_rows(runs.experiment_id)
    assert [r["target_run_id"] for r in listing.rows] == [new] and len(listing.left_out) == 1


def test_paging_across_page_boundaries_and_max_rows(runs):
    targets = [runs.target(f"t{i}", lr=str(i)) for i in range(5)]
    diags = {t: runs.diagnostics(t) for t in targets}
    whole = list_compare_rows(runs.experiment_id)
    paged = list_compare_rows(runs.experiment_id, page_size=2)
    assert paged == whole
    assert [r["target_run_id"] for r in paged.rows] == targets[::-1]
    assert {r["target_run_id"]: r["diagnostics_run_id"] for r in paged.rows} == diags
    newest = list_compare_rows(runs.experiment_id, page_size=2, max_rows=3)
    assert [r["target_run_id"] for r in newest.rows] == targets[:1:-1]


def test_the_quick_first_page_joins_as_the_whole_listing(runs):
    targets = [runs.target(f"t{i}", lr=str(i)) for i in range(5)]
    runs.diagnostics(targets[4], status="FAILED")
    later = {t: runs.diagnostics(t) for t in targets}  # every diagnosis after every target: t0's too
    runs.diagnostics(targets[0], status="FAILED")  # an old target diagnosed again, newest of all
    whole = list_compare_rows(runs.experiment_id)
    first = list_compare_rows(runs.experiment_id, newest=2)
    assert first.partial and not whole.partial
    assert [r["target_run_id"] for r in first.rows] == targets[:2:-1][:2] == [targets[4], targets[3]]
    assert first.rows == whole.rows[:2]  # each row joined with its own latest finished diagnosis
    assert {r["diagnostics_run_id"] for r in first.rows} == {later[targets[4]], later[targets[3]]}
    assert first.settings == ["target.lr"] and len(list_compare_rows(runs.experiment_id, newest=99).rows) == 5


def test_the_sweep_filter_and_the_sweeps_list(runs):
    sweep = runs.sweep("grid-sweep")
    other = runs.sweep("other-sweep")
    members = [runs.target(f"s{i}", lr=str(i), sweep=sweep) for i in range(3)]
    runs.target("outside")
    runs.target("other", sweep=other)
    runs.diagnostics(members[0])  # diagnosed by hand later: no sweep tag on the diagnostics run, still joined
    listing = list_compare_rows(runs.experiment_id, sweep_id=sweep)
    assert sorted(r["target_run_id"] for r in listing.rows) == sorted(members)
    assert all(r["sweep_id"] == sweep for r in listing.rows) and listing.settings == ["target.lr"]
    assert _by_id(listing)[members[0]]["diagnostics_run_id"] is not None
    assert listing.sweeps == [{"run_id": other, "name": "other-sweep"}, {"run_id": sweep, "name": "grid-sweep"}]
    assert len(list_compare_rows(runs.experiment_id).rows) == 5


def test_damaged_tags_read_as_absent(runs):
    not_json = runs.target("not-json")
    runs.diagnostics(not_json, summary="{not json")
    wrong = runs.target("wrong-shape")
    runs.diagnostics(wrong, summary=json.dumps({"v": 1, "layers": ["a"], "inherited_share": [], "cka": [0.1],
                                                "classes_hash": classes_hash(DIGITS), "n_classes": 10}))
    future = runs.target("future")
    runs.diagnostics(future, summary=summary_tag(["a"], [0.5], [0.5], DIGITS).replace('"v":1', '"v":2'))
    orphan = runs.target("orphan", extra_tags={TAGS.sweep_id: "../../x", TAGS.source_run_id: "x' OR 1=1"})
    runs.diagnostics(orphan, target_tag="../" + orphan)  # a run-id tag that is not an id joins nothing
    rows = _by_id(list_compare_rows(runs.experiment_id))
    for damaged in (not_json, wrong, future):
        assert rows[damaged]["diagnostics_run_id"] is not None
        assert rows[damaged]["layers"] == [] and rows[damaged]["cka_mean"] is None
        assert rows[damaged]["target_accuracy"] == 0.75  # the metrics still count
    assert rows[orphan]["diagnostics_run_id"] is None and rows[orphan]["command"] is not None
    assert rows[orphan]["sweep_id"] is None and rows[orphan]["source_run_id"] is None


def test_the_cache_keeps_finished_summaries_only(runs):
    done = runs.target("done")
    d = runs.diagnostics(done)
    live = runs.target("live")
    runs.diagnostics(live, status="RUNNING")
    cache: dict = {}
    list_compare_rows(runs.experiment_id, cache=cache)
    assert set(cache) == {d}
    cache[d] = {**cache[d], "layers": ["planted"]}  # read from the cache, not parsed again
    assert _by_id(list_compare_rows(runs.experiment_id, cache=cache))[done]["layers"] == ["planted"]


def test_bad_ids_and_an_unreachable_server(tracking_store, monkeypatch):
    with pytest.raises(RunLookupError, match="experiment id"):
        list_compare_rows("1' OR '1'='1")
    with pytest.raises(RunLookupError, match="sweep run id"):
        list_compare_rows(tracking_store.experiment_id, sweep_id="x'; --")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(TrackingUnavailableError, match="127.0.0.1:9"):
        list_compare_rows("0", tracking_uri="http://127.0.0.1:9")


def test_summary_tag_fits_mlflows_limit_and_round_trips():
    layers = [f"features.block{i}.conv" for i in range(600)]
    text = summary_tag(layers, [0.5] * 600, [float("inf")] + [0.25] * 599, ["a", "b"])
    assert len(text) < SUMMARY_LIMIT
    parsed = parse_summary(text)
    n = len(parsed["layers"])
    assert 0 < n < 600 and parsed["layers"] == layers[:n] and parsed["cka"][0] is None
    assert parsed["cka_mean"] == 0.25 and parsed["n_classes"] == 2  # the mean of every finite entry
    small = parse_summary(summary_tag(["a", "b"], [1.0, float("nan")], [0.5, 0.7], ["x"]))
    assert small == {"layers": ["a", "b"], "inherited_share": [1.0, None], "cka": [0.5, 0.7],
                     "cka_mean": pytest.approx(0.6), "classes_hash": classes_hash(["x"]), "n_classes": 1}
    short = parse_summary(summary_tag(["a", "b", "c"], [0.5, 0.5, 0.5], [0.9], ["x"]))  # a CKA matrix of 1 row
    assert short["cka"] == [0.9, None, None] and short["layers"] == ["a", "b", "c"]
    for damaged in (None, "", "[]", '{"v": 1}', "x" * (SUMMARY_LIMIT + 1)):
        assert parse_summary(damaged) is None



def test_a_real_server_gives_the_rows_the_store_gives(tmp_path):
    # over http the listing reads the REST API's JSON itself: the same rows as through the store's entities
    with mlflow_server(tmp_path) as (uri, _):
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("served")
        runs = Runs(experiment_id, uri)
        sweep = runs.sweep("sweep")
        targets = [runs.target(f"t{i}", lr=str(i), sweep=sweep if i % 2 else None) for i in range(5)]
        runs.diagnostics(targets[0], cka_mean=float("nan"), findings_count=1)
        runs.diagnostics(targets[1], status="FAILED")
        runs.diagnostics(targets[2], summary="{damaged")
        runs.target("other", model="resnet-18")
        served = list_compare_rows(experiment_id, tracking_uri=uri, page_size=2)
        stored = list_compare_rows(experiment_id, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        assert served == stored
        assert len(served.rows) == 5 and len(served.left_out) == 1 and served.sweeps[0]["run_id"] == sweep
        row = {r["target_run_id"]: r for r in served.rows}[targets[0]]
        # a NaN metric reads as absent, and the summary's mean of the finite CKA entries stands in
        assert row["cka_mean"] == 0.8 and row["findings_count"] == 1 and row["layers"] == ["conv1", "fc"]
        swept = list_compare_rows(experiment_id, sweep_id=sweep, tracking_uri=uri)
        assert sorted(r["target_run_id"] for r in swept.rows) == sorted(targets[1::2])
        # the quick first page reads the start times from the JSON as the store does
        first = list_compare_rows(experiment_id, tracking_uri=uri, newest=3)
        assert first == list_compare_rows(experiment_id, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", newest=3)
        assert first.partial and first.rows == [r for r in served.rows if r["target_run_id"] in
                                                {x["target_run_id"] for x in first.rows}]
