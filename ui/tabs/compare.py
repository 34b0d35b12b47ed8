"""The Compare tab (issue 16): every pair of an experiment (or of one sweep) in a table with its setting
and outcomes, a chart of any setting or outcome against any outcome, the inherited-share lines of the
picked pairs and, for two picked pairs, the diff (`ui.views.diff`).

Unlike the other tabs it needs no open pair: it reads the source's compare listing (run params, tags and
metrics; no bundle) for ``state.experiment`` and ``state.sweep``; only the diff opens the two picked
pairs' bundles. Changing the chart's axes or the picked pairs updates the chart's data in place (a
DynamicMap over the state), not a new figure.
"""

from __future__ import annotations

import functools

import holoviews as hv
import panel as pn
import param

from mlflow_transfer.errors import BundleError, TransferError
from ui.state import MAX_COMPARED, invalid_id
from ui.views import compare as cv
from ui.views import diff as dv
from ui.views.text import md_code, message_md, shorten

from .base import Tab, part, poll
from .compare_diff import DiffPanel

__all__ = ["CompareTab"]

PICK_TWO = "Pick two diagnosed pairs in the table (A, then B) to see them side by side."
WHOLE = "whole experiment"
DIFF_INPUTS = ("state.experiment", "state.sweep", "reloads", "listed", "state.compare")  # what the diff shows
KEPT_RECORDS = 4  # the diff's records kept for the last few pairs picked (a pick back costs no reading)


