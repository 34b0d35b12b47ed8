"""Source training and fine-tuning, logged to MLflow (the source→target pipeline is `pipeline`).

Each run logs, with ``step=epoch`` (0 = before training): ``loss`` and ``acc_source_train``,
``acc_source_val``, ``acc_target_train``, ``acc_target_val``; then ``final_acc_*`` (last epoch) and
``best_acc_*`` (over trained epochs, step >= 1: step 0 is no training step); a state-dict checkpoint per epoch under
``checkpoints/``; the final model (``torch.export`` format, with a signature); tags from `TAGS`.
A run is FINISHED only after its last artifact landed; any exception (or Ctrl-C) marks it FAILED.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature

from ..config import Recipe
from ..errors import DataError, RecipeError
from ..models import TransferNet, build_model, freeze_layers
from ..runtime import resolve_device
from ..tags import TAGS
from ..training import EpochResult, fit
from .context import PairData, code_version, pair_id, prepare_data, transfer_run
from .lookup import MODEL_NAME, checkpoint_path, load_checkpoint, load_logged_model, \
    logged_model_uri, resolve_source_run


def _log_recipe(recipe: Recipe, data: PairData) -> None:
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    params = {k: ("" if v is None else str(v)) for k, v in recipe.flat().items() if k not in existing}
    mlflow.log_params(params)
    mlflow.log_dict(recipe.to_dict(), "recipe.json")
    mlflow.set_tags({
        TAGS.source_domain: data.source.domain.name, TAGS.target_domain: data.target.domain.name,
        TAGS.classes: json.dumps(list(data.classes)), TAGS.model: recipe.model.name,
    })
    mlflow.log_params({
        "n_source_train": len(data.source.train_indices), "n_source_val": len(data.source.val_indices),
        "n_target_train": len(data.target.train_indices), "n_target_val": len(data.target.val_indices),
    })


class _EpochLogger:
    """Logs each epoch's metrics and checkpoint to the active run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.history: list[dict[str, float]] = []

    def __call__(self, result: EpochResult) -> None:
        mlflow.log_metrics(result.metrics, step=result.epoch)
        self.history.append(result.metrics)
        path = self.folder / Path(checkpoint_path(result.epoch)).name
        # CPU tensors, so a checkpoint of a GPU run loads anywhere (weights_only, no map_location)
        torch.save({k: v.cpu() for k, v in result.model.state_dict().items()}, path)
        mlflow.log_artifact(str(path), artifact_path=str(Path(checkpoint_path(0)).parent))
        path.unlink()


def _train_and_log(model: TransferNet, train_set, recipe: Recipe, data: PairData, cfg, desc: str,
                   device=None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        logger = _EpochLogger(Path(tmp))
        fit(model, train_set, data.eval_sets(), cfg, seed=recipe.seed, on_epoch=logger, desc=desc, device=device)
    final = {f"final_{k}": v for k, v in logger.history[-1].items() if k.startswith("acc_")}
    best = {f"best_{k}": max(h[k] for h in logger.history[1:]) for k in logger.history[-1] if k.startswith("acc_")}
    mlflow.log_metrics({**final, **best})
    _log_model(model, data)
    return final


def _log_model(model: TransferNet, data: PairData) -> None:
    model.cpu().eval()  # the logged model is a CPU model, whatever device trained it
    example = torch.stack([data.target.domain.dataset[int(i)][0] for i in data.target.val_indices[:2]])
    with torch.inference_mode():
        output = model(example).numpy()
    mlflow.pytorch.log_model(
        model, name=MODEL_NAME, input_example=example.numpy(),
        signature=infer_signature(example.numpy(), output),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def train_source(recipe: Recipe, *, data: PairData | None = None, nested: bool = False) -> str:
    """Train the recipe's source model from scratch on the source domain; returns the run id."""
    device = resolve_device(recipe.runtime.device)  # an absent device fails before the run opens
    data = data or prepare_data(recipe)
    extra = {TAGS.source_key: recipe.source_key(code_version()), TAGS.device: str(device)}
    with transfer_run("source", recipe, nested=nested, name=f"{recipe.name}-source", extra_tags=extra) as run:
        _log_recipe(recipe, data)
        model = build_model(recipe.model.name, len(data.classes), weights=recipe.model.weights)
        _train_and_log(model, data.source.train, recipe, data, recipe.source, "source", device)
        return run.info.run_id


def finetune(recipe: Recipe, source_run_id: str, *, data: PairData | None = None, nested: bool = False,
             source_epoch: int | None = None, pair_tag: bool = True, trust_pickled: bool = False) -> str:
    """Fine-tune the source run's model on the target domain; returns the target run id.

    Args:
        source_epoch: start from that epoch's checkpoint of the source run instead of its final model.
        trust_pickled: allow a source model logged in pickle format (it runs code when loaded).
    """
    device = resolve_device(recipe.runtime.device)  # an absent device fails before the run opens
    source = resolve_source_run(source_run_id)
    data = data or prepare_data(recipe)
    if tuple(data.classes) != source.classes:
        raise DataError(f"source run {source_run_id} was trained on classes {list(source.classes)}, "
                        f"but the recipe's domains have {list(data.classes)}")
    if source.arch != recipe.model.name:
        raise RecipeError(f"`model.name` is {recipe.model.name!r} but source run {source_run_id} "
                          f"trained {source.arch!r}; use the same architecture")
    model = (load_logged_model(source, trust_pickled=trust_pickled) if source_epoch is None
             else load_checkpoint(source_run_id, source_epoch))
    extra = {TAGS.source_run_id: source_run_id, TAGS.device: str(device)}
    with transfer_run("target", recipe, nested=nested, name=f"{recipe.name}-target", extra_tags=extra) as run:
        _log_recipe(recipe, data)
        if source_epoch is not None:
            mlflow.set_tag(TAGS.source_epoch, str(source_epoch))
        frozen = freeze_layers(model, recipe.target.freeze_depth)
        mlflow.set_tag(TAGS.frozen_layers, json.dumps(frozen))
        _train_and_log(model, data.target.train, recipe, data, recipe.target, "target", device)
        if pair_tag:
            mlflow.set_tag(TAGS.pair_id, pair_id(recipe, source_run_id, run.info.run_id))
        return run.info.run_id


def find_reusable_source(recipe: Recipe, experiment_id: str) -> str | None:
    """A FINISHED source run of this experiment with the same recipe, parameters and code, if any."""
    key = recipe.source_key(code_version())
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAGS.role}` = 'source' AND tags.`{TAGS.source_key}` = '{key}' "
                      "AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=5)
    for run in runs:
        if logged_model_uri(run) is not None:
            return run.info.run_id
    return None


def final_accuracies(run_id: str) -> dict[str, float]:
    """The ``final_acc_*`` metrics of a run, for summaries."""
    metrics = MlflowClient().get_run(run_id).data.metrics
    return {k[len("final_"):]: v for k, v in metrics.items() if k.startswith("final_acc_")}

