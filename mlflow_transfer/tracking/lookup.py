"""Find runs again and read their models and checkpoints back, safely (no pickle)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..errors import ModelError, RunLookupError
from ..models import TransferNet, build_model, load_state
from ..tags import TAGS

MODEL_NAME = "model"           # name of the logged model of every source/target run
CHECKPOINT_DIR = "checkpoints"  # artifact folder of the per-epoch state dicts


def checkpoint_path(epoch: int) -> str:
    """Artifact path of the state dict after ``epoch`` (0 = before training)."""
    return f"{CHECKPOINT_DIR}/epoch_{epoch:03d}.pt"


@dataclass(frozen=True)
class SourceRun:
    """A validated source run: what a target run needs to start from it."""

    run_id: str
    experiment_id: str
    model_uri: str
    arch: str
    classes: tuple[str, ...]
    recipe: str


def get_run(run_id: str, client: MlflowClient | None = None):
    """The MLflow run ``run_id``, or a `RunLookupError` that says where it was looked for."""
    client = client or MlflowClient()
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise RunLookupError(f"run {run_id!r} does not exist on the tracking server "
                             f"{mlflow.get_tracking_uri()}; check the id (mlflow ui lists runs) and "
                             "MLFLOW_TRACKING_URI") from None


def logged_model_uri(run) -> str | None:
    """``models:/<id>`` of the run's logged model called ``model``, or None if it has none."""
    client = MlflowClient()
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{MODEL_NAME}'")
    return f"models:/{found[0].model_id}" if found else None


def resolve_source_run(run_id: str) -> SourceRun:
    """Check that ``run_id`` is a finished source run with a logged model; return its facts.

    Raises:
        RunLookupError: the run does not exist, is not a source run, did not finish, or has no
            logged model.
    """
    run = get_run(run_id)
    role = run.data.tags.get(TAGS.role)
    if role != "source":
        raise RunLookupError(f"run {run_id} is not a source run (its {TAGS.role} tag is {role!r}); "
                             "pass the id of a run made by `train_source` or `main`")
    if run.info.status != "FINISHED":
        raise RunLookupError(f"source run {run_id} has status {run.info.status}, not FINISHED; "
                             "train the source again (mlflow run . -e train_source)")
    uri = logged_model_uri(run)
    if uri is None:
        raise RunLookupError(f"source run {run_id} has no logged model named {MODEL_NAME!r}; "
                             "train the source again (mlflow run . -e train_source)")
    return SourceRun(run_id, run.info.experiment_id, uri, run.data.tags[TAGS.model],
                     tuple(json.loads(run.data.tags[TAGS.classes])), run.data.tags.get(TAGS.recipe, ""))


def load_logged_model(source: SourceRun) -> TransferNet:
    """Rebuild the source run's architecture and load its logged model's weights into it.

    The logged model is a ``torch.export`` archive (MLflow's pickle-free "pt2" format); its
    parameters and buffers keep the names of the original module.
    """
    try:
        exported = mlflow.pytorch.load_model(source.model_uri)
    except Exception as exc:
        raise ModelError(f"cannot load the logged model {source.model_uri} of run {source.run_id}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    model = build_model(source.arch, len(source.classes))
    state = exported.state_dict()
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ModelError(f"the logged model of run {source.run_id} does not match {source.arch}: "
                         f"missing {sorted(missing)[:5]}")
    model.load_state_dict({k: state[k] for k in model.state_dict()})
    return model


def load_checkpoint(run_id: str, epoch: int) -> TransferNet:
    """The model of run ``run_id`` as it was after ``epoch`` (its ``checkpoints/`` artifact).

    Raises:
        RunLookupError: no such run or no checkpoint for that epoch (the message lists those that exist).
        ModelError: the checkpoint file is corrupt.
    """
    run = get_run(run_id)
    tags = run.data.tags
    if TAGS.model not in tags:
        raise RunLookupError(f"run {run_id} was not made by mlflow-transfer (no {TAGS.model} tag)")
    client = MlflowClient()
    available = sorted(a.path for a in client.list_artifacts(run_id, CHECKPOINT_DIR))
    wanted = checkpoint_path(epoch)
    if wanted not in available:
        raise RunLookupError(f"run {run_id} has no checkpoint for epoch {epoch}; it has "
                             f"{[Path(p).stem for p in available] or 'none'}")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=wanted, dst_path=tmp)
        try:
            state = load_state(Path(local))
        except ModelError as exc:
            raise ModelError(f"checkpoint {wanted} of run {run_id} is unreadable: {exc}") from None
    model = build_model(tags[TAGS.model], len(json.loads(tags[TAGS.classes])))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"checkpoint {wanted} of run {run_id} does not fit {tags[TAGS.model]}: "
                         f"{str(exc).splitlines()[0][:200]}") from None
    return model
