"""The Compare tab's views (issue 16): pure functions of a compare listing (`CompareListing` of
``mlflow_transfer.tracking.compare``: ``rows``, ``settings``, ``left_out``, ``sweeps``) — the pair table,
the axis choices, the setting-against-outcome scatter, the Spearman ρ of the transferability estimates
and the inherited-share-by-depth lines of the picked pairs. No bundle is opened here.

Every string in a listing comes from run params, tags and names (free text): table cells and Bokeh
tooltips escape on their own, column titles and Markdown are escaped here.
"""

from __future__ import annotations

import math

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import BasicTicker, FixedTicker

from .text import escape_html, escape_md, md_code

__all__ = ["OUTCOME_TITLES", "PICK_COLORS", "axis_choices", "picked_points", "compare_frame", "compare_table", "default_axes",
           "left_out_md", "plot_frame", "scatter", "share_curves", "share_key", "spearman", "estimate_rhos"]

# The scalar outcomes of a row (the listing's OUTCOMES), in table order, with their titles.
OUTCOME_TITLES = {"target_accuracy": "target accuracy", "transferability_score": "transferability",
                  "logme": "LogME", "leep": "LEEP", "cka_mean": "mean CKA", "dir_output": "DIR (output)",
                  "dir_feature": "DIR (feature)", "domain_cv_accuracy": "domain CV accuracy",
                  "findings_count": "findings"}
PICK_COLORS = ("#ff7f0e", "#9467bd")  # pair A, pair B (the diff's order)
_OTHER = "#9e9e9e"
_SHARE = "inherited_share:"  # outcome key prefix of one layer's inherited share
PAGE_SIZE = 20


def share_key(layer: str) -> str:
    """The outcome key of the inherited share at ``layer`` (a y-axis choice and a table column)."""
    return _SHARE + layer


def _share_layers(rows: list[dict]) -> list[str]:
    """Layer names of the rows' summaries, in depth order of their first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        for layer in row.get("layers") or []:
            seen.setdefault(str(layer), None)
    return list(seen)


def _number(value) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def _share_at(row: dict, layer: str) -> float:
    layers = [str(x) for x in row.get("layers") or []]
    shares = row.get("inherited_share") or []
    if layer not in layers or layers.index(layer) >= len(shares):
        return math.nan
    return _number(shares[layers.index(layer)])


def axis_choices(listing) -> tuple[dict[str, str], dict[str, str]]:
    """``(x, y)`` choices as {title: key}: x any setting that differs or any outcome, y any outcome (the
    scalar ones, then the inherited share at each layer)."""
    outcomes = {**{t: k for k, t in OUTCOME_TITLES.items()},
                **{f"inherited share · {layer}": share_key(layer) for layer in _share_layers(listing.rows)}}
    settings = {f"setting · {key}": key for key in listing.settings}
    return {**settings, **outcomes}, outcomes


def default_axes(listing, x: str = "", y: str = "") -> tuple[str, str]:
    """The axes to draw: ``x`` and ``y`` when they are choices of `axis_choices`, else the defaults — the
    first differing setting (or the transferability score when none differs) against target accuracy."""
    xs, ys = axis_choices(listing)
    if x not in xs.values():
        x = listing.settings[0] if listing.settings else "transferability_score"
    if y not in ys.values():
        y = "target_accuracy"
    return x, y


def _is_setting(listing, key: str) -> bool:
    return key in listing.settings


def _values(listing, key: str) -> list:
    if _is_setting(listing, key):
        return [(r.get("setting") or {}).get(key) for r in listing.rows]
    if key.startswith(_SHARE):
        return [_share_at(r, key[len(_SHARE):]) for r in listing.rows]
    return [_number(r.get(key)) for r in listing.rows]


def _title(listing, key: str) -> str:
    if _is_setting(listing, key):
        return key
    if key.startswith(_SHARE):
        return f"inherited share · {key[len(_SHARE):]}"
    return OUTCOME_TITLES.get(key, key)


def compare_frame(listing) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per listed pair: its name, the settings that differ (columns ``s0``, ``s1``, … — setting
    keys are free text), the scalar outcomes, the inherited share at each layer (``share0``, …), its
    diagnostics run and the command that diagnoses a pair without a finished diagnosis. Returns the frame
    and the column titles (escaped: Tabulator writes titles as HTML)."""
    rows = listing.rows
    data: dict[str, list] = {"name": [str(r.get("name") or r.get("target_run_id") or "") for r in rows]}
    titles = {"name": "run"}
    for i, key in enumerate(listing.settings):
        data[f"s{i}"] = [None if v is None else str(v) for v in _values(listing, key)]
        titles[f"s{i}"] = escape_html(key)
    for key, title in OUTCOME_TITLES.items():
        data[key] = _values(listing, key)
        titles[key] = title
    for i, layer in enumerate(_share_layers(rows)):
        data[f"share{i}"] = _values(listing, share_key(layer))
        titles[f"share{i}"] = escape_html(f"share · {layer}")
    data["diagnostics_run_id"] = [r.get("diagnostics_run_id") or "" for r in rows]
    titles["diagnostics_run_id"] = "diagnostics run"
    data["command"] = [r.get("command") or "" for r in rows]
    titles["command"] = "to diagnose"
    return pd.DataFrame(data, columns=list(data)), titles


