"""The only layer that writes to MLflow: runs, tags, metrics, checkpoints, models; run lookup.

Modules: `context` (the pair's data, its id, the code version, `transfer_run`), `runs` (source training,
fine-tuning), `diagnose` (a pair's diagnostics run), `timetravel` (its timeline, issue 14), `pipeline`
(``main``: all in one), `lookup` (runs and logged models), `bundles` (listing diagnosed pairs, the
validated bundle and timeline cache), `lifecycle` (stale runs). The names below are re-exported lazily
(PEP 562): importing `tracking.bundles` (the app does) imports neither the training code nor torch.
"""

from ..lazy import lazy_exports

_LAZY = {
    "TAGS": "..tags",
    "find_running_runs": ".lifecycle", "find_stale_runs": ".lifecycle", "mark_failed": ".lifecycle",
    "SourceRun": ".lookup", "load_checkpoint": ".lookup", "load_logged_model": ".lookup",
    "load_model_weights": ".lookup", "resolve_source_run": ".lookup",
    "finetune": ".runs", "train_source": ".runs",
    "run_pipeline": ".pipeline",
}

__all__ = ["TAGS", "SourceRun", "find_running_runs", "find_stale_runs", "finetune", "load_checkpoint",
           "load_logged_model", "load_model_weights", "mark_failed", "resolve_source_run", "run_pipeline",
           "train_source"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
