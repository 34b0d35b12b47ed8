"""The weight blocks between consecutive layers of the zig-zag figure: each model's links as cells
(important × important), boxplots with pies (important × non-important) and a histogram (the rest)."""

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

__all__ = ["weight_blocks"]


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


def _weight_block(wm: dict, grid: Grid, k: int, model: str, row_is_next: bool, flags: dict) -> _WeightBlock:
    """Below-left of the diagonal (``row_is_next``): rows = layer k's row model, columns = layer k-1's
    columns, same model; above-right: rows = layer k-1's row model, columns = layer k's columns."""
    prev, nxt = grid.layers[k - 1], grid.layers[k]
    levels, counts = wm["levels"], wm["counts"]  # (N_next, N_prev)
    ia, ib = grid.imp[model, prev], grid.imp[model, nxt]
    lev, cnt = (levels, counts) if row_is_next else (levels.T, counts.T)
    ri, cj = (ib, ia) if row_is_next else (ia, ib)
    bx, by = (grid.xb[k - 1], grid.yb[k]) if row_is_next else (grid.xb[k], grid.yb[k - 1])
    return _WeightBlock(model, prev, nxt, row_is_next, lev, cnt, ri, cj, non_important(lev.shape[0], ri),
                        non_important(lev.shape[1], cj), flags, bx, by)


def _weight_cells(w: _WeightBlock, draft: Draft) -> None:
    """Important × important: one cell per link, shaded by its level relative to the block's largest."""
    bx, by = w.bx, w.by
    top = float(np.nanmax(w.lev)) if w.lev.size else 0.0
    draft.regions.append(region_frame("weights", w.model, w.prev, "imp×imp",
                                      (bx.imp0, by.imp0, bx.imp1, by.imp1), len(w.ri) * len(w.cj), w.edge))
    for i, r in enumerate(w.ri):
        for j, c in enumerate(w.cj):
            a, b = w.link(r, c)
            level = float(w.lev[r, c])
            draft.weight_cells.append({
                "x0": bx.imp0 + j, "y0": by.imp0 + i, "x1": bx.imp0 + j + 1, "y1": by.imp0 + i + 1,
                "model": w.model, "layer": w.prev, "next_layer": w.nxt, "a": a, "b": b, "level": level,
                "count": int(w.cnt[r, c]), "shade": float(np.clip(level / top, 0, 1)) if top > 0 else 0.0,
                "important": (a, b) in w.flags, "inherited": w.flags.get((a, b)),
                "edge": w.edge if (a, b) in w.flags else "#dddddd"})


def _box_glyph(w: _WeightBlock, side_rows: bool, idx: int, along: np.ndarray) -> tuple[tuple, list[dict], tuple]:
    """Box, whisker and median segments, and pie centre of the ``idx``-th important neuron's boxplot;
    ``along`` = min, q1, median, q3, max as offsets along the value axis. Boxes of the important rows
    sit in the strip to the right (values along x); those of the columns in the strip below (values
    along y, rising upwards)."""
    bx, by = w.bx, w.by
    if side_rows:
        pos, v = by.imp0 + idx + 0.5, bx.non0 + along
        lines = [{"x0": v[0], "y0": pos, "x1": v[4], "y1": pos},
                 {"x0": v[2], "y0": pos - 0.3, "x1": v[2], "y1": pos + 0.3}]
        return (v[1], pos - 0.3, v[3], pos + 0.3), lines, (bx.non1 - PIE / 2, pos)
    pos, v = bx.imp0 + idx + 0.5, by.non1 - along  # y points down: high values up
    lines = [{"x0": pos, "y0": v[4], "x1": pos, "y1": v[0]},
             {"x0": pos - 0.3, "y0": v[2], "x1": pos + 0.3, "y1": v[2]}]
    return (pos - 0.3, v[3], pos + 0.3, v[1]), lines, (pos, by.non0 + PIE / 2)


def _boxplots(w: _WeightBlock, vlo: float, span: float, draft: Draft) -> None:
    """Important × non-important: per important neuron a boxplot of its links' levels and (target
    only) a pie of the share of its important links that have a source correspondence."""
    for side_rows, neurons, others in ((True, w.ri, w.cn), (False, w.cj, w.rn)):
        for idx, n in enumerate(neurons):
            vals = w.lev[n, others] if side_rows else w.lev[others, n]
            if vals.size == 0:
                continue
            q = np.percentile(vals, [0, 25, 50, 75, 100])
            n_is_next = side_rows == w.row_is_next  # then n is neuron b of the link a → b
            links = [w.link(n, o) if side_rows else w.link(o, n) for o in others]
            known = [w.flags[p] for p in links if p in w.flags]
            n_inh = sum(1 for f in known if f)
            share = n_inh / len(known) if known and w.model == "target" else float("nan")
            box, lines, centre = _box_glyph(w, side_rows, idx, (q - vlo) / span * (STRIP - PIE - 0.3))
            draft.box_lines += lines
            draft.boxes.append({**dict(zip(RECT, box)), "model": w.model, "layer": w.prev, "next_layer": w.nxt,
                                "neuron": int(n), "side": "next" if n_is_next else "prev", "n": int(vals.size),
                                "q1": q[1], "median": q[2], "q3": q[3], "min": q[0], "max": q[4],
                                "n_important": len(known), "n_inherited": n_inh, "share": share})
            if w.model == "target" and known:
                draft.pies += pie_glyph(*centre, share, neuron=int(n), layer=w.nxt if n_is_next else w.prev,
                                        label=f"{n_inh} of {len(known)} important links inherited")
        name = "imp×non" if side_rows else "non×imp"
        box = (w.bx.non0, w.by.imp0, w.bx.non1, w.by.imp1) if side_rows else \
            (w.bx.imp0, w.by.non0, w.bx.imp1, w.by.non1)
        draft.regions.append(region_frame("weights", w.model, w.prev, name, box, len(neurons), w.edge))


def weight_blocks(bundle: PairBundle, cls: str, grid: Grid, w_table: pd.DataFrame, class_index: int,
                  hide_source_weights: bool, draft: Draft) -> list[str]:
    """Each model's weights between consecutive layers, in the two corners between their similarity
    blocks; returns the "model prev→next" pairs that have no weight matrices in the bundle."""
    missing = []
    for k in range(1, len(grid.layers)):
        prev, nxt = grid.layers[k - 1], grid.layers[k]
        for model, row_is_next in ((grid.rows[k], True), (grid.rows[k - 1], False)):
            if hide_source_weights and model == "source":
                continue
            wm = bundle.weight_matrices(model, cls, prev)
            if wm is None:
                missing.append(f"{model} {prev}→{nxt}")
                continue
            w = _weight_block(wm, grid, k, model, row_is_next, _importance_flags(w_table, model, class_index, prev))
            _weight_cells(w, draft)
            if not grid.show_non:
                continue
            vlo, vhi = float(np.nanmin(w.lev)), float(np.nanmax(w.lev))
            _boxplots(w, vlo, (vhi - vlo) or 1.0, draft)
            box = (w.bx.non0, w.by.non0, w.bx.non1, w.by.non1)
            draft.regions.append(region_frame("weights", model, prev, "non×non", box, len(w.rn) * len(w.cn),
                                              w.edge))
            draft.weight_bars += [{**bar, "model": model, "layer": prev} for bar in
                                  hist_bars(w.lev[np.ix_(w.rn, w.cn)].ravel(), box, vlo, vhi, "x")]
    return missing
