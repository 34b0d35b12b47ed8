"""Source training and fine-tuning, logged to MLflow (the source→target pipeline is `pipeline`).

Each run logs, with ``step=epoch`` (0 = before training): ``loss`` and ``acc_source_train``,
``acc_source_val``, ``acc_target_train``, ``acc_target_val``; then ``final_acc_*`` (last epoch) and
``best_acc_*`` (over trained epochs, step >= 1: step 0 is no training step); a state-dict checkpoint per epoch under
``checkpoints/``; the final model (``torch.export`` format, with a signature); tags from `TAGS`.
A run is FINISHED only after its last artifact landed; any exception (or Ctrl-C) marks it FAILED.
With label spaces that differ (``target.new_head``, issue 12) a run is scored on the other domain's shared
classes only, in its own labels (none shared: no such ``acc_*``), and the target starts from the source's
weights under a fresh last layer (its step 0 is at chance).

A recipe with ``source.model_uri`` fine-tunes a model someone else logged: its source run trains
nothing. It records the model's URI (tag ``transfer.source_model_uri``), evaluates the model once and
logs those accuracies at step 0 and again at step 1 — the imported model *is* the trained source, so
the histories' rule "trained epochs are step >= 1" gives it its score — and logs it again as its own
``model`` (pt2, the original module names), so the target run, ``diagnose`` and the app treat the pair
like any other. A foreign model is adapted (`models.adapter`); its exported graph keeps batch norm in
eval mode while fine-tuning (running statistics are not updated).

Transfer methods (issue 13, ``target.method``, tag ``transfer.method``): ``finetune`` starts from the source's
weights; ``slice`` first applies ReMoS slicing (`training.slicing`: the source model profiled on the target
train set, the ``target.slice_ratio`` lowest-scored conv weights zeroed) and logs the mask as
``slicing/mask.npz`` (bool arrays keyed by conv module path, ``True`` = zeroed; ``np.load(...,
allow_pickle=False)``) and ``slicing/summary.json`` (per layer: weights, zeroed, ratio), tag
``transfer.slice_ratio``; ``scratch`` trains a fresh model of the same architecture (seeded by ``seed``)
with the target settings — its ``transfer.source_run_id`` is still the source, the teacher it is compared
with, and tag ``transfer.teacher_only=true`` says nothing was inherited from it.

Issue 15: before training, every target run logs ``logme``, ``leep`` and ``transferability_estimate_seconds``
(`log_transferability_estimates`): the source model as loaded (a scratch run's teacher), before slicing or a
new head, scored on the target training data.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.models import infer_signature

from ..config import Recipe
from ..diagnostics.transferability import estimate_transferability
from ..errors import DataError, RecipeError
from ..models import MODELS, TransferNet, build_model, freeze_layers, with_new_head
from ..models.adapter import exportable
from ..runtime import resolve_device
from ..tags import TAGS
from ..training import EpochResult, evaluate, fit
from ..training.slicing import check_ratio, conv_layers, slice_model
from .context import PairData, code_version, pair_id, prepare_data, transfer_run
from .lookup import MODEL_NAME, checkpoint_path, load_checkpoint, load_classifier, load_logged_model, \
    logged_model_uri, resolve_source_run

log = logging.getLogger(__name__)

def _log_recipe(recipe: Recipe, data: PairData, role: str = "source") -> None:
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    params = {k: ("" if v is None else json.dumps(list(v)) if isinstance(v, tuple) else str(v))
              for k, v in recipe.flat().items() if k not in existing}  # a class list as JSON
    mlflow.log_params(params)
    mlflow.log_dict(recipe.to_dict(), "recipe.json")
    mlflow.set_tags({
        TAGS.source_domain: data.source.domain.name, TAGS.target_domain: data.target.domain.name,
        TAGS.classes: json.dumps(list(data.classes)), TAGS.model: recipe.model.name,
    })
    if role == "target":  # issue 12: the target model's own label space, and the source's beside it
        mlflow.set_tags({TAGS.classes: json.dumps(list(data.target_classes)),
                         TAGS.source_classes: json.dumps(list(data.source_classes)),
                         TAGS.new_head: str(recipe.target.new_head).lower()})
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
        fit(model, train_set, data.eval_sets(desc), cfg, seed=recipe.seed, on_epoch=logger, desc=desc, device=device)
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
        exportable(model), name=MODEL_NAME, input_example=example.numpy(),
        signature=infer_signature(example.numpy(), output),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


def train_source(recipe: Recipe, *, data: PairData | None = None, nested: bool = False) -> str:
    """Train the recipe's source model from scratch on the source domain; returns the run id."""
    device = resolve_device(recipe.runtime.device)  # an absent device fails before the run opens
    data = data or prepare_data(recipe)
    extra = {TAGS.source_key: recipe.source_key(code_version()), TAGS.device: str(device)}
    with transfer_run("source", recipe, nested=nested, name=f"{recipe.name}-source", extra_tags=extra) as run:
        _log_recipe(recipe, data)
        if recipe.source.model_uri:
            _import_source(recipe, data)
            return run.info.run_id
        torch.manual_seed(recipe.seed)  # the initial weights are part of the recipe's reproducibility
        model = build_model(recipe.model.name, len(data.classes), weights=recipe.model.weights)
        _train_and_log(model, data.source.train, recipe, data, recipe.source, "source", device)
        return run.info.run_id


