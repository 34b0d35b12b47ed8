"""The zig-zag figure as tables: :func:`zigzag_data` lays one class's layers out (the similarity blocks
on the diagonal and the index labels here, the weight blocks in :mod:`.weights`) and :class:`ZigZag`
holds the result and says what lies under a click. Everything is read from the bundle; nothing is
recomputed, and nothing here draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mlflow_transfer.bundle import PairBundle

from .geometry import LABEL, OTHER, RECT, Draft, Grid, hist_bars, non_important, region_frame
from .weights import WEIGHT_ENCODINGS, weight_blocks

__all__ = ["ZigZag", "zigzag_data"]


@dataclass
class ZigZag:
    """The zig-zag figure of one class as tables in cell units (x right, y down).

    ``message`` non-empty means there is nothing to draw (say it instead); ``notes`` are remarks about
    what is drawn (e.g. missing weight matrices). Both are plain text quoting class and layer names
    (the figure's title shows the message): escape them to show them in Markdown. Every table has the
    rectangle columns x0, y0, x1, y1 unless said otherwise.

    Attributes:
        cells: similarity, important × important: layer, row_model, row_neuron, col_model, col_neuron,
            similarity (the bundle's value, rows × cols of the drawn orientation).
        sim_bars: similarity histogram bars: layer, region ("imp×non", "non×imp", "non×non"), lo, hi, count.
        weight_cells: weights, important × important: model, layer, next_layer, a (neuron of ``layer``),
            b (neuron of ``next_layer``), level, count, shade (level / block max, clipped to [0, 1]),
            important (one of the model's important weights), inherited (target: bool; source: None),
            edge (outline colour), value (the link's weight value, the signed sum of its parameters;
            NaN in a bundle without them), tone (value / the block's largest |value|, in [-1, 1]).
        dots: red dots (x, y centres) on ``weight_cells`` rows with ``inherited`` True.
        boxes: one per important neuron of a boxplot region: model, layer, next_layer, neuron, side
            ("prev"/"next": which layer the neuron is in), n (links), q1, median, q3, min, max,
            n_important, n_inherited, share (n_inherited / n_important; NaN when none is important),
            thickness (of the box: proportional to n_important, the most in the block drawn 0.8); the
            boxes summarise ``weight_encoding``'s quantity.
        box_lines: whiskers and medians as segments (x0, y0, x1, y1).
        pies: polygon dicts (x, y arrays + share, neuron, part) of the pie glyphs (target weights only).
        weight_bars: histogram bars of the non-important × non-important weights: model, layer, lo, hi, count.
        regions: every region's frame: kind ("similarity"/"weights"), model, layer, region, n, edge.
        indices: the neuron index glyphs: x, y (centre), model, layer, neuron, rank, axis ("row"/"col"), id.
        titles: layer names (x, y, text).
        edges: Figure 4 C's edge counts, per weight block, side and neuron group: a bracket (x0, y0, x1,
            y1) and its label's centre (x, y); model, layer, next_layer, axis ("row"/"col": the block's
            side), neurons_of (the layer of that side), group ("important"/"non-important"), n (the
            model's important weights meeting that group), label.
        weight_encoding: what the weight blocks show, one of ``WEIGHT_ENCODINGS``.
    """

    cls: str
    layers: list[str]
    message: str = ""
    notes: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)  # the row model of each layer, in order
    width: float = 0.0
    height: float = 0.0
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)
    sim_bars: pd.DataFrame = field(default_factory=pd.DataFrame)
    weight_cells: pd.DataFrame = field(default_factory=pd.DataFrame)
    dots: pd.DataFrame = field(default_factory=pd.DataFrame)
    boxes: pd.DataFrame = field(default_factory=pd.DataFrame)
    box_lines: pd.DataFrame = field(default_factory=pd.DataFrame)
    pies: list = field(default_factory=list)
    weight_bars: pd.DataFrame = field(default_factory=pd.DataFrame)
    regions: pd.DataFrame = field(default_factory=pd.DataFrame)
    indices: pd.DataFrame = field(default_factory=pd.DataFrame)
    titles: pd.DataFrame = field(default_factory=pd.DataFrame)
    edges: pd.DataFrame = field(default_factory=pd.DataFrame)
    weight_encoding: str = WEIGHT_ENCODINGS[0]

    def hit(self, x: float, y: float) -> dict | None:
        """What lies at (x, y): ``{"kind": "neuron", "id": "model:layer:index", ...}``, a weight
        cell (``kind="weight"`` and its row) or a similarity cell (``kind="similarity"``); else None."""
        for kind, frame in (("neuron", self.indices), ("weight", self.weight_cells), ("similarity", self.cells)):
            if frame.empty:
                continue
            inside = (frame["x0"] <= x) & (x < frame["x1"]) & (frame["y0"] <= y) & (y < frame["y1"])
            if inside.any():
                return {"kind": kind, **frame[inside].iloc[0].to_dict()}
        return None


# --------------------------------------------------------------------------------------------------
# Which layers, and whether anything can be drawn


def _refusal(bundle: PairBundle, cls: str, layers: list[str]) -> ZigZag | None:
    """The figure that only says why class ``cls`` over ``layers`` cannot be drawn; None when it can."""
    if cls not in bundle.classes:
        return ZigZag(cls, [], message=f"Class '{cls}' is not in this pair (it has {', '.join(bundle.classes)}).")
    if not layers:
        return ZigZag(cls, [], message="This bundle has no analysis layers.")
    spaces = bundle.label_spaces()
    if cls not in spaces["shared"]:  # issue 12: a class one of the models does not know
        shared = ", ".join(spaces["shared"]) or "none: the models have no class in common"
        return ZigZag(cls, layers, message=(
            f"Class '{cls}' is not known to both models (their label spaces differ), so it has no class-level "
            f"records. Shared classes: {shared}."))
    if cls not in bundle.compared_classes:
        return ZigZag(cls, layers, message=(
            f"Class '{cls}' has no neuron similarity data: it has no target-domain instances, so its "
            "neurons were not ranked or compared. Pick another class."))
    return None


def _shown_layers(layers: list[str], layer_from: int, layer_to: int) -> list[str]:
    """``layers[layer_from..layer_to]``, the ends in either order and clipped to the list."""
    last = len(layers) - 1
    lo, hi = sorted((max(0, min(int(layer_from), last)), max(0, min(int(layer_to), last))))
    return layers[lo:hi + 1]


# --------------------------------------------------------------------------------------------------
# The similarity blocks on the diagonal and the index labels


def _similarity_blocks(grid: Grid, sims: list[np.ndarray], draft: Draft) -> None:
    """Each layer's similarity matrix: important × important as cells, the other regions as histograms."""
    for k, (layer, s) in enumerate(zip(grid.layers, sims)):
        rm, cm = grid.rows[k], OTHER[grid.rows[k]]
        m = s if rm == "source" else s.T  # similarity is stored [source, target]
        ri, cj = grid.imp[rm, layer], grid.imp[cm, layer]
        rn, cn = non_important(m.shape[0], ri), non_important(m.shape[1], cj)
        bx, by = grid.xb[k], grid.yb[k]
        for i, r in enumerate(ri):
            for j, c in enumerate(cj):
                draft.cells.append({"x0": bx.imp0 + j, "y0": by.imp0 + i, "x1": bx.imp0 + j + 1,
                                    "y1": by.imp0 + i + 1, "layer": layer, "row_model": rm, "row_neuron": int(r),
                                    "col_model": cm, "col_neuron": int(c), "similarity": float(m[r, c])})
        draft.regions.append(region_frame("similarity", "", layer, "imp×imp",
                                          (bx.imp0, by.imp0, bx.imp1, by.imp1), len(ri) * len(cj), "#555555"))
        if not grid.show_non:
            continue
        vlo, vhi = min(0.0, float(np.nanmin(m))), 1.0
        for name, vals, box, along in (
                ("imp×non", m[np.ix_(ri, cn)], (bx.non0, by.imp0, bx.non1, by.imp1), "y"),
                ("non×imp", m[np.ix_(rn, cj)], (bx.imp0, by.non0, bx.imp1, by.non1), "x"),
                ("non×non", m[np.ix_(rn, cn)], (bx.non0, by.non0, bx.non1, by.non1), "x")):
            draft.regions.append(region_frame("similarity", "", layer, name, box, vals.size))
            draft.sim_bars += [{**bar, "layer": layer, "region": name}
                               for bar in hist_bars(vals.ravel(), box, vlo, vhi, along)]


def _index_labels(grid: Grid, draft: Draft) -> None:
    """The clickable neuron indices beside each layer's rows and above its columns, and its name."""
    for k, layer in enumerate(grid.layers):
        rm, cm = grid.rows[k], OTHER[grid.rows[k]]
        bx, by = grid.xb[k], grid.yb[k]
        for axis, model, band, other in (("row", rm, by, bx), ("col", cm, bx, by)):
            for rank, n in enumerate(grid.imp[model, layer]):
                a0, a1 = band.imp0 + rank, band.imp0 + rank + 1
                b0, b1 = other.start + 0.15, other.start + LABEL - 0.15
                x0, y0, x1, y1 = (b0, a0, b1, a1) if axis == "row" else (a0, b0, a1, b1)
                draft.indices.append({"x0": x0, "y0": y0, "x1": x1, "y1": y1, "x": (x0 + x1) / 2,
                                      "y": (y0 + y1) / 2, "model": model, "layer": layer, "neuron": int(n),
                                      "rank": rank, "axis": axis, "id": f"{model}:{layer}:{int(n)}"})
        draft.titles.append({"x": bx.start + LABEL / 2, "y": by.start + LABEL / 2, "text": layer})


# --------------------------------------------------------------------------------------------------
# The tables and their composition


def _fill_tables(z: ZigZag, draft: Draft) -> None:
    """``draft``'s rows as ``z``'s frames, with their columns also when empty; the red dots from the
    inherited weight cells."""
    z.cells = pd.DataFrame(draft.cells, columns=RECT + ["layer", "row_model", "row_neuron", "col_model",
                                                        "col_neuron", "similarity"])
    z.sim_bars = pd.DataFrame(draft.sim_bars, columns=RECT + ["lo", "hi", "count", "layer", "region"])
    z.weight_cells = pd.DataFrame(draft.weight_cells, columns=RECT + ["model", "layer", "next_layer", "a", "b",
                                                                      "level", "count", "shade", "important",
                                                                      "inherited", "edge", "value", "tone"])
    inh = z.weight_cells[z.weight_cells["inherited"].map(lambda v: v is True).astype(bool)]
    z.dots = pd.DataFrame({"x": (inh["x0"] + inh["x1"]) / 2, "y": (inh["y0"] + inh["y1"]) / 2,
                           "model": inh["model"], "layer": inh["layer"], "a": inh["a"], "b": inh["b"]})
    z.boxes = pd.DataFrame(draft.boxes, columns=RECT + ["model", "layer", "next_layer", "neuron", "side", "n", "q1",
                                                        "median", "q3", "min", "max", "n_important", "n_inherited",
                                                        "share", "thickness"])
    z.box_lines = pd.DataFrame(draft.box_lines, columns=RECT)
    z.pies = draft.pies
    z.weight_bars = pd.DataFrame(draft.weight_bars, columns=RECT + ["lo", "hi", "count", "model", "layer"])
    z.regions = pd.DataFrame(draft.regions, columns=RECT + ["kind", "model", "layer", "region", "n", "edge"])
    z.indices = pd.DataFrame(draft.indices, columns=RECT + ["x", "y", "model", "layer", "neuron", "rank", "axis",
                                                            "id"])
    z.titles = pd.DataFrame(draft.titles, columns=["x", "y", "text"])
    z.edges = pd.DataFrame(draft.edges, columns=RECT + ["x", "y", "model", "layer", "next_layer", "axis", "neurons_of",
                                                        "group", "n", "label"])


def zigzag_data(bundle: PairBundle, cls: str, layer_from: int, layer_to: int, *,
                hide_non_important: bool = False, hide_source_weights: bool = False,
                tables: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                weight_encoding: str = WEIGHT_ENCODINGS[0]) -> ZigZag:
    """Lay out the zig-zag figure of class ``cls`` for layers ``layer_from..layer_to`` (inclusive
    indices into ``bundle.layers``, in either order, clipped to the bundle).

    The row model of the k-th shown layer is the target for even k and the source for odd k; between
    layers k-1 and k the row model of layer k has its weights below-left, the other model above-right.

    Args:
        tables: the bundle's ``important_neurons()`` and ``weights()`` as frames, when the caller
            already read them (they are the same for every class and range).
        weight_encoding: what the boxplots and histograms of the weight blocks summarise, the weight
            values (default, §5.3.3) or the activated levels (``WEIGHT_ENCODINGS``).

    Returns:
        A :class:`ZigZag`; its ``message`` says why nothing is drawn (unknown class, no similarity
        data for the class, a bundle without layers).

    Raises:
        mlflow_transfer.errors.BundleError: a similarity or weight file of the class cannot be read.
    """
    layers = _shown_layers(bundle.layers, layer_from, layer_to)
    refused = _refusal(bundle, cls, layers)
    if refused is not None:
        return refused
    sims = [bundle.similarity(cls, layer) for layer in layers]  # an unreadable file raises: the view's guard
    imp_table, w_table = tables if tables is not None else (pd.DataFrame(bundle.important_neurons()),
                                                              pd.DataFrame(bundle.weights()))
    class_index = bundle.classes.index(cls)
    grid = Grid.of(imp_table, class_index, layers, show_non=not hide_non_important)
    margin = 1.5 if len(layers) > 1 else 0.0  # the edge counts beside the last blocks
    z = ZigZag(cls, layers, rows=grid.rows, width=grid.xb[-1].end + margin, height=grid.yb[-1].end + margin,
               weight_encoding=weight_encoding)
    if len(layers) == 1:
        z.notes.append("One layer selected: widen the layer range to see the weights between layers.")
    draft = Draft()
    _similarity_blocks(grid, sims, draft)
    _index_labels(grid, draft)
    missing = weight_blocks(bundle, cls, grid, w_table, class_index, hide_source_weights, draft, weight_encoding)
    if missing:
        z.notes.append("No weight matrices for " + ", ".join(missing) + " (the last layer, a pair across a "
                       "residual junction, or a bundle older than schema 1.1: diagnose the pair again).")
    z.notes += draft.notes
    _fill_tables(z, draft)
    return z
