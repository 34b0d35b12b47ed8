"""One error state for every view: a tab (or a part of it redrawn later) that fails shows a short,
escaped message instead of a traceback in the page or an endless spinner.

A `TransferError` (say, a bundle file that turns out unreadable when the tab first reads it) is the
user's to fix: its message is shown with the fix. Anything else is a bug: the server log gets the
traceback, the page a generic sentence (exception texts can hold paths and values not meant for it).
"""

from __future__ import annotations

import functools
import logging

import panel as pn

from mlflow_transfer.errors import TransferError

from .text import message_md

__all__ = ["UNEXPECTED", "error_pane", "guarded"]

log = logging.getLogger("ui")

UNEXPECTED = ("This view could not be drawn because of an unexpected error; the app's server log has the "
              "details. Pick another pair or reload the page.")


def error_pane(message: str, name: str = "view-error") -> pn.pane.Alert:
    """A red box holding ``message`` (quoted parts between backticks as code, the rest escaped)."""
    return pn.pane.Alert(message_md(message), alert_type="danger", name=name, sizing_mode="stretch_width")


def guarded(build, what: str = "view", fix=None):
    """``build`` wrapped so that an exception becomes `error_pane` (the same arguments, the same result
    otherwise). ``fix(message)`` may add the command that repairs the cause to a `TransferError`'s
    message (`AppState.with_fix`)."""

    @functools.wraps(build)
    def run(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except TransferError as exc:
            return error_pane(fix(str(exc)) if fix else str(exc))
        except Exception:
            log.exception("the %s view failed", what)
            return error_pane(UNEXPECTED)

    return run
