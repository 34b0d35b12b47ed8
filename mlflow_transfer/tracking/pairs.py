"""`resolve_pair`: find a source–target pair's two models and its recipe, before any run opens.

From a target run (its source through ``transfer.source_run_id``), two run ids, or two model URIs with
a recipe. Each model is loaded pickle-free unless trusted (`lookup`), in its own label space, into its
registry architecture or adapted (`models.adapter`); everything a user can get wrong about the pair
(unfinished runs, architectures, class counts, image size, layer names) is refused here with the fix,
so a diagnostics run never starts on a pair it cannot diagnose.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from ..config import Recipe, parse_recipe
from ..errors import DiagnosticsError, RecipeError, RunLookupError
from ..models import MODELS, TransferNet
from ..tags import TAGS
from .context import PairData, prepare_data
from .lookup import check_model_uri, get_run, load_classifier, load_model_weights, logged_model_uri

__all__ = ["FINISHED_OPTION", "ResolvedPair", "check_layer_names", "resolve_pair"]


@dataclass(frozen=True)
class ResolvedPair:
    source_run_id: str | None
    target_run_id: str | None
    source_model: TransferNet
    target_model: TransferNet
    recipe: Recipe
    experiment_id: str | None
    data: PairData | None = None  # the recipe's data when resolving needed it (not read twice)


def _recipe_of(run_id: str) -> Recipe:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="recipe.json", dst_path=tmp)
        except Exception:
            raise RunLookupError(f"run {run_id} has no recipe.json artifact; pass --recipe to say which "
                                 "data domains to diagnose on") from None
        try:  # an artifact is untrusted input: any malformed file ends in one message
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:
            raise RecipeError(f"Expected run {run_id}'s recipe.json to be a JSON recipe; got "
                              f"{type(exc).__name__}: {str(exc)[:160]}. Pass --recipe.") from None
        return parse_recipe(raw)


def _input_shape(uri: str) -> tuple[int, ...] | None:
    """(C, H, W) of the logged model's signature, if it has a tensor signature."""
    try:
        spec = mlflow.models.get_model_info(uri).signature.inputs.inputs[0]
        return tuple(int(d) for d in spec.shape[1:])
    except Exception:  # no signature, or not a tensor spec: nothing to check against
        return None


def _check_image_size(uri: str, recipe: Recipe) -> None:
    shape = _input_shape(uri)
    size = recipe.data.image_size
    if shape is not None and len(shape) == 3 and shape[1:] != (size, size):
        raise DiagnosticsError(f"the recipe's images ({size}×{size}) do not fit the models, which were "
                               f"logged for {shape[1]}×{shape[2]} inputs; set data.image_size={shape[1]}")


def _model_from_uri(uri: str, arch: str, num_classes: int, trust_pickled: bool = False) -> TransferNet:
    """The logged model at ``uri`` in the registry architecture (pickle-free unless trusted)."""
    return load_model_weights(uri, arch, num_classes, trust_pickled=trust_pickled)


def _any_model_from_uri(uri: str, num_classes: int, recipe: Recipe, registry_arch: str | None,
                        embedding_layer: str | None, trust_pickled: bool):
    """Any logged PyTorch classifier (no --arch): the registry model when it fits ``registry_arch``,
    else adapted (`lookup.load_classifier`), probed at the recipe's image size."""
    shape = _input_shape(uri)
    channels = shape[0] if shape is not None and len(shape) == 3 else 3
    return load_classifier(uri, num_classes, image_size=recipe.data.image_size, channels=channels,
                           registry_arch=registry_arch, embedding_layer=embedding_layer,
                           trust_pickled=trust_pickled, normalisation=recipe.model.normalisation())


def _check_same_layers(source, target) -> None:
    # before any run starts: two adapted models of different architectures cannot be paired
    if list(source.analysis_layers) != list(target.analysis_layers):
        raise DiagnosticsError(f"Expected source and target models with the same analysis layers; got "
                               f"{list(source.analysis_layers)[:6]}… and {list(target.analysis_layers)[:6]}…. "
                               "A pair must share one architecture (the target fine-tuned from the source).")


FINISHED_OPTION = "--allow-unfinished"


def _check_finished(run, role: str, allow_unfinished: bool) -> None:
    # A FAILED/KILLED/RUNNING run's model and metrics are whatever was there when it stopped: a
    # pair made of it must be asked for, not diagnosed by accident.
    status = run.info.status
    if status != "FINISHED" and not allow_unfinished:
        raise RunLookupError(f"Expected the {role} run {run.info.run_id} to have finished; got status {status}. "
                             f"Diagnose a FINISHED pair, or pass {FINISHED_OPTION} to diagnose it anyway.")


