"""Where the app gets its run pairs and bundles.

`TrackingSource` reads a tracking server through the package's reader API
(:mod:`mlflow_transfer.tracking.bundles`: paged search by tag, bundles downloaded once into a local
cache); `MemorySource` holds ready bundles for tests and demos. Both answer the same questions: the
experiments, their pairs, a pair's bundle, how its target was made, (issue 14) its training timeline, and
(issue 16) the compare listing of an experiment or sweep (:mod:`mlflow_transfer.tracking.compare`: run
params, tags and metrics only, no bundle opened).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.bundle.timeline import TimelineBundle
from mlflow_transfer.errors import BundleError, RunLookupError
from mlflow_transfer.tracking.compare import OUTCOMES, CompareListing, diagnose_command, listing_from_rows, \
    parse_summary, summary_tag

__all__ = ["COMPARE_TTL_S", "DEFAULT_TRACKING_URI", "OUTCOMES", "PREVIEW_ROWS", "CompareListing", "MemorySource", "PairSource",
           "TrackingSource", "default_source", "incomplete"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default store
OPENED_BUNDLES = 8  # validated bundles a TrackingSource keeps open in memory
PREVIEW_ROWS = 50  # runs of a first page while the whole listing is made (a few of the tables' pages)
COMPARE_TTL_S = 30.0  # how long a TrackingSource reuses a listing (new runs show up after this, or on reload)
KEPT_SUMMARIES = 50_000  # parsed summaries of FINISHED diagnostics runs a TrackingSource keeps


class PairSource(Protocol):
    """What the app needs from a store of diagnosed pairs."""

    uri: str

    def experiments(self) -> list[dict]:
        """``[{"experiment_id", "name"}]``; raises `TrackingUnavailableError` when unreachable."""

    def pairs(self, experiment_id: str, *, fresh: bool = False) -> list[dict]:
        """Diagnosed pairs of one experiment, newest first (see ``list_diagnosed_pairs``); a row whose
        ``status`` is not FINISHED (absent means FINISHED) is an incomplete diagnosis. ``fresh``: not a
        listing kept from before (a reload)."""

    def first_pairs(self, experiment_id: str, *, fresh: bool = False, start: bool = True) -> tuple[list[dict], bool]:
        """``(rows, whole)`` at once: all of `pairs`, or (``whole`` False) the newest of them while the whole list
        is made (ask again; ``start`` False: made from the next ask on)."""

    def bundle(self, diagnostics_run_id: str) -> PairBundle:
        """The validated bundle; raises `BundleError` / `RunLookupError` with a fix in the message."""

    def methods(self, experiment_id: str, run_ids: list[str]) -> dict[str, dict]:
        """Issue 13: how each target run was made, ``{run_id: {"method", "slice_ratio", "teacher_only"}}``
        (see ``transfer_methods``; an untagged run is "finetune"); unknown runs are absent."""

    def timeline(self, diagnostics_run_id: str) -> TimelineBundle | None:
        """Issue 14: the pair's validated training timeline (the run's ``timetravel/`` bundle); None when
        it has none; raises `BundleError` for a broken or incomplete one, with the command that fixes it."""

    def compare(self, experiment_id: str, sweep_id: str | None = None, *, fresh: bool = False,
                preview: bool = False, start: bool = True) -> CompareListing:
        """Issue 16: every target run of the experiment (of sweep ``sweep_id`` only, when given) with its setting
        and outcomes, the comparable group kept (see ``list_compare_rows``); raises `RunLookupError` for a
        malformed id and `TrackingUnavailableError` when unreachable."""


def incomplete(row: dict) -> bool:
    """Whether a listed pair's diagnostics run did not finish (rows without a status are finished)."""
    return row.get("status", "FINISHED") != "FINISHED"


