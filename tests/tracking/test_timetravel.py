"""`timetravel` (issue 14) against a real sqlite tracking store: the timeline lands whole on the diagnostics
run, its positions are the runs' checkpoints (checked against the checkpoints' own predictions), metrics
per epoch, idempotent; bad input (no checkpoints, a corrupt one, a single-epoch pair, no diagnostics run)
is one clear message each and leaves no timeline and the pair's bundle as it was."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from helpers.cli import invoke, one_error_line
from helpers.tracking import log_model, tiny_recipe
from mlflow import MlflowClient

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.timeline import METRICS, TimelineBundle
from mlflow_transfer.diagnostics.engine import DiagnoseOptions
from mlflow_transfer.diagnostics.timetravel import TimeTravelOptions
from mlflow_transfer.errors import BundleError, DiagnosticsError, ModelError, NoTimelineError
from mlflow_transfer.models import build_model, load_state
from mlflow_transfer.tags import TAGS
from mlflow_transfer.tracking import run_pipeline
from mlflow_transfer.tracking.bundles import fetch_bundle, fetch_timeline, log_bundle
from mlflow_transfer.tracking.context import prepare_data
from mlflow_transfer.tracking.diagnose import build_instances
from mlflow_transfer.tracking.lookup import checkpoint_path, load_checkpoint
from mlflow_transfer.tracking.timetravel import list_checkpoints, timetravel

DIAGNOSE = DiagnoseOptions(n_steps=4, tsne_gradient="bh", weight_max_instances=4, patches=3, feature_vis_steps=1,
                           sample_per_class=2, robustness=False)
# few training passes: these tests check the plumbing, diagnostics/test_timetravel.py the projection itself
FAST = TimeTravelOptions(steps_first=30, steps_later=10)
SAMPLE = 3
RECIPE = ("source.epochs=2", "target.epochs=2")


@pytest.fixture(scope="module")
def pair(module_store, tmp_path_factory):
    """A diagnosed pair of the tiny recipe with two epochs per run (no timeline yet); bundles are cached
    in the module's own folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRANSFER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield run_pipeline(tiny_recipe(*RECIPE), diagnose_options=DIAGNOSE)


class Writer:
    """A report writer that checks what it is given (both bundles open) and says so in the page."""

    def __init__(self):
        self.calls = []

    def __call__(self, bundle_dir, out, timeline_dir=None):
        PairBundle.open(bundle_dir)
        positions = TimelineBundle.open(timeline_dir).n_positions
        self.calls.append((Path(bundle_dir), Path(timeline_dir)))
        Path(out).write_text(f"<html>timeline of {positions} positions</html>")
        return out


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in MlflowClient().list_artifacts(run_id, path)}


def _checkpoint_predictions(run_id: str, epoch: int, images: torch.Tensor) -> np.ndarray:
    """The reference: the run's checkpoint of ``epoch`` loaded by the package's own loader, its argmax."""
    model = load_checkpoint(run_id, epoch).eval()
    with torch.no_grad():
        return model(images).argmax(1).numpy()


