"""`diagnose`: read a source–target pair from MLflow, compute its diagnostics, log the bundle.

The diagnostics run (role ``diagnostics``) is tagged with both run ids and the pair id and nested
under the target run when there is one. The bundle is written to a temporary folder and logged
whole under ``diagnostics/``; metrics (per-layer inheritance with ``step = layer index``, the
transferability score, the domain classifier's CV accuracy; with robustness on, ``dir_output``,
``dir_feature`` and ``adv_acc_{model}_{attack}`` at the largest ε) are logged after it, then (issue 16)
``cka_mean`` and the ``transfer.summary`` tag the compare listing reads (`tracking.compare.summary_tag`). The score and
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
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient

from ..bundle.writer import write_pair_bundle
from ..diagnostics.engine import DiagnoseOptions, Instances, diagnose_pair
from ..diagnostics.predictions import ValidationSets
from ..diagnostics.statistics import best_trained_accuracy, transferability_from_history
from ..errors import DiagnosticsError
from ..runtime import resolve_device
from ..tags import TAGS
from .bundles import log_bundle
from .compare import summary_tag
from .context import PairData, pair_id, prepare_data, shared_subset, transfer_run
from .pairs import check_layer_names, resolve_pair

log = logging.getLogger(__name__)

BUNDLE_DIR = "diagnostics"
REPORT_NAME = "report.html"
REPORT_ERROR_NAME = "report_error.txt"
ReportWriter = Callable[..., Path]  # (bundle folder, HTML file to write there, timeline_dir=None) -> that file
DATASETS = ("source_train", "source_val", "target_train", "target_val")
OWN_TASK_BASIS = ("some target classes are unknown to the source model: the target model's best accuracy on its "
                  "validation set minus the source model's best on its own (source) validation set")


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


def _estimates(target_run_id: str | None) -> dict | None:
    """The target run's LogME and LEEP (issue 15, logged before its training), or None (an older run, a
    failed estimate, a pair given by model URIs)."""
    if target_run_id is None:
        return None
    metrics = MlflowClient().get_run(target_run_id).data.metrics
    found = {k: float(metrics[k]) for k in ("logme", "leep") if k in metrics and np.isfinite(metrics[k])}
    return found or None


def log_report(report_writer: ReportWriter, bundle_dir: Path, folder: Path, *, run_id: str | None = None,
                **writer_args) -> bool:
    """Render ``bundle_dir`` with ``report_writer`` (passed ``writer_args`` too, e.g. ``timeline_dir``) and
    log it as ``report.html`` at the artifact root of the active run, or of run ``run_id`` (through
    `MlflowClient`, leaving its status alone: `timetravel` re-renders a finished run's report). A failing
    writer (any ``Exception``) is reported, not raised: a warning on the ``mlflow_transfer`` logger and a
    ``report_error.txt`` artifact. Returns whether the report landed."""
    out = folder / REPORT_NAME
    client = MlflowClient() if run_id is not None else None
    try:
        report_writer(bundle_dir, out, **writer_args)
        if not out.is_file():
            raise DiagnosticsError(f"the report writer returned without writing {out}")
    except Exception as exc:  # noqa: BLE001 -- the bundle is the product; the report is only a view of it
        message = (f"{REPORT_NAME} was not written ({type(exc).__name__}: {exc}); the diagnostics bundle is "
                   f"logged under {BUNDLE_DIR}/ and the app (`mlflow-transfer ui`) shows it")
        log.warning(message)
        if client is None:
            mlflow.log_text(message + "\n", REPORT_ERROR_NAME)
        else:
            client.log_text(run_id, message + "\n", REPORT_ERROR_NAME)
        return False
    if client is None:
        mlflow.log_artifact(str(out))
    else:
        client.log_artifact(run_id, str(out))
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
    data = pair.data or prepare_data(pair.recipe)
    for role, model, own in (("target", pair.target_model, data.target_classes),
                             ("source", pair.source_model, data.source_classes)):
        n_out = getattr(model, "num_outputs", None) or \
            model.analysis_layers[list(model.analysis_layers)[-1]].out_features
        if n_out != len(own):
            who = ("the models predict", "the recipe's domains have") if data.source_classes == data.target_classes \
                else (f"the {role} model predicts", f"the recipe gives the {role} domain")
            raise DiagnosticsError(f"{who[0]} {n_out} classes but {who[1]} {len(own)} ({list(own)}); use the "
                                   "recipe the pair was trained with")
    check_layer_names(pair.target_model, options.layers)
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
        estimates = _estimates(pair.target_run_id)
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
                **({"transferability_estimates": estimates} if estimates else {}),
                "software": {"mlflow-transfer": __version__, "torch": torch.__version__, "mlflow": mlflow.__version__,
                             "captum": captum.__version__, "scikit-learn": sklearn.__version__,
                             "numpy": np.__version__, "python": platform.python_version()},
                "runtime": {"device": str(torch_device), "device_option": device,
                            "torch_threads": torch.get_num_threads()}}
        with tempfile.TemporaryDirectory() as tmp:
            write_pair_bundle(Path(tmp) / BUNDLE_DIR, diag, history=history, meta=meta)
            log_bundle(Path(tmp) / BUNDLE_DIR, artifact_path=BUNDLE_DIR)  # manifest last: whole or incomplete
            if report_writer is not None:
                log_report(report_writer, Path(tmp) / BUNDLE_DIR, Path(tmp))
        table = diag.layer_summary_table()
        for depth, _ in enumerate(table["layer"]):
            step_metrics = {"inherited_weight_share": table["inherited_weight_share"][depth],
                            "mean_best_similarity": table["mean_best_similarity"][depth]}
            mlflow.log_metrics({k: float(v) for k, v in step_metrics.items() if np.isfinite(v)}, step=depth)
        final = dict(scores)
        final.update(estimates or {})  # issue 15: beside the score, so the pair list can rank them together
        if "__all__" in diag.discriminability:
            final["domain_cv_accuracy"] = diag.discriminability["__all__"].cv_mean
        final.update({f"seconds_{k}": v for k, v in diag.timings.items()})
        if diag.robustness is not None:  # issue 13: dir_{output,feature}, adv_acc_{model}_{attack} at the largest ε
            final.update(diag.robustness.metrics())
        mlflow.log_metrics({k: float(v) for k, v in final.items()})
        mlflow.set_tag(TAGS.layers, json.dumps(list(diag.layers)))
        # issue 16: what the compare listing reads without opening the bundle (per-depth lists, label space)
        summary = summary_tag(diag.layers, table["inherited_weight_share"], np.diag(diag.cka), data.target_classes)
        cka_mean = json.loads(summary)["cka_mean"]
        if cka_mean is not None:
            mlflow.log_metric("cka_mean", cka_mean)
        mlflow.set_tag(TAGS.summary, summary)
        return run.info.run_id
