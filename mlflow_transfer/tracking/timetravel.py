"""`timetravel` (issue 14): a diagnosed pair's training dynamics, epoch by epoch, as DeepVisualInsight draws
them, logged beside the pair bundle of its diagnostics run.

Every trained epoch's checkpoint (``checkpoints/epoch_NNN.pt``, NNN >= 1) of the source run, then of the
target run, is loaded pickle-free into a copy of that run's model; a fixed, seeded sample of both domains
(`diagnose.build_instances`) is embedded at each, and `diagnostics.timetravel.project_timeline` projects
them one at a time (one checkpoint in memory; by default in DVI's penultimate layer, `penultimate_split`).
The timeline bundle (`bundle.timeline`) is written to a temporary folder and logged to the diagnostics run
under ``timetravel/``, manifest last; then the fidelity metrics (``timetravel_{phase}_{metric}``, ``step =
epoch``) and, with a report writer, a ``report.html`` re-rendered with the timeline strip. The diagnostics
run's status never changes and its pair bundle is never touched: a failure before the manifest lands leaves
no timeline (a reader reports the folder as incomplete and names this command). A run that already has a
complete timeline is left as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from ..bundle.io import MANIFEST
from ..bundle.timeline import TimelineFrame, write_timeline_bundle
from ..diagnostics.instances import model_outputs
from ..diagnostics.timetravel import EpochInput, TimeTravelOptions, project_timeline
from ..errors import DiagnosticsError, ModelError, NoTimelineError
from ..models import load_state
from ..runtime import progress, resolve_device
from ..tags import TAGS
from ..validation import check_int, check_run_id
from .bundles import TIMELINE_DIR, fetch_bundle, log_bundle
from .context import prepare_data
from .diagnose import ReportWriter, build_instances, log_report
from .lookup import CHECKPOINT_DIR, checkpoint_path, get_run
from .pairs import resolve_pair

__all__ = ["TIMELINE_DIR", "find_diagnostics_run", "list_checkpoints", "timetravel"]

_CHECKPOINT = re.compile(rf"{CHECKPOINT_DIR}/epoch_(\d{{3,6}})\.pt")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def list_checkpoints(run_id: str, client: MlflowClient | None = None) -> list[tuple[int, str]]:
    """``(epoch, artifact path)`` of run ``run_id``'s trained-epoch checkpoints (epoch >= 1), ascending.
    Only names exactly as the trainer writes them (`lookup.checkpoint_path`) count; any other file in
    ``checkpoints/`` is ignored (an artifact listing is untrusted)."""
    client = client or MlflowClient()
    found = []
    for entry in client.list_artifacts(run_id, CHECKPOINT_DIR):
        match = None if entry.is_dir else _CHECKPOINT.fullmatch(entry.path)
        if match and int(match.group(1)) >= 1 and checkpoint_path(int(match.group(1))) == entry.path:
            found.append((int(match.group(1)), entry.path))
    return sorted(found)


def find_diagnostics_run(target_run_id: str, experiment_id: str, diagnostics_run_id: str | None = None,
                         client: MlflowClient | None = None):
    """The diagnostics run to attach the timeline to: ``diagnostics_run_id`` (checked to be a FINISHED
    diagnostics run of this target), else the newest FINISHED one of the target in its experiment.

    Raises:
        DiagnosticsError: none, or the given run is not a finished diagnostics run of this target.
    """
    client = client or MlflowClient()
    fix = f"diagnose the pair first: mlflow-transfer diagnose --target-run-id {target_run_id}"
    if diagnostics_run_id:
        run = get_run(check_run_id(diagnostics_run_id, "diagnostics run id"), client)
        tags = run.data.tags
        if tags.get(TAGS.role) != "diagnostics" or tags.get(TAGS.target_run_id) != target_run_id:
            raise DiagnosticsError(f"Expected run {diagnostics_run_id} to be a diagnostics run of target run "
                                   f"{target_run_id}; got role {tags.get(TAGS.role)!r} for target "
                                   f"{tags.get(TAGS.target_run_id)!r}. Pass that pair's diagnostics run, or {fix}")
        if run.info.status != "FINISHED":
            raise DiagnosticsError(f"Expected diagnostics run {diagnostics_run_id} to have finished; got status "
                                   f"{run.info.status}. Its bundle may be incomplete: {fix}")
        return run
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAGS.role}` = 'diagnostics' AND tags.`{TAGS.target_run_id}` = "
        f"'{target_run_id}' AND attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=1)
    if not runs:
        raise DiagnosticsError(f"target run {target_run_id} has no finished diagnostics run to add a timeline to; {fix}")
    return runs[0]


def has_timeline(run_id: str, client: MlflowClient | None = None) -> bool:
    """Whether run ``run_id`` holds a complete timeline (its ``timetravel/`` manifest, uploaded last)."""
    client = client or MlflowClient()
    return f"{TIMELINE_DIR}/{MANIFEST}" in {f.path for f in client.list_artifacts(run_id, TIMELINE_DIR)}


@dataclass(frozen=True)
class _Position:
    phase: str           # "source" | "target"
    run_id: str
    epoch: int
    artifact: str        # checkpoints/epoch_NNN.pt
    local: Path          # the downloaded file
    model: torch.nn.Module  # that run's model (weights of its final epoch), never changed: copied per epoch
    class_map: np.ndarray   # timeline class of each of the model's outputs


def _load_into(base: torch.nn.Module, position: _Position) -> torch.nn.Module:
    """A copy of ``base`` with ``position``'s checkpoint loaded (pickle-free), in eval mode."""
    model = copy.deepcopy(base)
    fix = ("the file is corrupt or holds another model's weights; train the run again, or replace the file with "
           "the state dict the trainer saved for that epoch")
    try:
        state = load_state(position.local)
    except ModelError as exc:
        raise ModelError(f"checkpoint {position.artifact} of the {position.phase} run {position.run_id} does not "
                         f"load: {exc}; {fix}") from None
    # an adapted model (`models.adapter.AdaptedNet`) holds the trained network as ``net``
    targets = [model] + ([model.net] if isinstance(getattr(model, "net", None), torch.nn.Module) else [])
    for i, target in enumerate(targets):
        try:
            target.load_state_dict(state)
            break
        except RuntimeError as exc:
            if i == len(targets) - 1:
                raise ModelError(f"checkpoint {position.artifact} of the {position.phase} run {position.run_id} "
                                 f"does not fit its model ({str(exc).splitlines()[0][:160]}); {fix}") from None
    return model.eval()


