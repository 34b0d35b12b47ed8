"""The header above the tabs, a `Viewer` over the app's `AppState`: the error banner, the tracking
server, the experiment select (and a reload button) and the table of its diagnosed pairs (a row click opens the pair; a pair
opened otherwise, say by a link, is highlighted)."""

from __future__ import annotations

import panel as pn
import param

from ui.tabs.base import StateView, poll
from ui.views.guard import error_pane
from ui.views.pairs import HOW_TO_DIAGNOSE, pairs_table
from ui.views.text import md_code

__all__ = ["PairBrowser"]


class PairBrowser(StateView):
    def __init__(self, **params):
        super().__init__(**params)
        self._select = pn.widgets.Select(label="Experiment", width=280)
        self._experiments()
        self._select.param.watch(self._picked, "value")
        self._reload = pn.widgets.Button(label="reload", width=80)  # listings are kept a while (`TrackingSource`)
        self._reload.on_click(lambda _event: self.state.reload())
        self._table = None  # the listed pairs' table, once drawn
        self._await_pairs()

    @param.depends("state.experiments", "state.experiment", watch=True)
    def _experiments(self):
        self._select.param.update(options={e["name"]: e["experiment_id"] for e in self.state.experiments},
                                  value=self.state.experiment or None)

    def _picked(self, event):
        if event.new is not None:
            self.state.experiment = event.new

    @param.depends("state.error")
    def banner(self):
        # error texts quote what arrived (a URL parameter, a tag): escaped by error_pane
        return error_pane(self.state.error, name="error") if self.state.error else pn.Spacer(height=0)

    @param.depends("state.pairs_partial", watch=True)
    def _await_pairs(self):
        if self.state.pairs_partial:  # the newest pairs are listed: the whole list replaces them when made
            poll(self.state.complete_pairs)

    @param.depends("state.pairs", "state.pairs_partial")
    def pairs(self):
        s = self.state
        if not s.pairs:
            self._table = None
            return pn.pane.Markdown(HOW_TO_DIAGNOSE if s.experiment else "No experiment on this server.",
                                    name="empty-pairs")
        self._table = pairs_table(s.pairs, s.pair)
        self._table.param.watch(self._opened, "selection")  # the table is this listing's: the watcher goes with it
        if not s.pairs_partial:
            return self._table
        return pn.Column(pn.pane.Markdown(f"The newest {len(s.pairs)} pairs so far: the whole list replaces them "
                                          "when it is ready.", name="pairs-partial"), self._table,
                         sizing_mode="stretch_width")

    def _opened(self, event):
        if event.new:
            self.state.pair = self.state.pairs[event.new[0]]["diagnostics_run_id"]

    @param.depends("state.pair", watch=True)
    def _highlight(self):
        if self._table is not None:
            rows = [i for i, p in enumerate(self.state.pairs) if p["diagnostics_run_id"] == self.state.pair]
            if self._table.selection != rows:
                self._table.selection = rows

    def layout(self):
        # Not redrawn on `pair`: a pair picked in the table is already highlighted there, and redrawing
        # the table on every switch would cost the switch a table redraw.
        return pn.Column(pn.param.ParamMethod(self.banner), pn.pane.Markdown(f"**Tracking server** "
                                                                              f"{md_code(self.state.source.uri)}"),
                         pn.Row(self._select, self._reload), pn.param.ParamMethod(self.pairs),
                         sizing_mode="stretch_width")
