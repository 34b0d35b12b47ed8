"""The Features tab (paper §5.4.2, Figure 1 D): a class (two-way with the state's selection), the sort
order, the projection (over the activated neurons or all), the domain classifier's CV accuracy, the
discriminability plot and the ranking list, where ticking a row activates its neuron: it enters the
plot's projection and gets an axis."""

from __future__ import annotations

import functools

import numpy as np
import panel as pn
import param

from ui.views import features as fv
from ui.views.stability import feature_stability_md
from ui.views.text import escape_md, rests_on

from .base import Tab, part

__all__ = ["FeaturesTab", "shown_class"]


def shown_class(classes: list[str]) -> str:
    """The class the tab shows for a selection: the single selected class, else all classes (``ALL``)."""
    return classes[0] if len(classes) == 1 else fv.ALL


class FeaturesTab(Tab):
    """Named panes: ``cv-accuracy``, ``discriminability``, ``feature-ranking``, ``features-empty``,
    ``feature-stability`` (the important sets' stability per layer: how far the ranked neurons hold)."""

    title = "Features"

    shown = param.String(default=fv.ALL, doc="class shown (ALL: all classes)")
    order = param.Selector(default=fv.ORDERS[0], objects=list(fv.ORDERS))
    projection = param.Selector(default=fv.PROJECTIONS[0], objects=list(fv.PROJECTIONS),
                                doc="A·W over the activated neurons (paper §5.4.2) or over all of them")
    checked = param.List(default=[], item_type=str, doc="ticked 'layer:index' labels of the shown class, sorted")
    page_size = param.Integer(default=fv.PAGE_SIZE, bounds=(1, None), constant=True)

    def __init__(self, **params):
        super().__init__(**params)
        # a class's record and list are read once while its pair is open: the plot is redrawn on every
        # tick and order
        self._record = functools.lru_cache(maxsize=64)(fv.read_discriminability)
        self._frame = functools.lru_cache(maxsize=64)(self._frame_of)
        self._select = pn.widgets.Select(label="Class", width=200)
        self._select.param.watch(lambda e: self.show(e.new), "value")
        self._order = pn.widgets.RadioButtonGroup.from_param(self.param.order)
        self._projection = pn.widgets.RadioButtonGroup.from_param(self.param.projection, name="projection")
        self._new_pair()

    def show(self, cls: str) -> None:
        """Show class ``cls`` (``ALL``: all classes); its ticks start empty."""
        if cls != self.shown:
            self.param.update(shown=cls, checked=[])  # one update: each part redraws once

    @param.depends("state.bundle", watch=True)
    def _new_pair(self):
        b = self.state.bundle
        self._record.cache_clear()  # the previous pair's records are not kept alive
        self._frame.cache_clear()
        # only classes with class-level records (label spaces that differ: the shared ones)
        self._select.options = {"all classes": fv.ALL,
                                **{c: c for c in (b.label_spaces()["shared"] if b is not None else [])}}
        self.param.update(shown=shown_class(self.state.classes), checked=[])
        self._select.value = self.shown

    @param.depends("state.classes", watch=True)
    def _follow_state(self):
        self.show(shown_class(self.state.classes))

    @param.depends("shown", watch=True)
    def _tell_state(self):
        self._select.value = self.shown
        if self.shown != shown_class(self.state.classes):  # picked here, not followed: the other views follow
            self.state.classes = [] if self.shown == fv.ALL else [self.shown]

    def _frame_of(self, bundle, cls):
        return fv.feature_frame(bundle, cls, record=self._record(bundle, cls))

    @part("state.bundle", "shown", what="feature summary")
    def summary(self):
        record = self._record(self.state.bundle, self.shown)
        if record is None:
            return pn.pane.Markdown(fv.missing_message(self.state.bundle, self.shown), name="features-empty")
        rows = np.bincount(np.asarray(record["labels"], np.int64), minlength=2)[:2]  # 0 source, 1 target
        caption = escape_md(rests_on("Domain classifier's analysed instances", rows, per="domain"))
        return pn.pane.Markdown(f"{fv.cv_details(record)}\n\n{caption}", name="cv-accuracy")

    @part("state.bundle", "shown", what="feature stability")
    def stability(self):
        return pn.pane.Markdown(feature_stability_md(self.state.bundle, self.shown), name="feature-stability")

    @part("state.bundle", "shown", "checked", "order", "projection", what="discriminability plot")
    def plot(self):
        b = self.state.bundle
        record = self._record(b, self.shown)
        if record is None:
            return pn.Spacer(height=0)
        return pn.pane.Bokeh(fv.discriminability_plot(b, self.shown, self.checked, order=self.order, record=record,
                                                     projection=self.projection),
                             name="discriminability", sizing_mode="stretch_width", min_height=440)

    @part("state.bundle", "shown", "order", what="feature ranking")
    def ranking(self):
        b = self.state.bundle
        record = self._record(b, self.shown)
        if record is None:
            return pn.Spacer(height=0)
        table = fv.feature_table(self._frame(b, self.shown), self.order, record=record, page_size=self.page_size)
        # a new order keeps the ticks on the same neurons, whose rows moved
        table.selection = [i for i, label in enumerate(table.value["label"]) if label in self.checked]
        table.param.watch(self._ticked, "selection")  # the table is this class's: the watcher goes with it
        return table

    def _ticked(self, event):
        self.checked = sorted(event.obj.value["label"].iloc[event.new])

    def layout(self):
        hint = pn.pane.Markdown(f"The first {fv.TOP_AXES} neurons in this order are activated (projected and drawn "
                                "as axes); tick more in the list. Positive discriminability pushes towards the "
                                "target domain.")
        return pn.Column(pn.Row(self._select, self._order, self._projection, hint), self.lazy(self.summary),
                         self.lazy(self.stability),
                         self.lazy(self.plot, sizing_mode="stretch_width"),
                         self.lazy(self.ranking, sizing_mode="stretch_width"), sizing_mode="stretch_width")
