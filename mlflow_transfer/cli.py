"""`mlflow-transfer` command line (what the MLproject entry points call). No logic lives here.

This module is long because every command's options are declared in it, next to each other.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import wraps

import click

from .errors import TransferError
from .diagnostics.options import DiagnoseOptions, resolve_n_steps  # torch-free: the options' defaults
from .runtime import keep_freed_memory, quiet_library_progress

_RECIPE = click.option("--recipe", default="recipes/digits.yaml", show_default=True,
                       help="Recipe YAML file: the domains, model, training settings and seed.")
_SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE[,KEY=VALUE]",
                    help="Override recipe values, e.g. --set source.epochs=2,target.lr=0.001 "
                         "(repeatable; dotted keys as in the recipe).")
_DATA_ROOT = click.option("--data-root", default="", help="Folder that the recipe's relative data "
                          "roots are resolved against (sets data.root); unused by the built-in digits.")
_TRACKING = click.option("--tracking-uri", default=None, envvar="MLFLOW_TRACKING_URI",
                         help="MLflow tracking server or store [default: $MLFLOW_TRACKING_URI, "
                              "else sqlite:///mlflow.db].")
_EXPERIMENT = click.option("--experiment-name", default=None, envvar="MLFLOW_EXPERIMENT_NAME",
                           help="Experiment to log into (ignored under `mlflow run`, which chooses it).")
_DEVICE_HELP = ("Device to compute on: auto (CUDA if present, else MPS, else CPU), cpu, cuda or mps; a device "
                "that is not present is an error")
_DEVICE = click.option("--device", default="", metavar="auto|cpu|cuda|mps",
                       help=_DEVICE_HELP + ". [default: the recipe's runtime.device, auto]")


def _one_line(text: str) -> str:
    """``text`` on one line, with control characters escaped: messages quote untrusted input (tag
    values, file names) and must neither span lines nor drive the terminal."""
    text = " ".join(text.splitlines())
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def _check_ids(**ids: str) -> None:
    """Run-id options checked at the boundary, before anything is looked up (empty = not given)."""
    from .validation import check_run_id

    for name, value in ids.items():
        if value:
            check_run_id(value, f"--{name.replace('_', '-')} value")


def _bool_option(name: str, help: str):
    """A flag that also takes an explicit value (``--x``, ``--x true``, ``--x false``), so MLproject
    entry points, which cannot leave a flag out, can pass it as a parameter."""
    return click.option(name, type=click.BOOL, default=False, is_flag=False, flag_value=True,
                        metavar="[BOOLEAN]", help=help)


_TRUST_PICKLED = _bool_option("--trust-pickled-models", "Allow logged models saved in pickle format. "
                              "Unpickling runs any code the file carries: only for models you trust. "
                              "[default: false, only MLflow's pickle-free pt2 format and state dicts]")


def _user_errors(fn=None, *, opens_runs: bool = True):
    """Print user errors as one line and exit non-zero; Ctrl-C / SIGTERM exit 130 (saying that the
    command's open runs were closed as FAILED when it ``opens_runs``)."""
    if fn is None:
        return lambda f: _user_errors(f, opens_runs=opens_runs)
    interrupted = "interrupted; the open runs were marked FAILED" if opens_runs else "interrupted"

    @wraps(fn)
    def wrapper(*args, **kwargs):
        # SIGTERM (e.g. a killed job) unwinds like Ctrl-C, so open runs are closed as FAILED.
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        keep_freed_memory()
        quiet_library_progress()
        try:
            return fn(*args, **kwargs)
        except TransferError as exc:
            click.echo(f"mlflow-transfer: error: {_one_line(str(exc))}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo(f"mlflow-transfer: {interrupted}", err=True)
            sys.exit(130)

    return wrapper


def _load(recipe: str, overrides: tuple[str, ...], data_root: str, device: str = ""):
    from .config import load_recipe, split_outside_brackets

    items = [part for item in overrides for part in split_outside_brackets(item) if part.strip()]
    if data_root:
        items.append(f"data.root={data_root}")
    if device:  # --device is the recipe's runtime.device, so the run records it like any recipe value
        items.append(f"runtime.device={device.strip().lower()}")
    return load_recipe(recipe, items)


def _setup(tracking_uri: str | None, experiment_name: str | None) -> None:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if experiment_name and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_name)


def _summary(title: str, runs: dict[str, str]) -> None:
    import mlflow

    from .tracking.runs import final_accuracies

    click.echo(f"\n{title}")
    for role, run_id in runs.items():
        accs = final_accuracies(run_id)
        shown = ", ".join(f"{k[4:]}={v:.3f}" for k, v in sorted(accs.items()))
        click.echo(f"  {role:<8} run {run_id}  {shown}")
    uri = mlflow.get_tracking_uri()
    click.echo(f"  tracking store: {uri}")
    click.echo(f"  browse: mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")


@click.group(help="Train, fine-tune and inspect source→target transfer runs logged to MLflow.")
@click.version_option(package_name="mlflow-transfer")
def main() -> None:
    pass


def _diagnose_options(fn):
    """Options shared by `diagnose` and `main` (what to compute and how precisely)."""
    options = [
        click.option("--layers", default="", help="Comma-separated analysis layers to analyse [default: all]."),
        click.option("--classes", default="", help="Comma-separated class names to analyse [default: all]."),
        click.option("--sample-per-class", default=DiagnoseOptions.sample_per_class, show_default=True,
                     type=click.IntRange(min=1), help="Analysed sample: instances per class, domain and split "
                     "(train/validation) whose conductance, similarity, patches and SVM are computed."),
        click.option("--n-steps", default=str(DiagnoseOptions.n_steps), show_default=True, metavar="auto|N",
                     callback=_n_steps_option, help="Integration steps of Layer Conductance (captum's n_steps): a "
                     "number fixes them; auto picks, per model, the smallest of 8, 16, 32, 50, 100 whose relative "
                     "completeness error on a probe batch is within --completeness-tolerance."),
        click.option("--top-fraction", default=DiagnoseOptions.top_fraction, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True),
                     help="Share of each layer's neurons kept as important (paper: 10 %)."),
        click.option("--seed", default=DiagnoseOptions.seed, show_default=True,
                     help="Seed of instance sampling, t-SNE and CV folds."),
        click.option("--feature-vis-steps", default=DiagnoseOptions.feature_vis_steps, show_default=True,
                     type=click.IntRange(min=0), help="Optimisation steps of each neuron's feature "
                     "visualisation (activation maximisation); 0 turns it off."),
        click.option("--completeness-tolerance", default=DiagnoseOptions.completeness_tolerance, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True), help="With --n-steps auto: the relative "
                     "completeness error |sum of a layer's conductance - (F(x) - F(baseline))| / |F(x) - F(baseline)| "
                     "allowed (0.01 = 1 %)."),
        click.option("--robustness", default="on" if DiagnoseOptions.robustness else "off", show_default=True,
                     type=click.Choice(["on", "off"], case_sensitive=False), help="Adversarial robustness: FGSM/PGD "
                     "accuracy of both models on the target validation set, the defect inheritance rate of the "
                     "source model's attacks and the conductance shift they cause; off: none of these records."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _n_steps_option(ctx, param, value):
    """--n-steps as "auto" or a whole number >= 1; anything else is a usage error naming both forms."""
    try:
        return resolve_n_steps(value)
    except TransferError as exc:
        raise click.BadParameter(str(exc)) from None


def _options(layers, classes, sample_per_class, n_steps, top_fraction, seed, feature_vis_steps,
             completeness_tolerance=DiagnoseOptions.completeness_tolerance, robustness="on"):
    split = lambda text: tuple(p.strip() for p in text.split(",") if p.strip()) or None  # noqa: E731
    return DiagnoseOptions(layers=split(layers), classes=split(classes), sample_per_class=sample_per_class,
                           n_steps=n_steps, top_fraction=top_fraction, seed=seed,
                           feature_vis_steps=feature_vis_steps, completeness_tolerance=completeness_tolerance,
                           robustness=robustness.lower() == "on")


class _Report:
    """The ``report_writer`` the commands hand to `diagnose`: ``ui.report.write_report`` (imported when a
    report is written, so the package's layers never import ``ui``; an import failure only costs the
    report, like any report failure — see `mlflow_transfer.tracking.diagnose`). It remembers whether
    it wrote the page, so the summary says where the report is without asking the server again."""

    def __init__(self) -> None:
        self.written = False

    def __call__(self, bundle_dir, out_path, timeline_dir=None):
        from ui.report import write_report

        # the timeline strip (issue 14) only when there is a timeline: a report without one is as before
        path = write_report(bundle_dir, out_path, **({"timeline_dir": timeline_dir} if timeline_dir else {}))
        self.written = True
        return path

    def note(self, run_id: str) -> str:
        from .tracking.diagnose import REPORT_NAME

        if self.written:
            return f"report at runs:/{run_id}/{REPORT_NAME}"
        return f"no {REPORT_NAME} (see the warning above)"


@main.command("main", help="Train the source model (or reuse an identical finished source run), "
                           "fine-tune it on the target domain, then diagnose the pair.")
@_RECIPE
@_SET
@_DATA_ROOT
@_TRACKING
@_EXPERIMENT
@click.option("--diagnose/--no-diagnose", "run_diagnose", default=True, show_default=True,
              help="Diagnose the pair right after fine-tuning.")
@_diagnose_options
@_TRUST_PICKLED
@_DEVICE
@click.option("--methods", default="", metavar="finetune,slice,scratch", help="Transfer methods (issue 13): a target "
              "run and diagnosis each, from one source run [default: the recipe's target.method alone].")
@click.option("--timetravel", "run_timetravel", default="on", show_default=True, is_flag=False, flag_value="on",
              type=click.Choice(["on", "off"], case_sensitive=False), help="After diagnose, add each diagnosed "
              "pair's timeline (the `timetravel` command, its defaults) to its diagnostics run; off: none.")
@click.option("--no-timetravel", "no_timetravel", is_flag=True, help="Same as --timetravel off.")
@_user_errors
def main_cmd(recipe, overrides, data_root, tracking_uri, experiment_name, run_diagnose, layers, classes,
             sample_per_class, n_steps, top_fraction, seed, feature_vis_steps, completeness_tolerance,
             robustness, trust_pickled_models, device, methods, run_timetravel, no_timetravel):
    from .tracking import run_pipeline

    _setup(tracking_uri, experiment_name)
    options = (_options(layers, classes, sample_per_class, n_steps, top_fraction, seed, feature_vis_steps,
                        completeness_tolerance, robustness) if run_diagnose else None)
    report = _Report()
    timeline = run_diagnose and run_timetravel.lower() == "on" and not no_timetravel
    result = run_pipeline(_load(recipe, overrides, data_root, device), diagnose_options=options,
                          report_writer=report, trust_pickled=trust_pickled_models, methods=methods,
                          timetravel_args={} if timeline else None)
    note = " (reused: identical recipe, parameters and code)" if result.source_reused else ""
    _summary(f"pair {result.pair_id}{note}",
             {"source": result.source_run_id, "target": result.target_run_id})
    click.echo(f"  pipeline run {result.pipeline_run_id}")
    if result.diagnostics_run_id:
        run_id = result.diagnostics_run_id
        click.echo(f"  diagnostics run {run_id} (bundle at runs:/{run_id}/diagnostics, {report.note(run_id)})")
        if timeline:
            click.echo(f"  timeline at runs:/{run_id}/timetravel")
    for method, (target_id, diag_id) in (result.method_runs or {}).items():  # --methods: the pair above is the first
        click.echo(f"  method {method}: target run {target_id}" + (f", diagnostics run {diag_id}" if diag_id else ""))


@main.command("diagnose", help="Compute the transfer diagnostics of a source-target pair and log them "
                               "as a versioned bundle in a new diagnostics run.")
@click.option("--target-run-id", default="", help="Target run of the pair (its source is found by tag).")
@click.option("--source-run-id", default="", help="Source run, to override the target's tag or pair "
                                                   "two runs explicitly.")
@click.option("--source-model-uri", default="", help="Source model URI (runs:/…/model, models:/…) for a "
                                                      "pair trained outside the recipes; needs --recipe.")
@click.option("--target-model-uri", default="", help="Target model URI (with --source-model-uri).")
@click.option("--recipe", default="", help="Recipe naming the data domains [default: the target run's].")
@click.option("--arch", default="", help="Registry architecture to load the models into [default: the "
              "recipe's (URIs) or run's model when the weights fit it, else any PyTorch classifier is adapted: "
              "its Conv2d/Linear modules by module path].")
@click.option("--embedding-layer", default="", help="Module path whose output is a foreign model's "
              "embedding [default: the input of its last Linear layer].")
@_SET
@_DATA_ROOT
@_TRACKING
@_EXPERIMENT
@_diagnose_options
@_TRUST_PICKLED
@_bool_option("--allow-unfinished", "Diagnose a pair even if a run did not finish (FAILED, KILLED or "
              "still RUNNING): its model and metrics are whatever was logged when it stopped. [default: false]")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|mps",
              help=_DEVICE_HELP + " (a recipe's runtime.device is not used: it says where that run trained).")
