"""Find diagnosed pairs on a tracking server, fetch their bundles (the pair bundle, and its timeline when
there is one) once into a local cache, and log a bundle so that it lands whole.

Everything that arrives here is untrusted: run and experiment ids (from URLs and tags) are checked
before they touch a query or a path, the cache never deletes what it did not write, and a server that
stops answering is reported in one way (`TrackingUnavailableError`, naming the URI and the fix).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from ..bundle import BundleReader, PairBundle
from ..bundle.io import MANIFEST
from ..errors import BundleError, CacheError, RunLookupError, TrackingUnavailableError, TransferError
from ..tags import TAGS
from ..validation import check_relative_path, check_run_id

BUNDLE_DIR = "diagnostics"
TIMELINE_DIR = "timetravel"  # issue 14: the timeline bundle, beside the pair bundle
# Written into every cache entry fetch_bundle creates; an entry without it is not ours and is never deleted.
CACHE_MARKER = ".mlflow-transfer-cache"
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for "the server answered: no such thing"


def default_cache_dir() -> Path:
    """``$MLFLOW_TRANSFER_CACHE`` or ``~/.cache/mlflow-transfer/bundles``."""
    return Path(os.environ.get("MLFLOW_TRANSFER_CACHE", Path.home() / ".cache" / "mlflow-transfer" / "bundles"))


def store_client(tracking_uri: str | None) -> MlflowClient:
    """A client of ``tracking_uri``; a database store opens here, so failing to is reported like a server
    that does not answer."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    return call_store(uri, lambda: MlflowClient(tracking_uri) if tracking_uri else MlflowClient())


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def unreachable(uri: str, exc: BaseException) -> TrackingUnavailableError:
    """The one message for a tracking server that does not answer (or answers with an error)."""
    return TrackingUnavailableError(f"cannot reach the tracking server at {uri} ({_reason(exc)}); start it "
                                    f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or point "
                                    f"--tracking-uri / MLFLOW_TRACKING_URI at a running one")


def call_store(uri: str, call: Callable, missing: TransferError | None = None):
    """``call()``, a request to the tracking store at ``uri``.

    ``missing`` is raised only when the server answered that the thing asked for does not exist
    (MLflow's RESOURCE_DOES_NOT_EXIST); every other failure of the store or the connection (refused,
    timed out, HTTP 5xx, a store that cannot open) is `TrackingUnavailableError`.
    """
    try:
        return call()
    except MlflowException as exc:
        if exc.error_code == _NOT_FOUND and missing is not None:
            raise missing from None
        raise unreachable(uri, exc) from None
    except (requests.RequestException, OSError, SQLAlchemyError, sqlite3.Error) as exc:
        # raised past MLflow by artifact stores, and by a database store that cannot open its file
        raise unreachable(uri, exc) from None


