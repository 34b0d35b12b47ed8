"""Sweeps (issue 15) on a real local Ray against a real sqlite store: a 4-setting sweep of the tiny recipe
finishes as 4 child target runs with bundles under one `sweep` run sharing one source run; a second
invocation runs nothing; a setting that fails at training time is FAILED while the others finish (and is
redone by a re-run); an unknown grid key or value stops with the recipe's own message before any run; an
unreachable --ray-address is one line, exit 2; a sweep interrupted with Ctrl-C (joined to a running cluster by
--ray-address) continues under `mlflow run`, and that run's summary lists every setting. Ray starts once for the
module, listening on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import csv
import io

import mlflow
import pytest
from helpers import REPO
from helpers.servers import BIN, clean_env
from helpers.sockets import listening_addresses
from helpers.tracking import TINY
from mlflow import MlflowClient

from mlflow_transfer.config import grid_hash, load_recipe, parse_grid
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.errors import RecipeError
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking.sweep import LOOPBACK_ONLY, run_sweep

FAST = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                       sample_per_class=3, robustness=False)
RECIPE = str(REPO / "recipes" / "digits.yaml")
OVERRIDES = tuple(TINY.split(","))
GRID = {"target.lr": [0.0005, 0.005], "target.freeze_depth": [0, 2]}


@pytest.fixture(scope="module")
def ray_cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault(*LOOPBACK_ONLY)  # before the import, as run_sweep's own; inherited by the sweeps below
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep(module_store, ray_cluster):
    lines = []
    result = run_sweep(RECIPE, GRID, overrides=OVERRIDES, options=FAST, echo=lines.append)
    return result, lines


def _runs(experiment_id, role):
    return MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{TAGS.role}` = '{role}'",
                                      max_results=1000)


def test_four_settings_finish_as_child_target_runs_with_bundles(sweep, module_store):
    result, lines = sweep
    client = MlflowClient()
    assert [o.status for o in result.outcomes] == ["FINISHED"] * 4 and not result.failed
    # one progress line per finished setting, naming its setting and outcome
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 4 and all("-> FINISHED" in line for line in progress)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[TAGS.role] == "sweep"
    assert parent.data.tags[TAGS.sweep_id] == result.parent_run_id
    grid_file = mlflow.artifacts.load_dict(f"runs:/{result.parent_run_id}/sweep/grid.json")
    assert grid_file == GRID
    targets = _runs(module_store.experiment_id, "target")
    assert len(targets) == 4
    settings = {tuple(json.loads(t.data.tags[TAGS.sweep_setting]).items()) for t in targets}
    assert settings == {(("target.freeze_depth", d), ("target.lr", lr))
                        for lr in GRID["target.lr"] for d in GRID["target.freeze_depth"]}
    assert len({t.data.tags[TAGS.sweep_key] for t in targets}) == 4
    sources = _runs(module_store.experiment_id, "source")
    assert len(sources) == 1  # shared by all four settings (the reuse rule)
    for target in targets:
        tags = target.data.tags
        assert target.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == tags[TAGS.sweep_id] == result.parent_run_id
        assert tags[TAGS.source_run_id] == sources[0].info.run_id
        # the setting really trained: the logged recipe carries it, the frozen layers follow the depth
        setting = json.loads(tags[TAGS.sweep_setting])
        assert float(target.data.params["target.lr"]) == setting["target.lr"]
        assert len(json.loads(tags[TAGS.frozen_layers])) == setting["target.freeze_depth"]
    diags = _runs(module_store.experiment_id, "diagnostics")
    assert len(diags) == 4
    for diag in diags:
        assert diag.info.status == "FINISHED" and diag.data.tags[TAGS.sweep_id] == result.parent_run_id
        assert diag.data.tags["mlflow.parentRunId"] in {t.info.run_id for t in targets}
        names = {f.path for f in client.list_artifacts(diag.info.run_id, "diagnostics")}
        assert "diagnostics/manifest.json" in names
    # the summary on the parent: one row per setting, the estimates logged on each target run beside it
    summary = {f.path for f in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/summary.csv", "sweep/summary.html", "sweep/chart.png"} <= summary
    rows = mlflow.artifacts.load_text(f"runs:/{result.parent_run_id}/sweep/summary.csv").strip().splitlines()
    assert len(rows) == 1 + 4
    assert all({"logme", "leep"} <= set(t.data.metrics) for t in targets)


def test_a_second_invocation_runs_nothing(sweep, module_store):
    first, _ = sweep
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    lines = []
    again = run_sweep(RECIPE, GRID, overrides=OVERRIDES, options=FAST, echo=lines.append)
    assert again.parent_run_id == first.parent_run_id  # the same sweep's parent, found by its grid hash
    assert again.ran == 0 and [o.status for o in again.outcomes] == ["SKIPPED"] * 4
    assert [o.target_run_id for o in again.outcomes] == [o.target_run_id for o in first.outcomes]
    assert any("nothing to run" in line for line in lines)
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_a_setting_that_fails_in_training_is_failed_and_the_others_finish(sweep, module_store):
    # freeze_depth 99 passes the recipe's checks (no upper bound there) and fails when the model is frozen
    grid = {"target.freeze_depth": [1, 99]}
    result = run_sweep(RECIPE, grid, overrides=OVERRIDES, options=FAST, echo=lambda line: None)
    ok, bad = result.outcomes
    assert ok.status == "FINISHED" and bad.status == "FAILED"
    assert "freeze_depth must be between 0 and" in bad.error
    client = MlflowClient()
    failed = client.get_run(bad.target_run_id)
    assert failed.info.status == "FAILED" and failed.data.tags[TAGS.sweep_id] == result.parent_run_id
    assert client.get_run(result.parent_run_id).data.metrics["sweep_failed"] == 1
    # a re-run redoes the failed setting only
    again = run_sweep(RECIPE, grid, overrides=OVERRIDES, options=FAST, echo=lambda line: None)
    assert [o.status for o in again.outcomes] == ["SKIPPED", "FAILED"]
    assert again.outcomes[1].target_run_id != bad.target_run_id


@pytest.mark.parametrize("item", ["target.lrr=0.1,0.2", "target.method=finetune,sideways", "target.lr=0.1,-1"])
def test_an_unknown_grid_key_or_value_gets_the_recipes_message_and_no_run(module_store, item):
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    key, values = item.split("=")
    bad = values.split(",")[-1]
    with pytest.raises(RecipeError) as recipe_error:
        load_recipe(RECIPE, [*OVERRIDES, f"{key}={bad}"])
    with pytest.raises(RecipeError) as sweep_error:
        run_sweep(RECIPE, parse_grid([item]), overrides=OVERRIDES, options=FAST)
    assert str(sweep_error.value) == str(recipe_error.value)
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_an_unreachable_ray_address_is_one_line_exit_2(module_store):
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    with socket.socket() as s:  # a port nothing listens on: bound, never listened to
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": module_store.uri}
        proc = subprocess.run([sys.executable, "-m", "mlflow_transfer.cli", "sweep", "--recipe", RECIPE,
                               "--grid", "target.lr=0.001,0.01", "--ray-address", address,
                               "--experiment-name", "unreachable"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mlflow-transfer: error:")]
    assert len(errors) == 1 and address in errors[0] and "ray start --head" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before  # no run


def test_the_local_ray_listens_on_127_0_0_1_only(ray_cluster):
    listening = listening_addresses()
    assert ray_cluster.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert listening and {a for addresses in listening.values() for a in addresses} == {"127.0.0.1"}, listening


def test_a_ray_imported_before_the_loopback_setting_is_refused(module_store, tmp_path):
    # Ray reads the setting when imported: a process that imported it first would get a Ray on every interface
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 80))  # no packet is sent: only the route is chosen, as Ray picks its node address
        routable = not probe.getsockname()[0].startswith("127.")
    except OSError:
        routable = False
    finally:
        probe.close()
    if not routable:
        pytest.skip("this machine has no address but loopback: an unset Ray binds nothing else either")
    script = ("import ray\nfrom mlflow_transfer.errors import ClusterError\n"
              "from mlflow_transfer.tracking.sweep import run_sweep\n"
              f"try:\n    run_sweep({RECIPE!r}, {{'target.lr': [0.001]}}, overrides={OVERRIDES!r})\n"
              "except ClusterError as exc:\n    print('refused:', exc)\n"
              "print('still initialised:', ray.is_initialized())\n")
    env = {k: v for k, v in clean_env(MLFLOW_TRACKING_URI=module_store.uri, PYTHONPATH=str(REPO)).items()
           if k != LOOPBACK_ONLY[0]}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "refused: Expected the local Ray to listen on 127.0.0.1 only" in proc.stdout, proc.stderr[-2000:]
    assert "still initialised: False" in proc.stdout
    ghash = grid_hash(load_recipe(RECIPE, OVERRIDES), {"target.lr": [0.001]})
    assert not MlflowClient().search_runs(  # refused before the parent run opens
        [module_store.experiment_id], filter_string=f"tags.`{TAGS.sweep_grid}` = '{ghash}'")


def test_ctrl_c_kills_the_running_settings_and_a_rerun_continues(module_store, ray_cluster, tmp_path):
    # the interrupted sweep joins the module's running Ray as a cluster (--ray-address); the re-run is
    # `mlflow run -e sweep` on a local Ray of its own
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": module_store.uri}
    address = ray_cluster.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, "-m", "mlflow_transfer.cli", "sweep", "--recipe", RECIPE,
                             "--set", TINY, "--grid", "target.lr=0.0005,0.005,0.05", "--max-parallel", "2",
                             "--ray-address", address,
                             "--experiment-name", "interrupted", "--n-steps", "4", "--feature-vis-steps", "1",
                             "--sample-per-class", "3", "--robustness", "off"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient()
    try:
        running = []
        for _ in range(600):  # until a setting's target run is open in a Ray worker
            experiment = client.get_experiment_by_name("interrupted")
            if experiment is not None:
                running = client.search_runs([experiment.experiment_id], filter_string=(
                    f"tags.`{TAGS.role}` = 'target' AND attributes.status = 'RUNNING'"))
            if running or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert running, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in out and "Traceback" not in err
    experiment_id = client.get_experiment_by_name("interrupted").experiment_id
    runs = client.search_runs([experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]  # nothing left open
    for run in running:  # the setting that was running when Ctrl-C came is KILLED (or FINISHED meanwhile)
        assert client.get_run(run.info.run_id).info.status in ("KILLED", "FAILED", "FINISHED")
    finished_before = {r.data.tags[TAGS.sweep_key] for r in runs if r.data.tags.get(TAGS.role) == "target"
                       and r.info.status == "FINISHED"}
    rerun = subprocess.run([str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "sweep",
                            "--experiment-name", "interrupted", "-P", f"recipe={RECIPE}", "-P", f"set={TINY}",
                            "-P", "grid=target.lr=0.0005,0.005,0.05", "-P", "n_steps=4", "-P", "feature_vis_steps=1",
                            "-P", "sample_per_class=3", "-P", "robustness=off"],
                           cwd=tmp_path, env=clean_env(MLFLOW_TRACKING_URI=module_store.uri, PYTHONPATH=str(REPO),
                                                       MLFLOW_TRANSFER_CACHE=str(tmp_path / "cache")),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = [line for line in rerun.stdout.splitlines() if line.startswith("[")]
    skipped = [line for line in rerun.stdout.splitlines() if "-> SKIPPED" in line]
    assert len(lines) == 3 - len(skipped) >= 1 and all("-> FINISHED" in line for line in lines), rerun.stdout
    assert len(skipped) == len(finished_before)
    # the summary of the run `mlflow run` made lists every setting, also those an earlier parent ran
    parent = client.search_runs([experiment_id], filter_string=f"tags.`{TAGS.role}` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert parent.info.status == "FINISHED" and parent.data.tags.get("mlflow.project.entryPoint") == "sweep"
    table = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{parent.info.run_id}/sweep/summary.csv"))))
    assert sorted(float(r["setting.target.lr"]) for r in table) == [0.0005, 0.005, 0.05]
    assert {r["status"] for r in table} == {"FINISHED"}


def test_the_example_sweep_file_makes_its_settings_in_grid_order():
    from mlflow_transfer.config import load_sweep, sweep_settings

    spec = load_sweep(REPO / "recipes" / "sweeps" / "digits.yaml")
    settings = sweep_settings(REPO / spec["recipe"], spec["grid"])
    assert len(settings) == 2 * 2 * 2 and len({s.key() for s in settings}) == 8
    # the last key varies fastest; source_recipe swaps whole recipes (the clean source is another domain)
    assert [s.values["source_recipe"] for s in settings[:2]] == spec["grid"]["source_recipe"]
    assert {s.recipe.data.source.name for s in settings} == {"printed-digits", "printed-digits-clean"}
    assert {s.recipe.data.target.name for s in settings} == {"handwritten-digits"}
    assert [(s.values["target.lr"], s.values["target.freeze_depth"]) for s in settings[::2]] == \
        [(0.0005, 0), (0.0005, 2), (0.005, 0), (0.005, 2)]


@pytest.mark.parametrize("cluster, device, max_parallel, expected", [
    ({"CPU": 2.0}, "auto", None, ({"num_cpus": 1}, 2)),             # no GPU: one task per core
    ({"CPU": 16.0}, "auto", 3, ({"num_cpus": 1}, 3)),               # --max-parallel caps it
    ({"CPU": 16.0, "GPU": 2.0}, "auto", None, ({"num_cpus": 1, "num_gpus": 1}, 2)),  # one task per GPU
    ({"CPU": 16.0, "GPU": 2.0}, "cuda:0", 1, ({"num_cpus": 1, "num_gpus": 1}, 1)),
    ({"CPU": 16.0, "GPU": 2.0}, "cpu", None, ({"num_cpus": 1}, 16)),  # the recipe asks for the CPU
    ({}, "auto", None, ({"num_cpus": 1}, 1)),
])
def test_each_task_gets_a_core_or_a_gpu(cluster, device, max_parallel, expected):
    from mlflow_transfer.tracking.sweep import task_resources

    assert task_resources(cluster, device, max_parallel) == expected
