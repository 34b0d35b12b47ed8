"""The app's state: one `param.Parameterized` object, no widgets. Views are functions of it.

The first group of parameters is what a link must restore (the app syncs them with the URL's query
string); the second is derived from the source and never set by hand.
"""

from __future__ import annotations

import param

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import TransferError

from .readers import PairSource

URL_PARAMS = ("experiment", "pair", "tab", "classes", "reproject", "layer_from", "layer_to", "hide_non_important",
              "hide_source_weights", "neuron")


class AppState(param.Parameterized):
    """Selected experiment, pair, classes, layers and neuron, plus what was loaded for them."""

    # --- what the URL carries -----------------------------------------------------------------
    experiment = param.String(default="", doc="experiment id")
    pair = param.String(default="", doc="diagnostics run id of the selected pair")
    tab = param.Integer(default=0, bounds=(0, None), doc="open view: 0 statistics, 1 instances, 2 network, 3 features")
    classes = param.List(default=[], item_type=str, doc="selected class names (empty: all)")
    reproject = param.Boolean(default=False, doc="instance view: t-SNE of the selected classes alone")
    layer_from = param.Integer(default=0, bounds=(0, None), doc="first layer index of the network view")
    layer_to = param.Integer(default=2, bounds=(0, None), doc="last layer index (inclusive)")
    hide_non_important = param.Boolean(default=False, doc="hide the non-important regions")
    hide_source_weights = param.Boolean(default=False, doc="hide the source model's weights")
    neuron = param.String(default="", doc="clicked neuron as 'model:layer:index' ('' = none)")

    # --- derived ------------------------------------------------------------------------------
    experiments = param.List(default=[], doc="[{'experiment_id', 'name'}] on the server")
    pairs = param.List(default=[], doc="diagnosed pairs of the experiment, newest first")
    bundle = param.ClassSelector(class_=PairBundle, default=None, allow_None=True)
    error = param.String(default="", doc="what went wrong loading, with the fix ('' = fine)")
    loading = param.Boolean(default=False)

    def __init__(self, source: PairSource, **params):
        self._source = source
        self._listed: dict[str, list[dict]] = {}  # pairs listed while choosing the experiment to open
        super().__init__(**params)
        self.refresh()

    @property
    def source(self) -> PairSource:
        return self._source

    def refresh(self) -> None:
        """(Re)list experiments, then the pairs and bundle the current selection names."""
        try:
            self.experiments = self._source.experiments()
        except TransferError as exc:
            self.param.update(experiments=[], pairs=[], bundle=None, error=str(exc))
            return
        self.error = ""
        ids = [e["experiment_id"] for e in self.experiments]
        wanted = self.experiment if self.experiment in ids else self._experiment_to_open(ids)
        if wanted != self.experiment:
            self.experiment = wanted  # the watcher lists its pairs
        else:
            self._load_pairs()

    def _experiment_to_open(self, ids: list[str]) -> str:
        """The linked pair's experiment, else the first with a diagnosed pair, else the first. The
        pairs listed on the way are kept for `_load_pairs` (a listing is paged requests)."""
        self._listed = {}

        def pairs(i: str) -> list[dict]:
            if i not in self._listed:
                self._listed[i] = self._source.pairs(i)
            return self._listed[i]

        if self.pair:  # a link naming only the pair
            found = next((i for i in ids if any(p["diagnostics_run_id"] == self.pair for p in pairs(i))), "")
            if found:
                return found
        return next((i for i in ids if pairs(i)), ids[0] if ids else "")

    @param.depends("experiment", watch=True)
    def _load_pairs(self) -> None:
        listed = self._listed.pop(self.experiment, None)
        self._listed = {}  # only the listing made just now for this choice is fresh enough to reuse
        try:
            if listed is None:
                listed = self._source.pairs(self.experiment) if self.experiment else []
            self.pairs = listed
        except TransferError as exc:
            self.param.update(pairs=[], error=str(exc))
            return
        ids = [p["diagnostics_run_id"] for p in self.pairs]
        if self.pair not in ids:
            self.pair = ids[0] if ids else ""
        elif self.bundle is None:
            self._load_bundle()

    @param.depends("pair", watch=True)
    def _load_bundle(self) -> None:
        if not self.pair:
            self.param.update(bundle=None)
            return
        self.loading = True
        try:
            bundle = self._source.bundle(self.pair)
        except TransferError as exc:
            self.param.update(bundle=None, error=self._with_fix(str(exc)), loading=False)
            return
        n = len(bundle.layers)
        self.param.update(bundle=bundle, error="", loading=False,
                          classes=[c for c in self.classes if c in bundle.classes],
                          layer_from=min(self.layer_from, n - 1), layer_to=min(self.layer_to, n - 1))

    def _with_fix(self, message: str) -> str:
        """``message`` plus the exact command that diagnoses the selected pair again."""
        row = next((p for p in self.pairs if p["diagnostics_run_id"] == self.pair), {})
        target = row.get("target_run_id")
        if not target or "--target-run-id" in message:
            return message
        return f"{message}. To fix: mlflow-transfer diagnose --target-run-id {target}"

    def watch_while(self, alive, fn, *names: str) -> None:
        """Call ``fn(*events)`` when parameters ``names`` change, as long as ``alive()`` holds; the
        first change after that drops the watcher. Views are rebuilt (for another pair, another list)
        while this state lives on, so what they watch must not outlive them."""
        def call(*events):
            if not alive():
                self.param.unwatch(watcher)
                return
            fn(*events)

        watcher = self.param.watch(call, list(names))

    def select_class(self, name: str, *, add: bool = False) -> None:
        """Select one class (or add it to the selection) — what clicking a class anywhere does."""
        if self.bundle is None or name not in self.bundle.classes:
            return
        self.classes = sorted({*self.classes, name}, key=self.bundle.classes.index) if add else [name]

    @property
    def selected_classes(self) -> list[str]:
        """The selected classes, or all classes of the bundle when none is selected."""
        if self.bundle is None:
            return []
        return list(self.classes) or self.bundle.classes