def list_experiments(tracking_uri: str | None = None) -> list[dict]:
    """Active experiments on the server as ``{"experiment_id", "name"}`` dicts, by name.

    Raises:
        TrackingUnavailableError: the server does not answer (the message names the URI tried).
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = store_client(tracking_uri)
    found = call_store(uri, lambda: client.search_experiments(max_results=1000, order_by=["name ASC"]))
    return [{"experiment_id": e.experiment_id, "name": e.name} for e in found]


def _run_id_or_none(value) -> str | None:
    """A run id read from a tag, or None when the tag holds anything else (tags are free text)."""
    try:
        return check_run_id(value)
    except RunLookupError:
        return None


def list_diagnosed_pairs(experiment_ids: list[str] | None = None, *, page_size: int = 500,
                         max_pairs: int | None = None, tracking_uri: str | None = None,
                         include_incomplete: bool = False) -> list[dict]:
    """FINISHED diagnostics runs (newest first) as dicts: run ids, pair id, recipe, domains, model,
    status, start time, transferability score, domain CV accuracy, the target model's best
    validation accuracy and the source model's LogME and LEEP (issue 15; None for older runs). Pages through the server's results (``page_size`` runs per request).

    ``include_incomplete`` also lists diagnostics runs in any other status (RUNNING, FAILED, KILLED:
    their bundle may be partial or missing), so a caller can show them as incomplete. Run-id tags that
    are not well-formed ids come back as None.

    Raises:
        RunLookupError: an experiment id that is not a well-formed id.
        TrackingUnavailableError: the server does not answer.
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    if experiment_ids is None:
        experiment_ids = [e["experiment_id"] for e in list_experiments(tracking_uri)]
    experiment_ids = [check_run_id(i, "valid experiment id") for i in experiment_ids]
    if not experiment_ids:
        return []
    client = store_client(tracking_uri)
    query = f"tags.`{TAGS.role}` = 'diagnostics'"
    if not include_incomplete:
        query += " AND attributes.status = 'FINISHED'"
    out, token = [], None
    while True:
        page = call_store(uri, lambda: client.search_runs(experiment_ids, filter_string=query, max_results=page_size,
                                                         order_by=["attributes.start_time DESC"], page_token=token))
        for run in page:
            t, m = run.data.tags, run.data.metrics
            out.append({"diagnostics_run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                        "source_run_id": _run_id_or_none(t.get(TAGS.source_run_id)),
                        "target_run_id": _run_id_or_none(t.get(TAGS.target_run_id)),
                        "pair_id": t.get(TAGS.pair_id), "recipe": t.get(TAGS.recipe), "model": t.get(TAGS.model),
                        "source_domain": t.get(TAGS.source_domain), "target_domain": t.get(TAGS.target_domain),
                        "status": run.info.status, "start_time": run.info.start_time,
                        "transferability_score": m.get("transferability_score"),
                        "domain_cv_accuracy": m.get("domain_cv_accuracy"),
                        "target_accuracy": m.get("target_val_accuracy"),
                        "logme": m.get("logme"), "leep": m.get("leep"),  # issue 15, copied from the target run
                        "frozen_layers": t.get(TAGS.frozen_layers)})
            if max_pairs is not None and len(out) >= max_pairs:
                return out
        token = page.token
        if not token:
            return out


DEFAULT_METHOD = "finetune"  # a target run without the method tag (older runs) was fine-tuned


def transfer_methods(experiment_id: str, run_ids: list[str], *, tracking_uri: str | None = None) -> dict[str, dict]:
    """How each target run in ``run_ids`` of experiment ``experiment_id`` was made (issue 13), from its
    tags: ``{run_id: {"method": str ("finetune" when untagged), "slice_ratio": str | None,
    "teacher_only": bool}}``, 100 runs per search. Ids that are not well-formed are left out before
    the query; runs the server does not return are absent. Tag values are free text: escape them
    where shown.

    Raises:
        RunLookupError: an experiment id that is not a well-formed id.
        TrackingUnavailableError: the server does not answer.
    """
    experiment_id = check_run_id(experiment_id, "valid experiment id")
    ids = sorted({i for i in (_run_id_or_none(r) for r in run_ids) if i})
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = store_client(tracking_uri) if ids else None
    out = {}
    for start in range(0, len(ids), 100):
        chunk = ids[start:start + 100]
        # checked ids hold letters, digits, '_' and '-' only: no quote can end the string in the query
        query = "attributes.run_id IN (" + ", ".join(f"'{i}'" for i in chunk) + ")"
        found = call_store(uri, lambda: client.search_runs([experiment_id], filter_string=query,
                                                          max_results=len(chunk)))
        for run in found:
            t = run.data.tags
            out[run.info.run_id] = {"method": t.get(TAGS.method) or DEFAULT_METHOD,
                                    "slice_ratio": t.get(TAGS.slice_ratio),
                                    "teacher_only": t.get(TAGS.teacher_only) == "true"}
    return out


def _ours(entry: Path) -> bool:
    """Whether ``entry`` is a cache folder `_fetch` made (its marker names the entry's run id; a timeline's
    entry is ``<run id>.timetravel``)."""
    marker = entry / CACHE_MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 4096:
            return False
        return json.loads(marker.read_text()).get("run_id") == entry.name.partition(".")[0]
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object: not our marker
        return False


