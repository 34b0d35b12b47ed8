"""The Compare tab's two-pair diff (issue 16), built once per tab and updated in place.

Its panes are made on the first pick of two pairs and kept: the plots are DynamicMaps over one
`hv.streams.Pipe` (a new pick sends new data to the same Bokeh figures), the class table's ``value``, the
head's text and the notes are replaced, and the "pick two" note, the error box and the diff itself are
shown or hidden with ``visible`` — a pick costs the browser new data, not new figures to lay out. The
plots are `ui.views.diff`'s, of a fixed structure whatever the pairs hold (both overlap heatmaps are
there; one without data is hidden).
"""

from __future__ import annotations

from collections.abc import Callable

import holoviews as hv
import panel as pn

from ui.views import diff as dv
from ui.views.text import escape_md, md_code, message_md

__all__ = ["DiffPanel"]

MODELS = ("source", "target")


def _frames(a, b, names: tuple[str, str]) -> dict:
    """What the plots, the table and the overlap note draw for pairs ``a`` and ``b`` (records or bundles)."""
    overlap, why = dv.neuron_overlap(a, b)
    return {"paths": dv.accuracy_series(a, b, names), "classes": dv.class_difference(a, b),
            "depth": dv.depth_difference(a, b),
            "overlap": dv.empty_frame(dv.OVERLAP_COLUMNS) if overlap is None else overlap, "why": why}


