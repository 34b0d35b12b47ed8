"""`diagnose`: read a source–target pair from MLflow, compute its diagnostics, log the bundle.

The diagnostics run (role ``diagnostics``) is tagged with both run ids and the pair id and nested
under the target run when there is one. The bundle is written to a temporary folder and logged
whole under ``diagnostics/``; metrics (per-layer inheritance with ``step = layer index``, the
transferability score, the domain classifier's CV accuracy) are logged after it. The score and
``target_val_accuracy`` come from the runs' histories over trained epochs only (step >= 1); a pair
without one (a target with only step 0) gets no score but ``transferability_note`` in the manifest,
saying why. The confusion tables rest on both domains' whole validation sets (streamed), whatever
``sample_per_class`` caps the analysed sample to. Label spaces that differ (a target run with
``target.new_head``, issue 12): each model is loaded with its own head, the diagnostics work in
`PairData.pair_classes` with ``model_classes``, and the score compares each model on its own task
(``transferability_basis`` in the manifest). Any failure marks
the run FAILED and leaves no complete-looking bundle (the manifest is the last file written).

With a ``report_writer`` (the CLI passes ``ui.report.write_report``; this layer never imports ``ui``),
a self-contained ``report.html`` rendered from the written bundle is logged at the run's artifact root,
for MLflow's artifact viewer. The bundle is the product and the report only a view of it: a report
that fails to render is logged as a warning and a ``report_error.txt`` artifact saying why, and the
run still finishes with its bundle (an interrupt still fails the run).
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from ..bundle.writer import write_pair_bundle
from ..config import Recipe, parse_recipe
from ..diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from ..diagnostics.predictions import ValidationSets
from ..diagnostics.statistics import best_trained_accuracy, transferability_from_history
from ..errors import DiagnosticsError, RecipeError, RunLookupError
from ..models import MODELS, TransferNet
from ..runtime import resolve_device
from ..tags import TAGS
from .bundles import log_bundle
from .lookup import check_model_uri, get_run, load_classifier, load_model_weights, logged_model_uri
from .context import PairData, pair_id, prepare_data, shared_subset, transfer_run

log = logging.getLogger(__name__)

BUNDLE_DIR = "diagnostics"
REPORT_NAME = "report.html"
REPORT_ERROR_NAME = "report_error.txt"
ReportWriter = Callable[[Path, Path], Path]  # (bundle folder, HTML file to write there) -> that file
DATASETS = ("source_train", "source_val", "target_train", "target_val")
OWN_TASK_BASIS = ("some target classes are unknown to the source model: the target model's best accuracy on its "
                  "validation set minus the source model's best on its own (source) validation set")


@dataclass(frozen=True)
class ResolvedPair:
    source_run_id: str | None
    target_run_id: str | None
    source_model: TransferNet
    target_model: TransferNet
    recipe: Recipe
    experiment_id: str | None


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
            return ResolvedPair(None, None, loaded[0], loaded[1], recipe, None)
        return ResolvedPair(None, None, _model_from_uri(source_model_uri, arch, counts[0], trust_pickled),
                            _model_from_uri(target_model_uri, arch, counts[1], trust_pickled),
                            recipe, None)
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
    if any(n is None for _, _, n in models):
        data = prepare_data(recipe)
        fallback = (len(data.source_classes), len(data.target_classes))
        models = [(uri, a, n or fallback[i]) for i, (uri, a, n) in enumerate(models)]
    loaded = [_model_from_uri(uri, a, n, trust_pickled) if a is not None and embedding_layer is None
              else _any_model_from_uri(uri, n, recipe, a, embedding_layer, trust_pickled)
              for uri, a, n in models]
    _check_same_layers(*loaded)
    return ResolvedPair(source_run_id, target_run_id, loaded[0], loaded[1], recipe, target.info.experiment_id)


def _check_layer_names(model, names) -> None:
    # before the run starts: a misspelt --layers name must not leave a FAILED run behind
    unknown = [n for n in names or () if n not in model.analysis_layers]
    if unknown:
        raise DiagnosticsError(f"Expected --layers among the model's analysis layers (its Conv2d and Linear "
                               f"modules, by module path, in forward order): {list(model.analysis_layers)}; got "
                               f"unknown layer(s) {unknown}. Pass names from that list.")


def build_instances(data: PairData, per_class: int | None, seed: int) -> Instances:
    """Train and validation instances of both domains, at most ``per_class`` per class, split and
    domain (a seeded sample; the cap is recorded in the manifest)."""
    rng = np.random.default_rng(seed)
    rows = []  # (domain code, split code, index)
    for dom, splits in enumerate((data.source, data.target)):
        targets = splits.domain.targets
        for split, idx in enumerate((splits.train_indices, splits.val_indices)):
            for c in range(len(splits.domain.classes)):
                members = idx[targets[idx] == c]
                if per_class is not None and len(members) > per_class:
                    members = np.sort(rng.choice(members, per_class, replace=False))
                rows += [(dom, split, int(i)) for i in members]
    domains = (data.source.domain, data.target.domain)
    images = torch.stack([domains[d].dataset[i][0] for d, _, i in rows])
    # labels in the pair's label space (`PairData.pair_classes`; the source's when both are one)
    to_pair = [np.array([data.pair_classes.index(c) for c in dm.classes], dtype=np.int64) for dm in domains]
    labels = np.array([to_pair[d][domains[d].targets[i]] for d, _, i in rows], dtype=np.int64)
    codes = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return Instances(images, labels, codes[:, 0].astype(np.int8), codes[:, 1].astype(np.int8), codes[:, 2])


def _history(run_id: str | None, role: str) -> dict:
    if run_id is None:
        return {}
    client = MlflowClient()
    out = {}
    for ds in DATASETS:
        points = sorted(client.get_metric_history(run_id, f"acc_{ds}"), key=lambda m: m.step)
        if points:
            out[(role, ds)] = ([m.step for m in points], [m.value for m in points])
    return out


def _scores(history: dict, own_task: bool = False) -> tuple[dict, str | None]:
    """The transferability score and the target's best fine-tuned accuracy (what the pair browser lists
    beside it), both over trained epochs only (step >= 1, see `transferability_from_history`); and,
    when there is no score although both runs have a history, why (e.g. a target with only step 0).
    ``own_task`` (label spaces that differ, issue 12): the source's accuracy is on its own task (the
    source validation set), so the score is the target's best on its task minus the source's on its."""
    scores, note = {}, None
    source, target = history.get(("source", "target_val")), history.get(("target", "target_val"))
    if own_task:
        source = history.get(("source", "source_val"))
    if target is not None:
        try:
            scores["target_val_accuracy"] = best_trained_accuracy(target, "target")
        except DiagnosticsError as exc:
            note = str(exc)
    if source is not None and target is not None and note is None:
        try:
            scores["transferability_score"] = transferability_from_history(source, target)
        except DiagnosticsError as exc:
            note = str(exc)
    if note:
        log.warning("no transferability score: %s", note)
    return scores, note


def _log_report(report_writer: ReportWriter, bundle_dir: Path, folder: Path) -> bool:
    """Render ``bundle_dir`` with ``report_writer`` and log it as ``report.html`` at the artifact root of
    the active run. A failing writer (any ``Exception``) is reported, not raised: a warning on the
    ``mlflow_transfer`` logger and a ``report_error.txt`` artifact. Returns whether the report landed."""
    out = folder / REPORT_NAME
    try:
        report_writer(bundle_dir, out)
        if not out.is_file():
            raise DiagnosticsError(f"the report writer returned without writing {out}")
    except Exception as exc:  # noqa: BLE001 -- the bundle is the product; the report is only a view of it
        message = (f"{REPORT_NAME} was not written ({type(exc).__name__}: {exc}); the diagnostics bundle is "
                   f"logged under {BUNDLE_DIR}/ and the app (`mlflow-transfer ui`) shows it")
        log.warning(message)
        mlflow.log_text(message + "\n", REPORT_ERROR_NAME)
        return False
    mlflow.log_artifact(str(out))
    return True


def diagnose(*, options: DiagnoseOptions = DiagnoseOptions(),
             nested: bool = False, report_writer: ReportWriter | None = None, device: str = "auto",
             **pair_args) -> str:
    """Diagnose a pair (see :func:`resolve_pair` for ``pair_args``) into a new diagnostics run.

    Args:
        options: what to compute, the analysed sample (``sample_per_class``) included.
        report_writer: ``(bundle folder, output path) -> output path``, rendering the bundle as a
            self-contained HTML page at the output path, logged as ``report.html`` at the run's
            artifact root (the CLI passes ``ui.report.write_report``); None: no report. A writer that
            raises only costs the report (see the module docstring).
        device: where both models compute (`mlflow_transfer.runtime.resolve_device`: ``auto``, ``cpu``,
            ``cuda``, ``mps``); recorded in the manifest's ``runtime`` block and the run's tag. Not
            read from the recipe: a recipe logged with a run says where that run trained.
    Returns: the diagnostics run id.
    """
    torch_device = resolve_device(device)  # an absent device fails before anything is read or opened
    pair = resolve_pair(**pair_args)
    pair.source_model.to(torch_device)
    pair.target_model.to(torch_device)
    data = prepare_data(pair.recipe)
    for role, model, own in (("target", pair.target_model, data.target_classes),
                             ("source", pair.source_model, data.source_classes)):
        n_out = getattr(model, "num_outputs", None) or \
            model.analysis_layers[list(model.analysis_layers)[-1]].out_features
        if n_out != len(own):
            who = ("the models predict", "the recipe's domains have") if data.source_classes == data.target_classes \
                else (f"the {role} model predicts", f"the recipe gives the {role} domain")
            raise DiagnosticsError(f"{who[0]} {n_out} classes but {who[1]} {len(own)} ({list(own)}); use the "
                                   "recipe the pair was trained with")
    _check_layer_names(pair.target_model, options.layers)
    instances = build_instances(data, options.sample_per_class, options.seed)
    try:
        with torch.no_grad():
            pair.target_model(instances.images[:2].to(torch_device))
    except RuntimeError as exc:
        raise DiagnosticsError(f"the recipe's images ({tuple(instances.images.shape[1:])}) do not fit the "
                               f"models: {str(exc).splitlines()[0][:160]}; set data.image_size to the "
                               "size the models were trained on") from None
    tags = {TAGS.source_domain: data.source.domain.name, TAGS.target_domain: data.target.domain.name,
            TAGS.classes: json.dumps(list(data.classes)), TAGS.model: pair.target_model.arch,
            TAGS.device: str(torch_device)}
    if data.source_classes != data.target_classes:  # issue 12: the target model's label space, and the source's
        tags.update({TAGS.classes: json.dumps(list(data.target_classes)),
                     TAGS.source_classes: json.dumps(list(data.source_classes))})
    if pair.source_run_id:
        tags[TAGS.source_run_id] = pair.source_run_id
        tags[TAGS.target_run_id] = pair.target_run_id
        tags[TAGS.pair_id] = pair_id(pair.recipe, pair.source_run_id, pair.target_run_id)
        tags["mlflow.parentRunId"] = pair.target_run_id
    with transfer_run("diagnostics", pair.recipe, nested=nested, name=f"{pair.recipe.name}-diagnostics",
                      extra_tags=tags, experiment_id=pair.experiment_id) as run:
        # the confusion tables rest on both domains' whole validation sets, whatever the analysis cap
        validation = ValidationSets(target=data.target.val, source=data.source.val)
        own = None
        if data.source_classes != data.target_classes or pair.recipe.target.new_head:  # issue 12: pair labels
            validation = ValidationSets(target=data.target.val, source=shared_subset(
                data.source, "val", data.pair_classes))
            own = {"source": data.source_classes, "target": data.target_classes}
        diag = diagnose_pair(pair.source_model, pair.target_model, instances, tuple(data.pair_classes), options,
                             validation=validation, model_classes=own)
        # the steps each model's conductance used (the manifest's conductance_steps has the candidates)
        mlflow.log_params({f"n_steps_{role}": c.n_steps for role, c in diag.conductance_steps.items()})
        mlflow.log_metrics({f"completeness_error_{role}": c.completeness_error
                            for role, c in diag.conductance_steps.items() if np.isfinite(c.completeness_error)})
        history = {**_history(pair.source_run_id, "source"), **_history(pair.target_run_id, "target")}
        # the source is scored on the whole target task only when it knows every target class
        own_task = not set(data.target_classes) <= set(data.source_classes)
        scores, score_note = _scores(history, own_task=own_task)
        import captum
        import sklearn

        from .. import __version__
        meta = {"runs": {"source": pair.source_run_id, "target": pair.target_run_id,
                         "diagnostics": run.info.run_id},
                "pair_id": tags.get(TAGS.pair_id), "model": pair.target_model.arch, "recipe": pair.recipe.name,
                "domains": {"source": data.source.domain.name, "target": data.target.domain.name},
                "sample_per_class": options.sample_per_class, "scores": scores,
                **({"transferability_basis": OWN_TASK_BASIS} if own_task else {}),
                **({"transferability_note": score_note} if score_note else {}),
                "software": {"mlflow-transfer": __version__, "torch": torch.__version__, "mlflow": mlflow.__version__,
                             "captum": captum.__version__, "scikit-learn": sklearn.__version__,
                             "numpy": np.__version__, "python": platform.python_version()},
                "runtime": {"device": str(torch_device), "device_option": device,
                            "torch_threads": torch.get_num_threads()}}
        with tempfile.TemporaryDirectory() as tmp:
            write_pair_bundle(Path(tmp) / BUNDLE_DIR, diag, history=history, meta=meta)
            log_bundle(Path(tmp) / BUNDLE_DIR, artifact_path=BUNDLE_DIR)  # manifest last: whole or incomplete
            if report_writer is not None:
                _log_report(report_writer, Path(tmp) / BUNDLE_DIR, Path(tmp))
        table = diag.layer_summary_table()
        for depth, _ in enumerate(table["layer"]):
            step_metrics = {"inherited_weight_share": table["inherited_weight_share"][depth],
                            "mean_best_similarity": table["mean_best_similarity"][depth]}
            mlflow.log_metrics({k: float(v) for k, v in step_metrics.items() if np.isfinite(v)}, step=depth)
        final = dict(scores)
        if "__all__" in diag.discriminability:
            final["domain_cv_accuracy"] = diag.discriminability["__all__"].cv_mean
        final.update({f"seconds_{k}": v for k, v in diag.timings.items()})
        mlflow.log_metrics({k: float(v) for k, v in final.items()})
        mlflow.set_tag(TAGS.layers, json.dumps(list(diag.layers)))
        return run.info.run_id