def _import_source(recipe: Recipe, data: PairData) -> None:
    """The active source run stands for the logged model ``source.model_uri`` (see the module docstring)."""
    uri = recipe.source.model_uri
    model = load_classifier(uri, len(data.classes), image_size=recipe.data.image_size,
                            registry_arch=recipe.model.name, normalisation=recipe.model.normalisation())
    mlflow.set_tags({TAGS.source_model_uri: uri, TAGS.model: model.arch})
    metrics = {f"acc_{name}": evaluate(model, ds) for name, ds in data.eval_sets().items()}
    for step in (0, 1):
        mlflow.log_metrics(metrics, step=step)
    mlflow.log_metrics({f"{kind}_{k}": v for k, v in metrics.items() for kind in ("final", "best")})
    _log_model(model, data)


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
    if tuple(data.source_classes) != source.classes:
        raise DataError(f"source run {source_run_id} was trained on classes {list(source.classes)}, "
                        f"but the recipe's source domain has {list(data.source_classes)}"
                        f"{'' if recipe.source.classes is None else ' (source.classes)'}; use the recipe "
                        "the source run was trained with")
    foreign = source.arch not in MODELS  # a source run that imported another tool's model
    if source.arch != recipe.model.name and not foreign:
        raise RecipeError(f"`model.name` is {recipe.model.name!r} but source run {source_run_id} "
                          f"trained {source.arch!r}; use the same architecture")
    if foreign and recipe.target.new_head:  # an adapted model has no head the registry can rebuild
        raise RecipeError(f"Expected `target.new_head: false` for source run {source_run_id}, which imported "
                          f"a model of another tool ({source.arch}); got true. A new head is built for the "
                          f"registry architectures {sorted(MODELS)} only: fine-tune over the source's classes, "
                          "or log the model with the head you want.")
    method = recipe.target.method
    if foreign and method == "scratch":  # nothing to rebuild a fresh adapted model from
        raise RecipeError(f"Expected `target.method` finetune or slice for source run {source_run_id}, which "
                          f"imported a model of another tool ({source.arch}); got scratch. A fresh model is "
                          f"built for the registry architectures {sorted(MODELS)} only.")
    if method == "slice":
        check_ratio(recipe.target.slice_ratio)
    if foreign and source_epoch is None:
        model = load_classifier(source.model_uri, len(source.classes), image_size=recipe.data.image_size,
                                trust_pickled=trust_pickled, normalisation=recipe.model.normalisation())
    else:
        model = (load_logged_model(source, trust_pickled=trust_pickled) if source_epoch is None
                 else load_checkpoint(source_run_id, source_epoch))
    if method == "slice":
        conv_layers(model)  # a model without conv layers is refused before the run opens
    extra = {TAGS.source_run_id: source_run_id, TAGS.device: str(device), **_method_tags(recipe)}
    with transfer_run("target", recipe, nested=nested, name=f"{recipe.name}-target", extra_tags=extra) as run:
        _log_recipe(recipe, data, "target")
        if source_epoch is not None:
            mlflow.set_tag(TAGS.source_epoch, str(source_epoch))
        if foreign:
            mlflow.set_tag(TAGS.model, model.arch)
        # issue 15: the source model as loaded (a scratch run's teacher), before any slicing or new head
        log_transferability_estimates(model.to(device), data.target.train)
        if method == "scratch":  # issue 13: same architecture, fresh weights, nothing from the source
            torch.manual_seed(recipe.seed)
            model = build_model(source.arch, len(data.target_classes))
        elif recipe.target.new_head:  # issue 12: the source's weights, a fresh (seeded) last layer
            model = with_new_head(model, len(data.target_classes), seed=recipe.seed)
        if method == "slice":
            _slice_and_log(model.to(device), data, recipe.target.slice_ratio)
        frozen = freeze_layers(model, recipe.target.freeze_depth)
        mlflow.set_tag(TAGS.frozen_layers, json.dumps(frozen))
        _train_and_log(model, data.target.train, recipe, data, recipe.target, "target", device)
        if pair_tag:
            mlflow.set_tag(TAGS.pair_id, pair_id(recipe, source_run_id, run.info.run_id))
        return run.info.run_id


