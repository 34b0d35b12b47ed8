"""A planted timeline bundle (issue 14) for the reader's and the app's tests: known coordinates, regions
and metrics at every position, written through the real writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlflow_transfer.bundle.timeline import METRICS, TimelineFrame, write_timeline_bundle


def planted_coords(position: int, n: int) -> np.ndarray:
    """Point i at position p: on a circle of radius 1 + p, at angle 2πi/n (so every position moves every point)."""
    angle = 2 * np.pi * np.arange(n) / n
    return ((1.0 + position) * np.stack([np.cos(angle), np.sin(angle)], 1)).astype(np.float32)


def planted_metric(name: str, position: int) -> float:
    return float("nan") if name == "temporal_corr" and position == 0 else 0.5 + 0.01 * position + 0.001 * METRICS.index(name)


def planted_grid(position: int, grid: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertical class bands whose boundary moves one column per position; the gap falls to 0 at each band edge."""
    cols = (np.arange(grid) + position) * n_classes // (grid + position)
    grid_class = np.tile(np.minimum(cols, n_classes - 1), (grid, 1)).astype(np.int16)
    edge = np.r_[True, np.diff(grid_class[0]) != 0]
    gap = np.tile(np.where(edge, 0.0, 1.0), (grid, 1)).astype(np.float32)
    return grid_class, gap


def write_tiny_timeline(root: Path, classes: tuple[str, ...] = ("a", "b", "c"), *, n_source: int = 3,
                        n_target: int = 2, per_class: int = 2, grid: int = 40, source_run: str = "s" * 32,
                        target_run: str = "t" * 32, diagnostics_run: str = "d" * 32) -> Path:
    """A valid timeline of ``n_source`` source then ``n_target`` target positions over ``per_class`` points per
    class, domain and split; point i's label is ``i % len(classes)`` and its prediction at position p is
    ``(i + p) % len(classes)``."""
    c = len(classes)
    n = c * per_class * 4
    domain = ["source" if i < n // 2 else "target" for i in range(n)]
    split = ["train" if (i // c) % 2 == 0 else "val" for i in range(n)]
    points = {"domain": domain, "split": split, "label": np.arange(n) % c, "index": np.arange(n)}

    def frames():
        for p in range(n_source + n_target):
            phase, epoch, run = ("source", p + 1, source_run) if p < n_source else ("target", p - n_source + 1, target_run)
            coords = planted_coords(p, n)
            grid_class, gap = planted_grid(p, grid, c)
            r = 1.1 * (1.0 + p)
            yield TimelineFrame(phase=phase, epoch=epoch, run_id=run, coords=coords,
                                prediction=((np.arange(n) + p) % c).astype(np.int16),
                                boundary=coords[:3] * 0.5, grid_class=grid_class, grid_gap=gap,
                                extent=(-r, r, -r, r), metrics={m: planted_metric(m, p) for m in METRICS},
                                seconds=1.0 + p)

    write_timeline_bundle(root, frames(), points=points, meta={
        "classes": list(classes), "transfer_position": n_source if n_source else None, "sample_per_class": per_class,
        "seed": 0, "options": {"n_neighbors": 15}, "notes": [],
        "runs": {"source": source_run, "target": target_run, "diagnostics": diagnostics_run}})
    return root
