"""What every tab is: a `pn.viewable.Viewer` over the app's one shared `AppState` (Panel's data-store
pattern, as in Lumen): it keeps the state in a ``param.ClassSelector``, renders in ``__panel__`` and
redraws through ``@param.depends`` on the state's parameters.

A tab is built once per session and lives as long as the state, so what it watches never outlives it
(no watcher to remove when another pair opens). Its parts are evaluated when first shown, then follow
the state. A part that fails shows an error pane (`guarded_part`), never a traceback.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import panel as pn
import param

from ui.state import AppState
from ui.views.guard import guarded

__all__ = ["Tab", "guarded_part"]

NO_PAIR = "Select a diagnosed pair above."


def guarded_part(what: str):
    """Decorate a tab method that draws one part: without a bundle it draws the "select a pair" note,
    and an exception becomes the error pane of `ui.views.guard.guarded` (a `TransferError` with the
    command that fixes its cause, `AppState.with_fix`). Put ``@param.depends`` above it."""

    def wrap(method):
        @functools.wraps(method)
        def draw(self, *args, **kwargs):
            if self.state.bundle is None:
                return pn.pane.Markdown(NO_PAIR, name="no-pair")
            return guarded(method, what, self.state.with_fix)(self, *args, **kwargs)

        return draw

    return wrap


class Tab(pn.viewable.Viewer):
    """A tab of the app. Subclasses set `title` and return their layout from `layout`."""

    state = param.ClassSelector(class_=AppState, constant=True, doc="the app's shared state")

    title: ClassVar[str] = ""

    def __init__(self, **params):
        super().__init__(**params)
        self._layout = None

    def layout(self) -> pn.viewable.Viewable:
        raise NotImplementedError

    def part(self, method, **kwargs) -> pn.param.ParamMethod:
        """``method`` (a ``@param.depends`` method of this tab) as a pane evaluated when first shown."""
        return pn.param.ParamMethod(method, lazy=True, loading_indicator=True, **kwargs)

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:  # built once: its parts are the session's, like the state
            self._layout = self.layout()
        return self._layout
