"""MLflow ``run_context_provider`` plugin: tags every run that mlflow-transfer starts.

MLflow calls :class:`TransferRunContext` for every new run in a process where this package is
installed; it only contributes tags while :func:`transfer_context` is active, i.e. for runs the
package itself creates (not for a user's unrelated runs). :func:`mark_experiment` marks the
experiment of such a run as model training (the tracking layer calls it once the run exists, also for
a run ``mlflow run`` created), so MLflow's UI does not open it in its GenAI view.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking.context.abstract_context import RunContextProvider

from .tags import EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING, TAGS

_log = logging.getLogger(__name__)

_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mlflow_transfer_ctx", default=None)
_ADDED: contextvars.ContextVar[dict] = contextvars.ContextVar("mlflow_transfer_added", default={})


@contextlib.contextmanager
def transfer_context(**tags: str):
    """While active, runs created in this thread get the package's tags plus ``tags``."""
    token = _ACTIVE.set(dict(tags))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def added_run_tags(**tags: str):
    """While active, every run the package starts in this thread also gets ``tags`` (under the run's own
    tags, which win on a clash): how a sweep tags the runs that `finetune` and `diagnose` open, and
    nests a target run under the sweep's parent from another process (``mlflow.parentRunId``)."""
    token = _ADDED.set({**_ADDED.get(), **tags})
    try:
        yield
    finally:
        _ADDED.reset(token)


class TransferRunContext(RunContextProvider):
    """Adds ``transfer.version`` (and the active context's tags) to runs the package starts."""

    def in_context(self) -> bool:
        return _ACTIVE.get() is not None

    def tags(self) -> dict[str, str]:
        from . import __version__

        return {TAGS.version: __version__, **_ADDED.get(), **(_ACTIVE.get() or {})}


def mark_experiment(experiment_id: str, client=None) -> bool:
    """Tag experiment ``experiment_id`` ``mlflow.experimentKind = custom_model_development`` unless it
    already has a kind (a user's choice is kept).

    Returns True when the tag was set. A store that refuses the tag (read-only, permissions) is
    logged as a warning and the run goes on: the tag only chooses the UI's view.
    """
    # Imported here: MLflow loads this plugin while `mlflow` itself is still being imported.
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    try:
        if EXPERIMENT_KIND in client.get_experiment(experiment_id).tags:
            return False
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
    except MlflowException as exc:
        _log.warning("could not tag experiment %s as %s=%s: %s", experiment_id, EXPERIMENT_KIND,
                     EXPERIMENT_KIND_TRAINING, exc)
        return False
    return True

