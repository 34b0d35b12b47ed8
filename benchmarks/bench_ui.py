"""Benchmark: the app's two speed goals, measured in a real browser (Debian's Chromium via Playwright).

Goals: (1) switching to another pair whose bundle is already cached updates the shown view in ≤ 3 s
(issue 4), and a switch followed by opening every other view in turn takes ≤ 2.5 s summed (issue 10);
(2) the instance view with 1,000,000 points paints first in ≤ 3 s (issue 4) and repaints after a zoom
in ≤ 0.35 s (issue 10); (3) in the Training tab, the next epoch of a timeline is painted ≤ 0.3 s after the
click (issue 14). Each is printed with its ratio to the goal and to a baseline from the same run.

Set-up (self-contained): two real pair bundles are built here by the tests' factory
(``tests/helpers/bundles.py``: two untrained alexnet-32 pairs, ``--classes`` × ``--per-class`` random
images, different seeds and scores) and a generated instance frame (``--points`` rows in Gaussian
blobs, one per class, the columns of ``instance_frame``). This script then re-runs itself as the
server (``--serve``, a subprocess, so its CPU time is its own), which serves with ``pn.serve`` on
127.0.0.1:

* ``/app`` — ``build_app(MemorySource(...))`` over the two bundle folders: "cached" as in a bundle
  already downloaded (each switch opens the folder again, hash check included; the time of that is
  printed, as it is what a bundle kept open in memory saves);
* ``/timeline`` — ``build_app`` over a `MemorySource` of one pair bundle and two planted timelines
  (``tests/helpers/timeline.py``): the demo pair's scale (8 + 5 positions, ``--classes`` × ``--timeline-per-class``
  points per domain and split, a 200 × 200 region grid) and, as the baseline, a tiny one (3 + 2 positions,
  3 classes × 2 points, a 40 × 40 grid);
* ``/raster`` — ``pn.panel(instance_scatter(frame))`` for the generated frame (Datashader);
* ``/raster_small`` and ``/scatter_small`` — the first ``--small`` rows of it (default 20,000, the
  raster threshold), rasterised anyway and as the plain scatter the app shows at that size.

How it measures (all times are the page's ``performance.now()``, so no Python↔browser latency is in
them): an init script wraps BokehJS's ``PlotView._actual_paint`` to log every canvas paint (plot,
time, ranges, identity of the raster image painted), observes DOM mutations in the document and in
every shadow root, and logs the time of each ``pointerdown`` and ``wheel``. A measurement starts at
the user's action (navigation start for a page load, the pointerdown of a click, the wheel event) and
ends at the last paint or DOM mutation before the page has been quiet for ``--quiet`` seconds and
shows what it should (the other pair's transferability score, a new raster image, ...).

* pair switch: click the other pair's row in the pair table, once with each tab active (Statistics,
  Instances, Network, Features; the tab is re-opened after the switch if the app did not keep it),
  alternating between the two pairs, ``--repeat`` times; baseline: loading the page (warm server);
* epoch switch: open the Training tab of a timeline (``?pair=…&tab=…``), then click the epoch player's
  "next" button (its "first" at the end) ``--switches`` times and time pointerdown → the first paint of
  the region image new to the browser (the figure's data written in place, no rebuild); baseline: the
  same on the tiny timeline;
* 1M points: load ``/raster`` (first paint = first canvas paint holding a raster image; settled =
  the last paint or DOM change, e.g. after the re-aggregation at the plot's real size), then zoom in
  with the mouse wheel over the plot (wheel zoom is the active scroll tool) and time wheel → first
  paint of a raster image new to the browser (the picture, not the hover layer); baseline: the same
  at ``--small`` points. For scale, in plain Python (no browser): the view's redraw for one zoom (one
  Datashader pass for the counts per class and the hover key, the shading, the pooled keys, the
  elements), its Datashader pass and shading alone, the same counts shaded by Datashader, HoloViews'
  ``datashade`` plus ``rasterize(max(hover key))`` (the two passes the view made before),
  ``hover_key`` and ``instance_frame`` over as many instances. Also printed: the bytes each zoom
  sent (the websocket's data frames), which do not swing.

Also printed, to say where the time goes: CPU seconds of the server and of the browser processes in
each measurement, and from a log of the server's websocket (what it handled and wrote, with epoch
times): action → the message that set the server off, → the server's last data frame, → the end.
Numbers on a machine shared with other processes swing.

Issue 16, ``--only compare`` (alone; results in ``benchmarks/results_compare.txt``): a real ``mlflow server``
(sqlite store, 127.0.0.1) seeded by ``benchmarks/seed_compare.py`` with ``--pairs`` diagnosed pairs (a few with
a real bundle) and, as the baseline, an experiment of ``--compare-base`` pairs. Plain Python: the compare
listing (`list_compare_rows`, two searches side by side) cold, through a `TrackingSource` cached (within
its TTL) and after the TTL (parsed summaries kept), the listing of one sweep, and as the baseline the
pair list the app loads for an experiment anyway (`list_diagnosed_pairs`, one search) and the listing of
the small experiment. In Chromium (`measure_compare_paint`, when the app has a Compare tab): first paint of
``?experiment=…&tab=<Compare>`` = navigation start → the first row of the compare table shown (a row
with a target run's name): the small experiment first (its first load pays the app server's first
session; its warm loads are the baseline), then the big one's first load (its listing not made yet) and
warm loads (listing cached), then the first load of each of ``--repeat`` − 1 more experiments seeded like
the big one (no real bundles): the first loads' median and spread.

Usage: ``python benchmarks/bench_ui.py [--points 1000000] [--small 20000] [--repeat 3] [--only raster]``
(``--only app``: goal 1 alone; ``--only raster``: goal 2 alone, no bundles built; ``--only epoch``: goal 3
alone; ``--only compare [--pairs 1000]``: issue 16's listing and first paint). Results:
``benchmarks/results_ui.txt``, ``benchmarks/results_compare.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):  # the app, and the tests' bundle factory and browser
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from helpers.browser import CHROMIUM, CHROMIUM_ARGS
from helpers.bundles import write_tiny_bundle
from helpers.procs import cpu_seconds, descendants
from helpers.timeline import write_tiny_timeline

SWITCH_GOAL, TOUR_GOAL, FIRST_PAINT_GOAL, ZOOM_GOAL, EPOCH_GOAL = 3.0, 2.5, 3.0, 0.35, 0.3
COMPARE_PAINT_GOAL = 3.0  # issue 16: the Compare tab over 1,000 diagnosed pairs, first paint
COMPARE_AXIS_GOAL = 0.5  # changing the chart's axes
COMPARE_DIFF_GOAL = 2.0  # the two-pair diff, both bundles cached
SCORES = (0.125, -0.05)  # transferability scores of the two pairs: the badge tells them apart
TABS = ("Statistics", "Instances", "Network", "Features")


# --------------------------------------------------------------------------------------------------
# Data


def build_bundles(roots: list[Path], n_classes: int, per_class: int) -> None:
    """The two pairs: ``n_classes`` × ``per_class`` instances each, seeds 1 and 2, scores `SCORES`."""
    for i, root in enumerate(roots):
        write_tiny_bundle(root, tuple(str(c) for c in range(n_classes)), n_instances=n_classes * per_class,
                          seed=i + 1, meta={"runs": {"source": f"s{i}", "target": f"t{i}", "diagnostics": f"d{i}"},
                                            "scores": {"transferability_score": SCORES[i]}})


TIMELINES = ("bench-timeline-small", "bench-timeline")  # the baseline first
POSITIONS = {TIMELINES[0]: 3 + 2, TIMELINES[1]: 8 + 5}  # positions on each (source + target epochs)


def build_timelines(roots: list[Path], n_classes: int, per_class: int) -> None:
    """The tiny baseline timeline and one at the demo pair's scale (see the module docstring)."""
    write_tiny_timeline(roots[0])
    write_tiny_timeline(roots[1], tuple(str(c) for c in range(n_classes)), n_source=8, n_target=5,
                        per_class=per_class, grid=200)


