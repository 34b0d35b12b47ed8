"""``sweep`` (issue 15): many transfer settings of one recipe, each fine-tuned and diagnosed as a Ray task.

One parent run (role ``sweep``, tag `TAGS.sweep_grid` = hash of base recipe and grid) holds the grid
(``sweep/grid.json``, params). The driver trains the source runs first (one per distinct source, reused by
the existing rule), then runs each setting as a plain Ray task: `finetune` (its target run a child of the
parent through ``mlflow.parentRunId``, tagged `TAGS.sweep_id`, `TAGS.sweep_setting`, `TAGS.sweep_key`)
and `diagnose` (nested under the target run, timeline off). Tasks reach the store through the tracking URI
and experiment id they are given. A re-run of the same sweep reopens its parent and skips settings whose
target run (same sweep key) is FINISHED with a FINISHED diagnostics run; FAILED/KILLED ones are redone.
A failing setting leaves its target run FAILED and the sweep goes on; Ctrl-C cancels the running tasks
and marks their runs KILLED.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Experiment
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME

from ..config import SweepSetting, grid_hash, load_recipe, parse_recipe, sweep_settings
from ..errors import ClusterError, TransferError
from ..plugin import added_run_tags
from ..tags import TAGS
from .context import code_version, transfer_run
from .lifecycle import process_tags
from .sweep_summary import SETTINGS_FILE, write_sweep_summary

__all__ = ["SettingOutcome", "SweepResult", "run_setting", "run_sweep", "task_resources"]

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # tasks pass run ids, not tensors; Ray's minimum is ~75 MB
CONNECT_TIMEOUT_S = 3.0
# Read by Ray when it is imported: off, a local Ray is single-node and every server of it binds 127.0.0.1 (as on
# macOS and Windows); on (Ray's Linux default), its GCS, raylet and workers listen on every interface.
LOOPBACK_ONLY = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@dataclass(frozen=True)
class SettingOutcome:
    """What became of one setting: FINISHED, FAILED, KILLED, or SKIPPED (finished by an earlier run)."""

    setting: dict
    sweep_key: str
    status: str
    target_run_id: str | None = None
    diagnostics_run_id: str | None = None
    error: str | None = None

    def line(self) -> str:
        text = ", ".join(f"{k}={v}" for k, v in self.setting.items())
        runs = " ".join(f"{what} {rid}" for what, rid in (("target", self.target_run_id),
                                                           ("diagnostics", self.diagnostics_run_id)) if rid)
        return f"{text} -> {self.status}" + (f" ({runs})" if runs else "") + (f": {self.error}" if self.error else "")


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    outcomes: list[SettingOutcome]

    @property
    def failed(self) -> list[SettingOutcome]:
        return [o for o in self.outcomes if o.status not in ("FINISHED", "SKIPPED")]

    @property
    def ran(self) -> int:
        return sum(o.status != "SKIPPED" for o in self.outcomes)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def run_setting(task: dict) -> dict:
    """One setting, inside a Ray worker: fine-tune, then diagnose; returns the outcome as plain data.

    ``task``: tracking_uri, experiment_id, parent_run_id, recipe (a dict), source_run_id, setting,
    sweep_key, options (`DiagnoseOptions`), report_writer (or None)."""
    os.environ["OMP_NUM_THREADS"] = "1"  # one task per core: torch's own threads would oversubscribe it
    os.environ.pop("MLFLOW_RUN_ID", None)  # inherited from `mlflow run`: the task's runs must not attach to it
    import torch

    from .diagnose import diagnose
    from .runs import finetune

    torch.set_num_threads(1)
    mlflow.set_tracking_uri(task["tracking_uri"])
    mlflow.set_experiment(experiment_id=task["experiment_id"])
    recipe = parse_recipe(task["recipe"])
    parent = task["parent_run_id"]
    tags = {"mlflow.parentRunId": parent, TAGS.sweep_id: parent,
            TAGS.sweep_setting: json.dumps(task["setting"], sort_keys=True), TAGS.sweep_key: task["sweep_key"]}
    target_id = diag_id = None
    try:
        with added_run_tags(**tags):
            target_id = finetune(recipe, task["source_run_id"])
        with added_run_tags(**{TAGS.sweep_id: parent}):
            diag_id = diagnose(target_run_id=target_id, recipe=recipe, options=task["options"],
                               report_writer=task.get("report_writer"), device=recipe.runtime.device)
        return {"status": "FINISHED", "target_run_id": target_id, "diagnostics_run_id": diag_id, "error": None}
    except Exception as exc:  # noqa: BLE001 — the sweep reports every setting's failure and goes on
        return {"status": "FAILED", "target_run_id": target_id or _newest_target(task["sweep_key"], parent,
                                                                                task["experiment_id"]),
                "diagnostics_run_id": diag_id, "error": f"{type(exc).__name__}: {_one_line(exc)}"}


def warm_up() -> None:
    """Import what a setting needs (torch, captum, openTSNE, MLflow), in a worker, while the driver trains
    the sources: the workers' start is then not on the settings' path."""
    from . import diagnose, runs  # noqa: F401
    import openTSNE  # noqa: F401


def _newest_target(sweep_key: str, parent: str, experiment_id: str) -> str | None:
    """The setting's newest target run under this parent (the one a failed `finetune` opened and FAILED)."""
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{TAGS.sweep_key}` = '{sweep_key}' AND tags.`{TAGS.sweep_id}` = '{parent}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _finished(client: MlflowClient, experiment_id: str, sweep_key: str) -> tuple[str, str] | None:
    """(target run, diagnostics run) of a FINISHED target run with this sweep key and a FINISHED diagnosis."""
    targets = client.search_runs([experiment_id], filter_string=(
        f"tags.`{TAGS.role}` = 'target' AND tags.`{TAGS.sweep_key}` = '{sweep_key}' "
        "AND attributes.status = 'FINISHED'"), order_by=["attributes.start_time DESC"], max_results=5)
    for target in targets:
        diags = client.search_runs([experiment_id], filter_string=(
            f"tags.`{TAGS.role}` = 'diagnostics' AND tags.`{TAGS.target_run_id}` = '{target.info.run_id}' "
            "AND attributes.status = 'FINISHED'"), max_results=1)
        if diags:
            return target.info.run_id, diags[0].info.run_id
    return None


def task_resources(cluster: dict, device: str, max_parallel: int | None) -> tuple[dict, int]:
    """What each setting's task asks Ray for, and how many run at once: one CPU each, as many as the cluster
    has CPUs; where the cluster has GPUs and the recipe's device may be one (``auto``, ``cuda…``), one GPU
    each instead, as many as it has GPUs (Ray then shows each task only its own GPU). ``max_parallel``
    caps either."""
    gpus = int(cluster.get("GPU", 0))
    if gpus >= 1 and (device == "auto" or device.startswith("cuda")):
        resources, slots = {"num_cpus": 1, "num_gpus": 1}, gpus
    else:
        resources, slots = {"num_cpus": 1}, max(1, int(cluster.get("CPU", 1)))
    return resources, min(max_parallel, slots) if max_parallel else slots


def _check_reachable(address: str) -> None:
    """A cluster address that does not answer fails in seconds, naming it (``ray.init`` would wait long)."""
    if address == "auto":
        return  # Ray finds the local cluster's address itself and fails fast when there is none
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Expected --ray-address as auto, host:port (e.g. 127.0.0.1:6379) or "
                           f"ray://host:10001; got {address!r}.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"Expected a Ray cluster at --ray-address {address}; got no answer ({exc.strerror or exc}). "
                           "Start one there (`ray start --head`), fix the address, or leave --ray-address out "
                           "to run on a local Ray on this machine.") from None


def _start_ray(address: str | None, max_parallel: int) -> None:
    import ray

    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"Expected a Ray cluster at --ray-address {address}; joining it failed: "
                               f"{_one_line(exc)}. Fix the address, or leave --ray-address out to run locally.") from None
    else:
        # a new local cluster would otherwise write an auth token under $HOME; it only listens on 127.0.0.1
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=max_parallel, include_dashboard=False, log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES, logging_level="WARNING")
        host = ray.get_runtime_context().gcs_address.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            ray.shutdown()
            raise ClusterError(f"Expected the local Ray to listen on 127.0.0.1 only; it listens on {host} because "
                               f"Ray was imported before the sweep could set {LOOPBACK_ONLY[0]}={LOOPBACK_ONLY[1]}. "
                               "Set that variable before importing ray, or run the sweep in its own process.")


def _current_experiment_id() -> str:
    """Where a new run goes, by MLflow's public rules: `mlflow.set_experiment` (which sets
    ``MLFLOW_EXPERIMENT_ID``), else ``MLFLOW_EXPERIMENT_NAME``, else the Default experiment."""
    if MLFLOW_EXPERIMENT_ID.get():
        return MLFLOW_EXPERIMENT_ID.get()
    name = MLFLOW_EXPERIMENT_NAME.get()
    experiment = mlflow.get_experiment_by_name(name) if name else None
    return experiment.experiment_id if experiment is not None else Experiment.DEFAULT_EXPERIMENT_ID


@contextlib.contextmanager
def _parent_run(base, ghash: str, grid: dict, settings: list[SweepSetting]):
    """The sweep's parent run: the earlier one of the same sweep in this experiment (reopened), else a new one.
    Yields (active run, reopened?)."""
    found = []
    if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run` the parent is the run `mlflow run` made
        found = MlflowClient().search_runs(
            [_current_experiment_id()],
            filter_string=f"tags.`{TAGS.role}` = 'sweep' AND tags.`{TAGS.sweep_grid}` = '{ghash}'",
            order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        with mlflow.start_run(run_id=found[0].info.run_id) as run:
            mlflow.set_tags(process_tags())  # this process holds it now (`runs --stale`)
            yield run, True
        return
    with transfer_run("sweep", base, nested=False, name=f"{base.name}-sweep",
                      extra_tags={TAGS.sweep_grid: ghash}) as run:
        mlflow.set_tag(TAGS.sweep_id, run.info.run_id)
        mlflow.log_dict(grid, "sweep/grid.json")
        # what the summary lists: a re-run under `mlflow run` is a new parent whose skipped settings ran earlier
        mlflow.log_dict([{"setting": s.values, "sweep_key": s.key()} for s in settings], SETTINGS_FILE)
        mlflow.log_params({"sweep_keys": ",".join(grid)[:500], "sweep_settings": len(settings)})
        yield run, False


def _source_runs(pending: list[SweepSetting], experiment_id: str, parent_id: str,
                 echo: Callable[[str], None]) -> dict[str, str | Exception]:
    """source key → source run id (reused, or trained here, nested under the parent), or the error that
    stopped its training (its settings then fail without a target run)."""
    from .runs import find_reusable_source, train_source

    sources: dict[str, str | Exception] = {}
    for setting in pending:
        key = setting.recipe.source_key(code_version())
        if key in sources:
            continue
        reused = find_reusable_source(setting.recipe, experiment_id)
        if reused:
            sources[key] = reused
            continue
        echo(f"training the source run of {setting.recipe.name} (source key {key})")
        try:
            with added_run_tags(**{TAGS.sweep_id: parent_id}):
                sources[key] = train_source(setting.recipe, nested=True)
        except TransferError as exc:
            sources[key] = exc
    return sources


def _mark_killed(client: MlflowClient, experiment_id: str, parent_id: str) -> int:
    """End the sweep's runs still RUNNING (their tasks were cancelled) KILLED, saying why."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`{TAGS.sweep_id}` = '{parent_id}' AND attributes.status = 'RUNNING'"), max_results=1000)
    for run in runs:
        if run.info.run_id == parent_id:
            continue
        client.set_tag(run.info.run_id, TAGS.stale_reason, "the sweep was interrupted (Ctrl-C); its task was cancelled")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def _end_open_runs(client: MlflowClient, experiment_id: str, parent_id: str, sweep_key: str) -> str | None:
    """End FAILED the runs a dead task left RUNNING for this setting; returns its newest target run id."""
    target = _newest_target(sweep_key, parent_id, experiment_id)
    if target is None:
        return None
    runs = [client.get_run(target)] + client.search_runs([experiment_id], filter_string=(
        f"tags.`{TAGS.target_run_id}` = '{target}' AND attributes.status = 'RUNNING'"))
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, TAGS.stale_reason, "its Ray task died before it ended the run")
            client.set_terminated(run.info.run_id, "FAILED")
    return target


def run_sweep(recipe_path: str, grid: dict[str, list], *, overrides: tuple[str, ...] = (), options=None,
              report_writer=None, ray_address: str | None = None, max_parallel: int | None = None,
              echo: Callable[[str], None] = print) -> SweepResult:
    """Run every setting of ``grid`` over the recipe at ``recipe_path`` (see the module docstring).

    Args:
        options: the `DiagnoseOptions` of each setting's diagnosis (None: the defaults).
        report_writer: as `diagnose`'s; it travels to the Ray workers, so a module-level function.
        ray_address: join this Ray cluster (``auto``, ``host:port``, ``ray://host:port``); None: start a
            local Ray on this machine with ``max_parallel`` CPUs (default: every core).
        max_parallel: settings running at once (default: the cluster's CPUs / this machine's cores).
        echo: where the one line per finished setting goes.
    """
    from ..diagnostics.options import DiagnoseOptions

    settings = sweep_settings(recipe_path, grid, overrides)  # every mistake before any run or Ray starts
    base = load_recipe(recipe_path, overrides)
    if max_parallel is not None and max_parallel < 1:
        raise TransferError(f"Expected --max-parallel to be at least 1; got {max_parallel}.")
    options = options or DiagnoseOptions()
    if not ray_address:
        os.environ.setdefault(*LOOPBACK_ONLY)  # before Ray is imported: it reads it then
    import ray

    owned = not ray.is_initialized()  # a caller (a test module) that started Ray keeps it for its next sweep
    if owned:
        _start_ray(ray_address, max_parallel or os.cpu_count() or 1)
    try:
        return _run(ray, settings, base, grid, options, report_writer, max_parallel, echo)
    finally:
        if owned:
            ray.shutdown()


def _run(ray, settings, base, grid, options, report_writer, max_parallel, echo) -> SweepResult:
    client = MlflowClient()
    resources, limit = task_resources(ray.cluster_resources(), base.runtime.device, max_parallel)
    with _parent_run(base, grid_hash(base, grid), grid, settings) as (parent, reopened):
        parent_id, experiment_id = parent.info.run_id, parent.info.experiment_id
        echo(f"sweep run {parent_id} ({'reopened' if reopened else 'new'}): {len(settings)} settings")
        outcomes: dict[int, SettingOutcome] = {}
        pending = []
        for i, setting in enumerate(settings):
            done = _finished(client, experiment_id, setting.key())
            if done:
                outcomes[i] = SettingOutcome(setting.values, setting.key(), "SKIPPED", *done)
            else:
                pending.append(i)
        if not pending:
            echo(f"nothing to run: all {len(settings)} settings finished before")
        if pending:  # the workers start and import while the driver trains the sources
            warm = ray.remote(**resources)(warm_up)
            for _ in range(min(limit, len(pending))):
                warm.remote()
        sources = _source_runs([settings[i] for i in pending], experiment_id, parent_id, echo)
        remote = ray.remote(**resources)(run_setting)
        queue, running = list(pending), {}
        try:
            while queue or running:
                while queue and len(running) < limit:
                    i = queue.pop(0)
                    setting = settings[i]
                    source = sources[setting.recipe.source_key(code_version())]
                    if isinstance(source, Exception):
                        outcomes[i] = SettingOutcome(setting.values, setting.key(), "FAILED",
                                                     error=f"source run: {_one_line(source)}")
                        echo(f"[{len(outcomes)}/{len(settings)}] {outcomes[i].line()}")
                        continue
                    task = {"tracking_uri": mlflow.get_tracking_uri(), "experiment_id": experiment_id,
                            "parent_run_id": parent_id, "recipe": setting.recipe.to_dict(),
                            "source_run_id": source, "setting": setting.values, "sweep_key": setting.key(),
                            "options": options, "report_writer": report_writer}
                    running[remote.remote(task)] = i
                if not running:
                    continue
                ready, _ = ray.wait(list(running), num_returns=1)
                i = running.pop(ready[0])
                try:
                    out = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the worker died (out of memory, killed, node lost)
                    out = {"status": "FAILED", "diagnostics_run_id": None,
                           "target_run_id": _end_open_runs(client, experiment_id, parent_id, settings[i].key()),
                           "error": f"the Ray task died: {type(exc).__name__}: {_one_line(exc)}"}
                outcomes[i] = SettingOutcome(settings[i].values, settings[i].key(), out["status"],
                                             out["target_run_id"], out["diagnostics_run_id"], out["error"])
                echo(f"[{len(outcomes)}/{len(settings)}] {outcomes[i].line()}")
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref, force=True)
            time.sleep(1.0)  # the cancelled workers die before their runs are ended for them
            killed = _mark_killed(client, experiment_id, parent_id)
            echo(f"interrupted: {len(running)} running settings cancelled, {killed} runs marked KILLED; "
                 "finished settings are kept, and running the same sweep again continues")
            raise
        ordered = [outcomes[i] for i in sorted(outcomes)]
        mlflow.log_metrics({"sweep_finished": sum(o.status in ("FINISHED", "SKIPPED") for o in ordered),
                            "sweep_failed": sum(o.status not in ("FINISHED", "SKIPPED") for o in ordered)})
        _summary(parent_id, echo)
        return SweepResult(parent_id, ordered)


def _summary(parent_id: str, echo: Callable[[str], None]) -> None:
    """The sweep's summary table and chart on the parent (`tracking.sweep_summary`)."""
    try:
        write_sweep_summary(parent_id)
    except Exception as exc:  # noqa: BLE001 — the summary is a view of the runs; the runs stand without it
        echo(f"warning: the sweep summary failed: {type(exc).__name__}: {_one_line(exc)}")
