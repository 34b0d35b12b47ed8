"""MLflow ``run_context_provider`` plugin: tags every run that mlflow-transfer starts.

MLflow calls :class:`TransferRunContext` for every new run in a process where this package is
installed; it only contributes tags while :func:`transfer_context` is active, i.e. for runs the
package itself creates (not for a user's unrelated runs).
"""

from __future__ import annotations

import contextlib
import contextvars

from mlflow.tracking.context.abstract_context import RunContextProvider

from .tags import TAGS

_ACTIVE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("mlflow_transfer_ctx", default=None)


@contextlib.contextmanager
def transfer_context(**tags: str):
    """While active, runs created in this thread get the package's tags plus ``tags``."""
    token = _ACTIVE.set(dict(tags))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class TransferRunContext(RunContextProvider):
    """Adds ``transfer.version`` (and the active context's tags) to runs the package starts."""

    def in_context(self) -> bool:
        return _ACTIVE.get() is not None

    def tags(self) -> dict[str, str]:
        from . import __version__

        return {TAGS.version: __version__, **(_ACTIVE.get() or {})}