@_user_errors
def diagnose_cmd(target_run_id, source_run_id, source_model_uri, target_model_uri, recipe, arch, embedding_layer,
                 overrides,
                 data_root, tracking_uri, experiment_name, layers, classes, sample_per_class, n_steps,
                 top_fraction, seed, feature_vis_steps, completeness_tolerance, robustness, trust_pickled_models,
                 allow_unfinished, device):
    from .runtime import resolve_device
    from .tracking.diagnose import diagnose

    resolve_device(device)  # before any lookup: an absent device is the first thing said

    _check_ids(target_run_id=target_run_id, source_run_id=source_run_id)
    _setup(tracking_uri, experiment_name)
    report = _Report()
    run_id = diagnose(target_run_id=target_run_id or None, source_run_id=source_run_id or None,
                      source_model_uri=source_model_uri or None, target_model_uri=target_model_uri or None,
                      recipe=_load(recipe, overrides, data_root) if recipe else None, arch=arch or None,
                      options=_options(layers, classes, sample_per_class, n_steps, top_fraction, seed,
                                       feature_vis_steps, completeness_tolerance, robustness),
                      report_writer=report, trust_pickled=trust_pickled_models,
                      allow_unfinished=allow_unfinished, embedding_layer=embedding_layer or None, device=device)
    click.echo(f"diagnostics run {run_id}: bundle at runs:/{run_id}/diagnostics, {report.note(run_id)}")


