"""The zig-zag figure's coordinate system, in cell units (x right, y down; one important neuron = one
unit): the layout constants, each layer's bands on the two axes, the grid one figure is placed by, the
rows its blocks add to, and the glyphs (histogram bars, region frames, pies) the blocks share."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..style import SOURCE, TARGET

__all__ = ["BINS", "DOMAINS", "GAP", "LABEL", "MODEL_COLOR", "OTHER", "PIE", "RECT", "SPACE", "STRIP", "Band",
           "Draft", "Grid", "bands", "hist_bars", "non_important", "pie_glyph", "region_frame"]

MODEL_COLOR = {"source": SOURCE, "target": TARGET}
OTHER = {"source": "target", "target": "source"}
DOMAINS = ("source", "target")

# Layout, in cell units (one important neuron = one unit).
LABEL = 3.0   # band holding a layer's neuron indices (and its name in the corner)
STRIP = 6.0   # side of a non-important region
GAP = 0.4     # between a layer's important cells and its non-important strip
SPACE = 0.8   # after each layer
PIE = 1.0     # the part of a boxplot strip that holds the pie glyphs
BINS = 12     # histogram bins

RECT = ["x0", "y0", "x1", "y1"]


# --------------------------------------------------------------------------------------------------
# Geometry and glyph helpers


@dataclass
class Band:
    """One layer's span on one axis: index band, important cells, non-important strip."""

    start: float
    n_imp: int
    show_non: bool

    @property
    def imp0(self) -> float:
        return self.start + LABEL

    @property
    def imp1(self) -> float:
        return self.imp0 + self.n_imp

    @property
    def non0(self) -> float:
        return self.imp1 + GAP

    @property
    def non1(self) -> float:
        return self.non0 + STRIP

    @property
    def end(self) -> float:
        return (self.non1 if self.show_non else self.imp1) + SPACE


def bands(counts: list[int], show_non: bool) -> list[Band]:
    bands, start = [], 0.0
    for n in counts:
        bands.append(Band(start, n, show_non))
        start = bands[-1].end
    return bands


def hist_bars(values: np.ndarray, box: tuple, lo: float, hi: float, along: str) -> list[dict]:
    """Histogram bars of ``values`` inside ``box`` (x0, y0, x1, y1): bins along ``along`` ("x": bars
    rise from the box's bottom edge; "y": bars grow rightwards from its left edge)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return []
    counts, edges = np.histogram(values, bins=BINS, range=(lo, hi if hi > lo else lo + 1e-6))
    x0, y0, x1, y1 = box
    top = counts.max()
    bars = []
    for i, c in enumerate(counts):
        if c == 0:
            continue
        f = c / top * 0.95
        if along == "x":
            w = (x1 - x0) / BINS
            rect = (x0 + i * w, y1 - f * (y1 - y0), x0 + (i + 1) * w, y1)
        else:
            h = (y1 - y0) / BINS
            rect = (x0, y0 + i * h, x0 + f * (x1 - x0), y0 + (i + 1) * h)
        bars.append(dict(zip(RECT, rect), lo=float(edges[i]), hi=float(edges[i + 1]), count=int(c)))
    return bars


def region_frame(kind, model, layer, region, box, n, edge="#999999") -> dict:
    return dict(zip(RECT, box), kind=kind, model=model, layer=layer, region=region, n=int(n), edge=edge)


def pie_glyph(cx: float, cy: float, share: float, r: float = 0.4, **info) -> list[dict]:
    """A pie glyph as polygons: the full disc and, if share > 0, the wedge of ``share``."""
    t = np.linspace(0, 2 * np.pi, 25)
    out = [{"x": cx + r * np.sin(t), "y": cy - r * np.cos(t), "share": share, "part": "disc", **info}]
    if share > 0:
        t = np.linspace(0, 2 * np.pi * share, max(3, int(24 * share) + 2))
        out.append({"x": np.r_[cx, cx + r * np.sin(t)], "y": np.r_[cy, cy - r * np.cos(t)],
                    "share": share, "part": "wedge", **info})
    return out


def _important(table: pd.DataFrame, model: str, class_index: int, layer: str) -> np.ndarray:
    """(k,) important neurons of one model, class and layer, most important first."""
    part = table[(table["model"] == model) & (table["class_index"] == class_index) & (table["layer"] == layer)]
    return part.sort_values("rank")["neuron"].to_numpy(np.int64)


def non_important(n: int, important: np.ndarray) -> np.ndarray:
    """The non-important ones of ``n`` neurons, in index order."""
    return np.setdiff1d(np.arange(n), important)


# --------------------------------------------------------------------------------------------------
# One figure's grid and rows


@dataclass
class Grid:
    """What every block of one figure is placed by: the shown layers, the row model of each (the
    other model's neurons are its columns), each (model, layer)'s important neurons and the bands of
    the two axes."""

    layers: list[str]
    rows: list[str]
    imp: dict[tuple[str, str], np.ndarray]
    xb: list[Band]
    yb: list[Band]
    show_non: bool

    @classmethod
    def of(cls, imp_table: pd.DataFrame, class_index: int, layers: list[str], show_non: bool) -> Grid:
        """The grid of ``layers`` from the important-neuron table: the target is the row model of
        even-numbered layers, the source of odd ones (the zig-zag)."""
        rows = ["target" if k % 2 == 0 else "source" for k in range(len(layers))]
        imp = {(m, layer): _important(imp_table, m, class_index, layer) for m in DOMAINS for layer in layers}
        xb = bands([len(imp[OTHER[r], layer]) for r, layer in zip(rows, layers)], show_non)
        yb = bands([len(imp[r, layer]) for r, layer in zip(rows, layers)], show_non)
        return cls(layers, rows, imp, xb, yb, show_non)


@dataclass
class Draft:
    """The figure's tables as lists of rows while the blocks are laid out, in drawing order."""

    cells: list = field(default_factory=list)
    sim_bars: list = field(default_factory=list)
    weight_cells: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    box_lines: list = field(default_factory=list)
    pies: list = field(default_factory=list)
    weight_bars: list = field(default_factory=list)
    regions: list = field(default_factory=list)
    indices: list = field(default_factory=list)
    titles: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    notes: list = field(default_factory=list)
