"""The weight blocks between consecutive layers of the zig-zag figure: each model's links as cells
(important × important), boxplots with pies (important × non-important) and a histogram (the rest),
and the edge counts of Figure 4 C (how many of the model's important weights meet each group of
neurons).

The quantity shown (paper §5.3.3: "the brightnesses of the cells are mapped to the weight values") is
each link's *weight value*, the signed sum of its parameters (`PairBundle.weight_kernels`), by
default, or its mean *activated level* on the class's instances (``WEIGHT_ENCODINGS``); a bundle
without weight values shows the levels and says so."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlflow_transfer.bundle import PairBundle

from .geometry import (
    MODEL_COLOR,
    PIE,
    RECT,
    STRIP,
    Band,
    Draft,
    Grid,
    hist_bars,
    non_important,
    pie_glyph,
    region_frame,
)

__all__ = ["WEIGHT_ENCODINGS", "weight_blocks"]

WEIGHT_ENCODINGS = ("weight value", "activated level")
BOX = 0.8  # thickness of the box of the row with the most important links (one row is 1 unit)


@dataclass
class _WeightBlock:
    """One model's weights between layers ``prev`` and ``nxt`` as drawn: ``lev``/``cnt`` are rows ×
    columns, the rows being neurons of ``nxt`` when ``row_is_next`` (the block below-left of the
    diagonal) and of ``prev`` otherwise; ``flags`` maps the model's important weights (a, b) to
    inherited (target: bool; source: None)."""

    model: str
    prev: str
    nxt: str
    row_is_next: bool
    lev: np.ndarray
    cnt: np.ndarray
    val: np.ndarray | None  # weight values (signed sums), rows × columns as lev; None: not in the bundle
    ri: np.ndarray
    cj: np.ndarray
    rn: np.ndarray
    cn: np.ndarray
    flags: dict
    bx: Band
    by: Band

    @property
    def edge(self) -> str:
        return MODEL_COLOR[self.model]

    def link(self, r: int, c: int) -> tuple[int, int]:
        """The weight (a, b) of row neuron ``r`` and column neuron ``c``: a in ``prev``, b in ``nxt``."""
        return (int(c), int(r)) if self.row_is_next else (int(r), int(c))


def _importance_flags(w_table: pd.DataFrame, model: str, class_index: int, layer: str) -> dict:
    """``{(a, b): inherited}`` of the model's important weights from ``layer``; only the target's are
    matched with the source, so the source's say None."""
    rows = w_table[(w_table["model"] == model) & (w_table["class_index"] == class_index) & (w_table["layer"] == layer)]
    return {(int(a), int(b)): (None if model == "source" or inh is None or pd.isna(inh) else bool(inh))
            for a, b, inh in zip(rows["a"], rows["b"], rows["inherited"])}


def _weight_block(wm: dict, grid: Grid, k: int, model: str, row_is_next: bool, flags: dict,
                  values: np.ndarray | None = None) -> _WeightBlock:
    """Below-left of the diagonal (``row_is_next``): rows = layer k's row model, columns = layer k-1's
    columns, same model; above-right: rows = layer k-1's row model, columns = layer k's columns."""
    prev, nxt = grid.layers[k - 1], grid.layers[k]
    levels, counts = wm["levels"], wm["counts"]  # (N_next, N_prev)
    ia, ib = grid.imp[model, prev], grid.imp[model, nxt]
    lev, cnt = (levels, counts) if row_is_next else (levels.T, counts.T)
    val = None if values is None or values.shape != levels.shape else \
        np.asarray(values, np.float64) if row_is_next else np.asarray(values, np.float64).T
    ri, cj = (ib, ia) if row_is_next else (ia, ib)
    bx, by = (grid.xb[k - 1], grid.yb[k]) if row_is_next else (grid.xb[k], grid.yb[k - 1])
    return _WeightBlock(model, prev, nxt, row_is_next, lev, cnt, val, ri, cj, non_important(lev.shape[0], ri),
                        non_important(lev.shape[1], cj), flags, bx, by)


def _weight_cells(w: _WeightBlock, draft: Draft) -> None:
    """Important × important: one cell per link, with its weight value and ``tone`` (the value over the
    block's largest |value|, in [-1, 1]; NaN without values) and its level and ``shade`` (the level
    over the block's largest, clipped to [0, 1])."""
    bx, by = w.bx, w.by
    top = float(np.nanmax(w.lev)) if w.lev.size else 0.0
    vtop = float(np.nanmax(np.abs(w.val))) if w.val is not None and w.val.size else 0.0
    draft.regions.append(region_frame("weights", w.model, w.prev, "imp×imp",
                                      (bx.imp0, by.imp0, bx.imp1, by.imp1), len(w.ri) * len(w.cj), w.edge))
    for i, r in enumerate(w.ri):
        for j, c in enumerate(w.cj):
            a, b = w.link(r, c)
            level = float(w.lev[r, c])
            value = float(w.val[r, c]) if w.val is not None else float("nan")
            draft.weight_cells.append({
                "x0": bx.imp0 + j, "y0": by.imp0 + i, "x1": bx.imp0 + j + 1, "y1": by.imp0 + i + 1,
                "model": w.model, "layer": w.prev, "next_layer": w.nxt, "a": a, "b": b, "level": level,
                "count": int(w.cnt[r, c]), "shade": float(np.clip(level / top, 0, 1)) if top > 0 else 0.0,
                "important": (a, b) in w.flags, "inherited": w.flags.get((a, b)),
                "edge": w.edge if (a, b) in w.flags else "#dddddd", "value": value,
                "tone": value / vtop if vtop > 0 else (0.0 if w.val is not None else float("nan"))})