def _head(model: torch.nn.Module) -> torch.nn.Module:
    """The module mapping ``model``'s embedding to its logits: a `TransferNet`'s ``head``; an adapted
    model's embedding layer when the embedding is its input (the last Linear)."""
    if hasattr(model, "embedding") and hasattr(model, "head"):
        return model.head
    if getattr(model, "embedding_kind", None) == "input":
        return model.net.get_submodule(model.embedding_layer)
    raise NoTimelineError(f"the timeline needs a model whose head after the embedding is known; the "
                           f"{getattr(model, 'arch', type(model).__name__)} model's embedding is the output of "
                           f"{getattr(model, 'embedding_layer', '?')!r}, after which the logits are no known module. "
                           "Time-travel a pair whose embedding is the input of the last Linear layer.")


def _check_head(model: torch.nn.Module, class_map: np.ndarray, images: torch.Tensor, phase: str) -> None:
    """The head's outputs must be the run's classes: a recipe that does not fit the model ends here."""
    with torch.no_grad():
        n_out = _head(model)(torch.as_tensor(model_outputs(model, images).embedding,
                                             device=next(model.parameters()).device)).shape[1]
    if n_out != len(class_map):
        raise DiagnosticsError(f"the {phase} model predicts {n_out} classes but the recipe gives the {phase} domain "
                               f"{len(class_map)}; use the recipe the pair was trained with")


def _class_map(own: tuple[str, ...], pair_classes: tuple[str, ...]) -> np.ndarray:
    return np.array([pair_classes.index(c) for c in own], dtype=np.int64)


