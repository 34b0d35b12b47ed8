"""The served app: ``panel serve ui/app.py`` or ``mlflow-transfer ui`` (127.0.0.1 by default).

`build_app` only assembles: one `AppState` per session, the pair browser above, and one `ui.tabs`
Viewer per tab over that state. Adding a tab is one module in `ui/tabs/` and one entry in `TABS`. The
module-level code at the bottom runs when Panel serves this file, reading ``MLFLOW_TRACKING_URI``
(default ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import json

import holoviews as hv
import panel as pn

from ui.pair_browser import PairBrowser
from ui.readers import PairSource, default_source
from ui.state import URL_PARAMS, AppState
from ui.tabs.compare import CompareTab
from ui.tabs.features import FeaturesTab
from ui.tabs.instances import InstancesTab
from ui.tabs.network import NetworkTab
from ui.tabs.robustness import RobustnessTab
from ui.tabs.statistics import StatisticsTab
from ui.tabs.training import TrainingTab

# No spinner by default: each one shown and hidden costs the browser a layout of the page, and a pair
# loads within one server callback, whose changes reach the browser together anyway.
pn.extension("tabulator", notifications=False, loading_indicator=False)

# in this order; ?tab= is the position (a new tab goes last, so old links open what they opened)
TABS = (StatisticsTab, InstancesTab, NetworkTab, FeaturesTab, RobustnessTab, TrainingTab, CompareTab)


def _query(state: AppState) -> dict[str, str]:
    """The URL parameters of ``state``, serialised the way `Location.sync` does (JSON for lists)."""
    out = {}
    for p in URL_PARAMS:
        value = state.param[p].serialize(getattr(state, p))
        out[p] = value if isinstance(value, str) else json.dumps(value)
    return out


def _placeholder(bundle, error: str) -> str:
    return "" if bundle is not None or error else "Select a diagnosed pair above."


def _chosen(experiment: str, experiments: list[dict]) -> bool:
    """Whether an experiment of the server is chosen: the tabs show from then on (the Compare tab needs no
    pair; the pair tabs say "Select a diagnosed pair above." until one is open)."""
    return bool(experiment) and experiment in [e["experiment_id"] for e in experiments]


def build_app(source: PairSource, *, sync_url: bool = True, **state_params) -> pn.viewable.Viewable:
    """The whole app over ``source``; with ``sync_url`` the state round-trips through the URL."""
    if sync_url and pn.state.location is not None:
        # what the link opens, before the state lists anything: its experiment, not the default one first, and
        # a pairless tab's link opens no bundle on the way (the values are coerced by the state, as the sync's)
        query = pn.state.location.query_params
        state_params.update({p: query[p] for p in ("experiment", "pair", "tab") if p in query and p not in state_params})
    state = AppState(source, tab_count=len(TABS), tab_titles=tuple(t.title for t in TABS),
                     pairless_tabs=tuple(i for i, t in enumerate(TABS) if not t.needs_bundle), **state_params)
    if sync_url and pn.state.location is not None:
        pn.state.location.sync(state, {p: p for p in URL_PARAMS})
        # The browser reports its own (possibly empty) query when it connects, after the state opened a
        # pair by default; whenever the URL lacks one of the state's parameters, write them all back, so
        # the address bar is always a link to what is on screen.
        def complete_url(*_):
            location = pn.state.location
            if location is None:  # the session is being destroyed (its unsync clears the query)
                return
            if set(URL_PARAMS) - set(location.query_params):
                location.update_query(**_query(state))

        pn.state.location.param.watch(complete_url, "search")
        pn.state.onload(complete_url)

    # Switching pairs keeps the open tab. Only the open tab is in the browser (dynamic): Bokeh lays
    # out every model it holds on each change, hidden ones included.
    tabs = pn.Tabs(*[(tab.title, tab(state=state, index=i)) for i, tab in enumerate(TABS)], dynamic=True,
                   active=state.tab, sizing_mode="stretch_width")
    tabs.link(state, active="tab", bidirectional=True)
    chosen = pn.bind(_chosen, state.param.experiment, state.param.experiments)
    placeholder = pn.pane.Markdown(pn.bind(_placeholder, state.param.bundle, state.param.error),
                                   visible=pn.bind(lambda c: not c, chosen))
    views = pn.Column(placeholder, pn.Column(tabs, visible=chosen, sizing_mode="stretch_width"),
                      sizing_mode="stretch_width")
    app = pn.Column(pn.pane.Markdown("# mlflow-transfer — what knowledge moved"), PairBrowser(state=state), views,
                    sizing_mode="stretch_width")
    app.state = state  # for tests and embedding
    return app


if pn.state.served:  # `panel serve ui/app.py`
    hv.extension("bokeh", logo=False)
    build_app(default_source()).servable(title="mlflow-transfer")