def resolve_pair(*, target_run_id: str | None = None, source_run_id: str | None = None,
                 source_model_uri: str | None = None, target_model_uri: str | None = None,
                 recipe: Recipe | None = None, arch: str | None = None, trust_pickled: bool = False,
                 allow_unfinished: bool = False, embedding_layer: str | None = None) -> ResolvedPair:
    """Find the two models and the recipe (data domains) of a pair.

    Either a target run (its source found through ``transfer.source_run_id``), an explicit pair of
    run ids, or two model URIs plus a recipe naming the data domains. Runs must be FINISHED unless
    ``allow_unfinished``; models must be pickle-free unless ``trust_pickled`` (see
    `load_model_weights`). With ``arch`` (``--arch``) the models are loaded into that registry
    architecture; without it, a model whose parameters fit the recipe's (URIs) or run's registry
    architecture is loaded so, and any other PyTorch classifier is adapted (`lookup.load_classifier`;
    ``embedding_layer`` names the module whose output is its embedding).
    """
    if source_model_uri or target_model_uri:
        if not (source_model_uri and target_model_uri and recipe):
            raise DiagnosticsError("diagnosing model URIs needs --source-model-uri, --target-model-uri "
                                   "and --recipe (which names the two data domains)")
        check_model_uri(source_model_uri)  # before anything reads from them
        check_model_uri(target_model_uri)
        data = prepare_data(recipe)
        for uri in (source_model_uri, target_model_uri):
            _check_image_size(uri, recipe)
        # each model in its own label space (issue 12: they differ when the recipe has target.new_head)
        counts = (len(data.source_classes), len(data.target_classes))
        if arch is None:
            loaded = [_any_model_from_uri(uri, n, recipe, recipe.model.name, embedding_layer, trust_pickled)
                      for uri, n in zip((source_model_uri, target_model_uri), counts)]
            _check_same_layers(*loaded)
            return ResolvedPair(None, None, loaded[0], loaded[1], recipe, None, data)
        return ResolvedPair(None, None, _model_from_uri(source_model_uri, arch, counts[0], trust_pickled),
                            _model_from_uri(target_model_uri, arch, counts[1], trust_pickled),
                            recipe, None, data)
    if not target_run_id:
        raise DiagnosticsError("say which pair to diagnose: --target-run-id (and optionally "
                               "--source-run-id), or --source-model-uri/--target-model-uri with --recipe")
    target = get_run(target_run_id)
    if target.data.tags.get(TAGS.role) != "target" and not source_run_id:
        raise RunLookupError(f"run {target_run_id} is not a target run (role "
                             f"{target.data.tags.get(TAGS.role)!r}); pass a run made by `finetune`/`main`, "
                             "or both --source-run-id and --target-run-id")
    source_run_id = source_run_id or target.data.tags.get(TAGS.source_run_id)
    if not source_run_id:
        raise RunLookupError(f"Expected target run {target_run_id} to name its source run (tag "
                             f"{TAGS.source_run_id}); got no such tag. Pass --source-run-id.")
    source = get_run(source_run_id)  # checks the id: a tag value is untrusted input
    _check_finished(target, "target", allow_unfinished)
    _check_finished(source, "source", allow_unfinished)
    models = []
    for run in (source, target):
        uri = logged_model_uri(run)
        if uri is None:
            raise RunLookupError(f"run {run.info.run_id} has no logged model named 'model'; train it "
                                 "with mlflow-transfer or log it with mlflow.pytorch.log_model(..., name='model')")
        tags = run.data.tags
        arch_i = arch or tags.get(TAGS.model)
        if arch is None and arch_i not in MODELS:
            arch_i = None  # a run of another tool, or one that imported a logged model: adapted
        n = len(json.loads(tags[TAGS.classes])) if TAGS.classes in tags else None
        models.append((uri, arch_i, n))
    recipe = recipe or _recipe_of(target_run_id)
    if models[0][1] != models[1][1]:
        raise DiagnosticsError(f"incompatible architectures: source run is {models[0][1]!r}, target run "
                               f"is {models[1][1]!r}; a pair must share one architecture")
    if models[0][2] is not None and models[1][2] is not None and models[0][2] != models[1][2] \
            and target.data.tags.get(TAGS.new_head) != "true" and not recipe.target.new_head:
        raise DiagnosticsError(f"the source run has {models[0][2]} classes and the target run {models[1][2]}; "
                               "a pair must have the same class set")
    for uri, _, _ in models:
        _check_image_size(uri, recipe)
    data = None
    if any(n is None for _, _, n in models):
        data = prepare_data(recipe)
        fallback = (len(data.source_classes), len(data.target_classes))
        models = [(uri, a, n or fallback[i]) for i, (uri, a, n) in enumerate(models)]
    loaded = [_model_from_uri(uri, a, n, trust_pickled) if a is not None and embedding_layer is None
              else _any_model_from_uri(uri, n, recipe, a, embedding_layer, trust_pickled)
              for uri, a, n in models]
    _check_same_layers(*loaded)
    return ResolvedPair(source_run_id, target_run_id, loaded[0], loaded[1], recipe, target.info.experiment_id,
                        data)


def check_layer_names(model, names) -> None:
    # before the run starts: a misspelt --layers name must not leave a FAILED run behind
    unknown = [n for n in names or () if n not in model.analysis_layers]
    if unknown:
        raise DiagnosticsError(f"Expected --layers among the model's analysis layers (its Conv2d and Linear "
                               f"modules, by module path, in forward order): {list(model.analysis_layers)}; got "
                               f"unknown layer(s) {unknown}. Pass names from that list.")