@main.command("sweep", help="Fine-tune and diagnose every setting of a grid of recipe values (issue 15), each "
                            "setting a Ray task and a child run of one `sweep` run; a re-run skips finished settings.")
@click.option("--recipe", default=None, help="Base recipe YAML file [default: the sweep file's `recipe`, "
              "else recipes/digits.yaml].")
@_SET
@click.option("--sweep", "sweep_file", default="", help="Sweep YAML file: `grid` (recipe key -> list of values; "
              "`source_recipe` -> recipe files) and optionally `recipe` (see recipes/sweeps/digits.yaml).")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2", help="A grid key and its values, e.g. "
              "--grid target.lr=0.0005,0.005 (repeatable; added to the sweep file's grid).")
@click.option("--ray-address", default="", help="Join this Ray cluster (auto, host:port or ray://host:port); "
              "its workers must reach the same tracking server [default: a local Ray on this machine].")
@click.option("--max-parallel", default=None, type=click.IntRange(min=1),
              help="Settings running at once [default: one per core (local) or per cluster CPU].")
@_TRACKING
@_EXPERIMENT
@_diagnose_options
@_user_errors
def sweep_cmd(recipe, overrides, sweep_file, grid, ray_address, max_parallel, tracking_uri, experiment_name,
              layers, classes, sample_per_class, n_steps, top_fraction, seed, feature_vis_steps,
              completeness_tolerance, robustness):
    from .config import load_sweep, parse_grid, split_outside_brackets
    from .tracking.sweep import run_sweep

    _setup(tracking_uri, experiment_name)
    spec = load_sweep(sweep_file) if sweep_file else {"recipe": None, "grid": {}}
    extra = parse_grid([part for item in grid for part in item.split()])  # MLproject passes one string
    clash = sorted(set(extra) & set(spec["grid"]))
    if clash:
        raise click.UsageError(f"grid key(s) {clash} are both in --sweep and --grid; give each once")
    items = [part for item in overrides for part in split_outside_brackets(item) if part.strip()]
    result = run_sweep(recipe or spec["recipe"] or "recipes/digits.yaml", {**spec["grid"], **extra},
                       overrides=tuple(items), report_writer=_Report(), ray_address=ray_address or None,
                       max_parallel=max_parallel, echo=click.echo,
                       options=_options(layers, classes, sample_per_class, n_steps, top_fraction, seed,
                                        feature_vis_steps, completeness_tolerance, robustness))
    click.echo(f"sweep run {result.parent_run_id}: {result.ran} settings ran, "
               f"{len(result.outcomes) - result.ran} skipped (finished before), {len(result.failed)} failed")
    if result.failed:
        sys.exit(1)