def test_the_timeline_lands_on_the_diagnostics_run(pair, tmp_path):
    client = MlflowClient()
    diag_id = pair.diagnostics_run_id
    before = client.get_run(diag_id)
    writer = Writer()
    assert timetravel(target_run_id=pair.target_run_id, sample_per_class=SAMPLE, options=FAST,
                      report_writer=writer) == diag_id  # found as the target's newest finished diagnostics run
    after = client.get_run(diag_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", before.info.end_time)  # its status untouched
    assert {"timetravel/manifest.json", "timetravel/frames"} <= _artifacts(diag_id, "timetravel")
    assert "report.html" in _artifacts(diag_id)
    local = mlflow.artifacts.download_artifacts(run_id=diag_id, artifact_path="report.html", dst_path=str(tmp_path))
    assert Path(local).read_text() == "<html>timeline of 4 positions</html>"  # re-rendered with the timeline
    assert len(writer.calls) == 1

    timeline = fetch_timeline(diag_id, tmp_path / "cache")
    assert timeline.n_positions == 4 and timeline.transfer_position == 2 and timeline.notes == []
    epochs = timeline.epochs()
    assert list(epochs["phase"]) == ["source", "source", "target", "target"]
    assert list(epochs["epoch"]) == [1, 2, 1, 2]
    assert list(epochs["run_id"]) == [pair.source_run_id] * 2 + [pair.target_run_id] * 2
    assert timeline.meta["runs"] == {"source": pair.source_run_id, "target": pair.target_run_id,
                                     "diagnostics": diag_id}
    assert timeline.meta["sample_per_class"] == SAMPLE and timeline.meta["options"]["steps_first"] == 30

    # the points are build_instances' sample, in the pair's label space
    data = prepare_data(tiny_recipe(*RECIPE))
    instances = build_instances(data, SAMPLE, FAST.seed)
    points = timeline.points()
    assert list(points["label"]) == instances.labels.tolist()
    assert list(points["index"]) == instances.index.tolist()
    assert list(points["domain"]) == ["source" if d == 0 else "target" for d in instances.domain]
    assert list(points["split"]) == ["train" if s == 0 else "val" for s in instances.split]
    assert timeline.classes == list(data.pair_classes)

    # each position is its run's checkpoint of that epoch, not the final model: its predictions are the
    # checkpoint's, and the accuracy metric is theirs on the labels
    distinct = set()
    for p, (run_id, epoch) in enumerate(zip(epochs["run_id"], epochs["epoch"])):
        expected = _checkpoint_predictions(run_id, int(epoch), instances.images)
        frame = timeline.frame(p)
        assert np.array_equal(frame.prediction, expected), p
        assert frame.metrics["accuracy"] == pytest.approx(float((expected == instances.labels).mean()))
        assert frame.coords.shape == (len(instances.labels), 2) and frame.grid_class.shape == (200, 200)
        distinct.add(expected.tobytes())
    assert len(distinct) > 1  # the epochs' models differ, so the comparison above can fail

    # every finite metric logged at step = epoch, per phase, equal to the bundle's
    for name in METRICS:
        for phase in ("source", "target"):
            history = {m.step: m.value for m in client.get_metric_history(diag_id, f"timetravel_{phase}_{name}")}
            rows = {int(e): float(v) for ph, e, v in zip(epochs["phase"], epochs["epoch"], epochs[name])
                    if ph == phase and np.isfinite(v)}
            assert history == pytest.approx(rows), (phase, name)
    assert 1 not in {m.step for m in client.get_metric_history(diag_id, "timetravel_source_temporal_corr")}

    # idempotent: a second call says so and computes and logs nothing
    said = []
    assert timetravel(target_run_id=pair.target_run_id, sample_per_class=SAMPLE, options=FAST,
                      report_writer=writer, say=said.append) == diag_id
    assert len(said) == 1 and "already has a timeline" in said[0]
    assert len(writer.calls) == 1
    assert len(client.get_metric_history(diag_id, "timetravel_target_ppr")) == 2
    # the pair bundle is the one diagnose logged, and still opens
    assert fetch_bundle(diag_id, tmp_path / "cache").manifest["runs"]["diagnostics"] == diag_id
    # both are cached side by side; a damaged timeline entry of ours is fetched again
    cache = tmp_path / "cache"
    assert (cache / diag_id / "manifest.json").is_file() and (cache / f"{diag_id}.timetravel" / "manifest.json").is_file()
    damaged = cache / f"{diag_id}.timetravel" / "frames" / "003" / "coords.npy"
    assert damaged.is_file()
    damaged.write_bytes(b"damaged")
    assert np.array_equal(fetch_timeline(diag_id, cache).frame(3).coords, timeline.frame(3).coords)


def test_checkpoint_names_are_parsed_strictly(pair):
    with mlflow.start_run() as run:
        for name in ("epoch_000.pt", "epoch_001.pt", "epoch_3.pt", "epoch_0002.pt", "epoch_002.pt.bak",
                     "notes.txt", "epoch_010.pt"):
            mlflow.log_text("x", f"checkpoints/{name}")
    # epoch 0 is before training; names the trainer does not write are ignored
    assert list_checkpoints(run.info.run_id) == [(1, "checkpoints/epoch_001.pt"), (10, "checkpoints/epoch_010.pt")]


# ------------------------------------------------------------------------------------------- bad input


def _checkpoint_bytes(run_id: str, epoch: int, folder: Path) -> bytes:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=checkpoint_path(epoch),
                                                dst_path=str(folder))
    return Path(local).read_bytes()


