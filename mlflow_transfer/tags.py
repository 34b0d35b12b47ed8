"""Tag names under which runs are found again with ``mlflow.search_runs``."""

from types import SimpleNamespace

PREFIX = "transfer."

TAGS = SimpleNamespace(
    role=PREFIX + "role",                    # "pipeline" | "source" | "target" | "diagnostics" | "sweep"
    source_run_id=PREFIX + "source_run_id",  # on a target run: the run it was fine-tuned from
    target_run_id=PREFIX + "target_run_id",  # on pipeline and diagnostics runs
    diagnostics_run_id=PREFIX + "diagnostics_run_id",  # on a pipeline run that diagnosed its pair
    source_reused=PREFIX + "source_reused",  # "true"/"false" on a pipeline run
    source_epoch=PREFIX + "source_epoch",    # on a target run started from a source checkpoint
    frozen_layers=PREFIX + "frozen_layers",  # JSON list, on a target run
    layers=PREFIX + "layers",                # JSON list of analysed layers, on a diagnostics run
    recipe=PREFIX + "recipe",                # recipe name
    pair_id=PREFIX + "pair_id",              # "<recipe>/<source id[:8]>/<target id[:8]>" on target + pipeline
    estimate_note=PREFIX + "estimate_note",  # on a target run whose LogME/LEEP could not be computed: why
    source_domain=PREFIX + "source_domain",
    target_domain=PREFIX + "target_domain",
    classes=PREFIX + "classes",              # JSON list of class names, in label order
    source_classes=PREFIX + "source_classes",  # on a target run: the source model's classes (issue 12)
    new_head=PREFIX + "new_head",            # "true"/"false" on a target run: its last layer was replaced
    model=PREFIX + "model",                  # registry name of the architecture
    source_key=PREFIX + "source_key",        # hash of what determines a source run (for reuse)
    code_version=PREFIX + "code_version",    # hash of the package's source files
    version=PREFIX + "version",              # package version (set by the run-context plugin)
    # Set when a run starts, so a run left RUNNING by a killed process can be told from a live one:
    host=PREFIX + "host",                    # host name of the process that started the run
    pid=PREFIX + "pid",                      # its process id
    process_start=PREFIX + "process_start",  # "<boot id>:<start ticks>": a reused pid is another process
    stale_reason=PREFIX + "stale_reason",    # why `mlflow-transfer runs --stale --mark-failed` ended it
    source_model_uri=PREFIX + "source_model_uri",  # on a source run that imported a logged model
    device=PREFIX + "device",                # the torch device a source/target/diagnostics run computed on
    # issue 13: how a target run started from its source (absent on older runs: "finetune")
    method=PREFIX + "method",                # "finetune" | "slice" | "scratch" on every target run
    slice_ratio=PREFIX + "slice_ratio",      # the ReMoS slice ratio as text, on slice runs only
    teacher_only=PREFIX + "teacher_only",    # "true" on a scratch run: its source run is a teacher to compare, not a start
    method_runs=PREFIX + "method_runs",      # JSON {method: target run id} on a pipeline run of several methods
    # issue 15: sweeps of transfer settings
    sweep_id=PREFIX + "sweep_id",            # the sweep parent's run id, on the parent and every run it made
    sweep_setting=PREFIX + "sweep_setting",  # JSON {recipe key: value} (keys sorted), on each sweep target run
    sweep_key=PREFIX + "sweep_key",          # hash of (base recipe, setting) on each sweep target run: re-runs skip it
    sweep_grid=PREFIX + "sweep_grid",        # hash of (base recipe, grid) on a sweep parent: a re-run finds it again
    # issue 16: what a compare table needs from a diagnostics run without opening its bundle
    summary=PREFIX + "summary",              # compact JSON (tracking.compare.summary_tag), on a diagnostics run
)

ROLES = ("pipeline", "source", "target", "diagnostics", "sweep")

# MLflow's own experiment tag, read by its UI to choose the view an experiment opens in; the package
# sets it (when absent) on every experiment it logs runs into, so they open as model training.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