@main.command("timetravel", help="Add a diagnosed pair's timeline (issue 14, DeepVisualInsight): every trained "
                                 "epoch of the source run, then of the target run, projected to 2-D with its decision "
                                 "regions and fidelity measures, logged to the pair's diagnostics run under timetravel/.")
@click.option("--target-run-id", required=True, help="Target run of the pair (its source is found by tag).")
@click.option("--diagnostics-run-id", default="", help="Diagnostics run to add the timeline to [default: the newest "
              "finished diagnostics run of the target].")
@click.option("--sample-per-class", default=50, show_default=True, type=click.IntRange(min=1),
              help="Projected sample: points per class, domain and split (train/validation), the same at every epoch.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Seed of the sample and of the visualisation model.")
@click.option("--grid", default=200, show_default=True, type=click.IntRange(min=200),
              help="Grid cells per side of each epoch's decision-region image.")
@_TRACKING
@_TRUST_PICKLED
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|mps",
              help=_DEVICE_HELP + " (a recipe's runtime.device is not used: it says where that run trained).")
@_user_errors(opens_runs=False)
def timetravel_cmd(target_run_id, diagnostics_run_id, sample_per_class, seed, grid, tracking_uri,
                   trust_pickled_models, device):
    from .diagnostics.timetravel import TimeTravelOptions
    from .runtime import resolve_device
    from .tracking.timetravel import TIMELINE_DIR, timetravel

    resolve_device(device)  # before any lookup: an absent device is the first thing said
    _check_ids(target_run_id=target_run_id, diagnostics_run_id=diagnostics_run_id)
    _setup(tracking_uri, None)
    report = _Report()
    run_id = timetravel(target_run_id=target_run_id, diagnostics_run_id=diagnostics_run_id or None,
                        sample_per_class=sample_per_class, device=device, trust_pickled=trust_pickled_models,
                        options=TimeTravelOptions(seed=seed, grid=grid), report_writer=report,
                        say=lambda line: click.echo(_one_line(line), err=True))
    click.echo(f"diagnostics run {run_id}: timeline at runs:/{run_id}/{TIMELINE_DIR}"
               + (f", {report.note(run_id)}" if report.written else ""))


