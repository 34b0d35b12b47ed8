"""The app's real server (`ui.server.make_server`: framing headers, origin checks) over a `MemorySource`
of bundle folders, as a subprocess: for browser tests and benchmarks of views whose records are planted
rather than made by a pipeline. ``python tests/helpers/memory_app.py --port P --spec JSON`` (run from
the repository root; `helpers.servers.memory_ui` starts it; ``--spec @FILE`` reads it from a file); the spec: ``{"experiments": {id: name}, "pairs": {id: [row, ...]},
"bundles": {run id: folder}, "timelines": {run id: folder}, "compare": {"<experiment id> <sweep id or ''>":
{"rows", "settings", "left_out", "sweeps"}}}`` (the last: ready compare listings, issue 16)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args()
    sys.path[:0] = [str(REPO)]
    import holoviews as hv

    from ui.readers import CompareListing, MemorySource
    from ui.server import make_server

    hv.extension("bokeh", logo=False)
    # "@file": the spec in a file (a listing of thousands of rows is longer than a command line may be)
    spec = json.loads(Path(args.spec[1:]).read_text() if args.spec.startswith("@") else args.spec)
    listings = {}
    for key, listing in spec.get("compare", {}).items():
        experiment, _, sweep = key.partition(" ")
        listings[(experiment, sweep or None)] = CompareListing(**listing)
    source = MemorySource(spec["experiments"], spec["pairs"], spec["bundles"], timelines=spec.get("timelines", {}),
                          compare_listings=listings)
    server = make_server(source, port=args.port)
    server.start()
    server.io_loop.start()


if __name__ == "__main__":
    main()
