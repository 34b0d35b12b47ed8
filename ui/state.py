"""The app's state: one `param.Parameterized` object, no widgets. Views are functions of it.

The first group of parameters is what a link must restore (the app syncs them with the URL's query
string); the second is derived from the source and never set by hand.
"""

from __future__ import annotations

import json
import logging
import math

import param

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.errors import BundleError, TransferError
from mlflow_transfer.validation import check_run_id

from .readers import PairSource, incomplete
from .views.timeline import MAX_TRACKED

URL_PARAMS = ("experiment", "pair", "tab", "classes", "reproject", "layer_from", "layer_to", "hide_non_important",
              "hide_source_weights", "neuron", "epoch", "tracked", "sweep", "compare_x", "compare_y", "compare")
MAX_COMPARED = 2  # the Compare tab diffs two pairs

log = logging.getLogger("ui")

UNEXPECTED = ("The pair could not be opened because of an unexpected error; the app's server log has the "
              "details. Pick another pair.")


class _FromURL:
    """A parameter the URL sets: a value of the wrong type or out of range is clamped or dropped
    (`AppState.coerce`), never refused. Panel's URL sync applies all parameters in one
    ``param.update``, which a refused value aborts half-way: the values before it set, their watchers
    never called, the ones after it lost."""

    def __set__(self, obj, val):
        coerce = getattr(obj, "coerce", None) if obj is not None else None
        super().__set__(obj, coerce(self.name, val) if coerce else val)


class _URLString(_FromURL, param.String):
    pass


class _URLInteger(_FromURL, param.Integer):
    pass


class _URLBoolean(_FromURL, param.Boolean):
    pass


class _URLList(_FromURL, param.List):
    pass


def _as_text(value) -> str:
    """A URL value as the string it was: Panel parses digits to numbers (``?experiment=2`` → 2)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, default=str)  # a list, a float, …: shown back, and refused as an id


def invalid_id(value: str, what: str) -> str:
    """'' when ``value`` is a well-formed MLflow id, else the message saying what arrived."""
    try:
        check_run_id(value, what=what)
    except TransferError as exc:
        return str(exc)
    return ""


def _as_int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
        return int(value)
    return None


def _point_ids(value, current: list[int]) -> list[int]:
    """Point ids from the URL or a pick: non-negative integers (digit strings too), each once, at most
    `MAX_TRACKED`; a value that is no list of them keeps ``current``."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return current
    ids = [n for n in (_as_int(v) for v in value) if n is not None and n >= 0]
    return list(dict.fromkeys(ids))[:MAX_TRACKED]


