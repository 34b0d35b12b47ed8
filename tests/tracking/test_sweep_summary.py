"""The sweep summary (issue 15) on a real sqlite store: one source run of the tiny recipe, four target runs
fine-tuned from it with different label budgets (so their LogME/LEEP differ) tagged as one sweep's
children and diagnosed, one more setting whose run FAILED, and a setting failed then redone. The parent
run gets summary.csv (one row per setting, numbers equal to the runs' own metrics read back through
MlflowClient), summary.html (setting values escaped), chart.png, and Spearman correlations equal to
scipy's on the table's columns; the diagnostics bundle holds the target run's estimates."""

from __future__ import annotations

import csv
import json
import math

import mlflow
import pytest
from helpers.tracking import tiny_recipe
from mlflow import MlflowClient
from PIL import Image
from scipy.stats import spearmanr

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.errors import RunLookupError
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking.diagnose import diagnose
from mlflow_transfer.tracking.runs import finetune, train_source
from mlflow_transfer.tracking.sweep_summary import write_sweep_summary

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=3)
HOSTILE = "<img src=x onerror=alert(1)>"
FORMULA = '=HYPERLINK("http://example.invalid","x")'  # what a spreadsheet would run as a formula
BUDGETS = (2, 4, 6, None)


def _setting(budget, note="digits"):
    return json.dumps({"data.label_budget": budget, "source_recipe": note}, sort_keys=True)


@pytest.fixture(scope="module")
def sweep(module_store, tmp_path_factory):
    client = MlflowClient()
    recipe = tiny_recipe()
    source_id = train_source(recipe)
    with mlflow.start_run(run_name="sweep-parent", tags={TAGS.role: "sweep"}) as parent:
        pass
    pid = parent.info.run_id
    client.set_tag(pid, TAGS.sweep_id, pid)
    targets, diagnostics = {}, {}
    for i, budget in enumerate(BUDGETS):
        extra = () if budget is None else (f"data.label_budget={budget}",)
        tid = finetune(tiny_recipe(*extra, f"target.lr={0.0005 * (i + 1)}"), source_id)
        note = HOSTILE if budget == 2 else FORMULA if budget == 6 else "digits"
        client.set_tag(tid, TAGS.sweep_id, pid)
        client.set_tag(tid, TAGS.sweep_setting, _setting(budget, note))
        targets[budget] = tid
        diagnostics[budget] = diagnose(target_run_id=tid, options=FAST)
    # a setting whose training failed, and one that failed before it was redone (budget 4's, above)
    for setting in (_setting(8), _setting(4)):
        with mlflow.start_run(tags={TAGS.role: "target", TAGS.sweep_id: pid, TAGS.sweep_setting: setting}) as run:
            pass
        client.set_terminated(run.info.run_id, "FAILED")
    result = write_sweep_summary(pid)
    folder = tmp_path_factory.mktemp("sweep-artifacts")
    mlflow.artifacts.download_artifacts(run_id=pid, artifact_path="sweep", dst_path=str(folder))
    return pid, targets, diagnostics, result, folder / "sweep"


