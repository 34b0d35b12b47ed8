"""Network relation view (paper §5.3.3, Figures 3–4): how the two models' neurons and weights relate.

One canvas per class and layer range. Each layer's neuron similarity matrix sits on the diagonal, its
rows one model's neurons and its columns the other's, the two swapping from layer to layer (the
zig-zag of Figure 4 A), so each model's weights between two consecutive layers fill a corner between
their matrices. Rows and columns are grouped into important neurons (rank order, one cell each) and a
fixed-size strip summarising the non-important ones (Figure 4 B/C): cells for important × important,
histograms and boxplots (with pies of the inherited share) for the rest.

The modules: :mod:`.layout` lays the figure out as tables in one coordinate system (:mod:`.geometry`)
and says what a click hits, with the weight blocks between layers in :mod:`.weights`; :mod:`.figure`
draws those tables as one bokeh canvas, :mod:`.detail` is the clicked neuron's panel and :mod:`.link`
the clicked weight's (its kernel in both models); `ui.tabs.network` puts them together with the app's
state.
"""

from .detail import neuron_detail, parse_neuron_id, patch_row
from .figure import (
    LEGEND,
    MAX_PX,
    SIMILARITY_SCALES,
    WEIGHT_PALETTE,
    describe_hit,
    similarity_mapper,
    zigzag_figure,
)
from .geometry import DOMAINS, MODEL_COLOR, OTHER
from .layout import ZigZag, zigzag_data
from .link import kernel_figure, kernel_row, weight_detail
from .weights import WEIGHT_ENCODINGS

__all__ = ["DOMAINS", "LEGEND", "MAX_PX", "MODEL_COLOR", "OTHER", "SIMILARITY_SCALES", "WEIGHT_ENCODINGS",
           "WEIGHT_PALETTE", "ZigZag", "describe_hit", "kernel_figure", "kernel_row", "neuron_detail",
           "parse_neuron_id", "patch_row", "similarity_mapper", "weight_detail", "zigzag_data", "zigzag_figure"]
