"""The Network tab (paper §5.3.3, Figures 3–4): the zig-zag figure of one class over a layer range,
a clicked neuron's detail, and the inheritance line and CKA heatmap by depth.

Linked both ways with the state: the class select ↔ ``classes`` (a multi-class selection made
elsewhere is not narrowed: the figure shows its first class with similarity data), the layer slider ↔
``layer_from``/``layer_to``, the checkboxes ↔ the two hide flags; a click on a neuron index sets
``neuron``, which the detail follows. Two switches are the tab's own parameters: what the weight
blocks show (``weight_encoding``: the weight values, or the activated levels) and the similarity
scale (``similarity_scale``: the paper's fixed [0, 1], or the shown range). A click on a weight cell
shows its description and kernel in both models. Panes are named ``network``, ``neuron-detail``,
``weight-detail`` (a column), ``layer-stability`` (the important sets' stability and silent neurons
per shown layer), ``inheritance`` and ``cka``.
"""

from __future__ import annotations

import functools

import pandas as pd
import panel as pn
import param
from bokeh.events import Tap

from ui.views import network as nv
from ui.views.stability import layer_stability_md
from ui.views.summary import cka_heatmap, inheritance_line
from ui.views.text import escape_html, escape_md, rests_on

from .base import Tab, part

__all__ = ["NetworkTab"]

WEIGHT_PROMPT = "Click a weight or similarity cell for its value."