def _copy_run(pair, role: str, checkpoints: dict[int, bytes], folder: Path, *, source_run_id: str | None = None,
              diagnosed: bool = True, tags: dict | None = None) -> tuple[str, str | None]:
    """A FINISHED copy of the pair's ``role`` run (tags, recipe, its model) with ``checkpoints`` as its
    ``checkpoints/`` (epoch → file bytes); a target copy points at ``source_run_id``. ``diagnosed``: a
    FINISHED diagnostics run of it holding the pair's real bundle. Returns (run id, diagnostics run id)."""
    client = MlflowClient()
    original = client.get_run(pair.source_run_id if role == "source" else pair.target_run_id)
    tags = {**{k: v for k, v in original.data.tags.items() if k in (TAGS.role, TAGS.model, TAGS.classes, TAGS.recipe)},
            **(tags or {})}
    last = max(int(p.step) for p in client.get_metric_history(original.info.run_id, "loss"))
    model = build_model(tags[TAGS.model], len(json.loads(tags[TAGS.classes])))
    model.load_state_dict(load_state(Path(mlflow.artifacts.download_artifacts(
        run_id=original.info.run_id, artifact_path=checkpoint_path(last), dst_path=str(folder / "final")))))
    with mlflow.start_run() as run:
        mlflow.set_tags(tags)
        if role == "source":
            mlflow.set_tag(TAGS.source_model_uri, "models:/m-imported")  # an imported model: no checkpoints
        else:
            mlflow.set_tag(TAGS.source_run_id, source_run_id or pair.source_run_id)
        log_model(model.eval())
        mlflow.log_artifact(mlflow.artifacts.download_artifacts(run_id=original.info.run_id,
                                                                artifact_path="recipe.json", dst_path=str(folder)))
        for epoch, content in checkpoints.items():
            path = folder / run.info.run_id / Path(checkpoint_path(epoch)).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            mlflow.log_artifact(str(path), "checkpoints")
    diag_id = None
    if diagnosed:
        with mlflow.start_run() as diag:
            mlflow.set_tags({TAGS.role: "diagnostics", TAGS.target_run_id: run.info.run_id})
            bundle = mlflow.artifacts.download_artifacts(run_id=pair.diagnostics_run_id, artifact_path="diagnostics",
                                                         dst_path=str(folder / "bundle" / run.info.run_id))
            log_bundle(bundle)
        diag_id = diag.info.run_id
    return run.info.run_id, diag_id


def _left_as_it_was(diag_id: str, tmp_path: Path) -> None:
    """No timeline manifest, no timetravel metrics, the run FINISHED and its pair bundle opens."""
    client = MlflowClient()
    run = client.get_run(diag_id)
    assert run.info.status == "FINISHED"
    assert "timetravel/manifest.json" not in _artifacts(diag_id, "timetravel")
    assert not [k for k in run.data.metrics if k.startswith("timetravel_")]
    assert fetch_timeline(diag_id, tmp_path / "check") is None
    assert isinstance(fetch_bundle(diag_id, tmp_path / "check"), PairBundle)


def _real(pair, tmp_path, role: str, *epochs: int) -> dict[int, bytes]:
    run_id = pair.source_run_id if role == "source" else pair.target_run_id
    return {e: _checkpoint_bytes(run_id, e, tmp_path / f"{role}-{e}") for e in epochs}