@main.command("validate-bundle", help="Check a downloaded diagnostics bundle folder (manifest, schema "
                                      "version, every file's size and hash).")
@click.argument("path", type=click.Path(file_okay=False))
@_user_errors(opens_runs=False)
def validate_bundle_cmd(path):
    from .bundle import validate_bundle

    manifest = validate_bundle(path)
    click.echo(f"ok: schema {manifest['schema_version']}, {len(manifest['files'])} files, "
               f"pair {manifest.get('pair_id')}")


@main.command("ui", help="Serve the Panel app over the diagnosed pairs of a tracking server.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (127.0.0.1 keeps it "
              "local; 0.0.0.0 exposes it to the network).")
@click.option("--port", default=5006, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free).")
@_TRACKING
@click.option("--experiment-name", default="", help="Open this experiment [default: the first with a "
              "diagnosed pair].")
@click.option("--pair", default="", help="Open this diagnostics run id [default: the newest pair].")
@_user_errors(opens_runs=False)
def ui_cmd(host, port, tracking_uri, experiment_name, pair):
    from ui.server import serve

    serve(tracking_uri, host=host, port=port, experiment_name=experiment_name, pair=pair,
          say=lambda line: click.echo(line, err=True))


@main.command("train-source", help="Train the recipe's source model from scratch on the source domain.")
@_RECIPE
@_SET
@_DATA_ROOT
@_TRACKING
@_EXPERIMENT
@_DEVICE
@_user_errors
def train_source_cmd(recipe, overrides, data_root, tracking_uri, experiment_name, device):
    from .tracking import train_source

    _setup(tracking_uri, experiment_name)
    run_id = train_source(_load(recipe, overrides, data_root, device))
    _summary("source run", {"source": run_id})