def log_transferability_estimates(model, train_set) -> dict | None:
    """Log LogME and LEEP of ``model`` on the target training data (`estimate_transferability`) as the
    active run's ``logme``, ``leep`` and ``transferability_estimate_seconds``; returns them, or None.

    An estimate is a forecast, not part of the run's result: one that cannot be made (e.g. a label budget
    that leaves a single class) is logged as a warning and the tag ``transfer.estimate_note`` (why),
    and the run goes on to train."""
    try:
        estimate = estimate_transferability(model, train_set)
    except Exception as exc:  # noqa: BLE001 -- a forecast that fails must not cost the fine-tuning
        note = f"no transferability estimate ({type(exc).__name__}): {exc}"[:4000]
        log.warning(note)
        mlflow.set_tag(TAGS.estimate_note, note)
        return None
    mlflow.log_metrics({"logme": estimate["logme"], "leep": estimate["leep"],
                        "transferability_estimate_seconds": estimate["seconds"]})
    return estimate


def _method_tags(recipe: Recipe) -> dict[str, str]:
    """The target run's `TAGS.method` (and `slice_ratio` / `teacher_only` where they apply)."""
    tags = {TAGS.method: recipe.target.method}
    if recipe.target.method == "slice":
        tags[TAGS.slice_ratio] = repr(float(recipe.target.slice_ratio))
    if recipe.target.method == "scratch":
        tags[TAGS.teacher_only] = "true"
    return tags


def _slice_and_log(model, data: PairData, ratio: float) -> None:
    """ReMoS slicing of ``model`` in place (profiled on the target train set), mask and summary logged."""
    mask, layers = slice_model(model, data.target.train, ratio)
    zeroed, total = sum(v["zeroed"] for v in layers.values()), sum(v["weights"] for v in layers.values())
    summary = {"method": "remos", "ratio": ratio, "basis": f"target train set, {len(data.target.train)} images",
               "zeroed": zeroed, "weights": total, "layers": layers}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.npz"
        np.savez_compressed(path, **{name: np.asarray(m, dtype=bool) for name, m in mask.items()})
        mlflow.log_artifact(str(path), artifact_path="slicing")
    mlflow.log_dict(summary, "slicing/summary.json")
    mlflow.log_metric("sliced_fraction", zeroed / max(total, 1))


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