def test_a_target_run_without_checkpoints(pair, tmp_path):
    target, diag = _copy_run(pair, "target", {}, tmp_path)
    with pytest.raises(NoTimelineError, match=f"target run {target} has no per-epoch checkpoints"):
        timetravel(target_run_id=target, sample_per_class=SAMPLE, options=FAST, report_writer=Writer())
    _left_as_it_was(diag, tmp_path)


def test_a_checkpoint_that_does_not_load(pair, tmp_path):
    good = _real(pair, tmp_path, "target", 1)
    target, diag = _copy_run(pair, "target", {**good, 2: b"PK\x03\x04 not a checkpoint"}, tmp_path)
    with pytest.raises(ModelError, match=f"checkpoints/epoch_002.pt of the target run {target} does not load.*"
                                         "train the run again"):
        timetravel(target_run_id=target, sample_per_class=SAMPLE, options=FAST, report_writer=Writer())
    _left_as_it_was(diag, tmp_path)
    # a readable state dict of another model is refused the same way
    other = tmp_path / "other.pt"
    torch.save(build_model("alexnet-32", 3).state_dict(), other)
    target, diag = _copy_run(pair, "target", {**good, 2: other.read_bytes()}, tmp_path)
    with pytest.raises(ModelError, match=f"checkpoints/epoch_002.pt of the target run {target} does not fit"):
        timetravel(target_run_id=target, sample_per_class=SAMPLE, options=FAST)
    _left_as_it_was(diag, tmp_path)


def test_an_imported_source_gives_a_target_only_timeline_and_one_epoch_is_too_few(pair, tmp_path):
    source, _ = _copy_run(pair, "source", {}, tmp_path, diagnosed=False)
    single, diag = _copy_run(pair, "target", _real(pair, tmp_path, "target", 1), tmp_path, source_run_id=source)
    with pytest.raises(NoTimelineError, match="a single-epoch run has no timeline"):
        timetravel(target_run_id=single, sample_per_class=SAMPLE, options=FAST)
    _left_as_it_was(diag, tmp_path)

    # (and a scratch target, issue 13: its source run is only a teacher)
    both, diag = _copy_run(pair, "target", _real(pair, tmp_path, "target", 1, 2), tmp_path, source_run_id=source,
                           tags={TAGS.teacher_only: "true"})
    # an interrupted upload left timetravel/ without its manifest: reported as incomplete, then replaced
    partial = tmp_path / "partial" / "frames" / "000"
    partial.mkdir(parents=True)
    (partial / "coords.npy").write_bytes(b"half")
    MlflowClient().log_artifacts(diag, str(tmp_path / "partial"), "timetravel")
    with pytest.raises(BundleError, match="so the timeline is incomplete .* Run it again: mlflow-transfer timetravel "
                                          f"--target-run-id {both}"):
        fetch_timeline(diag, tmp_path / "cache")
    timetravel(target_run_id=both, sample_per_class=SAMPLE, options=FAST)
    timeline = fetch_timeline(diag, tmp_path / "cache")
    assert timeline.n_positions == 2 and timeline.transfer_position is None
    assert list(timeline.epochs()["phase"]) == ["target", "target"]
    imported, teacher = timeline.notes
    assert "models:/m-imported" in imported and source in imported and "target run's epochs only" in imported
    assert "trained from scratch" in teacher and both in teacher


def test_no_diagnostics_run(pair, tmp_path):
    target, _ = _copy_run(pair, "target", _real(pair, tmp_path, "target", 1, 2), tmp_path, diagnosed=False)
    with pytest.raises(DiagnosticsError, match=f"diagnose the pair first: mlflow-transfer diagnose --target-run-id "
                                               f"{target}"):
        timetravel(target_run_id=target, sample_per_class=SAMPLE, options=FAST)
    # the command line: one error line, exit status 2
    one_error_line(invoke("timetravel", "--target-run-id", target), "diagnose the pair first")
    one_error_line(invoke("timetravel", "--target-run-id", "../etc"), "--target-run-id")
    # a run that is not this target's diagnostics run is refused by name
    one_error_line(invoke("timetravel", "--target-run-id", target, "--diagnostics-run-id", pair.source_run_id),
                   f"Expected run {pair.source_run_id} to be a diagnostics run of target run {target}")


