"""The only layer that writes to MLflow: runs, tags, metrics, checkpoints, models; run lookup."""

from .lookup import SourceRun, load_checkpoint, load_logged_model, resolve_source_run
from .runs import finetune, run_pipeline, train_source
from ..tags import TAGS

__all__ = ["TAGS", "SourceRun", "finetune", "load_checkpoint", "load_logged_model",
           "resolve_source_run", "run_pipeline", "train_source"]
