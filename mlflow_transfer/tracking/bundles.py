"""Find diagnosed pairs on a tracking server and fetch their bundles once into a local cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from ..bundle import PairBundle
from ..errors import BundleError, RunLookupError, TrackingUnavailableError
from ..tags import TAGS

BUNDLE_DIR = "diagnostics"


def default_cache_dir() -> Path:
    """``$MLFLOW_TRANSFER_CACHE`` or ``~/.cache/mlflow-transfer/bundles``."""
    return Path(os.environ.get("MLFLOW_TRANSFER_CACHE", Path.home() / ".cache" / "mlflow-transfer" / "bundles"))


def _client(tracking_uri: str | None) -> MlflowClient:
    return MlflowClient(tracking_uri) if tracking_uri else MlflowClient()


def list_experiments(tracking_uri: str | None = None) -> list[dict]:
    """Active experiments on the server as ``{"experiment_id", "name"}`` dicts, by name.

    Raises:
        TrackingUnavailableError: the server does not answer (the message names the URI tried).
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        found = _client(tracking_uri).search_experiments(max_results=1000, order_by=["name ASC"])
    except Exception as exc:  # connection refused, DNS, HTTP 5xx, a store that cannot open
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TrackingUnavailableError(f"cannot reach the tracking server at {uri} ({reason}); start it "
                                       f"(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or point "
                                       f"--tracking-uri / MLFLOW_TRACKING_URI at a running one") from None
    return [{"experiment_id": e.experiment_id, "name": e.name} for e in found]


def list_diagnosed_pairs(experiment_ids: list[str] | None = None, *, page_size: int = 500,
                         max_pairs: int | None = None, tracking_uri: str | None = None) -> list[dict]:
    """FINISHED diagnostics runs (newest first) as dicts: run ids, pair id, recipe, domains, model,
    start time, transferability score, domain CV accuracy and the target model's best validation
    accuracy. Pages through the server's results (``page_size`` runs per request)."""
    client = _client(tracking_uri)
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    out, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=f"tags.`{TAGS.role}` = 'diagnostics' "
                                  "AND attributes.status = 'FINISHED'", max_results=page_size,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            t, m = run.data.tags, run.data.metrics
            out.append({"diagnostics_run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                        "source_run_id": t.get(TAGS.source_run_id), "target_run_id": t.get(TAGS.target_run_id),
                        "pair_id": t.get(TAGS.pair_id), "recipe": t.get(TAGS.recipe), "model": t.get(TAGS.model),
                        "source_domain": t.get(TAGS.source_domain), "target_domain": t.get(TAGS.target_domain),
                        "start_time": run.info.start_time,
                        "transferability_score": m.get("transferability_score"),
                        "domain_cv_accuracy": m.get("domain_cv_accuracy"),
                        "target_accuracy": m.get("target_val_accuracy"),
                        "frozen_layers": t.get(TAGS.frozen_layers)})
            if max_pairs is not None and len(out) >= max_pairs:
                return out
        token = page.token
        if not token:
            return out


def fetch_bundle(diagnostics_run_id: str, cache_dir: str | Path | None = None, *,
                 tracking_uri: str | None = None) -> PairBundle:
    """The run's bundle, downloaded once into ``cache_dir/<run id>`` and validated.

    A cached copy that no longer validates is downloaded again. Raises `BundleError` when the run has
    no complete bundle (say, an interrupted diagnose) and `RunLookupError` for an unknown run.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / diagnostics_run_id
    if target.exists():
        try:
            return PairBundle.open(target)
        except BundleError:
            shutil.rmtree(target, ignore_errors=True)
    try:
        _client(tracking_uri).get_run(diagnostics_run_id)
    except Exception:
        raise RunLookupError(f"diagnostics run {diagnostics_run_id!r} does not exist on "
                             f"{tracking_uri or mlflow.get_tracking_uri()}") from None
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{diagnostics_run_id}-", dir=cache))
    try:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=diagnostics_run_id, artifact_path=BUNDLE_DIR,
                                                        dst_path=str(tmp), tracking_uri=tracking_uri)
        except Exception:
            raise BundleError(f"run {diagnostics_run_id} has no diagnostics bundle; run `mlflow-transfer "
                              f"diagnose --target-run-id <target run>` for this pair") from None
        PairBundle.open(local)  # validate before it enters the cache
        os.replace(local, target)         # appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PairBundle.open(target)