def compare_table(listing, selected: list[str] = ()) -> pn.widgets.Tabulator:
    """The paged Tabulator of `compare_frame`: diagnosed rows ticked in their checkbox (a row without a
    finished diagnosis has no bundle to diff; the tab keeps the last two ticked), ``selected`` (diagnostics
    run ids) highlighted."""
    frame, titles = compare_frame(listing)
    ids = frame["diagnostics_run_id"].tolist()
    numbers = {k: {"type": "money", "precision": 3} for k in frame.columns
               if k in OUTCOME_TITLES or k.startswith("share")}
    numbers["findings_count"] = {"type": "money", "precision": 0}
    return pn.widgets.Tabulator(
        frame, show_index=False, selectable="checkbox", disabled=True, titles=titles,
        selection=[ids.index(s) for s in selected if s and s in ids],
        selectable_rows=lambda df: [i for i, d in enumerate(df["diagnostics_run_id"]) if d],
        pagination="local", page_size=PAGE_SIZE, layout="fit_data_stretch", formatters=numbers,
        name="compare-table", sizing_mode="stretch_width")


def _ordinal(values: list) -> tuple[np.ndarray, dict[int, str]]:
    """Setting values (strings) as x coordinates: numbers when every given value reads as one, else the
    position of each distinct value in sorted order; with the tick labels of a categorical axis."""
    given = [v for v in values if v is not None]
    numeric = [_number(v) for v in given]
    if given and not any(math.isnan(n) for n in numeric):
        return np.array([_number(v) for v in values], dtype=float), {}
    levels = sorted({str(v) for v in given})
    where = {v: float(i) for i, v in enumerate(levels)}
    return np.array([where.get(str(v), math.nan) if v is not None else math.nan for v in values]), \
        {i: v for i, v in enumerate(levels)}


def plot_frame(listing, x: str, y: str, picked: list[str] = ()) -> tuple[pd.DataFrame, dict[int, str]]:
    """The scatter's points: ``x``, ``y`` (rows missing either are left out), ``name``, ``run``
    (diagnostics run id), ``pick`` ("A", "B" or "") and ``colour``; plus the tick labels of a
    categorical x (empty for a numeric one)."""
    xs, ticks = (_ordinal(_values(listing, x)) if _is_setting(listing, x)
                 else (np.array(_values(listing, x), dtype=float), {}))
    ys = np.array(_values(listing, y), dtype=float)
    ids = [r.get("diagnostics_run_id") or "" for r in listing.rows]
    picks = ["AB"[list(picked).index(i)] if i and i in picked[:2] else "" for i in ids]
    frame = pd.DataFrame({"x": xs, "y": ys, "name": [str(r.get("name") or "") for r in listing.rows],
                          "run": ids, "pick": picks,
                          "colour": [PICK_COLORS["AB".index(p)] if p else _OTHER for p in picks]})
    keep = np.isfinite(frame["x"]) & np.isfinite(frame["y"])
    # picked points last: drawn on top of the others
    return frame[keep].sort_values("pick", kind="stable").reset_index(drop=True), ticks


def scatter(listing, x: str, y: str, picked: list[str] = ()) -> hv.Scatter:
    """``x`` (a setting, categorical when its values are not all numbers, or an outcome) against outcome
    ``y``, one point per listed pair; the two picked pairs in their diff colours (A orange, B purple);
    hovering shows the run's name. Meant as the callback of a DynamicMap: axis labels and ticks are set
    on each update, so switching axes only replaces the data."""
    frame, ticks = plot_frame(listing, x, y, picked)
    n = len(listing.rows)

    def axis(plot, element):  # the x ticks of this frame (a categorical axis names its levels)
        ax = plot.state.xaxis[0]
        ax.ticker = FixedTicker(ticks=list(ticks)) if ticks else BasicTicker()
        ax.major_label_overrides = dict(ticks)

    title = f"{_title(listing, y)} against {_title(listing, x)} ({len(frame)} of {n} pairs plotted)"
    return hv.Scatter(frame, hv.Dimension("x", label=_title(listing, x)),
                      [hv.Dimension("y", label=_title(listing, y)), "name", "run", "pick", "colour"]).opts(
        color="colour", size=8, line_color="white", tools=["hover", "tap"], framewise=True, responsive=True, shared_axes=False,
        min_height=320, title=title, show_grid=True, hooks=[axis],
        hover_tooltips=[("run", "@{name}"), ("x", "@{x}"), ("y", "@{y}")])