def _box_glyph(w: _WeightBlock, side_rows: bool, idx: int, along: np.ndarray,
               half: float) -> tuple[tuple, list[dict], tuple]:
    """Box, whisker and median segments, and pie centre of the ``idx``-th important neuron's boxplot;
    ``along`` = min, q1, median, q3, max as offsets along the value axis, ``half`` the box's half
    thickness. Boxes of the important rows sit in the strip to the right (values along x); those of
    the columns in the strip below (values along y, rising upwards)."""
    bx, by = w.bx, w.by
    if side_rows:
        pos, v = by.imp0 + idx + 0.5, bx.non0 + along
        lines = [{"x0": v[0], "y0": pos, "x1": v[4], "y1": pos},
                 {"x0": v[2], "y0": pos - 0.3, "x1": v[2], "y1": pos + 0.3}]
        return (v[1], pos - half, v[3], pos + half), lines, (bx.non1 - PIE / 2, pos)
    pos, v = bx.imp0 + idx + 0.5, by.non1 - along  # y points down: high values up
    lines = [{"x0": pos, "y0": v[4], "x1": pos, "y1": v[0]},
             {"x0": pos - 0.3, "y0": v[2], "x1": pos + 0.3, "y1": v[2]}]
    return (pos - half, v[3], pos + half, v[1]), lines, (pos, by.non0 + PIE / 2)


def _row_links(w: _WeightBlock, side_rows: bool, n: int, others: np.ndarray) -> list[tuple[int, int]]:
    return [w.link(n, o) if side_rows else w.link(o, n) for o in others]


def _boxplots(w: _WeightBlock, q: np.ndarray, vlo: float, span: float, draft: Draft) -> None:
    """Important × non-important: per important neuron a boxplot of the shown quantity ``q`` (rows ×
    columns) over its links to the non-important neurons, the box's thickness proportional to how
    many of those links are among the model's important weights (Figure 4 C: "the thicknesses of the
    rectangles in the boxes represent the number of weights"; the row with the most is ``BOX`` thick),
    and (target only) a pie of the share of those important links that have a source correspondence."""
    sides = ((True, w.ri, w.cn), (False, w.cj, w.rn))
    known_of = {(side, int(n)): [w.flags[p] for p in _row_links(w, side, n, others) if p in w.flags]
                for side, neurons, others in sides if others.size for n in neurons}
    most = max((len(k) for k in known_of.values()), default=0)
    for side_rows, neurons, others in sides:
        for idx, n in enumerate(neurons):
            vals = q[n, others] if side_rows else q[others, n]
            if vals.size == 0:
                continue
            quart = np.percentile(vals, [0, 25, 50, 75, 100])
            n_is_next = side_rows == w.row_is_next  # then n is neuron b of the link a → b
            known = known_of[side_rows, int(n)]
            n_inh = sum(1 for f in known if f)
            share = n_inh / len(known) if known and w.model == "target" else float("nan")
            thickness = BOX * len(known) / most if most else 0.0
            box, lines, centre = _box_glyph(w, side_rows, idx, (quart - vlo) / span * (STRIP - PIE - 0.3),
                                            thickness / 2)
            draft.box_lines += lines
            draft.boxes.append({**dict(zip(RECT, box)), "model": w.model, "layer": w.prev, "next_layer": w.nxt,
                                "neuron": int(n), "side": "next" if n_is_next else "prev", "n": int(vals.size),
                                "q1": quart[1], "median": quart[2], "q3": quart[3], "min": quart[0],
                                "max": quart[4], "n_important": len(known), "n_inherited": n_inh, "share": share,
                                "thickness": thickness})
            if w.model == "target" and known:
                draft.pies += pie_glyph(*centre, share, neuron=int(n), layer=w.nxt if n_is_next else w.prev,
                                        label=f"{n_inh} of {len(known)} important links inherited")
        name = "imp×non" if side_rows else "non×imp"
        box = (w.bx.non0, w.by.imp0, w.bx.non1, w.by.imp1) if side_rows else \
            (w.bx.imp0, w.by.non0, w.bx.imp1, w.by.non1)
        draft.regions.append(region_frame("weights", w.model, w.prev, name, box, len(neurons), w.edge))