class CompareTab(Tab):
    """Named panes: ``compare-notes`` (left out, undiagnosed, sweep notes), ``compare-estimates`` (Spearman
    ρ), ``compare-table``, ``compare-chart``, ``compare-lines``, the two-pair diff's (`DiffPanel`: ``diff``,
    ``diff-pick``, ``diff-error``, one of them visible); buttons "open pair A", "open pair B" and "reload the
    listing"."""

    title = "Compare"
    needs_bundle = False  # a listing of runs: the open pair's bundle is not opened for it

    reloads = param.Integer(default=0, doc="bumped by the reload button: the listing is asked for again")
    listed = param.Integer(default=0, doc="bumped when the whole listing replaces a first page (`partial`)")

    def __init__(self, **params):
        super().__init__(**params)
        self._listing: tuple | None = None  # ((experiment, sweep, reloads), listing, note) last asked for
        self._sweep = pn.widgets.Select(name="Sweep", width=260)
        self._x = pn.widgets.Select(name="x axis", width=240)
        self._y = pn.widgets.Select(name="y axis", width=240)
        self._table = None  # the listed pairs' table, once drawn
        self._syncing = False  # the widgets are being set from the state: not a user's choice
        self._sweep.param.watch(functools.partial(self._chosen, "sweep"), "value")
        self._x.param.watch(functools.partial(self._chosen, "compare_x"), "value")
        self._y.param.watch(functools.partial(self._chosen, "compare_y"), "value")
        self._reload = pn.widgets.Button(name="reload the listing", width=160)
        self._reload.on_click(lambda _e: setattr(self, "reloads", self.reloads + 1))
        self._diff = DiffPanel(self._open_pair)  # the two-pair diff, updated in place
        self._records: dict[str, tuple] = {}  # diagnostics run -> (bundle, its records), newest last

    def _chosen(self, name: str, event):
        if not self._syncing and event.new is not None:
            setattr(self.state, name, event.new)

    def _set_widgets(self, **values) -> None:
        self._syncing = True
        try:
            for name, update in values.items():
                getattr(self, name).param.update(**update)
        finally:
            self._syncing = False

    @param.depends("state.compare_x", "state.compare_y", watch=True)
    def _axes_changed(self):
        """An axis set otherwise (a link, a test) shows in its chooser."""
        values = {}
        for widget, key in (("_x", self.state.compare_x), ("_y", self.state.compare_y)):
            if key in getattr(self, widget).values and getattr(self, widget).value != key:
                values[widget] = {"value": key}
        if values:
            self._set_widgets(**values)

    # --- the listing ----------------------------------------------------------------------------
    def listing(self):
        """``(listing, note)`` of the current experiment and sweep; a sweep that is malformed or not of
        this experiment lists the whole experiment, with a note saying so."""
        key = (self.state.experiment, self.state.sweep, self.reloads, self.listed)
        if self._listing is not None and self._listing[0] == key:
            return self._listing[1:]  # the parts of one redraw share one listing; the source caches across
        source, note = self.state.source, ""
        sweep = self.state.sweep
        if sweep and invalid_id(sweep, "sweep run id"):
            note, sweep = message_md(f"{invalid_id(sweep, 'sweep run id')}; showing the whole experiment."), ""
        fresh = self.reloads > 0 and self._listing is not None and self._listing[0][2] != self.reloads
        asked = (self.state.experiment, sweep or None)
        # the whole listing is started by the first `whole_arrived`, once the page shows its first page
        listing = source.compare(*asked, fresh=fresh, preview=True, start=False)
        if sweep and sweep not in [s.get("run_id") for s in listing.sweeps]:
            note = (f"There is no sweep {md_code(shorten(sweep))} in this experiment; showing the whole "
                    "experiment.")
            asked = (self.state.experiment, None)
            listing = source.compare(*asked, fresh=fresh, preview=True, start=False)
        if listing.partial:
            note = (note + " " if note else "") + (f"The newest {len(listing.rows)} run(s) so far: the whole "
                                                   "listing replaces them when it is ready.")
            self._await_whole(key, asked)
        self._listing = (key, listing, note)
        return listing, note

    def _await_whole(self, key, asked) -> None:
        """Ask the source again (`poll`) until it has the whole listing of ``asked`` (`whole_arrived`)."""
        poll(functools.partial(self.whole_arrived, key, asked))

    def whole_arrived(self, key, asked) -> bool:
        """Whether waiting for the whole listing of ``asked`` (shown partially under ``key``) is over: it
        arrived (the parts are redrawn over it), failed (the redraw shows the error) or is no longer shown."""
        if self._listing is None or self._listing[0] != key:
            return True  # the experiment, sweep or listing changed meanwhile
        try:
            partial = self.state.source.compare(*asked, preview=True).partial
        except TransferError:
            partial = False
        if not partial:
            self.listed += 1
        return not partial

    # --- parts ------------------------------------------------------------------------------------
    @part("state.experiment", "state.sweep", "reloads", "listed", what="compare listing")
    def header(self):
        listing, note = self.listing()
        sweeps = {WHOLE: ""}
        for s in listing.sweeps:
            sweeps[f"{s.get('name') or 'sweep'} ({str(s.get('run_id'))[:8]})"] = s.get("run_id")
        xs, ys = cv.axis_choices(listing)
        x, y = cv.default_axes(listing, self.state.compare_x, self.state.compare_y)
        self._set_widgets(_sweep={"options": sweeps, "value": self.state.sweep if self.state.sweep in
                                  sweeps.values() else ""},
                          _x={"options": xs, "value": x}, _y={"options": ys, "value": y})
        lines = [f"**{len(listing.rows)} pair(s)** listed" + ("; settings that differ: "
                 + ", ".join(md_code(k) for k in listing.settings) if listing.settings else
                 "; no setting differs between them")]
        lines += [note, cv.undiagnosed_md(listing), cv.left_out_md(listing)]
        return pn.Column(pn.Row(self._sweep, self._reload),
                         pn.pane.Markdown("\n\n".join(t for t in lines if t), name="compare-notes"),
                         pn.pane.Markdown(cv.estimates_md(listing), name="compare-estimates"),
                         sizing_mode="stretch_width")

    @part("state.experiment", "state.sweep", "reloads", "listed", what="compare table")
    def table(self):
        listing, _ = self.listing()
        if not listing.rows:
            self._table = None
            return pn.pane.Markdown("No target run in this selection yet.", name="compare-empty")
        self._table = cv.compare_table(listing, self._picked(listing))
        # this listing's table: the watcher goes with it, and reads the rows the table shows
        self._table.param.watch(functools.partial(self._selected, listing), "selection")
        return self._table

    def _picked(self, listing) -> list[str]:
        ids = {r.get("diagnostics_run_id") for r in listing.rows if r.get("diagnostics_run_id")}
        return [p for p in self.state.compare if p in ids]

    def _selected(self, listing, event):
        ids = [listing.rows[i].get("diagnostics_run_id") for i in event.new if i < len(listing.rows)]
        ids = [i for i in ids if i]
        kept = [p for p in self.state.compare if p in ids]
        wanted = (kept + [i for i in ids if i not in kept])[-MAX_COMPARED:]  # a third tick drops the oldest
        if wanted != self.state.compare:
            self.state.compare = wanted

    @param.depends("state.compare", watch=True)
    def _highlight(self):
        if self._table is not None:
            ids = self._table.value["diagnostics_run_id"].tolist()
            rows = [ids.index(p) for p in self.state.compare if p in ids]
            if sorted(self._table.selection) != sorted(rows):
                self._table.selection = rows

    @part("state.experiment", "state.sweep", "reloads", "listed", what="compare chart")
    def chart(self):
        listing, _ = self.listing()

        def draw(x, y):
            return cv.scatter(listing, *cv.default_axes(listing, x, y))

        def picked(x, y, compare):
            return cv.picked_points(listing, *cv.default_axes(listing, x, y), compare)

        # two maps: a pick redraws the picked points only, not every pair's (the other map's frame is unchanged)
        s = self.state.param
        dmap = hv.DynamicMap(pn.bind(draw, s.compare_x, s.compare_y)) * \
            hv.DynamicMap(pn.bind(picked, s.compare_x, s.compare_y, s.compare))
        return pn.Column(pn.Row(self._x, self._y),
                         pn.pane.HoloViews(dmap, sizing_mode="stretch_width", min_height=340, name="compare-chart"),
                         sizing_mode="stretch_width")

    @part("state.experiment", "state.sweep", "reloads", "listed", "state.compare", what="inherited-share lines")
    def lines(self):
        listing, _ = self.listing()
        return pn.pane.HoloViews(cv.share_curves(listing, self._picked(listing)), sizing_mode="stretch_width",
                                 min_height=300, name="compare-lines")

    @part(*DIFF_INPUTS, what="two-pair diff")
    def diff(self):
        """The tab's one `DiffPanel`, brought up to the picked pairs (its panes updated in place)."""
        return self._draw_diff()

    @param.depends("state.compare", watch=True)
    def _pick_changed(self):
        """A new pick reaches the diff before the parts redrawn over the same change (they watch from their
        first drawing, after this), so its patch leaves first; the part's own redraw then finds it shown (a
        no-op) or, after an error here, shows the error."""
        if "diff" not in self._drawn or not self.state.experiment or not self.is_open:
            return
        try:
            self._draw_diff()
        except Exception:  # noqa: BLE001 -- the part's redraw draws it again, as an error pane
            return

    def _draw_diff(self):
        listing, _ = self.listing()
        rows = {r.get("diagnostics_run_id"): r for r in listing.rows if r.get("diagnostics_run_id")}
        picked = self._picked(listing)
        if len(picked) < 2:
            unknown = [p for p in self.state.compare if p not in rows]
            text = PICK_TWO + ("" if not unknown else " (The link's pairs " + ", ".join(
                md_code(shorten(p, 40)) for p in unknown) + " are not listed here.)")
            return self._diff.show_pick(text)
        a_row, b_row = rows[picked[0]], rows[picked[1]]
        records = []
        for label, row in (("A", a_row), ("B", b_row)):
            try:
                records.append(self._open(row))
            except TransferError as exc:
                return self._diff.show_error(self._with_command(f"Pair {label} could not be opened: {exc}", row))
        return self._diff.show(records[0], records[1], a_row, b_row)

    def _open(self, row) -> dv.PairRecords:
        """The records the diff reads of the row's bundle, each read and checked once per opened bundle (a
        broken one fails here, naming the pair, not half-way through the drawing)."""
        wrong = invalid_id(row["diagnostics_run_id"], "diagnostics run id")
        if wrong:
            raise BundleError(wrong)
        run = row["diagnostics_run_id"]
        bundle = self.state.source.bundle(run)
        kept = self._records.pop(run, None)
        if kept is None or kept[0] is not bundle:  # the source opened it anew: read it anew
            kept = (bundle, dv.read_records(bundle))
        self._records[run] = kept
        while len(self._records) > KEPT_RECORDS:
            self._records.pop(next(iter(self._records)))
        return kept[1]

    @staticmethod
    def _with_command(message: str, row: dict) -> str:
        target = row.get("target_run_id")
        if not target or invalid_id(target, "run id") or "--target-run-id" in message:
            return message
        return f"{message}. To fix: `mlflow-transfer diagnose --target-run-id {target}`"

    def _open_pair(self, run_id: str):
        statistics = self.state.tab_index("Statistics")
        # together: the pair's bundle is opened once, for the tab that shows it
        self.state.param.update(pair=run_id, **({"tab": statistics} if statistics is not None else {}))

    def layout(self):
        return pn.Column(self.lazy(self.header, sizing_mode="stretch_width"),
                         self.lazy(self.table, sizing_mode="stretch_width"),
                         pn.Row(self.lazy(self.chart, sizing_mode="stretch_width"),
                                self.lazy(self.lines, sizing_mode="stretch_width"), sizing_mode="stretch_width"),
                         pn.pane.Markdown("### Two pairs side by side"),
                         self.lazy(self.diff, sizing_mode="stretch_width"), sizing_mode="stretch_width")