def _left_alone(entry: Path, got: str) -> CacheError:
    return CacheError(f"Expected the bundle cache entry {entry} to be a folder mlflow-transfer downloaded; "
                       f"got {got}. It was left alone: move it out of the cache, or set MLFLOW_TRANSFER_CACHE "
                       "to another folder")


def _check_entry(cache: Path, entry: Path) -> None:
    """Refuse a cache entry that is a symbolic link or resolves outside the cache: neither is read nor
    deleted."""
    if entry.is_symlink():
        raise _left_alone(entry, f"a symbolic link to {os.readlink(entry)!r}")
    if entry.resolve().parent != cache.resolve():
        raise _left_alone(entry, f"a path that leads to {entry.resolve()}, outside {cache.resolve()}")


def _cache_error(cache: Path, exc: OSError) -> CacheError:
    return CacheError(f"Expected a writable bundle cache at {cache}; got {_reason(exc)}. Free some space or "
                       "set MLFLOW_TRANSFER_CACHE to a folder you can write")


def fetch_bundle(diagnostics_run_id: str, cache_dir: str | Path | None = None, *,
                 tracking_uri: str | None = None) -> PairBundle:
    """The run's bundle, downloaded once into ``cache_dir/<run id>`` and validated.

    A cached copy that no longer validates is downloaded again, but only if this function wrote it
    (a marker file); anything else in its place (a folder of the user's, a symbolic link) is left
    alone and reported.

    Raises:
        RunLookupError: a malformed id, or the server answered that the run does not exist.
        BundleError: the run has no complete bundle (say, an interrupted diagnose or upload), the
            bundle is corrupt.
        CacheError: the cache entry is not one this function wrote, or the cache cannot be written.
        TrackingUnavailableError: the server does not answer.
    """
    def messages(run_id: str, target_run: str) -> tuple[str, str]:
        fix = f"mlflow-transfer diagnose --target-run-id {target_run}"
        return (f"run {run_id} has no diagnostics bundle; run `{fix}` for this pair",
                f"so the bundle is incomplete (diagnose or its upload was interrupted). Diagnose again: {fix}")

    return _fetch(diagnostics_run_id, cache_dir, tracking_uri, folder=BUNDLE_DIR, entry_suffix="",
                  open_bundle=PairBundle.open, messages=messages)


def fetch_timeline(diagnostics_run_id: str, cache_dir: str | Path | None = None, *,
                   tracking_uri: str | None = None):
    """The run's timeline bundle (issue 14, its ``timetravel/`` folder) as a `TimelineBundle`, fetched
    and cached like `fetch_bundle` (entry ``<run id>.timetravel``: a run id holds no ``.``), or None when
    the run has no ``timetravel/`` folder (the pair was not time-travelled).

    Raises:
        as `fetch_bundle`; BundleError names ``mlflow-transfer timetravel`` when the folder has no manifest.
    """
    from ..bundle.timeline import TimelineBundle  # torch-free, as this module

    def messages(run_id: str, target_run: str) -> tuple[str, str]:
        fix = f"mlflow-transfer timetravel --target-run-id {target_run}"
        return (f"run {run_id} has no timeline; run `{fix}` for this pair",
                f"so the timeline is incomplete (timetravel or its upload was interrupted). Run it again: {fix}")

    return _fetch(diagnostics_run_id, cache_dir, tracking_uri, folder=TIMELINE_DIR, entry_suffix=".timetravel",
                  open_bundle=TimelineBundle.open, messages=messages, absent_ok=True)