def generated_frame(n: int, n_classes: int = 10, seed: int = 0):
    """``n`` rows with the columns of ``instance_frame``: one Gaussian blob per class in 2-D."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    angle = 2 * np.pi * np.arange(n_classes) / n_classes
    centres = np.c_[40 * np.cos(angle), 40 * np.sin(angle)]
    spread = rng.uniform(3, 8, n_classes)
    xy = centres[labels] + rng.standard_normal((n, 2)) * spread[labels, None]
    pred = np.where(rng.random(n) < 0.8, labels, rng.integers(0, n_classes, n))
    names = np.array([str(c) for c in range(n_classes)], dtype=object)
    return pd.DataFrame({"row": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "class": names[labels],
                         "domain": np.where(rng.random(n) < 0.5, "source", "target").astype(object),
                         "prediction": names[pred], "mispredicted": pred != labels,
                         "confidence": rng.random(n), "label": labels, "pred": pred})


def _pair_rows(ids: list[str]) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"diagnostics_run_id": d, "experiment_id": "1", "recipe": f"bench-{i}", "model": "alexnet-32",
             "source_domain": "random", "target_domain": "random", "start_time": now - i * 60_000,
             "transferability_score": SCORES[i], "target_accuracy": 0.5, "frozen_layers": None}
            for i, d in enumerate(ids)]


# --------------------------------------------------------------------------------------------------
# Server (this script run with --serve)


def _log_messages(path: str) -> None:
    """Append one JSON line per websocket message handled and per frame written (epoch times, bytes):
    Panel writes its document patches to the socket itself, so writes are logged where tornado sends."""
    from bokeh.server.views.ws import WSHandler
    from tornado.websocket import WebSocketHandler

    out = open(path, "a", buffering=1)  # noqa: SIM115 — open as long as the server runs
    handle, write = WSHandler._handle, WebSocketHandler.write_message

    async def logged_handle(self, message):
        t0 = time.time()
        try:
            return await handle(self, message)
        finally:
            out.write(json.dumps({"dir": "in", "t0": t0, "t1": time.time(), "type": message.msgtype}) + "\n")

    def logged_write(self, message, binary=False):
        t0 = time.time()
        future = write(self, message, binary)
        size = len(message) if isinstance(message, (bytes, str)) else len(json.dumps(message))
        future.add_done_callback(lambda _f: out.write(json.dumps(
            {"dir": "out", "t0": t0, "t1": time.time(), "bytes": size}) + "\n"))
        return future

    WSHandler._handle, WebSocketHandler.write_message = logged_handle, logged_write


def _die_with_parent() -> None:
    """Get SIGTERM when the parent (the measuring script) dies, however it dies (Linux)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve(args) -> None:
    import holoviews as hv
    import panel as pn

    from ui.app import build_app
    from ui.readers import MemorySource
    from ui.views.instances import instance_scatter

    _die_with_parent()
    hv.extension("bokeh", logo=False)
    _log_messages(args.log)
    routes = {}
    if args.bundles:
        bundles = dict(zip(("bench-pair-a", "bench-pair-b"), args.bundles))
        source = MemorySource({"1": "bench"}, {"1": _pair_rows(list(bundles))}, bundles)
        routes["app"] = lambda: build_app(source)
    if args.timelines:
        pair = args.timelines[0]  # a pair bundle for the timelines' pairs (the app opens one per pair)
        timelines = dict(zip(TIMELINES, args.timelines[1:]))
        rows = [{**r, "target_run_id": f"target-{r['diagnostics_run_id']}"} for r in _pair_rows(list(timelines))]
        timeline_source = MemorySource({"1": "bench"}, {"1": rows}, dict.fromkeys(timelines, pair),
                                       timelines=timelines)
        routes["timeline"] = lambda: build_app(timeline_source)
    if args.only in (None, "raster"):
        frame = generated_frame(args.points, args.classes)
        small = frame.iloc[:args.small].reset_index(drop=True)
        classes = [str(c) for c in range(args.classes)]

        def scatter(f, threshold):
            # a bokeh figure up to the threshold, a HoloViews DynamicMap above it, as in the app
            return pn.panel(instance_scatter(f, classes, threshold=threshold), sizing_mode="stretch_width",
                            min_height=440, name="instances")

        routes.update({"raster": lambda: scatter(frame, 0), "raster_small": lambda: scatter(small, 0),
                       "scatter_small": lambda: scatter(small, len(small))})
    server = pn.serve(routes, address="127.0.0.1", port=args.port, show=False, start=False,
                      websocket_origin=[f"127.0.0.1:{args.port}"], title="bench")
    print("READY", flush=True)
    server.io_loop.start()


# --------------------------------------------------------------------------------------------------
# Browser side

# Runs before the page's own scripts: logs canvas paints, DOM mutations (shadow roots included),
# pointerdowns and wheel events, in the page's performance.now() milliseconds.
INIT_JS = r"""(() => {
  const B = window.__bench = {paints: [], lastMutation: 0, pointer: [], wheel: []};
  const seen = new WeakMap(); let serial = 0;
  const key = (o) => { if (o == null || typeof o !== "object") return -1;
                       if (!seen.has(o)) seen.set(o, ++serial); return seen.get(o); };
  const opts = {subtree: true, childList: true, attributes: true, characterData: true};
  const observer = new MutationObserver(() => { B.lastMutation = performance.now(); });
  const attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) { const root = attach.call(this, init); observer.observe(root, opts); return root; };
  observer.observe(document, opts);
  function patch() {
    if (!window.Bokeh || !Bokeh.Models || !Bokeh.Models.get) return false;
    const PV = Bokeh.Models.get("Plot").prototype.default_view;
    if (PV.prototype.__benched) return true;
    const paint = PV.prototype._actual_paint;
    PV.prototype._actual_paint = function (...a) {
      const out = paint.apply(this, a);
      let img = -1, shape = null;
      for (const [m] of this.renderer_views) {
        const g = m.glyph;
        // the picture (ImageRGBA) rather than the hover layer drawn above it
        if (g && g.type && g.type.startsWith("Image") && (img < 0 || g.type === "ImageRGBA")) {
          const im = m.data_source.data.image;
          img = key(im && im[0]); shape = im && im[0] && im[0].shape ? Array.from(im[0].shape) : null;
        }
      }
      B.paints.push({t: performance.now(), id: this.model.id, img, shape,
                     x: [this.model.x_range.start, this.model.x_range.end]});
      return out;
    };
    PV.prototype.__benched = true;
    return true;
  }
  const timer = setInterval(() => { if (patch()) clearInterval(timer); }, 2);
  window.addEventListener("pointerdown", () => B.pointer.push(performance.now()), {capture: true});
  window.addEventListener("wheel", () => B.wheel.push(performance.now()), {capture: true});
})();"""