class DiffPanel:
    """``panel`` holds the panes ``diff-pick`` (the note asking for two pairs) and, made when first needed,
    ``diff-error`` (a pair that could not be opened) and ``diff``: ``diff-head``, the buttons "open
    pair A"/"open pair B" (calling ``open_pair`` with the pair shown now), ``diff-accuracy``,
    ``diff-classes``, ``diff-depth``, ``diff-class-table``, ``diff-overlap-missing``, ``diff-overlap-source``
    and ``diff-overlap-target``. Exactly one of note, error box and diff is visible."""

    def __init__(self, open_pair: Callable[[str], None]):
        self._open_pair = open_pair
        self.picked: tuple[str, str] = ("", "")  # the diagnostics runs of A and B shown
        self.pick = pn.pane.Markdown("", name="diff-pick", sizing_mode="stretch_width")
        self.error: pn.pane.Alert | None = None
        self.panel = pn.Column(self.pick, sizing_mode="stretch_width")
        self.diff: pn.Column | None = None
        self._data: hv.streams.Pipe | None = None
        self._state: tuple = ()  # what is shown: asked for again (the part's redraw after an early update), a no-op

    def _show(self, which: pn.viewable.Viewable | None) -> None:
        for pane in (self.pick, self.error, self.diff):
            if pane is not None and pane.visible != (pane is which):
                pane.visible = pane is which

    def show_pick(self, text: str) -> pn.Column:
        """The note ``text`` (Markdown) instead of the diff."""
        if self._state != ("pick", text):
            with pn.io.hold():
                self.pick.object = text
                self._show(self.pick)
            self._state = ("pick", text)
        return self.panel

    def show_error(self, message: str) -> pn.Column:
        """A red box holding ``message`` (as `ui.views.guard.error_pane`'s) instead of the diff."""
        if self._state != ("error", message):
            with pn.io.hold():
                if self.error is None:
                    self.error = pn.pane.Alert("", alert_type="danger", name="diff-error", sizing_mode="stretch_width")
                    self.panel.append(self.error)
                self.error.object = message_md(message)
                self._show(self.error)
            self._state = ("error", message)
        return self.panel

    def show(self, a, b, a_row: dict, b_row: dict) -> pn.Column:
        """The diff of ``a`` and ``b`` (`dv.PairRecords` or bundles) for the listing rows ``a_row`` and
        ``b_row``: the panes' data replaced, the panes made only the first time."""
        names = (str(a_row.get("name") or a_row["diagnostics_run_id"]),
                 str(b_row.get("name") or b_row["diagnostics_run_id"]))
        state = ("diff", a, b, a_row["diagnostics_run_id"], b_row["diagnostics_run_id"], names)
        if self._state == state:
            return self.panel
        self._state = ()  # drawn again if this update fails half-way
        frames = _frames(a, b, names)
        with pn.io.hold():
            self.picked = (a_row["diagnostics_run_id"], b_row["diagnostics_run_id"])
            if self.diff is None:
                self._build(frames)
            else:
                self._data.send(frames)
            self._make_live(frames)
            self._head.object = (f"**A** {escape_md(names[0])} {md_code(self.picked[0])} · **B** "
                                 f"{escape_md(names[1])} {md_code(self.picked[1])} — differences are B − A.")
            self._table.value = frames["classes"]
            self._update_overlap(frames)
            self._show(self.diff)
        self._state = state
        return self.panel

    def _make_live(self, frames: dict) -> None:
        """A plot over categories (classes, layers) becomes a DynamicMap at its first frame with rows:
        Bokeh's axis kind is fixed when the figure is made, and an empty frame makes a numeric one.
        Before that it shows its empty element."""
        for name, (pane, view, has_rows) in self._plots.items():
            if name in self._live:
                continue
            if has_rows(frames):
                pane.object = hv.DynamicMap(lambda data, view=view: view(data), streams=[self._data])
                self._live.add(name)
            elif pane.object is None:
                pane.object = view(frames)

    def _update_overlap(self, frames: dict) -> None:
        overlap = frames["overlap"]
        shown = {m: bool((overlap["model"] == m).any()) for m in MODELS}
        self._missing.object = escape_md(frames["why"] or "The two pairs have no class and layer with "
                                         "important neurons in common.")
        self._missing.visible = not any(shown.values())
        for m in MODELS:
            self._plots[f"diff-overlap-{m}"][0].visible = shown[m]

    def _build(self, frames: dict) -> None:
        self._data = hv.streams.Pipe(data=frames)
        self._live: set[str] = set()
        views = {  # name: (what it draws, whether a frame has rows for it)
            "diff-classes": (lambda data: dv.class_difference_bars(data["classes"]),
                             lambda data: len(data["classes"]) > 0),
            "diff-depth": (lambda data: dv.depth_difference_plot(data["depth"]), lambda data: len(data["depth"]) > 0),
            **{f"diff-overlap-{m}": (lambda data, m=m: dv.overlap_heatmap(data["overlap"], m),
                                     lambda data, m=m: bool((data["overlap"]["model"] == m).any()))
               for m in MODELS}}
        self._plots = {name: (pn.pane.HoloViews(None, sizing_mode="stretch_width", name=name), *funcs)
                       for name, funcs in views.items()}
        accuracy = pn.pane.HoloViews(hv.DynamicMap(lambda data: dv.accuracy_lines(data["paths"]), streams=[self._data]),
                                     sizing_mode="stretch_width", name="diff-accuracy")
        buttons = []
        for i, label in enumerate("AB"):
            button = pn.widgets.Button(name=f"open pair {label}", button_type="primary", width=140)
            button.on_click(lambda _e, i=i: self._open_pair(self.picked[i]))
            buttons.append(button)
        self._head = pn.pane.Markdown("", name="diff-head")
        self._table = pn.widgets.Tabulator(frames["classes"], show_index=False, disabled=True,
                                           name="diff-class-table", layout="fit_data_stretch", height=280,
                                           formatters={k: {"type": "money", "precision": 3}
                                                       for k in ("A", "B", "B − A")})
        self._missing = pn.pane.Markdown("", name="diff-overlap-missing")
        plots = {name: pane for name, (pane, *_) in self._plots.items()}
        self.diff = pn.Column(
            pn.Row(self._head, *buttons, sizing_mode="stretch_width"),
            pn.Row(accuracy, plots["diff-classes"], sizing_mode="stretch_width"),
            pn.Row(plots["diff-depth"], self._table, sizing_mode="stretch_width"),
            self._missing, pn.Row(*(plots[f"diff-overlap-{m}"] for m in MODELS), sizing_mode="stretch_width"),
            name="diff", sizing_mode="stretch_width", visible=False)
        self.panel.append(self.diff)