def _fetch(diagnostics_run_id: str, cache_dir, tracking_uri: str | None, *, folder: str, entry_suffix: str,
           open_bundle: Callable, messages: Callable[[str, str], tuple[str, str]], absent_ok: bool = False):
    """The bundle in the run's artifact folder ``folder``, downloaded once into
    ``cache_dir/<run id><entry_suffix>`` and opened with ``open_bundle`` (see `fetch_bundle`).
    ``messages(run id, target run id)``: what to say when the folder is absent, and how an incomplete one
    ends. ``absent_ok``: an absent folder is None, not an error."""
    run_id = check_run_id(diagnostics_run_id, "diagnostics run id")  # before it becomes a path or a query
    uri = tracking_uri or mlflow.get_tracking_uri()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / f"{run_id}{entry_suffix}"
    if target.exists() or target.is_symlink():
        _check_entry(cache, target)
        try:
            return open_bundle(target)
        except BundleError as exc:
            if not _ours(target):
                raise _left_alone(target, f"a folder without its {CACHE_MARKER} file that is no valid bundle "
                                          f"({exc})") from None
            shutil.rmtree(target)  # ours, checked inside the cache and not a link: download it again
    client = store_client(tracking_uri)
    run = call_store(uri, lambda: client.get_run(run_id), RunLookupError(
        f"diagnostics run {run_id!r} does not exist on {uri} (the server says so); check the id "
        "(`mlflow ui` lists runs) and the tracking URI"))
    absent, incomplete = messages(run_id, _run_id_or_none(run.data.tags.get(TAGS.target_run_id)) or "<target run>")
    no_bundle = BundleError(absent)
    listed = call_store(uri, lambda: client.list_artifacts(run_id, folder), no_bundle)
    if not listed:
        if absent_ok:
            return None
        raise no_bundle
    if f"{folder}/{MANIFEST}" not in {f.path for f in listed}:
        # log_bundle uploads the manifest last: without it the upload did not finish
        raise BundleError(f"Expected run {run_id}'s {folder}/ to be a complete bundle with its {MANIFEST}; "
                          f"got {len(listed)} entries without it, {incomplete}")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_id}-", dir=cache))
    except OSError as exc:
        raise _cache_error(cache, exc) from None
    try:
        local = Path(call_store(uri, lambda: mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=folder, dst_path=str(tmp), tracking_uri=tracking_uri), no_bundle))
        open_bundle(local)  # validate before it enters the cache
        try:
            (local / CACHE_MARKER).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
            os.replace(local, target)  # appears whole or not at all
        except OSError as exc:
            if not (target.is_dir() and _ours(target)):  # else another process fetched it meanwhile
                raise _cache_error(cache, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_entry(cache, target)
    return open_bundle(target)


def log_bundle(local_dir: str | Path, artifact_path: str = BUNDLE_DIR, *, run_id: str | None = None) -> None:
    """Log the bundle folder ``local_dir`` under ``artifact_path`` to the active run, or to run ``run_id``
    (through `MlflowClient.log_artifact`, which leaves that run's status alone): every file the manifest
    lists first, the manifest last (one `log_artifact` call). A reader that finds the manifest then finds
    the whole bundle; an upload killed half-way leaves a folder without one, which `fetch_bundle` (and
    `fetch_timeline`) report as incomplete.

    Raises:
        BundleError: ``local_dir`` is not a bundle (no manifest, or a malformed one).
    """
    if run_id is None and mlflow.active_run() is None:  # mlflow.log_artifact would silently start a run of its own
        raise RuntimeError("log_bundle logs into the active run; call it inside mlflow.start_run() or pass run_id")
    check_relative_path(artifact_path, "artifact path", BundleError)
    if run_id is None:
        log = mlflow.log_artifact
    else:
        client = MlflowClient()

        def log(path: str, folder: str) -> None:
            client.log_artifact(run_id, path, folder)
    reader = BundleReader(local_dir, verify=False)  # just written: hashing it again would only cost time
    for entry in sorted(reader.files.values(), key=lambda e: e.path):
        parent = Path(entry.path).parent.as_posix()
        log(str(reader.root / entry.path), artifact_path if parent == "." else f"{artifact_path}/{parent}")
    log(str(reader.root / MANIFEST), artifact_path)
