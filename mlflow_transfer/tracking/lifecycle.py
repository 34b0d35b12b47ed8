"""Runs left RUNNING by a process that died without closing them (SIGKILL, out of memory, power loss).

Every run the package starts is tagged with the host, the process id and the process's start
(``<boot id>:<start ticks>`` from ``/proc``, so a reused pid or a reboot is not mistaken for the
same process). A RUNNING run is *stale* when

- it was started on this host (same host name and boot) and its process is gone, or
- it was started elsewhere, or carries no process tags, and started more than ``older_than_hours``
  ago (another host's processes cannot be seen from here).

`mark_failed` ends such runs FAILED with a tag saying why. A run whose process is alive on this host
is never stale, however old.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from ..errors import RunLookupError
from ..tags import TAGS


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat); "" when
    there is no such live process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and ')': the fields after its last ')' start at 3
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):  # a zombie has died; only its parent hasn't reaped it
        return ""
    return fields[19]


def process_tags() -> dict[str, str]:
    """Tags that identify the process starting a run (set when the run starts)."""
    boot, ticks = _boot_id(), _start_ticks(os.getpid())
    return {TAGS.host: socket.gethostname(), TAGS.pid: str(os.getpid()),
            TAGS.process_start: f"{boot}:{ticks}" if boot and ticks else ""}


def _process_state(pid: int, started: str) -> str:
    """'alive' or 'gone' for a process of this host, judged by its pid and recorded start."""
    ticks = started.rsplit(":", 1)[-1] if started else ""
    now = _start_ticks(pid)
    if now or os.path.isdir("/proc/self"):
        if not now:
            return "gone"
        return "alive" if not ticks or now == ticks else "gone"  # another process reuses the pid
    try:  # no /proc: signal 0 only asks whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    return "alive"


@dataclass(frozen=True)
class RunningRun:
    """A RUNNING run of mlflow-transfer and, when stale, why (None: its process may still finish it)."""

    run_id: str
    experiment_id: str
    role: str
    start_time: float  # seconds since the epoch
    reason: str | None


def stale_verdict(run, *, older_than_hours: float, now: float | None = None) -> str | None:
    """Why the RUNNING ``run`` is stale, or None when it may still be running."""
    now = time.time() if now is None else now
    tags = run.data.tags
    host, pid, started = tags.get(TAGS.host), tags.get(TAGS.pid, ""), tags.get(TAGS.process_start, "")
    boot = _boot_id()
    same_boot = not started or not boot or started.split(":", 1)[0] == boot
    if host == socket.gethostname() and same_boot and pid.isascii() and pid.isdigit():
        if _process_state(int(pid), started) == "gone":
            return f"its process {pid} on {host} is gone"
        return None
    age_hours = (now - run.info.start_time / 1000) / 3600
    if age_hours > older_than_hours:
        where = f"on host {host}" if host else "with no process tags"
        return f"started {age_hours:.1f} h ago {where} (more than {older_than_hours:g} h)"
    return None


def _experiment_ids(experiment_name: str | None) -> list[str] | None:
    if not experiment_name:
        return None
    experiment = MlflowClient().get_experiment_by_name(experiment_name)
    if experiment is None:
        raise RunLookupError(f"Expected an experiment named {experiment_name!r} on {mlflow.get_tracking_uri()}; "
                             "got none. Check --experiment-name (mlflow experiments search lists them).")
    return [experiment.experiment_id]


def find_running_runs(*, experiment_name: str | None = None, older_than_hours: float = 24.0) -> list[RunningRun]:
    """RUNNING runs made by mlflow-transfer (they carry a role tag), oldest first, each with its
    `stale_verdict`."""
    if not older_than_hours >= 0:  # also refuses nan
        raise RunLookupError(f"Expected --older-than to be a number of hours >= 0; got {older_than_hours!r}.")
    ids = _experiment_ids(experiment_name)
    runs = mlflow.search_runs(experiment_ids=ids, search_all_experiments=ids is None,
                              filter_string="attributes.status = 'RUNNING'", output_format="list",
                              order_by=["attributes.start_time ASC"])
    now = time.time()
    return [RunningRun(run.info.run_id, run.info.experiment_id, run.data.tags[TAGS.role],
                       run.info.start_time / 1000, stale_verdict(run, older_than_hours=older_than_hours, now=now))
            for run in runs if TAGS.role in run.data.tags]  # a user's own runs are never touched


def find_stale_runs(*, experiment_name: str | None = None, older_than_hours: float = 24.0) -> list[RunningRun]:
    """The `find_running_runs` that are stale."""
    return [r for r in find_running_runs(experiment_name=experiment_name, older_than_hours=older_than_hours)
            if r.reason is not None]


def mark_failed(stale: list[RunningRun]) -> list[RunningRun]:
    """End each stale run FAILED, tagged with why; returns those marked (a run that ended meanwhile
    is left as it is)."""
    client = MlflowClient()
    marked = []
    for item in stale:
        # checked again just before: a run that ended meanwhile keeps its own status
        if item.reason is None or client.get_run(item.run_id).info.status != "RUNNING":
            continue
        client.set_tag(item.run_id, TAGS.stale_reason, item.reason)
        client.set_terminated(item.run_id, "FAILED")
        marked.append(item)
    return marked