@dataclass
class TrackingSource:
    """A tracking server (``http://…``, ``sqlite:///…``) read through the package's reader API.

    Args:
        uri: the tracking URI.
        cache_dir: bundle cache (default ``$MLFLOW_TRANSFER_CACHE`` or ``~/.cache/mlflow-transfer``).
        max_pairs: at most this many pairs listed per experiment (pages of 500 are fetched until then).
    """

    uri: str
    cache_dir: Path | None = None
    max_pairs: int = 5000
    _opened: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _timelines: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _summaries: dict = field(default_factory=dict, init=False, repr=False)
    _kept: dict = field(default_factory=dict, init=False, repr=False)  # listing key -> (time, listing)
    _making: dict = field(default_factory=dict, init=False, repr=False)  # listing key -> Future
    _previews: dict = field(default_factory=dict, init=False, repr=False)  # listing key -> its first page
    _failed: dict = field(default_factory=dict, init=False, repr=False)  # listing key -> why its last making failed
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        # An unreachable server must fail in seconds (a banner), not after MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def experiments(self) -> list[dict]:
        from mlflow_transfer.tracking.bundles import list_experiments

        return list_experiments(self.uri)

    def pairs(self, experiment_id: str, *, fresh: bool = False) -> list[dict]:
        """Reused for `COMPARE_TTL_S` by every session (each page load lists the experiment, thousands of
        runs on a busy server); ``fresh`` lists again now. One being made (`first_pairs`) is waited for."""
        return list(self._background(("pairs", experiment_id), fresh=fresh).result())

    def first_pairs(self, experiment_id: str, *, fresh: bool = False, start: bool = True) -> tuple[list[dict], bool]:
        """``(rows, whole)`` at once: the whole pair list when it is kept, else the newest `PREVIEW_ROWS` pairs
        with ``whole`` False while the whole list is made meanwhile (ask again). The first page is asked for
        before the whole list is started, so the two do not share the server's time; ``start`` False leaves the
        start to the next ask (the caller's first paint needs the server for something else first)."""
        rows, whole = self._at_once(("pairs", experiment_id), fresh=fresh, start=start)
        return list(rows if whole else rows[:PREVIEW_ROWS]), whole

    def bundle(self, diagnostics_run_id: str) -> PairBundle:
        """Downloaded once into the cache and validated (every file hashed) on first open; a finished
        run's bundle never changes, so the last few opened stay in memory and switching back to a pair
        costs no re-hashing."""
        from mlflow_transfer.tracking.bundles import fetch_bundle

        if diagnostics_run_id in self._opened:
            self._opened.move_to_end(diagnostics_run_id)
            return self._opened[diagnostics_run_id]
        found = self._opened[diagnostics_run_id] = fetch_bundle(diagnostics_run_id, self.cache_dir,
                                                                 tracking_uri=self.uri)
        if len(self._opened) > OPENED_BUNDLES:
            self._opened.popitem(last=False)
        return found

    def methods(self, experiment_id: str, run_ids: list[str]) -> dict[str, dict]:
        from mlflow_transfer.tracking.bundles import transfer_methods

        return transfer_methods(experiment_id, run_ids, tracking_uri=self.uri)

    def timeline(self, diagnostics_run_id: str) -> TimelineBundle | None:
        """Downloaded once into the cache and validated, as `bundle`; the last few opened stay in memory.
        "None" (no timeline yet) is not kept: a ``timetravel`` run may add one while the app is open."""
        from mlflow_transfer.tracking.bundles import fetch_timeline

        if diagnostics_run_id in self._timelines:
            self._timelines.move_to_end(diagnostics_run_id)
            return self._timelines[diagnostics_run_id]
        found = fetch_timeline(diagnostics_run_id, self.cache_dir, tracking_uri=self.uri)
        if found is not None:
            self._timelines[diagnostics_run_id] = found
            if len(self._timelines) > OPENED_BUNDLES:
                self._timelines.popitem(last=False)
        return found

    def compare(self, experiment_id: str, sweep_id: str | None = None, *, fresh: bool = False,
                preview: bool = False, start: bool = True) -> CompareListing:
        """The listing through `list_compare_rows`, reused for `COMPARE_TTL_S` per (experiment, sweep) by every
        session; one being made (the whole pair list starts the experiment's) is waited for, not made twice. The
        parsed summaries of FINISHED diagnostics runs are kept by run id beyond that (they never change; a
        running one's never enters). A failed listing raises here and is not kept. ``preview``: while the whole
        listing is still being made, the newest `PREVIEW_ROWS` target runs at once (``partial``; ask again),
        asked for before the whole listing is started when none is being made (``start`` False: by the next ask)."""
        key = ("compare", experiment_id, sweep_id)
        if preview:
            return self._at_once(key, fresh=fresh, start=start)[0]
        return self._background(key, fresh=fresh).result()

    # --- listings made in the background and kept a while ----------------------------------------------
    def _make(self, key: tuple, *, newest: int | None = None):
        """What ``key`` names: ``("pairs", experiment)`` the pair list, ``("compare", experiment, sweep)`` the
        compare listing; ``newest``: only the newest runs (a pair list of ``newest`` rows, a compare first page)."""
        from mlflow_transfer.tracking.bundles import list_diagnosed_pairs
        from mlflow_transfer.tracking.compare import list_compare_rows

        if key[0] == "pairs":
            # unfinished diagnostics runs too (a killed diagnose, one still running): listed as incomplete
            return list_diagnosed_pairs([key[1]], max_pairs=newest or self.max_pairs, page_size=min(newest or 500, 500),
                                        tracking_uri=self.uri, include_incomplete=True)
        if newest:
            return list_compare_rows(key[1], sweep_id=key[2], tracking_uri=self.uri, newest=newest)
        if len(self._summaries) > KEPT_SUMMARIES:
            self._summaries.clear()
        return list_compare_rows(key[1], sweep_id=key[2], tracking_uri=self.uri, max_rows=self.max_pairs,
                                 cache=self._summaries)

    def _at_once(self, key: tuple, *, fresh: bool, start: bool) -> tuple:
        """``(listing, whole)`` of ``key`` without waiting: the kept or landed whole listing, else its first page
        (whole when it holds all there is: kept as the listing), the whole one started unless ``start`` is False
        (then by the next ask)."""
        future = self._background(key, fresh=fresh, start=False)
        if future is None or not future.done():
            page = self._first_page(key, fresh)
            if (len(page) <= PREVIEW_ROWS) if key[0] == "pairs" else not page.partial:
                self._keep(key, page)
                return page, True
            future = self._background(key, fresh=fresh, start=start)
            if future is None or not future.done():
                return page, False
        return future.result(), True

    def _keep(self, key: tuple, value) -> None:
        with self._lock:
            self._kept[key] = (time.monotonic(), value)
            self._previews.pop(key, None)
            self._failed.pop(key, None)

    def _first_page(self, key: tuple, fresh: bool):
        """The first page of ``key``, one per listing being made (asking again is free; ``fresh``: a new one); a
        pair list's has one row more than `PREVIEW_ROWS` when there are more (so a short list is known whole). A
        whole listing that failed since the last ask raises here, once (a waiting view then says so)."""
        with self._lock:
            failed = self._failed.pop(key, None)
            if fresh:
                self._previews.pop(key, None)
            page = self._previews.get(key)
        if failed is not None and not fresh:
            raise failed
        if page is None:
            page = self._make(key, newest=PREVIEW_ROWS + 1 if key[0] == "pairs" else PREVIEW_ROWS)
            with self._lock:
                self._previews[key] = page
        return page

    def _background(self, key: tuple, *, fresh: bool = False, start: bool = True) -> Future | None:
        """A done future of ``key``'s kept listing when recent (and not ``fresh`` asked for), else the one being
        made; else one started here on a thread (``start``), or None."""
        with self._lock:
            if fresh:  # asked for anew: the older one is not handed out meanwhile
                self._kept.pop(key, None)
            hit = self._kept.get(key)
            if hit is not None and time.monotonic() - hit[0] < COMPARE_TTL_S:
                done = Future()
                done.set_result(hit[1])
                return done
            if key in self._making:
                return self._making[key]
            if not start:
                return None
            future = self._making[key] = Future()
        threading.Thread(target=self._made, args=(key, future), daemon=True, name=f"{key[0]}-listing").start()
        return future

    def _made(self, key: tuple, future: Future) -> None:
        try:
            value = self._make(key)
        except BaseException as exc:  # noqa: BLE001 -- raised to whoever waits, and to the next first page asked
            with self._lock:
                del self._making[key]
                self._failed[key] = exc
            future.set_exception(exc)
            return
        self._keep(key, value)
        with self._lock:
            del self._making[key]
        future.set_result(value)
        if key[0] == "pairs":  # the experiment's compare listing next, so the Compare tab, opened later, finds it
            self._background(("compare", key[1], None))