def picked_points(listing, x: str, y: str, picked: list[str]) -> hv.Scatter:
    """The picked pairs' points of `scatter` alone (A orange, B purple, a little larger), to overlay on a scatter
    drawn without picks: a new pick then sends these two points, not every pair's."""
    frame, _ = plot_frame(listing, x, y, picked)
    return hv.Scatter(frame[frame["pick"] != ""], "x", ["y", "name", "run", "pick", "colour"]).opts(
        color="colour", size=11, line_color="black", tools=["hover"],
        hover_tooltips=[("pair", "@{pick}"), ("run", "@{name}"), ("x", "@{x}"), ("y", "@{y}")])


def spearman(a, b) -> tuple[float | None, int]:
    """Spearman's ρ of two sequences over the positions where both are finite: Pearson's r of their
    average ranks (pandas), as scipy.stats.spearmanr; ``(None, n)`` with fewer than 3 such positions or
    when either is constant there."""
    frame = pd.DataFrame({"a": [_number(v) for v in a], "b": [_number(v) for v in b]}).dropna()
    n = len(frame)
    if n < 3:
        return None, n
    ra, rb = frame["a"].rank().to_numpy(), frame["b"].rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None, n
    return float(np.corrcoef(ra, rb)[0, 1]), n


def estimate_rhos(listing) -> dict[str, tuple[float | None, int]]:
    """Spearman's ρ of LogME and of LEEP against the realised transferability score over the listed rows."""
    realised = [r.get("transferability_score") for r in listing.rows]
    return {key: spearman([r.get(key) for r in listing.rows], realised) for key in ("logme", "leep")}


def estimates_md(listing) -> str:
    """One line: how well LogME and LEEP ranked the listed pairs' realised transferability."""
    parts = []
    for key, (rho, n) in estimate_rhos(listing).items():
        name = OUTCOME_TITLES[key]
        parts.append(f"{name}: ρ = {rho:+.2f} over {n} pairs" if rho is not None
                     else f"{name}: not enough pairs with both values ({n})")
    return ("**Spearman ρ against the realised transferability score** — " + "; ".join(parts) +
            " (1: the estimate ranks the pairs as fine-tuning did).")


def share_curves(listing, picked: list[str] = ()) -> hv.Overlay:
    """The inherited share of important weights by depth of the picked pairs (A, B), overlaid; x the
    layers in depth order. A picked pair without a summary says so in its label."""
    rows = {r.get("diagnostics_run_id"): r for r in listing.rows if r.get("diagnostics_run_id")}
    layers = []
    for i, run in enumerate([p for p in picked if p in rows][:2]):
        row = rows[run]
        names = [str(x) for x in row.get("layers") or []]
        label = f"{'AB'[i]}: {row.get('name') or run}"
        data = pd.DataFrame({"layer": names, "share": [_share_at(row, n) for n in names]})
        if data.empty:
            label += " (no per-layer summary)"
        layers.append(hv.Curve(data, "layer", hv.Dimension("share", range=(0, 1)), label=label).opts(
            color=PICK_COLORS[i], line_width=2))
        layers.append(hv.Scatter(data, "layer", hv.Dimension("share", range=(0, 1)), label=label).opts(
            color=PICK_COLORS[i], size=6, tools=["hover"]))
    if not layers:
        layers = [hv.Curve([], "layer", "share").relabel("pick pairs in the table")]
    return hv.Overlay(layers).opts(hv.opts.Overlay(
        title="Inherited share of important weights by depth", ylim=(0, 1.02), responsive=True, shared_axes=False,
        min_height=280, show_grid=True, legend_position="bottom_left"))


def left_out_md(listing) -> str:
    """The runs that were not compared and why (Markdown, escaped); '' when none was left out."""
    if not listing.left_out:
        return ""
    lines = [f"**Left out: {len(listing.left_out)} run(s) not comparable with the listed pairs**"]
    for item in listing.left_out[:50]:
        lines.append(f"- {escape_md(item.get('name') or '')} {md_code(item.get('target_run_id') or '')}: "
                     f"{escape_md(item.get('reason') or '')}")
    if len(listing.left_out) > 50:
        lines.append(f"- … and {len(listing.left_out) - 50} more")
    return "\n".join(lines)


def undiagnosed_md(listing) -> str:
    """How many listed pairs have no finished diagnosis (their rows carry the command that diagnoses them)."""
    n = sum(1 for r in listing.rows if not r.get("diagnostics_run_id"))
    if not n:
        return ""
    return (f"{n} listed run(s) have no finished diagnosis: their rows show the run's outcomes and, in the "
            "column *to diagnose*, the command that diagnoses them.")
