"""One module per view of the paper's Figure 1; each view is a small function of `AppState`."""

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (the bokeh backend, so options apply outside a notebook)

hv.Store.set_current_backend("bokeh")
