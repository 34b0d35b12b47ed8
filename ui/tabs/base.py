"""What every tab is: a `pn.viewable.Viewer` over the app's one shared `AppState` (Panel's data-store
pattern, as in Lumen): it keeps the state in a ``param.ClassSelector``, renders in ``__panel__`` and
redraws its parts when the state parameters they name change (`part`, a ``@param.depends``).

A tab is built once per session and lives as long as the state, so what it watches never outlives it
(no watcher to remove when another pair opens). Its parts are evaluated when first shown; while the
tab is hidden they are not redrawn, and on showing it again only the parts whose inputs changed are.
A part that fails shows an error pane, never a traceback.
"""

from __future__ import annotations

import functools
import operator
from typing import ClassVar

import panel as pn
import param

from ui.state import AppState
from ui.views.guard import guarded

__all__ = ["Tab", "part"]

NO_PAIR = "Select a diagnosed pair above."


def part(*dependencies: str, what: str):
    """Declare a tab method that draws one part from ``dependencies`` (the tab's or ``state.*``
    parameters, as for ``@param.depends``). Without a bundle it draws the "select a pair" note; an
    exception becomes the error pane of `ui.views.guard.guarded` (a `TransferError` with the command
    that fixes its cause, `AppState.with_fix`). While its tab is hidden, or when shown again with the
    same inputs, the part keeps what it drew (Panel's ``Skip``)."""
    values = [operator.attrgetter(d) for d in dependencies]

    def wrap(method):
        @functools.wraps(method)
        def draw(self):
            if self.index is not None and self.state.tab != self.index:
                raise param.Skip  # hidden: drawn when shown
            inputs = [value(self) for value in values]
            if self._drawn.get(method.__name__) == inputs:
                raise param.Skip  # shown again, nothing changed
            self._drawn[method.__name__] = inputs
            if self.state.bundle is None:
                return pn.pane.Markdown(NO_PAIR, name="no-pair")
            return guarded(method, what, self.state.with_fix)(self)

        return param.depends(*dependencies, "state.tab")(draw)

    return wrap


class Tab(pn.viewable.Viewer):
    """A tab of the app. Subclasses set `title` and return their layout from `layout`."""

    state = param.ClassSelector(class_=AppState, constant=True, doc="the app's shared state")
    index = param.Integer(default=None, allow_None=True, constant=True,
                          doc="position in the app's tabs (``state.tab``); None: always shown")

    title: ClassVar[str] = ""

    def __init__(self, **params):
        super().__init__(**params)
        self._layout = None
        self._drawn: dict[str, list] = {}  # each part's inputs when it was last drawn

    def layout(self) -> pn.viewable.Viewable:
        raise NotImplementedError

    def lazy(self, method, **kwargs) -> pn.param.ParamMethod:
        """``method`` (a `part` of this tab) as a pane evaluated when first shown."""
        return pn.param.ParamMethod(method, lazy=True, loading_indicator=True, **kwargs)

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:  # built once: its parts are the session's, like the state
            self._layout = self.layout()
        return self._layout