def _run_ids(value, current: list[str]) -> list[str]:
    """Picked pairs from the URL or the table: texts (numbers Panel parsed back to text), each once, at most
    `MAX_COMPARED`, in order; a value that is no list keeps ``current``. Ids are checked where used."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return current
    ids = [_as_text(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool)]
    return list(dict.fromkeys(i for i in ids if i))[:MAX_COMPARED]


class AppState(param.Parameterized):
    """Selected experiment, pair, classes, layers and neuron, plus what was loaded for them."""

    # --- what the URL carries -----------------------------------------------------------------
    # (ids are checked where they are used: a malformed one is kept, so the banner can say what arrived)
    experiment = _URLString(default="", doc="experiment id")
    pair = _URLString(default="", doc="diagnostics run id of the selected pair")
    tab = _URLInteger(default=0, bounds=(0, None), doc="open tab, by position in ui.app.TABS")
    classes = _URLList(default=[], item_type=str, doc="selected class names (empty: all)")
    reproject = _URLBoolean(default=False, doc="instance view: t-SNE of the selected classes alone")
    layer_from = _URLInteger(default=0, bounds=(0, None), doc="first layer index of the network view")
    layer_to = _URLInteger(default=2, bounds=(0, None), doc="last layer index (inclusive)")
    hide_non_important = _URLBoolean(default=False, doc="hide the non-important regions")
    hide_source_weights = _URLBoolean(default=False, doc="hide the source model's weights")
    neuron = _URLString(default="", doc="clicked neuron as 'model:layer:index' ('' = none)")
    epoch = _URLInteger(default=0, bounds=(0, None), doc="Training tab: position on the pair's timeline "
                                                         "(source epochs, then target epochs)")
    tracked = _URLList(default=[], item_type=int, doc="Training tab: ids of the picked points whose "
                                                      "trajectories are drawn")
    sweep = _URLString(default="", doc="Compare tab: sweep parent run id ('' = the whole experiment)")
    compare_x = _URLString(default="", doc="Compare tab: the chart's x (a setting or outcome key; '' = default)")
    compare_y = _URLString(default="", doc="Compare tab: the chart's y (an outcome key; '' = default)")
    compare = _URLList(default=[], item_type=str, doc="Compare tab: diagnostics run ids of the picked pairs "
                                                      "(A, B: at most two, in the order picked)")

    # --- derived ------------------------------------------------------------------------------
    experiments = param.List(default=[], doc="[{'experiment_id', 'name'}] on the server")
    pairs = param.List(default=[], doc="diagnosed pairs of the experiment, newest first")
    pairs_partial = param.Boolean(default=False, doc="`pairs` holds the newest few while the whole list is made "
                                                     "(`complete_pairs` replaces them)")
    bundle = param.ClassSelector(class_=PairBundle, default=None, allow_None=True)
    error = param.String(default="", doc="what went wrong loading, with the fix ('' = fine)")
    loading = param.Boolean(default=False)

    def __init__(self, source: PairSource, *, tab_count: int | None = None, tab_titles: tuple[str, ...] = (),
                 pairless_tabs: tuple[int, ...] = (), **params):
        self._source = source
        # tabs drawn without the pair's bundle (Compare): while one is open, a pair is listed and selected
        # but its bundle is opened only when a tab that shows it is (a first paint must not wait on a download)
        self._pairless_tabs = frozenset(pairless_tabs)
        self._bundle_for = ""  # the pair the bundle (or its error) was opened for
        self._tab_count = tab_count  # the app's tabs: ?tab= is clamped to them (None: not bounded above)
        self._tab_titles = tuple(tab_titles)  # their titles, for a view that opens another tab
        self._listed: dict[str, tuple[list[dict], bool]] = {}  # (pairs, whole) listed while choosing the experiment
        super().__init__(**params)
        self.refresh()

    @property
    def source(self) -> PairSource:
        return self._source

    def tab_index(self, title: str) -> int | None:
        """The position of the tab titled ``title`` (None: the app did not name its tabs, or has none)."""
        return self._tab_titles.index(title) if title in self._tab_titles else None

    def coerce(self, name: str, value):
        """``value`` made fit for URL parameter ``name``: numbers Panel parsed back to text for the
        ids and the neuron, an index clamped into range, class names narrowed to the open bundle's;
        a value that cannot be read keeps the current one."""
        if name in ("experiment", "pair", "neuron", "sweep", "compare_x", "compare_y"):
            return _as_text(value)
        current = self.param.values().get(name, self.param[name].default)
        if name in ("reproject", "hide_non_important", "hide_source_weights"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return {"true": True, "1": True, "false": False, "0": False}.get(text, current)
        if name == "tracked":
            return _point_ids(value, current)
        if name == "compare":
            return _run_ids(value, current)
        if name in ("tab", "layer_from", "layer_to", "epoch"):
            number = _as_int(value)
            if number is None:
                return current
            if name == "tab":
                top = self._tab_count - 1 if self._tab_count else None
            elif name == "epoch":
                top = None  # the timeline's length is the Training tab's to know: it clamps what it shows
            else:
                top = len(self.bundle.layers) - 1 if self.bundle is not None else None
            return max(0, number if top is None else min(number, max(top, 0)))
        if name == "classes":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)):
                return current
            names = [v if isinstance(v, str) else str(v) for v in value
                     if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
            known = self.bundle.classes if self.bundle is not None else None
            return [c for i, c in enumerate(names) if c not in names[:i] and (known is None or c in known)]
        return value

    def reload(self) -> None:
        """List the experiments and the open experiment's pairs again now (a source may keep listings a while); a
        pair whose bundle did not open is tried again, an open one is kept."""
        if self.bundle is None:
            self._bundle_for = ""
        if self.experiment:
            try:
                self._listed = {self.experiment: self._source.first_pairs(self.experiment, fresh=True)}
            except TransferError as exc:
                self.param.update(pairs=[], error=str(exc))
                return
        self.refresh()

    def refresh(self) -> None:
        """(Re)list experiments, then the pairs and bundle the current selection names."""
        try:
            self.experiments = self._source.experiments()
        except TransferError as exc:
            self.param.update(experiments=[], pairs=[], bundle=None, error=str(exc))
            return
        self.error = ""
        ids = [e["experiment_id"] for e in self.experiments]
        if self.experiment and self.experiment not in ids:  # a link's experiment: say what is wrong with it
            self._load_pairs()
            return
        wanted = self.experiment if self.experiment in ids else self._experiment_to_open(ids)
        if wanted != self.experiment:
            self.experiment = wanted  # the watcher lists its pairs
        else:
            self._load_pairs()

    def _experiment_to_open(self, ids: list[str]) -> str:
        """The linked pair's experiment, else the first with a diagnosed pair, else the first. The
        pairs listed on the way are kept for `_load_pairs` (a listing is paged requests)."""
        self._listed = {}

        def pairs(i: str, *, whole: bool = False) -> list[dict]:
            if i not in self._listed or (whole and not self._listed[i][1]):
                self._listed[i] = (self._source.pairs(i), True) if whole else self._source.first_pairs(i)
            return self._listed[i][0]

        if self.pair and not invalid_id(self.pair, "diagnostics run id"):  # a link naming only the pair
            found = next((i for i in ids if any(p["diagnostics_run_id"] == self.pair for p in pairs(i, whole=True))), "")
            if found:
                return found
        return next((i for i in ids if pairs(i)), ids[0] if ids else "")

    @param.depends("experiment", watch=True)
    def _load_pairs(self) -> None:
        listed = self._listed.pop(self.experiment, None)
        self._listed = {}  # only the listing made just now for this choice is fresh enough to reuse
        wrong = invalid_id(self.experiment, "experiment id") if self.experiment else ""
        if not wrong and self.experiment and self.experiments and \
                self.experiment not in [e["experiment_id"] for e in self.experiments]:
            wrong = (f"There is no experiment with id {self.experiment!r} on {self._source.uri}; "
                     "pick one in the list.")
        if wrong:  # nothing is listed or opened for it
            self.param.update(pairs=[], pair="", bundle=None, error=wrong)
            return
        try:
            # the newest pairs at once (a first paint must not wait on thousands); the whole list is made from the
            # next ask on (`complete_pairs`, polled once the page shows), so it does not slow the first paint
            rows, whole = listed if listed is not None else \
                self._source.first_pairs(self.experiment, start=False) if self.experiment else ([], True)
            self.param.update(pairs=rows, pairs_partial=not whole)
        except Exception as exc:  # noqa: BLE001 -- the app stays up, and the banner says why
            self.param.update(pairs=[], pairs_partial=False, error=self._unlisted(exc))
            return
        ids = [p["diagnostics_run_id"] for p in self.pairs]
        if self.pair and invalid_id(self.pair, "diagnostics run id"):
            self._load_bundle()  # a malformed link is shown as an error, not replaced by another pair
        elif self.pair not in ids and (whole or not self.pair):  # a linked older pair waits for the whole list
            complete = [p["diagnostics_run_id"] for p in self.pairs if not incomplete(p)]
            self.pair = (complete or ids or [""])[0]
        elif self._bundle_for != self.pair:
            self._load_bundle()

    def complete_pairs(self) -> bool:
        """While `pairs` holds the newest few, replace them by the whole list once it is made (the selected pair
        kept); whether the wait is over: the list arrived or failed (the banner says so), or none is awaited."""
        if not self.pairs_partial or not self.experiment:
            return True
        try:
            listed = self._source.first_pairs(self.experiment)
        except Exception as exc:  # noqa: BLE001 -- the newest pairs stay listed, and the banner says why
            self.param.update(pairs_partial=False, error=self._unlisted(exc))
            return True
        if not listed[1]:
            return False
        self._listed = {self.experiment: listed}
        self._load_pairs()
        return True

    def _unlisted(self, exc: Exception) -> str:
        """The banner's text for a pair list that failed: a `TransferError` says its own fix; anything else (a
        bug, an unforeseen server answer) is logged and named as unexpected."""
        if isinstance(exc, TransferError):
            return str(exc)
        log.error("listing the pairs of experiment %r failed", self.experiment, exc_info=exc)
        return ("The diagnosed pairs could not be listed because of an unexpected error; the app's server log has "
                "the details.")

    @param.depends("tab", watch=True)
    def _tab_shown(self) -> None:
        if self.tab not in self._pairless_tabs and self.pair and self._bundle_for != self.pair:
            self._load_bundle()

    @param.depends("pair", watch=True)
    def _load_bundle(self) -> None:
        if self.pair and self.tab in self._pairless_tabs:
            self._bundle_for = ""  # opened when a tab that shows it is
            if self.bundle is not None:
                self.bundle = None
            return
        self._bundle_for = self.pair
        if not self.pair:
            self.param.update(bundle=None)
            return
        wrong = invalid_id(self.pair, "diagnostics run id")
        if wrong:  # never looked up, never joined to a cache path
            self.param.update(bundle=None, error=wrong, loading=False)
            return
        row = next((p for p in self.pairs if p["diagnostics_run_id"] == self.pair), None)
        if row is not None and incomplete(row):  # its bundle never landed whole: say why, fetch nothing
            self.param.update(bundle=None, error=self.with_fix(
                f"Diagnostics run {self.pair} is {row['status']}, so its bundle is incomplete (a diagnose "
                "that was killed or is still running; `mlflow-transfer runs --stale --mark-failed` marks "
                "a killed one FAILED)"), loading=False)
            return
        self.loading = True
        try:
            bundle = self._source.bundle(self.pair)
            n = len(bundle.layers)
            self.param.update(bundle=bundle, error="", loading=False,
                              classes=[c for c in self.classes if c in bundle.classes],
                              layer_from=min(self.layer_from, max(n - 1, 0)), layer_to=min(self.layer_to, max(n - 1, 0)))
        except BundleError as exc:  # the bundle itself is missing or unreadable: diagnosing again fixes it
            self.param.update(bundle=None, error=self.with_fix(str(exc)), loading=False)
        except TransferError as exc:  # an unreachable server, a foreign cache entry: their own fix
            self.param.update(bundle=None, error=str(exc), loading=False)
        except Exception:  # whatever it was, no endless spinner: logged, and one sentence on the page
            log.exception("opening diagnostics run %s failed", self.pair)
            self.param.update(bundle=None, error=UNEXPECTED, loading=False)
        finally:
            if self.loading:  # a watcher of `bundle` raised inside the update above
                self.loading = False

    def with_fix(self, message: str) -> str:
        """``message`` plus the exact command that diagnoses the selected pair again."""
        row = next((p for p in self.pairs if p["diagnostics_run_id"] == self.pair), {})
        target = row.get("target_run_id")
        if not target or invalid_id(target, "run id") or "--target-run-id" in message:
            return message
        return f"{message}. To fix: mlflow-transfer diagnose --target-run-id {target}"

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