# Where the largest plot's frame sits on screen, and which tools are active.
PLOT_JS = r"""() => {
  const seen = new Set(); let best = null;
  function* walk(v) { if (!v || seen.has(v)) return; seen.add(v); yield v; for (const c of (v.child_views ?? [])) yield* walk(c); }
  for (const root of Bokeh.index.roots) for (const v of walk(root)) if (v.canvas_view && v.renderer_views && v.frame) {
    const f = v.frame.bbox; if (best && best.area >= f.width * f.height) continue;
    const r = v.canvas_view.el.getBoundingClientRect(), tb = v.model.toolbar;
    best = {area: f.width * f.height, x: r.left + f.x + f.width / 2, y: r.top + f.y + f.height / 2, id: v.model.id,
            scroll: tb.active_scroll ? String(tb.active_scroll.type ?? tb.active_scroll) : null,
            lod_timeout: v.model.lod_timeout};
  }
  return best;
}"""

STATE_JS = r"""(t0) => {
  const B = window.__bench, after = B.paints.filter(p => p.t >= t0);
  return {now: performance.now(), origin: performance.timeOrigin,
          last: Math.max(B.lastMutation, ...B.paints.map(p => p.t)), paints: after};
}"""


class Meter:
    """CPU seconds of the server process and of the browser (every other descendant of this process)
    between `start` and `stop`, and what the server logged about its websocket in that window."""

    def __init__(self, server_pid: int, log: Path):
        self.server_pid, self.log = server_pid, log

    def _sample(self) -> tuple[float, dict[int, float]]:
        server = descendants(self.server_pid)
        others = descendants(os.getpid()) - server - {os.getpid()}
        return sum(cpu_seconds(server).values()), cpu_seconds(others)

    def start(self) -> None:
        self._server0, self._browser0 = self._sample()

    def stop(self, origin_ms: float, t0_ms: float, t1_ms: float) -> dict:
        server, browser = self._sample()
        browser_cpu = sum(v - self._browser0.get(p, 0.0) for p, v in browser.items())
        a, b = (origin_ms + t0_ms) / 1000, (origin_ms + t1_ms) / 1000
        msgs = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        msgs = [m for m in msgs if a <= m["t0"] <= b]
        ins = [m for m in msgs if m["dir"] == "in"]
        data = [m for m in msgs if m["dir"] == "out" and m["bytes"] > 1000]  # not the OK/ACK replies
        out = {"server_cpu": server - self._server0, "browser_cpu": browser_cpu,
               "bytes_out": sum(m["bytes"] for m in data)}
        trigger = [m for m in ins if data and m["t0"] <= data[0]["t0"]]
        if trigger:  # action → the message that set the server off → its last write → settled
            out["to_server"] = trigger[-1]["t0"] - a
            out["server_span"] = max(m["t1"] for m in data) - trigger[-1]["t0"]
            out["after_server"] = b - max(m["t1"] for m in data)
        return out


