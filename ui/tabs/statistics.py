"""The Statistics tab (paper §5.1, Figure 1 A): accuracy curves, transferability score, confusion table of
the target validation set (or, switched, the source validation set) with the instances it rests on;
clicking a row of the table selects its class in every view. Above them, the pair's findings (issue 16):
each one's button opens the tab and state that show it."""

from __future__ import annotations

import panel as pn
import param

from ui.state import URL_PARAMS
from ui.views import overview
from ui.views.findings import findings_panel
from ui.views.text import escape_html, rests_on

from .base import Tab, part

__all__ = ["DOMAINS", "StatisticsTab"]

DOMAINS = {"target validation set": "target", "source validation set": "source"}
_NOT_FROM_FINDINGS = ("experiment", "pair", "tab")  # a finding opens a view of its own pair


class StatisticsTab(Tab):
    """Named panes: ``findings`` (the list, or the note for none / an older bundle), ``accuracy``, ``transferability``, ``transferability-estimates`` (empty without LogME /
    LEEP), ``label-spaces`` (empty unless the models' classes
    differ), ``rests-on``, ``confusion`` (or ``confusion-missing``)."""

    title = "Statistics"

    domain = param.Selector(default="target", objects=list(DOMAINS.values()),
                            doc="whose validation set the confusion table shows")

    def __init__(self, **params):
        super().__init__(**params)
        self._switch = pn.widgets.RadioButtonGroup(options=DOMAINS, value=self.domain)
        self._switch.param.watch(lambda e: setattr(self, "domain", e.new), "value")

    @part("state.bundle", what="findings")
    def findings(self):
        return findings_panel(self.state.bundle.findings(), self.open_finding,
                              known=lambda tab: self.state.tab_index(tab) is not None)

    def open_finding(self, finding: dict) -> None:
        """Open the tab ``finding`` names with its state: its URL parameters set (through the state's
        coercion: classes narrowed to the bundle's, layers clamped), never the experiment or the pair."""
        s = self.state
        params = {k: v for k, v in finding["state"].items() if k in URL_PARAMS and k not in _NOT_FROM_FINDINGS}
        tab = s.tab_index(finding["tab"])
        s.param.update(**params, **({"tab": tab} if tab is not None else {}))

    @part("state.bundle", what="statistics")
    def view(self):
        b = self.state.bundle
        return pn.pane.Bokeh(overview.accuracy_curves(b.history(), fresh_head=b.label_spaces()["differ"]),
                             sizing_mode="stretch_width", min_height=340, name="accuracy")

    @part("state.bundle", what="label spaces")
    def label_spaces(self):
        b = self.state.bundle
        return pn.pane.HTML(overview.label_spaces_html(b.label_spaces(), b.transferability_basis()),
                            name="label-spaces")

    @part("state.bundle", what="transferability score")
    def badge(self):
        return overview.transferability_badge(*self.state.bundle.transferability())

    @part("state.bundle", what="transferability estimates")
    def estimates(self):
        return pn.pane.HTML(overview.estimates_html(self.state.bundle.transferability_estimates()),
                            name="transferability-estimates")

    @part("state.bundle", "domain", what="confusion table")
    def table(self):
        b = self.state.bundle
        confusion = b.domain_confusion(self.domain)
        if confusion is None:
            return pn.pane.Markdown(f"This bundle has no confusion table of the {self.domain} validation set "
                                    "(it was diagnosed before they were recorded); diagnose the pair again "
                                    "for one.", name="confusion-missing")
        basis = b.statistics_basis()["basis"]
        what = (f"Whole {self.domain} validation set" if basis == "whole validation set"
                else f"Analysed sample's {self.domain} validation rows")
        caption = pn.pane.HTML(escape_html(rests_on(what, confusion["support"]) + " (support column)"),
                               name="rests-on", styles={"font-size": "0.85em", "color": "#555"})
        table = overview.confusion_table(confusion)
        table.param.watch(self._pick, "selection")  # the table is this pair's: the watcher goes with it
        return pn.Column(caption, table)

    def _pick(self, event):
        if event.new:
            table = event.obj
            self.state.select_class(str(table.value["class"].iloc[event.new[0]]))

    def layout(self):
        side = sum(overview.CONFUSION_WIDTHS.values()) + 10
        return pn.Column(
            self.lazy(self.findings, sizing_mode="stretch_width"),
            pn.Row(self.lazy(self.view, sizing_mode="stretch_width"),
                   pn.Column(self.lazy(self.badge), self.lazy(self.estimates), self.lazy(self.label_spaces), self._switch,
                             self.lazy(self.table), width=side),
                   sizing_mode="stretch_width"), sizing_mode="stretch_width")