def default_source(uri: str | None = None) -> TrackingSource:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default ``sqlite:///mlflow.db``."""
    return TrackingSource(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)


@dataclass
class MemorySource:
    """Pairs held in memory: ``experiments`` id → name, ``pair_rows`` id → rows, ``bundles`` run id →
    `PairBundle` or bundle folder, ``target_methods`` target run id → its method record (absent:
    "finetune"), ``timelines`` run id → `TimelineBundle` or timeline folder (absent: no timeline),
    ``compare_listings`` (experiment id, sweep id or None) → a ready `CompareListing` (absent: built from
    the pair rows and their bundles, see `compare`)."""

    experiments_by_id: dict[str, str] = field(default_factory=dict)
    pair_rows: dict[str, list[dict]] = field(default_factory=dict)
    bundles: dict[str, PairBundle | str | Path] = field(default_factory=dict)
    uri: str = "memory://"
    target_methods: dict[str, dict] = field(default_factory=dict)
    timelines: dict[str, TimelineBundle | str | Path] = field(default_factory=dict)
    compare_listings: dict[tuple, CompareListing] = field(default_factory=dict)

    def experiments(self) -> list[dict]:
        return [{"experiment_id": k, "name": v} for k, v in self.experiments_by_id.items()]

    def pairs(self, experiment_id: str, *, fresh: bool = False) -> list[dict]:
        return list(self.pair_rows.get(experiment_id, []))

    def first_pairs(self, experiment_id: str, *, fresh: bool = False, start: bool = True) -> tuple[list[dict], bool]:
        return self.pairs(experiment_id), True

    def bundle(self, diagnostics_run_id: str) -> PairBundle:
        if diagnostics_run_id not in self.bundles:
            raise RunLookupError(f"diagnostics run {diagnostics_run_id!r} does not exist on {self.uri}")
        found = self.bundles[diagnostics_run_id]
        return found if isinstance(found, PairBundle) else PairBundle.open(found)

    def methods(self, experiment_id: str, run_ids: list[str]) -> dict[str, dict]:
        known = {r.get("target_run_id") for r in self.pair_rows.get(experiment_id, [])}
        return {r: {"method": "finetune", "slice_ratio": None, "teacher_only": False, **self.target_methods.get(r, {})}
                for r in run_ids if r in known}

    def timeline(self, diagnostics_run_id: str) -> TimelineBundle | None:
        found = self.timelines.get(diagnostics_run_id)
        if found is None or isinstance(found, TimelineBundle):
            return found
        return TimelineBundle.open(found)

    def compare(self, experiment_id: str, sweep_id: str | None = None, *, fresh: bool = False,
                preview: bool = False, start: bool = True) -> CompareListing:
        """``compare_listings[(experiment_id, sweep_id)]`` when given; else one row per pair row of the
        experiment (a row's ``sweep_id`` key filters; its ``setting`` dict is the setting), outcomes from the
        row, per-depth lists and label space from its bundle when one is held (a broken one reads as none)."""
        if (experiment_id, sweep_id) in self.compare_listings:
            return self.compare_listings[(experiment_id, sweep_id)]
        pairs = self.pair_rows.get(experiment_id, [])
        rows = [self._compare_row(experiment_id, r) for r in pairs if sweep_id is None or r.get("sweep_id") == sweep_id]
        sweeps = sorted({r["sweep_id"] for r in pairs if r.get("sweep_id")})
        return listing_from_rows(rows, [{"run_id": s, "name": s} for s in sweeps])

    def _compare_row(self, experiment_id: str, pair: dict) -> dict:
        finished = not incomplete(pair) and pair.get("diagnostics_run_id") is not None
        summary = {}
        if finished and pair["diagnostics_run_id"] in self.bundles:
            try:
                summary = _bundle_summary(self.bundle(pair["diagnostics_run_id"])) or {}
            except BundleError:
                summary = {}
        target = pair.get("target_run_id")
        outcomes = {k: pair.get(k) if finished or k in ("target_accuracy", "logme", "leep") else None for k in OUTCOMES}
        if outcomes["cka_mean"] is None and finished:
            outcomes["cka_mean"] = summary.get("cka_mean")
        return {"target_run_id": target, "diagnostics_run_id": pair["diagnostics_run_id"] if finished else None,
                "source_run_id": pair.get("source_run_id"), "experiment_id": experiment_id,
                "name": pair.get("name") or pair.get("pair_id") or target, "target_status": "FINISHED",
                "diagnostics_status": pair.get("status", "FINISHED") if pair.get("diagnostics_run_id") else None,
                "model": pair.get("model"), "classes_hash": summary.get("classes_hash", pair.get("classes_hash")),
                "source_domain": pair.get("source_domain"), "target_domain": pair.get("target_domain"),
                "method": self.target_methods.get(target, {}).get("method", "finetune"),
                "sweep_id": pair.get("sweep_id"), "setting": dict(pair.get("setting", {})), **outcomes,
                **{k: summary.get(k, []) for k in ("layers", "inherited_share", "cka")},
                "command": None if finished else diagnose_command(target)}


def _bundle_summary(bundle: PairBundle) -> dict | None:
    """What a diagnostics run's summary tag says, read from its bundle (a memory source has no tags)."""
    table = bundle.layer_comparison()
    share = {int(d): float(v) for c, d, v in zip(table["class_index"], table["depth"],
                                                 table["inherited_weight_share"]) if int(c) == -1}
    cka = bundle.cka()
    n = len(bundle.layers)
    diagonal = [float(cka[i, i]) if i < min(cka.shape) else math.nan for i in range(n)]
    return parse_summary(summary_tag(bundle.layers, [share.get(i, math.nan) for i in range(n)], diagonal,
                                     bundle.label_spaces()["target"]))