def _csv_rows(folder):
    with (folder / "summary.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _number(text):
    return math.nan if text == "" else float(text)


def test_csv_has_one_row_per_setting_with_the_runs_own_numbers(sweep):
    pid, targets, diagnostics, result, folder = sweep
    rows = _csv_rows(folder)
    assert len(rows) == 5  # four finished settings and the failed one; budget 4 once (its redone run)
    client = MlflowClient()
    by_target = {r["target_run_id"]: r for r in rows}
    for budget, tid in targets.items():
        row = by_target[tid]
        assert row["status"] == row["diagnostics_status"] == "FINISHED"
        assert row["diagnostics_run_id"] == diagnostics[budget]
        assert row["setting.data.label_budget"] == ("" if budget is None else str(budget))
        target = client.get_run(tid).data.metrics
        diag = client.get_run(diagnostics[budget]).data.metrics
        for column, expected in (("logme", target["logme"]), ("leep", target["leep"]),
                                 ("transferability_score", diag["transferability_score"]),
                                 ("target_accuracy", diag["target_val_accuracy"])):
            assert _number(row[column]) == pytest.approx(expected, rel=1e-12), column
        layers = json.loads(client.get_run(diagnostics[budget]).data.tags[TAGS.layers])
        history = client.get_metric_history(diagnostics[budget], "inherited_weight_share")
        assert history
        for m in history:
            assert _number(row[f"inherited_weight_share[{m.step}:{layers[m.step]}]"]) == pytest.approx(m.value)
    (failed,) = [r for r in rows if r["status"] != "FINISHED"]
    assert failed["status"] == "FAILED" and failed["setting.data.label_budget"] == "8"
    assert failed["logme"] == failed["transferability_score"] == failed["diagnostics_run_id"] == ""
    assert failed["diagnostics_status"] == ""
    # a text cell a spreadsheet would read as a formula is quoted as text
    assert by_target[targets[6]]["setting.source_recipe"] == "'" + FORMULA
    assert by_target[targets[None]]["setting.source_recipe"] == "digits"
    # the estimates differ between label budgets: the table ranks something
    assert len({r["logme"] for r in rows if r["status"] == "FINISHED"}) == 4


def test_spearman_metrics_equal_scipy_on_the_tables_columns(sweep):
    pid, _, _, result, folder = sweep
    finished = [r for r in _csv_rows(folder) if r["status"] == "FINISHED"]
    parent = MlflowClient().get_run(pid).data.metrics
    for estimate in ("logme", "leep"):
        x = [float(r[estimate]) for r in finished]
        y = [float(r["transferability_score"]) for r in finished]
        expected = spearmanr(x, y).statistic
        if len(set(x)) < 2 or len(set(y)) < 2:
            assert math.isnan(result[f"spearman_{estimate}"]) and f"spearman_{estimate}" not in parent
        else:
            assert result[f"spearman_{estimate}"] == pytest.approx(expected, abs=1e-12)
            assert parent[f"spearman_{estimate}"] == pytest.approx(expected, abs=1e-12)
    assert "spearman_logme" in parent  # four distinct LogME values: it was ranked


def test_html_escapes_setting_values_and_png_is_a_chart(sweep):
    _, _, _, _, folder = sweep
    page = (folder / "summary.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<tr>") == 1 + 5  # the header and one row per setting
    with Image.open(folder / "chart.png") as image:
        assert image.format == "PNG" and image.size[0] > 1000


def test_the_bundle_holds_the_target_runs_estimates(sweep, tmp_path):
    _, targets, diagnostics, _, _ = sweep
    folder = mlflow.artifacts.download_artifacts(run_id=diagnostics[None], artifact_path="diagnostics",
                                                 dst_path=str(tmp_path))
    estimates = PairBundle.open(folder).transferability_estimates()
    metrics = MlflowClient().get_run(targets[None]).data.metrics
    assert estimates == {"logme": pytest.approx(metrics["logme"]), "leep": pytest.approx(metrics["leep"])}



def test_the_pair_list_ranks_the_estimates_beside_the_score(sweep, module_store):
    from mlflow_transfer.tracking.bundles import list_diagnosed_pairs
    from ui.views.pairs import pairs_frame

    _, targets, diagnostics, _, _ = sweep
    pairs = {p["diagnostics_run_id"]: p for p in list_diagnosed_pairs([module_store.experiment_id])}
    frame = pairs_frame(list(pairs.values()))
    for budget, tid in targets.items():
        target = MlflowClient().get_run(tid).data.metrics
        pair = pairs[diagnostics[budget]]
        assert pair["logme"] == pytest.approx(target["logme"]) and pair["leep"] == pytest.approx(target["leep"])
        row = frame[frame["diagnostics run"] == diagnostics[budget]].iloc[0]
        assert row["LogME"] == pytest.approx(target["logme"]) and row["LEEP"] == pytest.approx(target["leep"])


def test_summary_of_a_run_that_is_no_sweep_is_refused(sweep):
    _, targets, _, _, _ = sweep
    with pytest.raises(RunLookupError, match="Expected the parent run of a sweep"):
        write_sweep_summary(targets[None])


def test_fewer_than_three_finished_settings_give_no_correlation(module_store):
    client = MlflowClient()
    with mlflow.start_run(tags={TAGS.role: "sweep"}) as parent:
        pass
    pid = parent.info.run_id
    for i in range(2):
        with mlflow.start_run(tags={TAGS.role: "target", TAGS.sweep_id: pid, TAGS.sweep_setting: _setting(i)}):
            mlflow.log_metrics({"logme": float(i), "leep": -float(i)})
    result = write_sweep_summary(pid)
    assert math.isnan(result["spearman_logme"]) and math.isnan(result["spearman_leep"])
    assert "spearman_logme" not in client.get_run(pid).data.metrics
    assert len(result["rows"]) == 2


def test_a_failed_diagnostics_run_gives_its_status_and_none_of_its_partial_numbers(module_store):
    with mlflow.start_run(tags={TAGS.role: "sweep"}) as parent:
        pass
    pid = parent.info.run_id
    with mlflow.start_run(tags={TAGS.role: "target", TAGS.sweep_id: pid, TAGS.sweep_setting: _setting(3)}) as target:
        mlflow.log_metrics({"logme": 0.5, "leep": -1.0, "best_acc_target_val": 0.7})
    with mlflow.start_run(tags={TAGS.role: "diagnostics", TAGS.target_run_id: target.info.run_id}) as diag:
        mlflow.log_metrics({"transferability_score": 0.9, "target_val_accuracy": 0.8})
    MlflowClient().set_terminated(diag.info.run_id, "FAILED")
    (row,) = write_sweep_summary(pid)["rows"]
    assert row["status"] == "FINISHED" and row["diagnostics_status"] == "FAILED"
    assert row["diagnostics_run_id"] == diag.info.run_id
    assert row["transferability_score"] is None and row["target_accuracy"] == 0.7  # the target run's own
    assert row["logme"] == 0.5 and row["leep"] == -1.0


def test_html_shows_setting_values_as_given_and_outcomes_rounded(tmp_path):
    from mlflow_transfer.tracking.sweep_summary import _html

    class Parent:
        class info:
            run_name, run_id = "<b>sweep</b>", "p1"

    rows = [{"#": 1, "setting.target.lr": 1e-05, "status": "FINISHED", "logme": 0.123456789}]
    _html(Parent, rows, ["#", "setting.target.lr", "status", "logme"],
          {"spearman_logme": math.nan, "spearman_leep": 0.5}, tmp_path / "s.html")
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    assert "<td>1e-05</td>" in page and "<td>0.1235</td>" in page
    assert "&lt;b&gt;sweep&lt;/b&gt;" in page and "LEEP +0.500" in page and "LogME n/a" in page
