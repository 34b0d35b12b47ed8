"""The Statistics tab (paper §5.1, Figure 1 A): accuracy curves, transferability score, confusion table;
clicking a row of the table selects its class in every view."""

from __future__ import annotations

import panel as pn

from ui.views import overview

from .base import Tab, part

__all__ = ["StatisticsTab"]


class StatisticsTab(Tab):
    title = "Statistics"

    @part("state.bundle", what="statistics")
    def view(self):
        b = self.state.bundle
        table = overview.confusion_table(b.confusion())
        table.param.watch(self._pick, "selection")  # the table is this pair's: the watcher goes with it
        score = b.manifest.get("scores", {}).get("transferability_score")
        side = sum(overview.CONFUSION_WIDTHS.values()) + 10
        return pn.Row(pn.pane.Bokeh(overview.accuracy_curves(b.history()), sizing_mode="stretch_width",
                                    min_height=340, name="accuracy"),
                      pn.Column(overview.transferability_badge(score), table, width=side),
                      sizing_mode="stretch_width")

    def _pick(self, event):
        if event.new:
            table = event.obj
            self.state.select_class(str(table.value["class"].iloc[event.new[0]]))

    def layout(self):
        return self.lazy(self.view, sizing_mode="stretch_width")
