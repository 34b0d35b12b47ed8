"""The served app: ``panel serve ui/app.py`` or ``mlflow-transfer ui`` (127.0.0.1 by default).

`build_app` wires `AppState` to the views; the module-level code at the bottom runs when Panel serves
this file, reading ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import json

import holoviews as hv
import panel as pn

from ui.projection import reprojected
from ui.readers import PairSource, default_source
from ui.state import TAB_COUNT, URL_PARAMS, AppState
from ui.views import instances as instance_view
from ui.views import overview
from ui.views.features import features_tab
from ui.views.guard import error_pane, guarded
from ui.views.network import network_tab
from ui.views.pairs import HOW_TO_DIAGNOSE, pairs_table
from ui.views.text import escape_html, md_code

pn.extension("tabulator", notifications=False, loading_indicator=True)


def _banner(state: AppState):
    if state.error:  # error texts quote what arrived (a URL parameter, a tag): escaped by error_pane
        return error_pane(state.error, name="error")
    return None


def _pair_browser(state: AppState):
    names = {e["name"]: e["experiment_id"] for e in state.experiments}
    select = pn.widgets.Select(name="Experiment", options=names, value=state.experiment or None, width=280)
    select.link(state, value="experiment")
    if not state.pairs:
        body = pn.pane.Markdown(HOW_TO_DIAGNOSE if state.experiment else "No experiment on this server.",
                                name="empty-pairs")
    else:
        body = pairs_table(state.pairs, state.pair)

        def pick(event):
            if event.new:
                state.pair = state.pairs[event.new[0]]["diagnostics_run_id"]

        body.param.watch(pick, "selection")
        listed = state.pairs

        def highlight(event):  # a pair chosen elsewhere (a link, the state) is highlighted here too
            rows = [i for i, p in enumerate(listed) if p["diagnostics_run_id"] == event.new]
            if body.selection != rows:
                body.selection = rows

        state.watch_while(lambda: state.pairs is listed, highlight, "pair")  # until the table is replaced
    return pn.Column(pn.pane.Markdown(f"**Tracking server** {md_code(state.source.uri)}"), select, body,
                     sizing_mode="stretch_width")


def _statistics(state: AppState):
    b = state.bundle
    table = overview.confusion_table(b.confusion())

    def pick(event):
        if event.new:
            state.select_class(str(table.value["class"].iloc[event.new[0]]))

    table.param.watch(pick, "selection")
    score = b.manifest.get("scores", {}).get("transferability_score")
    side = sum(overview.CONFUSION_WIDTHS.values()) + 10
    return pn.Row(pn.pane.HoloViews(overview.accuracy_curves(b.history()), sizing_mode="stretch_width",
                                    min_height=340, name="accuracy"),
                  pn.Column(overview.transferability_badge(score), table, width=side),
                  sizing_mode="stretch_width")


def _instances(state: AppState):
    b = state.bundle
    inst = b.instances()  # read once per pair; a class change only redraws the scatter
    # two-way: a class picked elsewhere (the confusion table) shows up here too
    # Choices.js (Bokeh's MultiChoice) writes option labels as HTML: the labels are escaped class names
    choose = pn.widgets.MultiChoice.from_param(state.param.classes, options={escape_html(c): c for c in b.classes},
                                               name="Classes", width=360)

    again = pn.widgets.Checkbox.from_param(state.param.reproject, label="Re-project the selected classes (t-SNE)",
                                           margin=(28, 10, 0, 10))

    def scatter(classes, reproject):
        xy, note = None, ""
        if reproject and classes and len(classes) < len(b.classes):
            xy = reprojected(b, classes, instances=inst)[1]  # seconds the first time, then cached
            note = "re-projected: t-SNE of the selected classes alone"
        frame = instance_view.instance_frame(inst, b.classes, classes, xy=xy)
        plot = instance_view.instance_scatter(frame, b.classes, inst)
        if note:
            plot = plot.opts(title=f"Instances ({note})")
        return pn.Column(pn.pane.HoloViews(plot, sizing_mode="stretch_width", min_height=440, name="instances"),
                         pn.pane.HTML(instance_view.class_legend(b.classes, classes)), sizing_mode="stretch_width")

    view = pn.panel(pn.bind(guarded(scatter, "instance scatter"), state.param.classes, state.param.reproject),
                    loading_indicator=True)
    return pn.Column(pn.Row(choose, again), view, sizing_mode="stretch_width")


TABS = (("Statistics", _statistics), ("Instances", _instances), ("Network", network_tab),
        ("Features", features_tab))
assert len(TABS) == TAB_COUNT  # the state clamps ?tab= to this many


def _query(state: AppState) -> dict[str, str]:
    """The URL parameters of ``state``, serialised the way `Location.sync` does (JSON for lists)."""
    out = {}
    for p in URL_PARAMS:
        value = state.param[p].serialize(getattr(state, p))
        out[p] = value if isinstance(value, str) else json.dumps(value)
    return out


def build_app(source: PairSource, *, sync_url: bool = True, **state_params) -> pn.viewable.Viewable:
    """The whole app over ``source``; with ``sync_url`` the state round-trips through the URL."""
    state = AppState(source, **state_params)
    if sync_url and pn.state.location is not None:
        pn.state.location.sync(state, {p: p for p in URL_PARAMS})
        # The browser reports its own (possibly empty) query when it connects, after the state opened a
        # pair by default; whenever the URL lacks one of the state's parameters, write them all back, so
        # the address bar is always a link to what is on screen.
        def complete_url(*_):
            location = pn.state.location
            if set(URL_PARAMS) - set(location.query_params):
                location.update_query(**_query(state))

        pn.state.location.param.watch(complete_url, "search")
        pn.state.onload(complete_url)

    # Not on `pair`: a pair picked in the table is already highlighted there, and rebuilding the table
    # on every switch would cost the switch a table redraw.
    @pn.depends(state.param.error, state.param.experiments, state.param.pairs)
    def header(*_):
        return pn.Column(_banner(state), _pair_browser(state), sizing_mode="stretch_width")

    @pn.depends(state.param.bundle, state.param.loading)
    def views(*_):
        if state.loading:
            return pn.indicators.LoadingSpinner(value=True, size=40, name="loading")
        if state.bundle is None:
            return pn.pane.Markdown("" if state.error else "Select a diagnosed pair above.")
        # Built anew for each pair, on the tab that was open: switching pairs keeps the user's view.
        # Each tab is built when first shown (lazy), so a switch pays only for the open one. A tab that
        # fails (an unreadable bundle file) shows an error pane; the others still work.
        tabs = pn.Tabs(*[(title, pn.param.ParamFunction(pn.bind(guarded(build, title, state.with_fix), state),
                                                         lazy=True, sizing_mode="stretch_width"))
                         for title, build in TABS], dynamic=True, active=min(max(state.tab, 0), len(TABS) - 1),
                       sizing_mode="stretch_width")
        tabs.param.watch(lambda e: setattr(state, "tab", e.new), "active")
        return tabs

    app = pn.Column(pn.pane.Markdown("# mlflow-transfer — what knowledge moved"), header, views,
                    sizing_mode="stretch_width")
    app.state = state  # for tests and embedding
    return app


if pn.state.served:  # `panel serve ui/app.py`
    hv.extension("bokeh", logo=False)
    build_app(default_source()).servable(title="mlflow-transfer")
