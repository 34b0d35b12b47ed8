"""The Instances tab (paper §5.2, Figure 1 B): the selected classes' instances of both domains in 2-D,
optionally re-projected (t-SNE of the selected classes alone)."""

from __future__ import annotations

import functools

import panel as pn
import param
from bokeh.model import Model

from mlflow_transfer.bundle import PairBundle
from ui.projection import reprojected
from ui.views import instances as iv
from ui.views.text import escape_html, rests_on

from .base import Tab, part

__all__ = ["InstancesTab"]


class InstancesTab(Tab):
    title = "Instances"

    def __init__(self, **params):
        super().__init__(**params)
        # read once per pair: a class change only redraws the scatter
        self._table = functools.lru_cache(maxsize=1)(PairBundle.instances)
        # two-way with the state: a class picked elsewhere (the confusion table) shows up here too
        self._choose = pn.widgets.MultiChoice.from_param(self.state.param.classes, label="Classes", width=360)
        self._again = pn.widgets.Checkbox.from_param(self.state.param.reproject,
                                                     label="Re-project the selected classes (t-SNE)",
                                                     margin=(28, 10, 0, 10))
        self._class_options()

    @param.depends("state.bundle", watch=True)
    def _class_options(self):
        classes = self.state.bundle.classes if self.state.bundle is not None else []
        # Choices.js (Bokeh's MultiChoice) writes option labels as HTML: the labels are escaped names
        self._choose.options = {escape_html(c): c for c in classes}

    @part("state.bundle", "state.classes", "state.reproject", what="instance scatter")
    def scatter(self):
        b, classes = self.state.bundle, self.state.classes
        inst = self._table(b)
        xy, title = None, "Instances (t-SNE)"
        if self.state.reproject and classes and len(classes) < len(b.classes):
            xy = reprojected(b, classes, instances=inst)[1]  # seconds the first time, then cached
            title = "Instances (re-projected: t-SNE of the selected classes alone)"
        frame = iv.instance_frame(inst, b.classes, classes, xy=xy)
        plot = iv.instance_scatter(frame, b.classes, inst, title=title)
        pane = pn.pane.Bokeh if isinstance(plot, Model) else pn.pane.HoloViews  # the raster is HoloViews'
        counts = b.analysed_counts()
        caption = escape_html(rests_on("Analysed sample", counts[counts > 0], per="class, domain and split"))
        return pn.Column(pn.pane.HTML(caption, name="rests-on", styles={"font-size": "0.85em", "color": "#555"}),
                         pane(plot, sizing_mode="stretch_width", min_height=440, name="instances"),
                         pn.pane.HTML(iv.class_legend(b.classes, classes)), sizing_mode="stretch_width")

    def layout(self):
        return pn.Column(pn.Row(self._choose, self._again), self.lazy(self.scatter, loading_indicator=True, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")