def test_the_command_line_adds_a_timeline(pair, tmp_path):
    """The pair's diagnostics run already has its timeline (the first test): the command says so, exit 0."""
    timetravel(target_run_id=pair.target_run_id, sample_per_class=SAMPLE, options=FAST)  # whichever test runs first
    done = invoke("timetravel", "--target-run-id", pair.target_run_id, "--sample-per-class", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already has a timeline" in done.stderr and f"runs:/{pair.diagnostics_run_id}/timetravel" in done.stdout


def test_main_adds_the_timeline_after_diagnose(module_store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRANSFER_CACHE", str(tmp_path / "cache"))
    result = run_pipeline(tiny_recipe(), diagnose_options=DIAGNOSE,
                          timetravel_args={"sample_per_class": SAMPLE, "options": FAST})
    timeline = fetch_timeline(result.diagnostics_run_id, tmp_path / "cache")
    # the tiny recipe trains one epoch per run: one source and one target position
    assert list(timeline.epochs()["phase"]) == ["source", "target"] and timeline.transfer_position == 1
    assert timeline.meta["runs"]["target"] == result.target_run_id
    assert MlflowClient().get_run(result.diagnostics_run_id).info.status == "FINISHED"


def _entry_params(entry: str, **given: str) -> tuple[str, dict]:
    """The command an MLproject entry point runs with its defaults (and ``given``), parsed by the CLI."""
    import shlex

    import yaml
    from helpers import REPO

    from mlflow_transfer.cli import main

    spec = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"][entry]
    values = {k: shlex.quote(str(given.get(k, v.get("default", "")) if isinstance(v, dict) else given[k]))
              for k, v in spec["parameters"].items()}
    args = shlex.split(spec["command"].format(**values))[3:]
    name, command, rest = main.resolve_command(main.make_context("mlflow-transfer", args, resilient_parsing=True), args)
    return name, command.make_context(name, rest).params


def test_mlproject_entries():
    name, params = _entry_params("timetravel", target_run_id="a" * 32)
    assert name == "timetravel" and params["target_run_id"] == "a" * 32 and params["sample_per_class"] == 50
    assert params["diagnostics_run_id"] == "" and params["device"] == "auto" and params["grid"] == 200
    assert _entry_params("main")[1]["run_timetravel"] == "on"  # main adds the timeline by default
    assert _entry_params("main", timetravel="off")[1]["run_timetravel"] == "off"
    assert _entry_params("remos")[1]["run_timetravel"] == "off"
    from mlflow_transfer.cli import main

    command = main.commands["main"]
    assert command.make_context("main", ["--no-timetravel"]).params["no_timetravel"] is True
    assert command.make_context("main", ["--timetravel"]).params["run_timetravel"] == "on"  # a bare flag: on


def test_mlflow_run_of_the_timetravel_entry(pair, module_store, tmp_path):
    """`mlflow run . -e timetravel` on the pair whose timeline exists: the entry point reaches the command,
    which leaves the timeline alone and exits 0."""
    import subprocess

    from helpers import REPO
    from helpers.servers import BIN

    timetravel(target_run_id=pair.target_run_id, sample_per_class=SAMPLE, options=FAST)  # whichever test runs first
    proc = subprocess.run([str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local", "-e", "timetravel",
                           "--experiment-name", module_store.experiment, "-P", f"target_run_id={pair.target_run_id}"],
                          cwd=tmp_path, env={**module_store.env, "MLFLOW_TRANSFER_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"diagnostics run {pair.diagnostics_run_id} already has a timeline" in proc.stderr