def _epoch_inputs(positions: list[_Position], images: torch.Tensor) -> Iterator[EpochInput]:
    """One `EpochInput` per position, each built when asked for: one checkpoint in memory at a time. The
    embedding and the whole head: the numerics split off DVI's penultimate layer (``options.penultimate``)."""
    for position in positions:
        model = _load_into(position.model, position)
        outputs = model_outputs(model, images)
        yield EpochInput(representations=outputs.embedding, head=_head(model), class_map=position.class_map)


def _download(run_id: str, artifact: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(folder)))


def _metrics(frames: list[tuple[str, int, dict]]) -> list[Metric]:
    """``timetravel_{phase}_{metric}`` at ``step = epoch``, finite values only."""
    now = int(time.time() * 1000)
    return [Metric(f"timetravel_{phase}_{name}", float(value), now, epoch)
            for phase, epoch, metrics in frames for name, value in metrics.items() if np.isfinite(value)]


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def timetravel(*, target_run_id: str, diagnostics_run_id: str | None = None, sample_per_class: int = 50,
               device: str = "auto", trust_pickled: bool = False, options: TimeTravelOptions = TimeTravelOptions(),
               report_writer: ReportWriter | None = None, say: Callable[[str], None] = _say) -> str:
    """Add the timeline of target run ``target_run_id``'s pair to its diagnostics run (see the module
    docstring); returns that run's id.

    Args:
        diagnostics_run_id: the run to attach to; None: the newest FINISHED diagnostics run of the target.
        sample_per_class: points per class, domain and split (train/validation) of the projected sample.
        device: where the models embed (`runtime.resolve_device`).
        trust_pickled: allow pickled logged models (see `lookup.load_model_weights`).
        options: the projection's settings (`TimeTravelOptions`; its ``seed`` also draws the sample).
        report_writer: ``(bundle folder, output path, timeline_dir=…) -> output path``; None: no report.
        say: where the one-line notes go (e.g. that the run already has a timeline).

    Raises:
        DiagnosticsError: no diagnostics run; fewer than two trained epochs on the timeline; a model whose
            head is unknown.
        NoTimelineError: the target run has no trained-epoch checkpoints, the timeline would have one position,
            or the model's head after its embedding is unknown (`main` goes on without a timeline).
        ModelError: a checkpoint that does not load into its run's model.
    """
    torch_device = resolve_device(device)  # an absent device fails before anything is read
    check_run_id(target_run_id, "target run id")
    check_int(sample_per_class, "sample_per_class (points per class, domain and split)", low=1)
    client = MlflowClient()
    target = get_run(target_run_id, client)
    diag = find_diagnostics_run(target_run_id, target.info.experiment_id, diagnostics_run_id, client)
    diag_id = diag.info.run_id
    if has_timeline(diag_id, client):  # idempotent: a complete timeline is never computed again
        say(f"diagnostics run {diag_id} already has a timeline (runs:/{diag_id}/{TIMELINE_DIR}); nothing to do")
        return diag_id
    pair = resolve_pair(target_run_id=target_run_id, trust_pickled=trust_pickled)
    target_epochs = list_checkpoints(target_run_id, client)
    if not target_epochs:
        raise NoTimelineError(f"target run {target_run_id} has no per-epoch checkpoints ({CHECKPOINT_DIR}/epoch_001.pt "
                             "…), so it has no timeline; fine-tune it again with mlflow-transfer (every epoch's "
                             "checkpoint is logged)")
    source_epochs = list_checkpoints(pair.source_run_id, client)
    notes = []
    if not source_epochs:
        imported = get_run(pair.source_run_id, client).data.tags.get(TAGS.source_model_uri)
        why = f"its model was imported from {imported}" if imported else "it logged none"
        notes.append(f"the source run {pair.source_run_id} has no per-epoch checkpoints ({why}): the timeline "
                     "shows the target run's epochs only")
    if target.data.tags.get(TAGS.teacher_only) == "true":  # issue 13's scratch method: nothing was transferred
        notes.append(f"the target run {target_run_id} was trained from scratch: the source run is its teacher, "
                     "not its start, so the transfer position marks where the runs change, not a transfer")
    if len(source_epochs) + len(target_epochs) < 2:
        raise NoTimelineError(f"a single-epoch run has no timeline: target run {target_run_id} has "
                               f"{len(target_epochs)} trained-epoch checkpoint(s) and its source run "
                               f"{len(source_epochs)}; a timeline needs at least two positions. Train with more "
                               "epochs (e.g. --set target.epochs=2)")
    data = pair.data or prepare_data(pair.recipe)
    pair_classes = tuple(data.pair_classes)
    models = {"source": (pair.source_model.to(torch_device).eval(), _class_map(data.source_classes, pair_classes)),
              "target": (pair.target_model.to(torch_device).eval(), _class_map(data.target_classes, pair_classes))}
    instances = build_instances(data, sample_per_class, options.seed)
    for phase, (model, class_map) in models.items():
        _check_head(model, class_map, instances.images[:2], phase)
    # the pair bundle the report is rendered from: fetched (and validated) before anything is computed
    pair_bundle = fetch_bundle(diag_id) if report_writer is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        positions = []
        for phase, run_id, epochs in (("source", pair.source_run_id, source_epochs),
                                      ("target", target_run_id, target_epochs)):
            for epoch, artifact in epochs:
                position = _Position(phase, run_id, epoch, artifact,
                                     _download(run_id, artifact, Path(tmp) / "checkpoints" / phase), *models[phase])
                _load_into(position.model, position)  # every checkpoint checked before the long computation
                positions.append(position)
        logged: list[tuple[str, int, dict]] = []

        def frames() -> Iterator[TimelineFrame]:
            stream = project_timeline(_epoch_inputs(positions, instances.images), instances.split == 0, options,
                                      labels=instances.labels)
            shown = progress(stream, "time travel", unit="epoch", total=len(positions))
            # the stream first: a step counts as done when the next is asked for, so the last line is printed
            for projection, position in zip(shown, positions):
                m = projection.metrics
                shown.set_postfix(nn15=f"{m['nn_train_15']:.2f}", ppr=f"{m['ppr']:.3f}")
                logged.append((position.phase, position.epoch, dict(m)))
                yield TimelineFrame(phase=position.phase, epoch=position.epoch, run_id=position.run_id,
                                    coords=projection.coords, prediction=projection.prediction,
                                    boundary=projection.boundary, grid_class=projection.grid_class,
                                    grid_gap=projection.grid_gap, extent=projection.extent, metrics=m,
                                    seconds=projection.seconds)

        folder = Path(tmp) / TIMELINE_DIR
        write_timeline_bundle(folder, frames(), points={
            "domain": np.array(["source", "target"])[instances.domain].tolist(),
            "split": np.array(["train", "val"])[instances.split].tolist(),
            "label": instances.labels, "index": instances.index}, meta={
            "classes": list(pair_classes), "transfer_position": len(source_epochs) or None,
            "sample_per_class": sample_per_class, "seed": options.seed,
            "options": json.loads(json.dumps(dataclasses.asdict(options))), "notes": notes,
            "runs": {"source": pair.source_run_id, "target": target_run_id, "diagnostics": diag_id},
            "extra": {"software": _software(), "runtime": {"device": str(torch_device), "device_option": device}}})
        log_bundle(folder, TIMELINE_DIR, run_id=diag_id)  # manifest last: whole or incomplete
        metrics = _metrics(logged)
        for start in range(0, len(metrics), _BATCH):
            client.log_batch(diag_id, metrics=metrics[start:start + _BATCH])
        if report_writer is not None:
            log_report(report_writer, pair_bundle.reader.root, Path(tmp), run_id=diag_id, timeline_dir=folder)
    return diag_id


def _software() -> dict:
    from .. import __version__

    return {"mlflow-transfer": __version__, "torch": torch.__version__, "mlflow": mlflow.__version__,
            **{name: metadata.version(name) for name in ("umap-learn", "scikit-learn", "numpy")},
            "python": platform.python_version()}