def _edge_counts(w: _WeightBlock, show_non: bool, draft: Draft) -> None:
    """Figure 4 C's edges: for each side of the block (its rows' layer and its columns' layer) and each
    group of that layer's neurons (important / non-important), the number of the model's important
    weights that meet the group, drawn as a bracket along the group on the block's outer side (left
    and bottom below the diagonal, right and top above it) with the count beside it."""
    bx, by = w.bx, w.by
    important_rows, important_cols = set(map(int, w.ri)), set(map(int, w.cj))
    # the flags' links (a, b) as (row neuron, column neuron) of this block
    cells = [(b, a) if w.row_is_next else (a, b) for a, b in w.flags]
    row_layer, col_layer = (w.nxt, w.prev) if w.row_is_next else (w.prev, w.nxt)
    groups = [("important", True, (by.imp0, by.imp1), (bx.imp0, bx.imp1))]
    if show_non:
        groups.append(("non-important", False, (by.non0, by.non1), (bx.non0, bx.non1)))
    for group, inside, (y0, y1), (x0, x1) in groups:
        n_rows = sum(1 for r, _ in cells if (r in important_rows) == inside)
        n_cols = sum(1 for _, c in cells if (c in important_cols) == inside)
        right = bx.non1 if show_non else bx.imp1
        bottom = by.non1 if show_non else by.imp1
        x = bx.imp0 - 0.35 if w.row_is_next else right + 0.35  # rows: a vertical bracket
        y = bottom + 0.35 if w.row_is_next else by.imp0 - 0.35  # columns: a horizontal one
        shift = -0.6 if w.row_is_next else 0.6
        for axis, layer, n, seg, text in (
                ("row", row_layer, n_rows, (x, y0 + 0.1, x, y1 - 0.1), (x + shift, (y0 + y1) / 2)),
                ("col", col_layer, n_cols, (x0 + 0.1, y, x1 - 0.1, y), ((x0 + x1) / 2, y - shift))):
            draft.edges.append({**dict(zip(RECT, seg)), "x": text[0], "y": text[1], "model": w.model,
                                "layer": w.prev, "next_layer": w.nxt, "axis": axis, "neurons_of": layer,
                                "group": group, "n": n, "label": str(n)})


def weight_blocks(bundle: PairBundle, cls: str, grid: Grid, w_table: pd.DataFrame, class_index: int,
                  hide_source_weights: bool, draft: Draft, encoding: str = WEIGHT_ENCODINGS[0]) -> list[str]:
    """Each model's weights between consecutive layers, in the two corners between their similarity
    blocks, showing ``encoding`` (one of ``WEIGHT_ENCODINGS``) in the boxplots and histograms (the cells
    carry both); returns the "model prev→next" pairs that have no weight matrices in the bundle. A
    pair without weight values (an older bundle) shows levels: ``draft.notes`` says so."""
    if encoding not in WEIGHT_ENCODINGS:
        raise ValueError(f"encoding must be one of {WEIGHT_ENCODINGS}, got {encoding!r}")
    missing, no_values = [], []
    for k in range(1, len(grid.layers)):
        prev, nxt = grid.layers[k - 1], grid.layers[k]
        for model, row_is_next in ((grid.rows[k], True), (grid.rows[k - 1], False)):
            if hide_source_weights and model == "source":
                continue
            wm = bundle.weight_matrices(model, cls, prev)
            if wm is None:
                missing.append(f"{model} {prev}→{nxt}")
                continue
            kern = bundle.weight_kernels(model, prev)
            w = _weight_block(wm, grid, k, model, row_is_next, _importance_flags(w_table, model, class_index, prev),
                              None if kern is None else kern["values"])
            if w.val is None:
                no_values.append(f"{model} {prev}→{nxt}")
            _weight_cells(w, draft)
            _edge_counts(w, grid.show_non, draft)
            if not grid.show_non:
                continue
            q = w.val if encoding == WEIGHT_ENCODINGS[0] and w.val is not None else w.lev
            vlo, vhi = float(np.nanmin(q)), float(np.nanmax(q))
            _boxplots(w, q, vlo, (vhi - vlo) or 1.0, draft)
            box = (w.bx.non0, w.by.non0, w.bx.non1, w.by.non1)
            draft.regions.append(region_frame("weights", model, prev, "non×non", box, len(w.rn) * len(w.cn),
                                              w.edge))
            draft.weight_bars += [{**bar, "model": model, "layer": prev} for bar in
                                  hist_bars(q[np.ix_(w.rn, w.cn)].ravel(), box, vlo, vhi, "x")]
    if no_values and encoding == WEIGHT_ENCODINGS[0]:
        draft.notes.append("No weight values for " + ", ".join(no_values) + " (a bundle written before they were "
                           "recorded: diagnose the pair again); their weights show activated levels.")
    return missing
