"""The only layer that writes to MLflow: runs, tags, metrics, checkpoints, models; run lookup."""

from .lifecycle import find_running_runs, find_stale_runs, mark_failed
from .lookup import SourceRun, load_checkpoint, load_logged_model, load_model_weights, resolve_source_run
from .runs import finetune, run_pipeline, train_source
from ..tags import TAGS

__all__ = ["TAGS", "SourceRun", "find_running_runs", "find_stale_runs", "finetune", "load_checkpoint",
           "load_logged_model", "load_model_weights", "mark_failed", "resolve_source_run", "run_pipeline",
           "train_source"]
