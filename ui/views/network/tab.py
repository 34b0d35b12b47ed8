"""The network relation tab: its controls, the zig-zag figure, the neuron detail and the two by-depth
summaries (inheritance line, CKA heatmap), linked with the app's state."""

from __future__ import annotations

import pandas as pd
import panel as pn
from bokeh.events import Tap

from ..guard import guarded
from ..summary import cka_heatmap, inheritance_line
from ..text import escape_md
from .detail import neuron_detail
from .figure import LEGEND, describe_hit, zigzag_figure
from .layout import zigzag_data

__all__ = ["network_tab"]


def network_tab(state) -> pn.viewable.Viewable:
    """The network relation view over ``state`` (an ``AppState``): controls, the zig-zag figure, the
    neuron detail, the inheritance line and the CKA heatmap.

    Two-way links: the class select ↔ ``state.classes`` (``select_class``), the layer slider ↔
    ``state.layer_from``/``layer_to``, the checkboxes ↔ the two hide flags; a click on a neuron index
    sets ``state.neuron``, which the detail panel follows. Panes are named ``network``,
    ``neuron-detail``, ``weight-detail``, ``inheritance`` and ``cka``.
    """
    b = state.bundle
    if b is None:
        return pn.pane.Markdown("Select a diagnosed pair above.", name="network")
    available = b.compared_classes  # those with neuron similarity matrices
    tables = (pd.DataFrame(b.important_neurons()), pd.DataFrame(b.weights()))  # read once per pair
    n = len(b.layers)

    def current() -> str:
        """The shown class: the first selected one with similarity data, else the first selected."""
        selected = state.selected_classes or b.classes
        return next((c for c in selected if c in available), selected[0])

    select = pn.widgets.Select(label="Class", options=b.classes, value=current(), width=150)
    syncing = []  # a select change made to follow the state must not narrow a multi-class selection

    def follow_state(_event):
        syncing.append(True)
        try:
            select.value = current()
        finally:
            syncing.pop()

    def open_here() -> bool:  # the state outlives this tab, which is rebuilt for another pair
        return state.bundle is b

    select.param.watch(lambda e: None if syncing else state.select_class(e.new), "value")
    state.watch_while(open_here, follow_state, "classes")

    def span() -> tuple[int, int]:
        lo, hi = sorted((min(state.layer_from, n - 1), min(state.layer_to, n - 1)))
        return lo, hi

    controls = [select]
    if n >= 2:
        slider = pn.widgets.IntRangeSlider(label="Layers", start=0, end=n - 1, step=1, value=span(), width=260)
        slider.param.watch(lambda e: state.param.update(layer_from=e.new[0], layer_to=e.new[1]), "value")
        state.watch_while(open_here, lambda *_e: setattr(slider, "value", span()), "layer_from", "layer_to")
        controls += [slider, pn.bind(lambda v: pn.pane.Markdown(f"{escape_md(b.layers[v[0]])} → {escape_md(b.layers[v[1]])}",
                                                                 margin=(22, 5, 0, 5)), slider)]
    controls += [pn.widgets.Checkbox.from_param(state.param.hide_non_important, label="Hide non-important regions",
                                                margin=(24, 10, 0, 10)),
                 pn.widgets.Checkbox.from_param(state.param.hide_source_weights, label="Hide source weights",
                                                margin=(24, 10, 0, 10))]
    clicked = pn.pane.Markdown("Click a weight or similarity cell for its value.", name="weight-detail")
    legend = pn.pane.Markdown(LEGEND, styles={"font-size": "0.85em"}, margin=(0, 10))

    def figure(classes, layer_from, layer_to, hide_non_important, hide_source_weights):
        data = zigzag_data(b, current(), layer_from, layer_to, hide_non_important=hide_non_important,
                           hide_source_weights=hide_source_weights, tables=tables)
        if data.message:
            return pn.pane.Markdown(escape_md(data.message), name="network")
        fig = zigzag_figure(data)

        def on_tap(event):
            hit = data.hit(event.x, event.y) if event.x is not None and event.y is not None else None
            if hit is None:
                return
            if hit["kind"] == "neuron":
                state.neuron = hit["id"]
            else:
                clicked.object = describe_hit(hit)

        fig.on_event(Tap, on_tap)
        notes = [pn.pane.Markdown("\n".join(f"- {escape_md(note)}" for note in data.notes), name="network-notes")
                 ] if data.notes else []
        return pn.Column(pn.pane.Bokeh(fig, name="network", css_classes=["network-figure"]), *notes)

    def detail(neuron, classes):
        return neuron_detail(b, current(), neuron, on_select=lambda nid: setattr(state, "neuron", nid),
                             important=tables[0])

    def inheritance(classes):
        return pn.pane.HoloViews(inheritance_line(b, current()), name="inheritance", sizing_mode="stretch_width",
                                 min_height=280)

    p = state.param
    return pn.Column(
        pn.Row(*controls),
        pn.Row(pn.Column(pn.bind(guarded(figure, "network figure"), p.classes, p.layer_from, p.layer_to,
                                 p.hide_non_important, p.hide_source_weights), clicked),
               # the neuron detail, or the two by-depth summaries side by side: plots drawn only when
               # shown, since each costs pair-switch time while this tab is open
               pn.Column(legend, pn.Tabs(("Neuron", pn.bind(guarded(detail, "neuron detail"), p.neuron, p.classes)),
                                         ("Inheritance and CKA by depth",
                                          pn.Column(pn.bind(guarded(inheritance, "inheritance line"), p.classes),
                                                    pn.pane.HoloViews(cka_heatmap(b), name="cka",
                                                                      sizing_mode="stretch_width"))),
                                         dynamic=True), width=440)),
        name="network-tab", sizing_mode="stretch_width")