@main.command("finetune", help="Fine-tune a finished source run's model on the recipe's target domain.")
@click.option("--source-run-id", required=True, help="Id of the source run to start from (role `source`).")
@click.option("--source-epoch", default="", help="Start from the source run's checkpoint of this epoch "
                                                   "instead of its final logged model.")
@_RECIPE
@_SET
@_DATA_ROOT
@_TRACKING
@_EXPERIMENT
@_TRUST_PICKLED
@_DEVICE
@_user_errors
def finetune_cmd(source_run_id, source_epoch, recipe, overrides, data_root, tracking_uri, experiment_name,
                 trust_pickled_models, device):
    from .errors import RecipeError
    from .tracking import finetune

    _check_ids(source_run_id=source_run_id)
    _setup(tracking_uri, experiment_name)
    if source_epoch and not (source_epoch.isascii() and source_epoch.isdigit() and len(source_epoch) <= 6):
        raise RecipeError(f"--source-epoch must be a whole number of epochs, got {source_epoch!r}")
    run_id = finetune(_load(recipe, overrides, data_root, device), source_run_id,
                      source_epoch=int(source_epoch) if source_epoch else None, trust_pickled=trust_pickled_models)
    _summary("target run", {"source": source_run_id, "target": run_id})


@main.command("runs", help="List runs that mlflow-transfer started and that are still RUNNING; with --stale, "
                           "only those no process will finish (killed, crashed), and --mark-failed ends them FAILED.")
@click.option("--stale", is_flag=True, help="Only runs whose process is gone (this host) or that started more "
              "than --older-than hours ago (other hosts, or runs without process tags).")
@click.option("--mark-failed", is_flag=True, help="Mark the stale runs FAILED (tag transfer.stale_reason says why).")
@click.option("--older-than", default=24.0, show_default=True, type=click.FloatRange(min=0),
              help="Hours after which a RUNNING run of another host (whose process cannot be checked) is stale.")
@_TRACKING
@click.option("--experiment-name", default=None, envvar="MLFLOW_EXPERIMENT_NAME",
              help="Only this experiment [default: all experiments].")
@_user_errors(opens_runs=False)
def runs_cmd(stale, mark_failed, older_than, tracking_uri, experiment_name):
    import datetime

    from .errors import RunLookupError
    from .tracking.lifecycle import find_running_runs, mark_failed as end_failed

    if mark_failed and not stale:
        raise RunLookupError("Expected --mark-failed together with --stale; got --mark-failed alone. "
                             "Run `mlflow-transfer runs --stale` to see what would be marked, then add --mark-failed.")
    _setup(tracking_uri, None)
    found = find_running_runs(experiment_name=experiment_name, older_than_hours=older_than)
    shown = [r for r in found if r.reason is not None] if stale else found
    if mark_failed:
        shown = end_failed(shown)
    verb = "marked FAILED" if mark_failed else ("stale" if stale else "RUNNING")
    click.echo(f"{len(shown)} run(s) {verb}")
    for r in shown:
        started = datetime.datetime.fromtimestamp(r.start_time, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        verdict = f"stale: {r.reason}" if r.reason else "not stale (its process may still finish it)"
        click.echo(_one_line(f"  {r.run_id}  {r.role:<11} started {started}  {verdict}"))  # tags are untrusted


if __name__ == "__main__":
    main()
