"""Benchmark: the server's share of issue 10's tour, in one process (no browser): `build_app` over two
tiny pair bundles (`tests/helpers/bundles.write_tiny_bundle`) in a bokeh Document, then, from the
Statistics tab, switch the pair and open Instances, Network and Features in turn. Prints each step's
minimum over ``--repeat`` tours and their sum; ``--profile`` adds the functions that took longest in one
pair switch (cProfile, internal time).

Usage: ``python benchmarks/bench_tabs.py [--repeat 4] [--profile]``. Run at another commit (a git
worktree) for the before/after of benchmarks/results_notes.txt; its browser counterpart is bench_ui.py.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=4, help="tours timed (default 4), after a warm-up one")
    parser.add_argument("--profile", action="store_true", help="profile one pair switch")
    args = parser.parse_args()

    import panel as pn
    from bokeh.document import Document
    from helpers.bundles import write_tiny_bundle

    from ui.app import TABS, build_app
    from ui.readers import MemorySource

    with contextlib.redirect_stderr(io.StringIO()):  # the diagnostics' progress lines
        root = write_tiny_bundle(Path(tempfile.mkdtemp()) / "diagnostics")
    row = {"recipe": "digits", "model": "alexnet-32", "source_domain": "a", "target_domain": "b", "start_time": 1,
           "transferability_score": 0.4, "target_accuracy": 0.9, "frozen_layers": "[]"}
    source = MemorySource({"2": "pairs"}, {"2": [{**row, "diagnostics_run_id": r} for r in ("d2", "d1")]},
                          {"d1": root, "d2": root})
    app = build_app(source, sync_url=False)
    doc = Document()
    doc.add_root(app.get_root(doc))
    state = app.state

    def tabs():  # looked up each time: an app that rebuilds its tabs per pair is measured fairly too
        return next(t for t in app.select(pn.Tabs) if len(t) == len(TABS))  # the tour opens the first four

    def switch():
        state.pair = "d1" if state.pair == "d2" else "d2"

    def tour() -> list[float]:
        steps = [lambda: (setattr(tabs(), "active", 0), switch())] + \
                [lambda i=i: setattr(tabs(), "active", i) for i in (1, 2, 3)]
        times = []
        for step in steps:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        return times

    tour()
    runs = [tour() for _ in range(args.repeat)]
    best = [min(r[i] for r in runs) for i in range(4)]
    names = ("switch (Statistics open)", "open Instances", "open Network", "open Features")
    for name, t in zip(names, best):
        print(f"  {name:26s} {t:.3f} s")
    print(f"  {'tour (sum of the minima)':26s} {sum(best):.3f} s   (min of {args.repeat} tours)")
    if args.profile:
        tabs().active = 0
        profile = cProfile.Profile()
        profile.runcall(switch)
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
