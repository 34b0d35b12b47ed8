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
import logging
import operator
from collections.abc import Callable
from typing import ClassVar

import panel as pn
import param

from ui.state import AppState
from ui.views.guard import guarded

__all__ = ["StateView", "Tab", "part", "poll"]

NO_PAIR = "Select a diagnosed pair above."
NO_EXPERIMENT = "No experiment on this server."
POLL_MS = 500  # how often a view asks whether a listing made in the background has arrived

log = logging.getLogger("ui")
_NOTHING = object()  # no bundle shown yet (None is a state's bundle too)


def part(*dependencies: str, what: str):
    """Declare a tab method that draws one part from ``dependencies`` (the tab's or ``state.*``
    parameters, as for ``@param.depends``). Without a bundle it draws the "select a pair" note (a tab that does
    not need one, `Tab.needs_bundle` False: without an experiment, the "no experiment" note); an exception becomes
    the error pane of `ui.views.guard.guarded` (in a pair's tab, a `TransferError` with the command that fixes
    its cause, `AppState.with_fix`). While its tab is hidden, or when shown again with the
    same inputs, the part keeps what it drew (Panel's ``Skip``); a hidden tab of another pair shows a
    placeholder instead (`Tab._shown`), so an out-of-date part never reaches the browser."""
    values = [operator.attrgetter(d) for d in dependencies]

    def wrap(method):
        @functools.wraps(method)
        def draw(self):
            if not self.is_open:
                raise param.Skip  # hidden: drawn when shown
            inputs = [value(self) for value in values]
            if self._drawn.get(method.__name__) == inputs:
                raise param.Skip  # shown again, nothing changed
            self._drawn[method.__name__] = inputs
            if not self.needs_bundle:
                if not self.state.experiment:
                    return pn.pane.Markdown(NO_EXPERIMENT, name="no-experiment")
                return guarded(method, what)(self)
            if self.state.bundle is None:
                return pn.pane.Markdown(NO_PAIR, name="no-pair")
            return guarded(method, what, self.state.with_fix)(self)

        return param.depends(*dependencies, "state.tab")(draw)

    return wrap


def poll(done: Callable[[], bool]) -> None:
    """Call ``done`` every `POLL_MS` until it returns True (or raises: logged, and the polling ends), from a
    periodic callback of the session's document, so what it changes reaches that session's page; the first call
    once the page has shown (`pn.state.onload`), so whatever ``done`` starts does not slow the first paint."""
    def check():
        try:
            finished = done()
        except Exception:  # noqa: BLE001 -- never an endless loop of the same error
            log.exception("a background listing's check failed")
            finished = True
        if finished:
            callback.stop()

    callback = pn.state.add_periodic_callback(check, period=POLL_MS, start=False)
    pn.state.onload(callback.start)


class StateView(pn.viewable.Viewer):
    """A part of the app over its one `AppState`: subclasses return their layout from `layout`, built
    once (its panes watch the state, so a second copy would watch it too)."""

    state = param.ClassSelector(class_=AppState, constant=True, doc="the app's shared state")

    def __init__(self, **params):
        super().__init__(**params)
        self._layout = None

    def layout(self) -> pn.viewable.Viewable:
        raise NotImplementedError

    def __panel__(self) -> pn.viewable.Viewable:
        if self._layout is None:
            self._layout = self.layout()
        return self._layout


class Tab(StateView):
    """A tab of the app. Subclasses set `title` and return their parts' layout from `layout`."""

    index = param.Integer(default=None, allow_None=True, constant=True,
                          doc="position in the app's tabs (``state.tab``); None: always shown")

    title: ClassVar[str] = ""
    needs_bundle: ClassVar[bool] = True  # False: drawn without the open pair's bundle (`AppState` defers it)

    def __init__(self, **params):
        super().__init__(**params)
        self._page = None    # what the app shows: the parts while open or current, else a placeholder
        self._shown_for = _NOTHING  # the bundle the parts were last shown for
        self._drawn: dict[str, list] = {}  # each part's inputs when it was last drawn

    @property
    def is_open(self) -> bool:
        """Whether this tab is the one shown (a tab without an index always is)."""
        return self.index is None or self.state.tab == self.index

    def lazy(self, method, *, loading_indicator: bool = False, **kwargs) -> pn.param.ParamMethod:
        """``method`` (a `part` of this tab) as a pane evaluated when first shown. A spinner over the
        part while it is redrawn only where that can take seconds: each one costs the browser a layout."""
        return pn.param.ParamMethod(method, lazy=True, loading_indicator=loading_indicator, **kwargs)

    @param.depends("state.bundle", "state.tab")
    def _shown(self):
        """The parts while the tab is open (or hidden but still current), else a placeholder: a hidden
        tab's parts are not sent to the browser out of date. The parts watch the same parameters and were
        created first, so on opening they are brought up to date before they are sent."""
        if self.is_open:
            if self._shown_for is self.state.bundle:
                raise param.Skip  # already showing the parts, which redraw themselves
            self._shown_for = self.state.bundle
            return self._layout
        if self._shown_for is self.state.bundle:
            raise param.Skip  # hidden, still this pair's: kept, shown again at no cost
        self._shown_for = _NOTHING  # hidden and of another pair: not kept in the browser
        return pn.Spacer(height=0)

    def __panel__(self) -> pn.viewable.Viewable:
        if not self.needs_bundle:  # parts over the experiment, not the open pair: the page is the layout itself
            return super().__panel__()
        if self._page is None:
            super().__panel__()  # the parts first: they watch the state before the page does
            self._page = pn.param.ParamMethod(self._shown, sizing_mode="stretch_width")
        return self._page
