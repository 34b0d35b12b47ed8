"""The Training tab (issue 14): the pair's timeline — the source run's epochs, then the target run's —
as DeepVisualInsight draws it: the sample's points of both domains over each epoch's decision regions,
an epoch slider with a play button, the transfer moment marked, the fidelity of the picture shown.

Switching epochs reads precomputed frames only and writes them into the figure's data sources in place
(`ui.views.timeline.show`); the figure is built once per pair. The player, or a click on the timeline
axis, moves the position. The state's ``epoch`` (the position) and
``tracked`` (picked point ids, whose trajectories are drawn) are URL parameters; a box or lasso
selection, or a tap, sets ``tracked``; the state's ``classes`` are shown in full, the others faded.
A pair without a timeline says which command makes one; a broken timeline is this tab's error, the
other tabs keep working. Panes are named ``no-timeline``, ``timeline-error``, ``timeline``,
``timeline-axis``, ``timeline-readout`` and ``timeline-status``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import panel as pn
import param
from bokeh.events import Tap

from mlflow_transfer.errors import TransferError
from ui.views import timeline as tv
from ui.views.guard import UNEXPECTED, error_pane
from ui.views.text import escape_html, message_md

from .base import Tab, part

__all__ = ["TrainingTab"]

log = logging.getLogger("ui")
KEPT_TIMELINES = 4  # opened timelines kept per session (switching back to a pair costs no re-hashing)


class TrainingTab(Tab):
    title = "Training"

    boundary = param.Boolean(default=True, doc="draw the boundary samples")

    def __init__(self, **params):
        super().__init__(**params)
        self._player = pn.widgets.DiscretePlayer(label="epoch", options={"–": 0}, value=0, interval=700,
                                                 loop_policy="once", show_value=True, show_loop_controls=False,
                                                 css_classes=["epoch-player"],
                                                 width=420)
        self._player.param.watch(self._played, "value")
        self._status = pn.Column(sizing_mode="stretch_width")  # an error found only on a switch, else empty
        boundary = pn.widgets.Checkbox.from_param(self.param.boundary, label="boundary samples",
                                                  margin=(20, 10, 0, 10))
        clear = pn.widgets.Button(label="forget picked points", color="light", margin=(14, 10, 0, 10))
        clear.on_click(lambda _e: setattr(self.state, "tracked", []))
        # two-way with the state, as in the Instances tab: a class picked anywhere is highlighted here
        self._choose = pn.widgets.MultiChoice.from_param(self.state.param.classes, label="Classes", width=300)
        self._controls = pn.Row(self._choose, boundary, clear)
        self._timelines: OrderedDict = OrderedDict()  # pair → its open TimelineBundle
        self._view: dict | None = None  # the drawn timeline: its figure, sources and frames read so far
        self._syncing = False  # a selection written from the state, not picked by the user
        self._last_pair: str | None = None  # the pair whose timeline was drawn last

    # --- the timeline of the open pair -------------------------------------------------------------

    def _target_run(self) -> str | None:
        row = next((p for p in self.state.pairs if p.get("diagnostics_run_id") == self.state.pair), {})
        return row.get("target_run_id")

    def timeline(self):
        """The open pair's `TimelineBundle` (None: it has none); raises `TransferError` for a broken one."""
        pair = self.state.pair
        if pair in self._timelines:
            self._timelines.move_to_end(pair)
            return self._timelines[pair]
        lookup = getattr(self.state.source, "timeline", None)  # a source written before issue 14: none
        found = lookup(pair) if lookup is not None else None
        if found is not None:  # "none yet" is asked again: a timetravel run may add one meanwhile
            self._timelines[pair] = found
            if len(self._timelines) > KEPT_TIMELINES:
                self._timelines.popitem(last=False)
        return found

    def position(self) -> int:
        """The state's epoch clamped to the drawn timeline."""
        n = self._view["n"] if self._view else 1
        return min(max(int(self.state.epoch), 0), n - 1)

    # --- the part ----------------------------------------------------------------------------------

    @part("state.bundle", "state.pair", what="training timeline")
    def figure(self):
        self._view = None
        self._status.objects = []
        try:
            timeline = self.timeline()
        except TransferError as exc:
            target = self._target_run()
            message = str(exc).replace("<target run>", target) if target else str(exc)
            return error_pane(message, name="timeline-error")
        if timeline is None:
            return pn.pane.Markdown(message_md(tv.no_timeline_message(self._target_run())), name="no-timeline")
        if self._last_pair not in (None, self.state.pair) and self.state.tracked:
            self.state.tracked = []  # picked points of another pair's sample (a link's own ones are kept)
        self._last_pair = self.state.pair
        epochs = timeline.epochs()
        fig, sources = tv.timeline_figure(timeline, boundary=self.boundary)
        axis, marker = tv.axis_figure(epochs, timeline.transfer_position)
        readout = pn.pane.HTML("", name="timeline-readout", sizing_mode="stretch_width")
        self._view = {"pair": self.state.pair, "timeline": timeline, "epochs": epochs, "n": timeline.n_positions,
                      "figure": fig, "sources": sources, "marker": marker, "readout": readout, "frames": {},
                      "points": timeline.points()}
        for domain in tv.DOMAINS:
            sources[domain].selected.on_change("indices", self._picked)
        # Choices.js writes option labels as HTML: the labels are escaped names
        self._choose.options = {escape_html(c): c for c in self.state.bundle.classes}
        labels = tv.position_labels(epochs)
        options = {(f"{label} (#{i + 1})" if labels.count(label) > 1 else label): i for i, label in enumerate(labels)}
        self._player.param.update(options=options, value=self.position())
        self._redraw()
        notes = [pn.pane.Markdown(message_md(n), styles={"font-size": "0.85em"}) for n in timeline.notes]
        axis.on_event(Tap, self._tapped)
        return pn.Column(
            pn.Row(self._player, self._controls), self._status,
            pn.pane.Bokeh(axis, name="timeline-axis", sizing_mode="stretch_width"),
            pn.Row(pn.Column(pn.pane.Bokeh(fig, name="timeline", sizing_mode="stretch_width", min_height=560),
                             pn.pane.HTML(tv.legend_html(timeline.classes), name="timeline-legend"),
                             sizing_mode="stretch_width"),
                   pn.Column(readout, width=420)),
            *notes, sizing_mode="stretch_width")

    # --- in-place updates -------------------------------------------------------------------------------

    def _frame(self, position: int):
        """The position's frame and region image, read once per drawn timeline."""
        frames = self._view["frames"]
        if position not in frames:
            t = self._view["timeline"]
            frames[position] = (t.frame(position), t.region(position))
        return frames[position]

    def _trajectories(self, picked: list[int]) -> np.ndarray:
        return np.stack([self._frame(p)[0].coords[picked] for p in range(self._view["n"])])

    def _redraw(self, names: tuple[str, ...] | None = None) -> None:
        """Write the shown position, classes and picked points into the figure's sources (only those
        ``names`` when given: a class or pick change sends no region image)."""
        view = self._view
        if view is None or view["pair"] != self.state.pair:
            return
        p = self.position()
        try:
            frame, region = self._frame(p)
            n_points = len(view["points"]["label"])
            picked = [t for t in self.state.tracked if 0 <= t < n_points][:tv.MAX_TRACKED]
            data = tv.scene(view["timeline"], p, self.state.classes, picked, frame=frame, region=region,
                            trajectories=self._trajectories(picked) if picked else None)
        except TransferError as exc:  # a frame found broken only now: said once, the last picture kept
            self._status.objects = [error_pane(str(exc), name="timeline-status")]
            return
        except Exception:
            log.exception("drawing timeline position %d failed", p)
            self._status.objects = [error_pane(UNEXPECTED, name="timeline-status")]
            return
        self._status.objects = []
        if names is not None:
            tv.show(view["sources"], {name: data[name] for name in names})
        else:
            tv.show(view["sources"], data, view["figure"],
                    tv.figure_title(view["epochs"], p, view["timeline"].transfer_position))
            tv.show_axis(view["marker"], p)
            view["readout"].object = tv.readout_html(view["epochs"], p)
        self._select(picked, data)

    def _select(self, picked: list[int], data: dict) -> None:
        """Show the picked points as the figure's selection (a link's ``tracked`` too)."""
        self._syncing = True
        try:
            for domain in tv.DOMAINS:
                rows = [i for i, point in enumerate(data[domain]["point"]) if int(point) in picked]
                source = self._view["sources"][domain]
                if list(source.selected.indices) != rows:
                    source.selected.indices = rows
        finally:
            self._syncing = False

    @param.depends("state.epoch", watch=True)
    def _epoch_changed(self):
        if self._view is not None:
            if self._player.value != self.position():
                self._player.value = self.position()
            self._redraw()

    @param.depends("state.classes", watch=True)
    def _classes_changed(self):
        self._redraw(tv.DOMAINS)

    @param.depends("state.tracked", watch=True)
    def _tracked_changed(self):
        self._redraw(("trajectories", "now"))

    @param.depends("boundary", watch=True)
    def _boundary_shown(self):
        if self._view is not None:
            self._view["figure"].select_one({"name": "boundary samples"}).visible = self.boundary

    def _tapped(self, event):
        """A click on the timeline axis opens the position nearest to it."""
        if self._view is not None and event.x is not None:
            self.state.epoch = min(max(round(event.x), 0), self._view["n"] - 1)

    def _played(self, event):
        if self._view is not None and event.new is not None and event.new != self.state.epoch:
            self.state.epoch = int(event.new)

    def _picked(self, attr, old, new):
        """A box, lasso or tap selection in the figure: its points are the tracked ones."""
        if self._syncing or self._view is None:
            return
        picked = []
        for domain in tv.DOMAINS:
            source = self._view["sources"][domain]
            points = source.data.get("point", [])
            picked += [int(points[i]) for i in source.selected.indices if 0 <= i < len(points)]
        self.state.tracked = picked

    def layout(self):
        return pn.Column(self.lazy(self.figure, sizing_mode="stretch_width"), name="training-tab",
                         sizing_mode="stretch_width")
