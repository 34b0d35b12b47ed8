"""What the findings (issue 16) add to `diagnose`: `findings_record` on a written bundle, against writing that
bundle (`BundleWriter`: a lower bound of `write_pair_bundle`, which writes these records and more) in the
same run. For scale: `diagnose` itself takes minutes (benchmarks/results_demo.txt, results_paper_scale.txt).

Bundles: planted ones (`tests/helpers/findings.py`, seeded noise on every conductance) at the demo's
scale (alexnet-32's eight analysis layers, 10 classes × 40 analysed instances per domain) and at a paper
scale (a VGG-like head of two 4,096-unit layers, 10 classes × 100 per domain), plus any real bundle
folders given with ``--bundles`` (e.g. ``mlruns/*/*/artifacts/diagnostics``). Prints the median of
``--repeats`` and its ratio to the write; results: benchmarks/results_findings.txt.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python benchmarks/bench_findings.py [--bundles DIR ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from helpers.findings import write_planted_bundle  # noqa: E402

from mlflow_transfer.bundle import PairBundle  # noqa: E402
from mlflow_transfer.bundle.findings import findings_record  # noqa: E402
from mlflow_transfer.bundle.io import BundleReader  # noqa: E402

SCALES = {
    "demo (alexnet-32 widths, 10 classes x 40 per domain)":
        ({"conv1": 48, "conv2": 96, "conv3": 128, "conv4": 128, "conv5": 96, "fc1": 256, "fc2": 128, "fc3": 10}, 40),
    "paper (VGG-like widths, 10 classes x 100 per domain)":
        ({"conv1": 64, "conv2": 192, "conv3": 384, "conv4": 256, "conv5": 256, "fc6": 4096, "fc7": 4096, "fc8": 10}, 100),
}


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(root: Path, repeats: int) -> tuple[float, int]:
    bundle = PairBundle(BundleReader(root, verify=False))  # as the writer opens it
    return _median(lambda: findings_record(bundle), repeats), len(findings_record(bundle)["findings"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bundles", nargs="*", default=[])
    args = parser.parse_args()
    print(f"# bench_findings: median of {args.repeats}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        cases = []
        for name, (widths, rows) in SCALES.items():
            start = time.perf_counter()
            root = write_planted_bundle(Path(tmp) / str(len(cases)), classes=tuple(f"c{i}" for i in range(10)),
                                        widths=widths, rows=rows, noise=30.0,
                                        specific={"source": ("fc1" if "fc1" in widths else "fc6", 5, 3)})
            cases.append((name, root, time.perf_counter() - start))
        cases += [(f"real bundle {b}", Path(b), None) for b in args.bundles]
        for name, root, written in cases:
            found, n = measure(root, args.repeats)
            versus = "" if written is None else \
                f"; writing the bundle {1000 * written:.1f} ms; ratio {found / written:.2f}"
            print(f"{name}: findings {1000 * found:.1f} ms ({n} findings){versus}")
    print(f"# load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
