"""The Robustness tab (issue 13): adversarial accuracy of teacher and student over ε, the same curves of
sibling students of the same teacher made by another transfer method (slice, scratch), the defect
inheritance rate per class, the inherited adversarial examples and the neurons the attack moves most,
each linked into the Network tab.

The class select is two-way with the state's ``classes`` (the first selected class; "all classes" when
none is selected) and drives every part. Panes are named ``no-robustness`` (a bundle without the
section), ``robustness-curves``, ``robustness-caption``, ``sibling-notes``, ``dir-bars``,
``dir-caption``, ``robustness-gallery`` and ``robustness-neurons``.
"""

from __future__ import annotations

import functools

import panel as pn
import param

from mlflow_transfer.errors import TransferError
from ui.views import robustness as rv
from ui.views.text import escape_html, escape_md, message_md

from .base import Tab, part

__all__ = ["RobustnessTab"]

NETWORK = "Network"  # the tab a neuron's button opens


@functools.lru_cache(maxsize=4)
def _record(bundle):
    """The bundle's robustness section, read once per open bundle (None: not in it)."""
    return bundle.robustness()


class RobustnessTab(Tab):
    title = "Robustness"

    model = param.Selector(default="target", objects=["target", "source"],
                           doc="whose important neurons the neuron table lists")

    def __init__(self, **params):
        super().__init__(**params)
        self._select = pn.widgets.Select(label="Class", width=180)
        self._select.param.watch(self._picked, "value")
        self._siblings: dict[tuple, tuple[list, list]] = {}  # (pair, listed pairs) → (series source, notes)
        self._new_pair()

    # --- the class, two-way with the state -----------------------------------------------------------

    def shown_class(self) -> str | None:
        """The class every part shows: the first selected one, or None for all classes."""
        return self.state.classes[0] if self.state.classes else None

    def _class_index(self) -> int:
        cls = self.shown_class()
        return self.state.bundle.classes.index(cls) if cls is not None else -1

    @param.depends("state.bundle", watch=True)
    def _new_pair(self):
        if self.state.bundle is not None:
            self._select.param.update(options=[rv.ALL_CLASSES, *self.state.bundle.classes],
                                      value=self.shown_class() or rv.ALL_CLASSES)

    @param.depends("state.classes", watch=True)
    def _follow_classes(self):
        if self.state.bundle is not None:
            self._select.value = self.shown_class() or rv.ALL_CLASSES

    def _picked(self, event):
        s = self.state
        if s.bundle is None or event.new is None or event.new == (self.shown_class() or rv.ALL_CLASSES):
            return
        if event.new == rv.ALL_CLASSES:
            s.classes = []
        else:
            s.select_class(event.new)

    # --- siblings: other students of the same teacher ------------------------------------------------

    def _target_run(self) -> str | None:
        row = next((p for p in self.state.pairs if p.get("diagnostics_run_id") == self.state.pair), {})
        return row.get("target_run_id")

    def siblings(self) -> tuple[str, list[tuple[dict, dict, list[str]]], list[str]]:
        """The open pair's student method label, the sibling pairs with a robustness section as (row,
        record, their bundle's classes) and notes on the ones skipped; looked up once per pair and
        listing (their bundles through the source's cache)."""
        s = self.state
        key = (s.pair, tuple(p.get("diagnostics_run_id") for p in s.pairs))
        if key in self._siblings:
            return self._siblings[key]
        notes, found, own = [], [], ""
        targets = [p["target_run_id"] for p in s.pairs if p.get("target_run_id")]
        lookup = getattr(s.source, "methods", None)  # a source written before issue 13: no siblings
        try:
            methods = lookup(s.experiment, targets) if lookup and targets and s.experiment else {}
        except TransferError as exc:
            methods = {}
            notes.append(f"Sibling students could not be looked up: {exc}")
        own = rv.method_label(methods.get(self._target_run()))
        for row in rv.find_siblings(s.pairs, s.pair, methods):
            run = row["diagnostics_run_id"]
            try:
                bundle = s.source.bundle(run)
                record = bundle.robustness()
            except TransferError as exc:
                notes.append(f"Sibling student {row['label']} (diagnostics run {run}) skipped: {exc}")
                continue
            if record is None:
                notes.append(f"Sibling student {row['label']} (diagnostics run {run}) skipped: its bundle has no "
                             "robustness section (diagnosed without `--robustness on`, or before it existed).")
                continue
            found.append((row, record, bundle.classes))
        self._siblings[key] = (own, found, notes)
        return self._siblings[key]

    # --- the parts -----------------------------------------------------------------------------------

    @part("state.bundle", "state.classes", "state.pairs", what="robustness curves")
    def curves(self):
        record = _record(self.state.bundle)
        if record is None:
            return pn.pane.Markdown(message_md(rv.no_robustness_message(self._target_run())), name="no-robustness")
        own, found, notes = self.siblings()
        cls = self.shown_class()
        series = rv.curve_series(record, self._class_index(), student=own)
        extra = [s for i, (row, rec, classes) in enumerate(found)
                 for s in rv.sibling_series(rec, classes, cls, row["label"], i)]
        title = f"Accuracy versus ε: {'all classes' if cls is None else 'class ' + cls}"  # canvas text
        fig = rv.accuracy_curves(series, extra, title=title)
        clean = rv.clean_accuracy(series + extra)
        caption = ("Clean accuracy (ε = 0): " + ", ".join(f"{escape_html(k)} {v:.3f}" for k, v in clean.items())
                   if clean else "No clean accuracy for this class.")
        how = (f"FGSM and L∞ PGD ({escape_html(record['curve_pgd_steps'])} steps, step "
               f"{escape_html(record['curve_step_size'])}); basis: {escape_html(record['basis'])}; "
               f"{float(record['seconds']):.1f} s")
        parts = [pn.pane.Bokeh(fig, name="robustness-curves", sizing_mode="stretch_width", min_height=340),
                 pn.pane.HTML(f"<div style='font-size:0.85em;color:#444'>{caption}<br>{how}</div>",
                              name="robustness-caption")]
        if notes:
            parts.append(pn.pane.Markdown("\n".join(f"- {message_md(n)}" for n in notes), name="sibling-notes",
                                          styles={"font-size": "0.85em"}))
        return pn.Column(*parts, sizing_mode="stretch_width")

    @part("state.bundle", what="defect inheritance rate")
    def defects(self):
        b, record = self.state.bundle, _record(self.state.bundle)
        if record is None:
            return pn.Spacer(height=0)
        return pn.Column(pn.pane.Bokeh(rv.dir_bars(record, b.classes), name="dir-bars", sizing_mode="stretch_width"),
                         pn.pane.HTML(rv.dir_caption_html(record), name="dir-caption"), sizing_mode="stretch_width")

    @part("state.bundle", "state.classes", what="inherited adversarial examples")
    def gallery(self):
        b = self.state.bundle
        if _record(b) is None:
            return pn.Spacer(height=0)
        index = None if self.shown_class() is None else self._class_index()
        body = "".join(rv.gallery_html(b.robustness_examples(a), b.classes, a, class_index=index)
                       for a in _record(b)["dir_attacks"] if a in rv.DIR_ATTACKS)
        return pn.pane.HTML(f"<div><b>Inherited adversarial examples</b> (student correct on the clean image, wrong "
                            f"on the teacher-crafted one)</div>{body}", name="robustness-gallery")

    @part("state.bundle", "state.classes", "model", what="neurons the attack moves")
    def neurons(self):
        b = self.state.bundle
        record = _record(b)
        if record is None:
            return pn.Spacer(height=0)
        index = None if self.shown_class() is None else self._class_index()
        frame = rv.neuron_frame(record, b.classes, self.model, index)
        if frame.empty:
            return pn.pane.Markdown(f"No important neuron of the {self.model} model for "
                                    f"{escape_md(self.shown_class() or rv.ALL_CLASSES)} in this bundle.",
                                    name="robustness-neurons")
        table = pn.widgets.Tabulator(frame, show_index=False, disabled=True, layout="fit_data_stretch",
                                     buttons={"network": "<span title='Open in the Network tab'>network →</span>"},
                                     formatters={c: {"type": "money", "precision": 4}
                                                 for c in ("clean", "adversarial", "shift")},
                                     name="robustness-neurons", sizing_mode="stretch_width", pagination="local",
                                     page_size=10)
        table.on_click(functools.partial(self._clicked, frame))
        return table

    def _clicked(self, frame, event):
        if getattr(event, "column", None) == "network" and event.row is not None and event.row < len(frame):
            row = frame.iloc[int(event.row)]
            self.open_neuron(str(row["class"]), str(row["layer"]), int(row["neuron"]))

    def open_neuron(self, cls: str, layer: str, neuron: int) -> None:
        """Show ``neuron`` of ``layer`` (this tab's model) for class ``cls`` in the Network tab: its class,
        a layer range starting at the layer, the neuron's detail."""
        s, b = self.state, self.state.bundle
        if b is None or cls not in b.classes or layer not in b.layers:
            return
        i, top = b.layers.index(layer), len(b.layers) - 1
        lo, hi = (i, i + 1) if i < top else (max(i - 1, 0), i)
        tab = s.tab_index(NETWORK)
        s.param.update(classes=[cls], layer_from=lo, layer_to=hi, neuron=f"{self.model}:{layer}:{neuron}",
                       **({"tab": tab} if tab is not None else {}))

    def layout(self):
        model = pn.widgets.RadioButtonGroup.from_param(self.param.model, name="neuron-model", margin=(20, 5, 0, 5))
        return pn.Column(
            pn.Row(self._select), self.lazy(self.curves, sizing_mode="stretch_width"),
            pn.Row(pn.Column(self.lazy(self.defects, sizing_mode="stretch_width"), sizing_mode="stretch_width"),
                   pn.Column(self.lazy(self.gallery), width=520), sizing_mode="stretch_width"),
            pn.pane.Markdown("**Neurons the attack moves most** (mean conductance over the class's analysed target "
                             "instances, clean and after the teacher-crafted output attack)"),
            model, self.lazy(self.neurons, sizing_mode="stretch_width"),
            name="robustness-tab", sizing_mode="stretch_width")