def _settle(page, t0: float, ok, quiet: float, what: str, timeout: float = 90.0) -> dict:
    """Wait until a plot has painted after ``t0``, ``ok()`` holds and the page has been quiet (no paint,
    no DOM mutation) for ``quiet`` s; the end is the last paint or mutation."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = page.evaluate(STATE_JS, t0)
        if s["paints"] and s["now"] - s["last"] >= quiet * 1000 and ok():
            s["end"] = s["last"]
            return s
        time.sleep(0.1)
    raise TimeoutError(f"{what}: the page did not settle within {timeout} s ({page.url})")


def _query(page, name: str) -> str | None:
    from urllib.parse import parse_qs, urlparse

    return (parse_qs(urlparse(page.url).query).get(name) or [None])[0]


def _active_tab(page) -> str:
    tab = page.locator(".bk-tab.bk-active")
    return tab.first.inner_text().strip() if tab.count() else ""


def _score_text(score: float) -> str:
    return f"{score:+.3f}"


def measure_app(browser, base: str, meter: Meter, args) -> dict[str, list]:
    """Page loads (baseline), then pair switches with each tab active (alternating pairs)."""
    results: dict[str, list] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(INIT_JS)
    pairs = ("bench-pair-a", "bench-pair-b")

    def shows(pair: str, tab: str):
        """The check that ``tab`` of ``pair`` is on screen (Statistics: that pair's score badge)."""
        text = _score_text(SCORES[pairs.index(pair)])

        def ok() -> bool:
            if _query(page, "pair") != pair or _active_tab(page) != tab:
                return False
            badge = page.locator(".transferability")
            return tab != "Statistics" or (badge.count() == 1 and text in badge.first.inner_text())
        return ok

    def act(key: str, click, ok, what: str) -> None:
        meter.start()
        click()
        t0 = page.evaluate("() => window.__bench.pointer.at(-1)")
        s = _settle(page, t0, ok, args.quiet, what)
        results.setdefault(key, []).append({"time": (s["end"] - t0) / 1000, **meter.stop(s["origin"], t0, s["end"])})

    def open_tab(key: str, pair: str, tab: str) -> None:
        act(key, page.get_by_text(tab, exact=True).first.click, shows(pair, tab), f"{key} on {pair}")

    for i in range(1 + args.repeat):  # the first load after the server started is reported on its own
        meter.start()
        page.goto(base + "app")
        s = _settle(page, 0.0, shows(pairs[0], "Statistics"), args.quiet, "app load")
        results.setdefault("load (cold)" if i == 0 else "load", []).append(
            {"time": s["end"] / 1000, **meter.stop(s["origin"], 0.0, s["end"])})
    current = pairs[0]
    for _ in range(args.repeat):
        for tab in TABS:
            if _active_tab(page) != tab:  # open the tab on the current pair first (not a switch)
                open_tab(f"open {tab}", current, tab)
            other = pairs[1 - pairs.index(current)]
            new_tab, stats = shows(other, tab), shows(other, "Statistics")  # the app kept the tab, or not
            act(f"switch on {tab}", page.locator(".tabulator-row", has_text=other).first.click,
                lambda new_tab=new_tab, stats=stats: new_tab() or stats(), f"switch on {tab} to {other}")
            current = other
            results.setdefault(f"kept {tab}", []).append(_active_tab(page) == tab)
            if _active_tab(page) != tab:  # the app showed another tab: re-open this one, as a user would
                open_tab(f"reopen {tab}", current, tab)
    # The strictest reading of "all views updated": switch on the first tab, then open every other view
    # of the new pair in turn; the tour's time is the sum of the four updates (not the user's pauses).
    for _ in range(args.repeat):
        if _active_tab(page) != TABS[0]:
            open_tab("tour reset", current, TABS[0])
        other = pairs[1 - pairs.index(current)]
        act("tour switch", page.locator(".tabulator-row", has_text=other).first.click, shows(other, TABS[0]),
            f"tour: switch to {other}")
        current = other
        for tab in TABS[1:]:
            open_tab(f"tour open {tab}", current, tab)
        results.setdefault("tour", []).append(
            {"time": sum(results[k][-1]["time"] for k in ["tour switch", *(f"tour open {t}" for t in TABS[1:])])})
    page.close()
    return results


def measure_epochs(browser, base: str, meter: Meter, args) -> dict[str, list]:
    """For each timeline: open its Training tab, then ``--switches`` clicks on the player's "next" (its
    "first" at the end), each timed pointerdown → first paint of a region image new to the browser."""
    from ui.app import TABS as APP_TABS

    tab = [t.title for t in APP_TABS].index("Training")
    results: dict[str, list] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(INIT_JS)
    for pair in TIMELINES:
        meter.start()
        page.goto(f"{base}timeline?pair={pair}&tab={tab}")
        page.get_by_text("How faithful is this picture?").wait_for(timeout=90_000)
        s = _settle(page, 0.0, lambda: True, args.quiet, f"load {pair}")
        results.setdefault(f"{pair} load", []).append({"time": s["end"] / 1000, **meter.stop(s["origin"], 0.0, s["end"])})
        for k in range(args.switches):
            last_img = max(p["img"] for p in page.evaluate("() => window.__bench.paints"))
            epoch = int(_query(page, "epoch") or 0)  # the state's position, in the link
            button = "first" if epoch >= POSITIONS[pair] - 1 else "next"
            meter.start()
            page.locator(f".epoch-player button.{button}").click()
            t0 = page.evaluate("() => window.__bench.pointer.at(-1)")
            done = f"() => window.__bench.paints.find(p => p.t >= {t0} && p.img > {last_img})"
            hit = page.wait_for_function(done, timeout=90_000, polling=10).json_value()
            s = _settle(page, t0, lambda: True, args.quiet, f"epoch switch {pair}")
            results.setdefault(f"{pair} switch", []).append({"time": (hit["t"] - t0) / 1000,
                                                             **meter.stop(s["origin"], t0, s["end"])})
            results.setdefault(f"{pair} settled", []).append({"time": (s["end"] - t0) / 1000})
    page.close()
    return results


def measure_scatter(browser, base: str, route: str, meter: Meter, args, loads: int) -> dict[str, list]:
    """``loads`` page loads of ``route`` (first paint, settled), then ``--zooms`` wheel zooms on the last."""
    results: dict[str, list] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.add_init_script(INIT_JS)
    raster = route.startswith("raster")
    for _ in range(loads):
        meter.start()
        page.goto(base + route)
        s = _settle(page, 0.0, lambda: True, args.quiet, f"load {route}")
        shown = [p for p in s["paints"] if p["img"] > 0 or not raster]
        results.setdefault("first paint", []).append({"time": shown[0]["t"] / 1000})
        results.setdefault("settled", []).append({"time": s["end"] / 1000, "shape": shown[-1]["shape"],
                                                  **meter.stop(s["origin"], 0.0, s["end"])})
    plot = page.evaluate(PLOT_JS)
    results["scroll tool"] = [f"{plot['scroll']}, lod_timeout {plot['lod_timeout']} ms"]
    for k in range(args.zooms):
        paints = page.evaluate("() => window.__bench.paints")
        last_img = max(p["img"] for p in paints)
        meter.start()
        page.mouse.move(plot["x"] + 25 * (k % 3 - 1), plot["y"] + 15 * (k % 2))
        time.sleep(0.3)  # let the hover tool's reaction to the move pass
        page.mouse.wheel(0, -120)
        page.wait_for_function("(n) => window.__bench.wheel.length >= n", arg=k + 1)
        t0 = page.evaluate("() => window.__bench.wheel.at(-1)")
        x_before = paints[-1]["x"]
        if raster:  # the first paint of a raster image the browser had not had before
            done = f"() => window.__bench.paints.find(p => p.t >= {t0} && p.img > {last_img})"
        else:       # the first paint with the new ranges (the points are all in the browser)
            done = f"() => window.__bench.paints.find(p => p.t >= {t0} && p.x[0] !== {x_before[0]})"
        hit = page.wait_for_function(done, timeout=90_000, polling=20).json_value()
        s = _settle(page, t0, lambda: True, args.quiet, f"zoom {route}")
        results.setdefault("zoom", []).append({"time": (hit["t"] - t0) / 1000,
                                               **meter.stop(s["origin"], t0, hit["t"])})
        results.setdefault("zoom settled", []).append({"time": (s["end"] - t0) / 1000})
    page.close()
    return results


def server_side(points: int, classes: int, shape: list[int] | None, repeat: int = 3) -> dict[str, float]:
    """Seconds (median of ``repeat`` after one warm-up) of the server's own work for one raster of
    ``points`` generated points at the browser's raster size, in plain Python."""
    import datashader as ds
    import datashader.transfer_functions as tf
    import holoviews as hv
    import pandas as pd
    from holoviews.operation.datashader import datashade, rasterize

    from ui.views.instances import (
        hover_key,
        instance_frame,
        instance_scatter,
        shade_counts,
    )
    from ui.views.style import class_color

    frame = generated_frame(points, classes)
    h, w = (shape or [400, 1340])[:2]
    names = [str(c) for c in range(classes)]
    cmap = {c: class_color(i) for i, c in enumerate(names)}
    table = {"label": frame["class"].astype(int).to_numpy(), "pred_target": frame["prediction"].astype(int).to_numpy(),
             "x": frame["x"].to_numpy(), "y": frame["y"].to_numpy(),
             "domain": (frame["domain"] == "target").to_numpy(np.int8), "confidence_target": frame["confidence"].to_numpy()}
    keyed = frame.assign(key=hover_key(frame, classes), **{"class": pd.Categorical(frame["class"], categories=names)})
    # as the view built them before: the class names as strings (HoloViews makes them categorical per zoom)
    points_el = hv.Points(frame.assign(key=keyed["key"]), ["x", "y"], ["class", "row", "key"])
    x_range, y_range = (frame["x"].min(), frame["x"].max()), (frame["y"].min(), frame["y"].max())
    canvas = ds.Canvas(plot_width=w, plot_height=h, x_range=x_range, y_range=y_range)
    both = ds.summary(counts=ds.count_cat("class"), key=ds.max("key"))
    counts = canvas.points(keyed, "x", "y", both)["counts"]
    view, zooms = instance_scatter(frame, names, threshold=0), iter(range(1_000_000))

    def redraw():  # the ranges of a zoom, a new one each time (the view keeps its last output)
        view.event(x_range=(x_range[0] + next(zooms) * 1e-9, x_range[1]), y_range=y_range, width=w, height=h)
        return view[()]

    jobs = {
        "the view's redraw (pass, shading, pooled keys, elements)": redraw,
        "  Datashader pass: counts per class and hover key": lambda: canvas.points(keyed, "x", "y", both),
        "  shade_counts (the view's shading)": lambda: shade_counts(counts.data, list(cmap.values())),
        "Datashader's shade of the same counts": lambda: tf.shade(counts, color_key=cmap, how="eq_hist", min_alpha=80,
                                                                 rescale_discrete_levels=True),
        "HoloViews datashade + rasterize max(hover key) (before)": lambda: (
            datashade(points_el, aggregator=ds.count_cat("class"), color_key=cmap, min_alpha=80, dynamic=False,
                      width=w, height=h, x_range=x_range, y_range=y_range),
            rasterize(points_el, aggregator=ds.max("key"), dynamic=False, width=w // 2, height=h // 2,
                      x_range=x_range, y_range=y_range)),
        "hover_key (row, domain, label, prediction packed)": lambda: hover_key(frame, classes),
        "instance_frame (bundle table → frame)": lambda: instance_frame(table, names),
    }
    return {name: _seconds(job, repeat) for name, job in jobs.items()}


def _seconds(job, repeat: int = 3) -> float:
    """Median seconds of ``job()`` over ``repeat`` calls after one warm-up call."""
    job()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        job()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# Report


def _median(rows: list[dict], key: str = "time") -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(v: float | None, spec: str = "6.2f") -> str:
    return format(v, spec) if v is not None else " " * (int(spec.split(".")[0]) - 1) + "–"


def _row(label: str, rows: list[dict], goal: float | None, base: float | None) -> str:
    t = _median(rows)
    spread = f"{min(r['time'] for r in rows):5.2f}–{max(r['time'] for r in rows):5.2f}" if rows else ""
    mb = _median(rows, "bytes_out")
    return (f"  {label:<34s} {_fmt(t)} s {spread:>12s} {len(rows):3d}  {_fmt(goal and t / goal, '5.2f')}  "
            f"{_fmt(base and t / base, '5.2f')}   {_fmt(_median(rows, 'server_cpu'), '5.2f')} "
            f"{_fmt(_median(rows, 'browser_cpu'), '5.2f')}   {_fmt(_median(rows, 'to_server'), '5.2f')} "
            f"{_fmt(_median(rows, 'server_span'), '5.2f')} {_fmt(_median(rows, 'after_server'), '5.2f')} "
            f"{_fmt(mb and mb / 1e6, '6.2f')}")


HEADER = (f"  {'':<34s} {'median':>8s} {'min–max':>12s} {'n':>3s}  {'×goal':>5s}  {'×base':>5s}   "
          f"{'CPU s: server':>5s} {'browser':>5s}   {'s: →server':>5s} {'server':>5s} {'after':>5s} {'MB out':>6s}")


OPTIONS = (("--points", 1_000_000, "points of the big raster"), ("--small", 20_000, "points of the baseline"),
           ("--classes", 10, "classes"), ("--per-class", 40, "instances per class in each bundle"),
           ("--repeat", 3, "switches per tab, warm page loads"), ("--zooms", 4, "wheel zooms per view"),
           ("--quiet", 1.0, "seconds without paint or DOM change that end a measurement"),
           ("--switches", 12, "epoch switches per timeline"),
           ("--timeline-per-class", 50, "timeline points per class, domain and split"),
           ("--pairs", 1000, "diagnosed pairs seeded for --only compare"),
           ("--compare-base", 10, "pairs of the compare baseline experiment"),
           ("--server-workers", 4, "worker processes of the mlflow server for --only compare (MLflow's default)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default, text in OPTIONS:
        parser.add_argument(flag, type=type(default), default=default, help=f"{text} (default {default:,})")
    parser.add_argument("--only", choices=("app", "raster", "epoch", "compare"),
                        help="goal 1 (app), goal 2 (raster) or goal 3 (epoch) alone, or issue 16's compare listing")
    for flag, extra in (("--serve", {"action": "store_true"}), ("--port", {"type": int}), ("--bundles", {"nargs": 2}),
                        ("--timelines", {"nargs": 3}), ("--log", {})):  # the server's own arguments (this script re-run with --serve)
        parser.add_argument(flag, help=argparse.SUPPRESS, **extra)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"needs Debian's chromium at {CHROMIUM}")

    import bokeh
    import datashader
    import holoviews
    import panel
    import torch
    from playwright.sync_api import sync_playwright

    from mlflow_transfer.bundle import PairBundle

    torch.set_num_threads(1)
    print(" ".join(["$ python benchmarks/bench_ui.py", *sys.argv[1:]]))
    if args.only == "compare":
        run_compare(args)
        return
    print(f"{dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} · {platform.node()} · {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}) · load average {os.getloadavg()[0]:.2f} at start")
    print(f"python {platform.python_version()} · panel {panel.__version__} · bokeh {bokeh.__version__} · "
          f"holoviews {holoviews.__version__} · datashader {datashader.__version__}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    server = None
    try:
        roots, timelines, py_open = [], [], None
        if args.only in (None, "app", "epoch"):
            t = time.perf_counter()
            roots = [tmp / "pair-a", tmp / "pair-b"][:1 if args.only == "epoch" else 2]
            with contextlib.redirect_stderr(io.StringIO()):  # the engine's progress lines are not results
                build_bundles(roots, args.classes, args.per_class)
            print(f"built {len(roots)} bundle(s) ({args.classes} classes × {args.per_class} instances per domain pair, "
                  f"n_steps 2) in {time.perf_counter() - t:.0f} s", flush=True)
            py_open = _seconds(lambda: PairBundle.open(roots[0]))
        if args.only in (None, "epoch"):
            t = time.perf_counter()
            timelines = [tmp / "timeline-small", tmp / "timeline"]
            build_timelines(timelines, args.classes, args.timeline_per_class)
            print(f"built 2 timelines (the tiny baseline; 8 + 5 positions of {args.classes} classes × "
                  f"{args.timeline_per_class} points × 2 domains × 2 splits, grid 200) in {time.perf_counter() - t:.0f} s",
                  flush=True)
        app_roots = roots if args.only in (None, "app") else []

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log, out = tmp / "messages.jsonl", tmp / "server.out"
        log.touch()
        with open(out, "w") as fh:
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", "--port", str(port),
                 *(["--bundles", *map(str, app_roots)] if app_roots else []),
                 *(["--timelines", str(roots[0]), *map(str, timelines)] if timelines else []),
                 "--points", str(args.points), "--small", str(args.small), "--classes", str(args.classes),
                 *(["--only", args.only] if args.only else []), "--log", str(log)],
                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.time() + 180
        while "READY" not in out.read_text():
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start:\n{out.read_text()[-3000:]}")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}/"
        meter = Meter(server.pid, log)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                print(f"Chromium {browser.version}, headless, software rendering, viewport 1400×1000; "
                      f"a measurement ends after {args.quiet:.1f} s without paint or DOM change", flush=True)
                app = measure_app(browser, base, meter, args) if args.only in (None, "app") else None
                epochs = measure_epochs(browser, base, meter, args) if args.only in (None, "epoch") else None
                views = {route: measure_scatter(browser, base, route, meter, args, 1 + args.repeat)
                         for route in ("scatter_small", "raster_small", "raster")} if args.only in (None, "raster") else None
            finally:
                browser.close()
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    shape = views and views["raster"]["settled"][-1]["shape"]
    py = server_side(args.points, args.classes, shape) if views else {}
    report(app, views, {"open": py_open, **py}, shape, args, epochs)


def report(app: dict | None, views: dict | None, py: dict, shape, args, epochs: dict | None = None) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print()
    print("Columns: median, min–max and n of the time; ×goal = median / goal; ×base = median / baseline row;")
    print("CPU s = CPU seconds in the window of the server process and of the browser (Chromium's processes and")
    print("Playwright's driver); s: →server = action → the websocket message that set the server off (page load:")
    print("the document request, after the HTML page whose request built the session), server = that message →")
    print("the server's last data frame written, after = that frame → end (browser work); MB out = data frames.")
    print()
    summary = ["Summary"]
    py_open = py.pop("open")
    if app:
        summary += report_app(app, py_open)
        print()
    if views:
        summary += report_views(views, py, shape, args)
        print()
    if epochs:
        summary += report_epochs(epochs, args)
        print()
    print("\n".join(summary))


def _verdict(t: float, goal: float) -> str:
    return f"{t:.2f} s = {t / goal:.2f}× the goal: {'met' if t <= goal else 'MISSED'}"


def report_app(app: dict, py_open: float) -> list[str]:
    """Goal 1's table; returns its summary lines."""
    print("Goal 1 — switch to another pair (bundle cached, folder on disk): the shown view updated in "
          f"≤ {SWITCH_GOAL:g} s,")
    print(f"  the switch and every other view opened in turn ≤ {TOUR_GOAL:g} s summed")
    print("  time = user action (navigation start / pointerdown) → last paint or DOM change; base = warm page load")
    print(HEADER)
    load = _median(app["load"])
    print(_row("page load, first after server start", app["load (cold)"], None, load))
    print(_row("page load (baseline)", app["load"], None, load))
    for tab in TABS:
        if f"open {tab}" in app:
            print(_row(f"open {tab} tab (same pair)", app[f"open {tab}"], None, load))
    for tab in TABS:
        print(_row(f"switch, {tab} tab active", app[f"switch on {tab}"], SWITCH_GOAL, load))
    for tab in TABS:
        if f"reopen {tab}" in app:
            total = [{"time": a["time"] + b["time"]} for a, b in zip(app[f"switch on {tab}"], app[f"reopen {tab}"])]
            print(_row(f"  then re-open {tab} tab", app[f"reopen {tab}"], None, load))
            print(_row(f"  switch + re-open {tab}", total, SWITCH_GOAL, load))
    print(_row(f"switch, {TABS[0]} tab active (tour)", app["tour switch"], None, load))
    for tab in TABS[1:]:
        print(_row(f"  then open {tab} tab", app[f"tour open {tab}"], None, load))
    print(_row("  every view updated (sum of the four)", app["tour"], TOUR_GOAL, load))
    print(f"  plain Python, for scale: opening a bundle folder (every file hashed) {py_open:.3f} s; each switch")
    print("  here opens the folder again, which a bundle kept open in memory saves")
    kept = {tab: all(app[f"kept {tab}"]) for tab in TABS}
    if not all(kept.values()):
        print("  the app did not keep the active tab across a switch for: " + ", ".join(t for t, k in kept.items() if not k))
        print("  (it showed Statistics; 'switch + re-open' adds the time to open the tab again, not the user's pause)")

    shown = max(_median(app[f"switch on {t}"]) for t in TABS)
    reopened = {t: statistics.median(a["time"] + b["time"] for a, b in zip(app[f"switch on {t}"], app[f"reopen {t}"]))
                for t in TABS if f"reopen {t}" in app}
    tour = _verdict(_median(app["tour"]), TOUR_GOAL)
    lines = [f"  goal 1, switch (slowest tab active, view shown after the switch): {_verdict(shown, SWITCH_GOAL)}",
             f"  goal 1, switch then every view opened in turn (sum of the four updates): {tour}"]
    if reopened:
        worst = max(reopened, key=reopened.get)
        lines.append(f"  goal 1, switch then re-open the tab the app did not keep (slowest, {worst}): "
                     f"{_verdict(reopened[worst], SWITCH_GOAL)}")
    return lines


def report_epochs(epochs: dict, args) -> list[str]:
    """Goal 3's table; returns its summary line."""
    n = args.classes * args.timeline_per_class * 4
    print(f"Goal 3 — Training tab, next epoch painted ≤ {EPOCH_GOAL:g} s after the click (issue 14)")
    print("  switch = pointerdown on the player's next/first button → first paint of the new region image;")
    print("  settled = last paint or DOM change; base = the same on the tiny timeline (24 points, 40 × 40 grid)")
    print(HEADER)
    small, big = TIMELINES
    base = _median(epochs[f"{small} switch"])
    for pair, label in ((small, "tiny timeline, 24 points, grid 40"),
                        (big, f"{n:,} points ({args.classes} classes × {args.timeline_per_class} per domain and "
                              "split), grid 200, 8 + 5 positions")):
        print(f"  {label}")
        print(_row("open the tab (page load)", epochs[f"{pair} load"], None, None))
        print(_row("epoch switch → repainted", epochs[f"{pair} switch"], EPOCH_GOAL, base))
        print(_row("epoch switch → settled", epochs[f"{pair} settled"], None, _median(epochs[f"{small} settled"])))
    t = _median(epochs[f"{big} switch"])
    sent = _median(epochs[f"{big} switch"], "bytes_out")
    return [f"  goal 3, epoch switch, {n:,} points, grid 200: {_verdict(t, EPOCH_GOAL)}; "
            f"{(sent or 0):,.0f} bytes per switch"]


def report_views(views: dict, py: dict, shape, args) -> list[str]:
    """Goal 2's table and the server's plain-Python share; returns the summary lines."""
    print(f"Goal 2 — instance view with {args.points:,} points: first paint ≤ {FIRST_PAINT_GOAL:g} s, "
          f"repainted after a zoom ≤ {ZOOM_GOAL:g} s")
    print("  first paint = navigation start → first canvas paint holding the raster (points, for the scatter);")
    print("  settled = last paint or DOM change (e.g. the re-aggregation at the plot's real size);")
    print("  zoom = wheel event over the plot → first paint of a raster image new to the browser (scatter: of the "
          "new ranges)")
    print(f"  raster image {' × '.join(map(str, shape or []))} px (rows × columns); base = the same view "
          f"rasterised at {args.small:,} points")
    print(f"  the first rasterised view loaded ({args.small:,} points) includes Datashader's Numba compilation")
    print(HEADER)
    labels = {"scatter_small": f"{args.small:,} points, scatter (app's view)",
              "raster_small": f"{args.small:,} points, rasterised",
              "raster": f"{args.points:,} points, rasterised"}
    base = views["raster_small"]
    for route, label in labels.items():
        v = views[route]
        print(f"  {label}   (active scroll tool: {v['scroll tool'][0]})")
        print(_row("first paint, first load of the view", v["first paint"][:1], FIRST_PAINT_GOAL,
                   _median(base["first paint"][:1])))
        print(_row("first paint (warm)", v["first paint"][1:], FIRST_PAINT_GOAL, _median(base["first paint"][1:])))
        print(_row("settled (warm)", v["settled"][1:], FIRST_PAINT_GOAL, _median(base["settled"][1:])))
        print(_row("zoom → repainted (new raster)" if route.startswith("raster") else "zoom → repainted (new ranges)",
                   v["zoom"], ZOOM_GOAL, _median(base["zoom"])))
        print(_row("zoom → settled", v["zoom settled"], ZOOM_GOAL, _median(base["zoom settled"])))
        sent = ", ".join(f"{z['bytes_out']:,}" for z in v["zoom"])
        print(f"    bytes a zoom sent (data frames, each zoom): {sent}")
    print()
    print(f"  server-side, plain Python, {args.points:,} generated points, {shape[1] if shape else '?'}×"
          f"{shape[0] if shape else '?'} px (median of 3 after a warm-up):")
    for name, seconds in py.items():
        print(f"    {name:<58s} {seconds:7.3f} s")

    raster = views["raster"]
    first, zoom = _median(raster["first paint"][1:]), _median(raster["zoom"])
    settled, sent = _median(raster["settled"][1:]), _median(raster["zoom"], "bytes_out")
    points = f"{args.points:,} points"
    return [f"  goal 2, {points}, first paint (warm): {_verdict(first, FIRST_PAINT_GOAL)}; settled {settled:.2f} s",
            f"  goal 2, {points}, zoom → new raster painted: {_verdict(zoom, ZOOM_GOAL)}; {sent:,.0f} bytes per zoom"]


# --------------------------------------------------------------------------------------------------
# Issue 16: the compare listing over many pairs, and the Compare tab's first paint


def _timed(job, repeat: int) -> list[dict]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        job()
        out.append({"time": time.perf_counter() - t})
    return out


def measure_listing(uri: str, big: str, small: str, sweep: str, repeat: int) -> dict[str, list]:
    """Plain-Python times of the compare listing on the server at ``uri`` (see the module docstring)."""
    from mlflow_transfer.tracking.bundles import list_diagnosed_pairs
    from mlflow_transfer.tracking.compare import list_compare_rows
    from ui import readers

    out = {"pairs": _timed(lambda: list_diagnosed_pairs([big], tracking_uri=uri, include_incomplete=True), repeat),
           "small": _timed(lambda: list_compare_rows(small, tracking_uri=uri), repeat),
           "cold": _timed(lambda: list_compare_rows(big, tracking_uri=uri), repeat),
           "sweep": _timed(lambda: list_compare_rows(big, sweep_id=sweep, tracking_uri=uri), repeat)}
    source = readers.TrackingSource(uri)
    out["source first"] = _timed(lambda: source.compare(big), 1)
    out["source cached"] = _timed(lambda: source.compare(big), repeat)
    ttl, readers.COMPARE_TTL_S = readers.COMPARE_TTL_S, 0.0
    try:
        out["source expired"] = _timed(lambda: source.compare(big), repeat)
    finally:
        readers.COMPARE_TTL_S = ttl
    return out


def measure_compare_paint(browser, url: str, experiment: str, marker: str, loads: int) -> list[dict] | None:
    """Navigation start → the first compare-table row holding ``marker`` (a target run name) is visible, for
    ``loads`` loads of ``?experiment=…&tab=<Compare>`` (the first right after the app server started);
    None when this checkout's app has no Compare tab."""
    from ui.app import TABS

    titles = [t.title for t in TABS]
    if "Compare" not in titles:
        return None
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    out = []
    for _ in range(loads):
        page.goto(f"{url}?experiment={experiment}&tab={titles.index('Compare')}")
        page.locator(".tabulator-row", has_text=marker).first.wait_for(timeout=180_000)
        first = page.evaluate("() => performance.now()") / 1000
        interim = page.get_by_text("run(s) so far")  # a first page (`partial`): then until the whole listing
        if interim.count():
            interim.first.wait_for(state="detached", timeout=180_000)
        out.append({"time": first, "whole": page.evaluate("() => performance.now()") / 1000})
    page.close()
    return out


TITLE_HAS = ("(t) => Bokeh.documents.some(d => [...d.all_models].some(m => typeof m.text === 'string' "
             "&& m.text.includes(t)))")


def measure_compare_interactions(browser, url: str, experiment: str, real: list, repeat: int,
                                 names: tuple[str, ...] = ()) -> dict | None:
    """In Chromium on the 1,000-pair Compare tab: an axis change (choose another x → the chart's title names
    it) and, given two pairs with bundles (``real``), the two-pair diff with both bundles cached (tick B beside
    A → the diff's depth plot is drawn), each ``repeat`` times; the bundles are opened once before. None
    without a Compare tab."""
    from ui.app import TABS

    titles = [t.title for t in TABS]
    if "Compare" not in titles:
        return None
    picked = [d for _, d in real[:2]]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}?experiment={experiment}&tab={titles.index('Compare')}&compare={json.dumps(picked)}")
    if len(picked) == 2:
        page.get_by_text("differences are B − A").wait_for(timeout=180_000)  # both bundles fetched and opened
    else:
        page.locator(".tabulator-row").first.wait_for(timeout=180_000)
    x = page.locator("select").filter(has=page.locator("option", has_text="setting · ")).first
    labels = [t for t in x.locator("option").all_inner_texts() if t.strip()]
    out = {"axis": [], "diff": []}
    for i in range(repeat * 2):
        label = labels[(i + 1) % len(labels)]
        start = time.perf_counter()
        x.select_option(label=label)
        shown = label.removeprefix("setting · ")  # the chart names a setting by its key
        page.wait_for_function(TITLE_HAS, arg=f"against {shown} (", timeout=60_000, polling=20)
        out["axis"].append({"time": time.perf_counter() - start})
    # B's row, by its run name (the id column may lie outside the rendered part of a wide table)
    row_b = page.locator(".tabulator-row", has_text=names[1]).first if len(picked) == 2 and names else None
    for _ in range(repeat if row_b is not None else 0):
        row_b.locator("input[type=checkbox]").click()  # B off: "pick two"
        page.get_by_text("Pick two diagnosed pairs").wait_for(timeout=60_000)
        start = time.perf_counter()
        row_b.locator("input[type=checkbox]").click()
        # the diff's head is shown (a Bokeh title could still be an earlier diff's model in the document)
        page.get_by_text("differences are B − A").wait_for(state="visible", timeout=60_000)
        out["diff"].append({"time": time.perf_counter() - start})
    page.close()
    return out


def run_compare(args) -> None:
    """Seed a real mlflow server, measure the listing and the first paint, print the report."""
    import seed_compare
    from helpers.servers import mlflow_server, transfer_ui
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            bundle = seed_compare.tiny_diagnosed_bundle(tmp / "tiny")
        print(f"trained and diagnosed the tiny pair for the real bundles in {time.perf_counter() - t:.0f} s", flush=True)
        (tmp / "server").mkdir()
        with mlflow_server(tmp / "server", workers=args.server_workers) as (uri, _):
            base = seed_compare.base_params()
            with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints a link per run it ends
                big = seed_compare.seed(uri, tmp / "server" / "mlflow.db", bundle, n_pairs=args.pairs, base=base)
                small = seed_compare.seed(uri, tmp / "server" / "mlflow.db", None, n_pairs=args.compare_base,
                                          n_sweeps=1, experiment="compare-baseline", base=base)
                # more experiments like the big one (no real bundles), each loaded once: the first loads' spread
                cold = [seed_compare.seed(uri, tmp / "server" / "mlflow.db", None, n_pairs=args.pairs, n_sweeps=1,
                                          experiment=f"compare-cold-{i}", base=base)["experiment_id"]
                        for i in range(args.repeat - 1)]
            print(f"seeded {big['runs']:,} runs ({args.pairs:,} pairs, {len(big['sweeps'])} sweeps, "
                  f"{len(big['real'])} with a real bundle) in {big['seconds']:.1f} s, of which "
                  f"{big['bulk_runs']:,} runs straight into the store in {big['bulk_seconds']:.1f} s "
                  f"({big['bulk_runs'] / big['bulk_seconds']:.0f} runs/s) and the rest through the REST API; "
                  f"a baseline experiment of {args.compare_base} pairs and {len(cold)} more of {args.pairs:,} pairs "
                  f"each for first loads; mlflow server {uri} (sqlite, "
                  f"{args.server_workers} worker(s))",
                  flush=True)
            listing = measure_listing(uri, big["experiment_id"], small["experiment_id"], big["sweeps"][0], args.repeat)
            paint = None
            with transfer_ui(uri, tmp / "server") as (url, _), sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    print(f"Chromium {browser.version}, headless", flush=True)
                    # the small experiment first: its first load pays the app server's first session, so the
                    # big one's first load is the cost of a listing not made yet, in a warm app
                    paint = {"small": measure_compare_paint(browser, url, small["experiment_id"], "digits-target-",
                                                            1 + args.repeat)}
                    paint["big"] = measure_compare_paint(browser, url, big["experiment_id"], "digits-target-",
                                                         1 + args.repeat)
                    paint["cold"] = paint["big"][:1] + [row for e in cold for row in
                                                        measure_compare_paint(browser, url, e, "digits-target-", 1)]
                    names = tuple(MlflowClient(uri).get_run(t).info.run_name for t, _ in big["real"][:2])
                    try:
                        paint["interactions"] = measure_compare_interactions(
                            browser, url, big["experiment_id"], big["real"], args.repeat, names)
                        paint["interactions_small"] = measure_compare_interactions(
                            browser, url, small["experiment_id"], [], args.repeat)
                    except Exception as exc:  # noqa: BLE001 -- the first paint's numbers are still reported
                        print(f"interactions not measured: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                finally:
                    browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report_compare(listing, paint, args)


def report_compare(listing: dict, paint: dict | None, args) -> None:
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print()
    n, b = f"{args.pairs:,}", args.compare_base
    print(f"Issue 16 — the compare listing over {n} diagnosed pairs on a real mlflow server (plain Python; base = "
          "the pair list the app loads for the experiment anyway, one search of its diagnostics runs)")
    print(HEADER)
    base = _median(listing["pairs"])
    for key, label in (("pairs", f"pair list, {n} pairs (baseline)"), ("small", f"compare listing, {b} pairs"),
                       ("cold", f"compare listing, {n} pairs"), ("sweep", "compare listing, one sweep"),
                       ("source first", "TrackingSource.compare, first"),
                       ("source cached", "TrackingSource.compare, cached"),
                       ("source expired", "  after the TTL (summaries kept)")):
        print(_row(label, listing[key], None, base))
    lines = ["Summary", f"  compare listing, {n} pairs: {_median(listing['cold']):.2f} s = "
                        f"{_median(listing['cold']) / base:.2f}× the pair list's {base:.2f} s; cached "
                        f"{_median(listing['source cached']) * 1000:.2f} ms"]
    if paint is None or paint["big"] is None:
        print("  first paint: not measured (this checkout's app has no Compare tab)")
        lines.append("  first paint: not measured (no Compare tab in this checkout)")
    else:
        print()
        print(f"Compare tab first paint ≤ {COMPARE_PAINT_GOAL:g} s: navigation start → first row of the compare "
              f"table shown; base = the same over {b} pairs (warm)")
        print(HEADER)
        small = _median(paint["small"][1:])
        print(_row(f"{b} pairs, first load after the app started", paint["small"][:1], COMPARE_PAINT_GOAL, small))
        print(_row(f"{b} pairs, warm (baseline)", paint["small"][1:], COMPARE_PAINT_GOAL, small))
        print(_row(f"{n} pairs, first load (listing not made)", paint["cold"], COMPARE_PAINT_GOAL, small))
        whole = [{"time": r["whole"]} for r in paint["cold"]]
        print(_row("  … until the whole listing shows", whole, None, small))
        print(_row(f"{n} pairs, warm (listing cached)", paint["big"][1:], COMPARE_PAINT_GOAL, small))
        lines += [f"  first paint, {n} pairs, listing not made yet: "
                  f"{_verdict(_median(paint['cold']), COMPARE_PAINT_GOAL)} (median of {len(paint['cold'])} experiments; "
                  f"slowest {max(r['time'] for r in paint['cold']):.2f} s)",
                  f"  first paint, {n} pairs, warm: {_verdict(_median(paint['big'][1:]), COMPARE_PAINT_GOAL)}"]
    moves = (paint or {}).get("interactions")
    if moves:
        print()
        small_axis = (paint.get("interactions_small") or {}).get("axis") or []
        print(f"Compare tab interactions over {n} pairs (Chromium; goals: axis change ≤ {COMPARE_AXIS_GOAL:g} s, "
              f"two-pair diff ≤ {COMPARE_DIFF_GOAL:g} s with both bundles cached; base = the axis change over {b} "
              "pairs)")
        print(HEADER)
        base_axis = _median(small_axis)
        if small_axis:
            print(_row(f"axis change (x), {b} pairs (baseline)", small_axis, COMPARE_AXIS_GOAL, base_axis))
        print(_row(f"axis change (x), {n} pairs", moves["axis"], COMPARE_AXIS_GOAL, base_axis))
        print(_row("two-pair diff, bundles cached", moves["diff"], COMPARE_DIFF_GOAL, base_axis))
        lines += [f"  axis change: {_verdict(_median(moves['axis']), COMPARE_AXIS_GOAL)}",
                  f"  two-pair diff, bundles cached: {_verdict(_median(moves['diff']), COMPARE_DIFF_GOAL)}"]
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