def _tables(bundle) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The important-neuron and important-weight tables, read once per pair."""
    return pd.DataFrame(bundle.important_neurons()), pd.DataFrame(bundle.weights())


class NetworkTab(Tab):
    title = "Network"

    weight_encoding = param.Selector(default=nv.WEIGHT_ENCODINGS[0], objects=list(nv.WEIGHT_ENCODINGS),
                                     doc="what the weight blocks show (paper §5.3.3: the weight values)")
    similarity_scale = param.Selector(default=nv.SIMILARITY_SCALES[0], objects=list(nv.SIMILARITY_SCALES),
                                      doc="similarity greys over the paper's fixed [0, 1] or the shown range")

    def __init__(self, **params):
        super().__init__(**params)
        self._tables = functools.lru_cache(maxsize=1)(_tables)
        self._select = pn.widgets.Select(label="Class", width=150)
        self._select.param.watch(self._picked, "value")
        self._slider = pn.widgets.IntRangeSlider(label="Layers", start=0, end=1, step=1, width=260)
        self._slider.param.watch(self._slid, "value")
        self._clicked = pn.Column(pn.pane.Markdown(WEIGHT_PROMPT), name="weight-detail")
        self._new_pair()

    # --- the class and the layer range, two-way with the state ----------------------------------------

    def shown_class(self) -> str:
        """The class drawn: the first selected one with similarity data, else the first selected."""
        selected, compared = self.state.selected_classes, self.state.bundle.compared_classes
        return next((c for c in selected if c in compared), selected[0])

    def _span(self) -> tuple[int, int]:
        top = max(len(self.state.bundle.layers) - 1, 0)
        return tuple(sorted((min(self.state.layer_from, top), min(self.state.layer_to, top))))

    @param.depends("state.bundle", watch=True)
    def _new_pair(self):
        b = self.state.bundle
        if b is None:
            return
        n = len(b.layers)
        # only classes with class-level records (label spaces that differ: the shared ones, maybe none)
        options = b.label_spaces()["shared"]
        shown = self.shown_class()
        self._select.param.update(options=options, value=shown if shown in options else None,
                                  disabled=not options)
        self._slider.param.update(end=max(n - 1, 1), value=self._span(), visible=n >= 2)
        self._clicked.objects = [pn.pane.Markdown(WEIGHT_PROMPT)]

    @param.depends("state.classes", watch=True)
    def _follow_classes(self):
        if self.state.bundle is not None and self.shown_class() in self._select.options:
            self._select.value = self.shown_class()

    @param.depends("state.layer_from", "state.layer_to", watch=True)
    def _follow_layers(self):
        if self.state.bundle is not None:
            self._slider.value = self._span()

    def _picked(self, event):
        if self.state.bundle is not None and event.new is not None and event.new != self.shown_class():
            self.state.select_class(event.new)

    def _slid(self, event):
        self.state.param.update(layer_from=event.new[0], layer_to=event.new[1])

    # --- the parts ------------------------------------------------------------------------------------

    @part("state.bundle", "state.layer_from", "state.layer_to", what="layer names")
    def layer_names(self):
        b = self.state.bundle
        if len(b.layers) < 2:
            return pn.Spacer(width=0)
        lo, hi = self._span()
        return pn.pane.Markdown(f"{escape_md(b.layers[lo])} → {escape_md(b.layers[hi])}", margin=(22, 5, 0, 5))

    @part("state.bundle", "state.classes", "state.layer_from", "state.layer_to",
          "state.hide_non_important", "state.hide_source_weights", "weight_encoding", "similarity_scale",
          what="network figure")
    def figure(self):
        s = self.state
        data = nv.zigzag_data(s.bundle, self.shown_class(), s.layer_from, s.layer_to,
                              hide_non_important=s.hide_non_important, hide_source_weights=s.hide_source_weights,
                              tables=self._tables(s.bundle), weight_encoding=self.weight_encoding)
        if data.message:
            return pn.pane.Markdown(escape_md(data.message), name="network")
        fig = nv.zigzag_figure(data, similarity_scale=self.similarity_scale)
        fig.on_event(Tap, functools.partial(self._tapped, data))
        notes = [pn.pane.Markdown("\n".join(f"- {escape_md(note)}" for note in data.notes), name="network-notes")
                 ] if data.notes else []
        return pn.Column(pn.pane.Bokeh(fig, name="network", css_classes=["network-figure"]), *notes)

    def _tapped(self, data, event):
        hit = data.hit(event.x, event.y) if event.x is not None and event.y is not None else None
        if hit is None:
            return
        if hit["kind"] == "neuron":
            self.state.neuron = hit["id"]
        elif hit["kind"] == "weight":
            self._clicked.objects = nv.weight_detail(self.state.bundle, hit)
        else:
            self._clicked.objects = [pn.pane.Markdown(nv.describe_hit(hit))]

    @part("state.bundle", "state.classes", what="instance count")
    def rests(self):
        b, cls = self.state.bundle, self.shown_class()
        n = int(b.analysed_counts()[b.classes.index(cls), 1].sum())
        return pn.pane.HTML(escape_html(rests_on(f"Class {cls}, analysed target-domain instances", n, per=None)),
                            name="rests-on", styles={"font-size": "0.85em", "color": "#555"})

    @part("state.bundle", "state.classes", "state.layer_from", "state.layer_to", what="layer stability")
    def stability(self):
        lo, hi = self._span()
        return pn.pane.Markdown(layer_stability_md(self.state.bundle, self.shown_class(),
                                                   self.state.bundle.layers[lo:hi + 1]), name="layer-stability")

    @part("state.bundle", "state.neuron", "state.classes", what="neuron detail")
    def detail(self):
        return nv.neuron_detail(self.state.bundle, self.shown_class(), self.state.neuron,
                                on_select=functools.partial(setattr, self.state, "neuron"),
                                important=self._tables(self.state.bundle)[0])

    @part("state.bundle", "state.classes", what="inheritance line")
    def inheritance(self):
        return pn.pane.HoloViews(inheritance_line(self.state.bundle, self.shown_class()), name="inheritance",
                                 sizing_mode="stretch_width", min_height=280)

    @part("state.bundle", what="CKA heatmap")
    def cka(self):
        return pn.pane.HoloViews(cka_heatmap(self.state.bundle), name="cka", sizing_mode="stretch_width")

    def layout(self):
        s = self.state.param
        controls = pn.Row(self._select, self._slider, self.lazy(self.layer_names),
                          pn.widgets.Checkbox.from_param(s.hide_non_important, label="Hide non-important regions",
                                                         margin=(24, 10, 0, 10)),
                          pn.widgets.Checkbox.from_param(s.hide_source_weights, label="Hide source weights",
                                                         margin=(24, 10, 0, 10)),
                          pn.widgets.RadioButtonGroup.from_param(self.param.weight_encoding, name="weight-encoding",
                                                                 margin=(20, 5, 0, 5)),
                          pn.widgets.RadioButtonGroup.from_param(self.param.similarity_scale, name="similarity-scale",
                                                                 margin=(20, 5, 0, 5)))
        legend = pn.pane.Markdown(nv.LEGEND, styles={"font-size": "0.85em"}, margin=(0, 10))
        # the neuron detail, or the two by-depth summaries side by side: drawn only when shown
        side = pn.Tabs(("Neuron", self.lazy(self.detail)),
                       ("Inheritance and CKA by depth", pn.Column(self.lazy(self.inheritance), self.lazy(self.cka))),
                       dynamic=True)
        return pn.Column(controls, self.lazy(self.rests),
                         pn.Row(pn.Column(self.lazy(self.figure), self._clicked, self.lazy(self.stability)),
                                pn.Column(legend, side, width=440)),
                         name="network-tab", sizing_mode="stretch_width")
