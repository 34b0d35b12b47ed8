"""The timeline bundle (issue 14): a pair's training dynamics, epoch by epoch, as DeepVisualInsight draws
them — written beside the pair bundle (the diagnostics run's ``timetravel/`` folder) and read by the app.

Layout (names without extension; ``p`` is the position on the timeline, three digits):
``points`` (table: domain "source"|"target", split "train"|"val", label — the timeline's class index —,
index into its domain's dataset; one row per sample point, the same points at every position),
``epochs`` (table, one row per position: position, phase "source"|"target", epoch, run_id, the frame's
extent x_min, x_max, y_min, y_max, seconds, and every name in `METRICS`),
``frames/{p}/coords`` (N×2 float32), ``frames/{p}/prediction`` (N int16, the model's class at that epoch),
``frames/{p}/boundary`` (B×2 float32, the boundary samples), ``frames/{p}/grid_class`` (G×G int16) and
``frames/{p}/grid_gap`` (G×G float32, softmax top-1 − top-2), row 0 the top of the extent, and
``frames/{p}/regions`` (PNG, `regions.region_image` of the two). The manifest's ``timeline`` block:
``classes``, ``transfer_position`` (the first target position; null when the timeline is the target's
alone), ``n_points``, ``grid``, ``sample_per_class``, ``seed``, ``options``, ``notes``, ``runs``.

Its own bundle, not a section of the pair bundle: it is computed after the pair is diagnosed (``timetravel``),
so the pair bundle stays as it landed and a failed timeline costs only the timeline. Torch-free (numpy,
pyarrow, PIL through `BundleReader`): the app reads it like the pair bundle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..regions import FIDELITY_METRICS, region_image
from .io import BundleReader, BundleWriter, shown

KIND = "timeline"
FIX = "run `mlflow-transfer timetravel --target-run-id <target run>` again for this pair"
PHASES = ("source", "target")
DOMAINS = ("source", "target")
SPLITS = ("train", "val")
METRICS = FIDELITY_METRICS  # per position; NaN where undefined, e.g. temporal_corr at position 0
EPOCH_COLUMNS = ("position", "phase", "epoch", "run_id", "x_min", "x_max", "y_min", "y_max", "seconds", *METRICS)
POINT_COLUMNS = ("domain", "split", "label", "index")
_BLOCK = {"classes": list, "transfer_position": (int, type(None)), "n_points": int, "grid": int,
          "sample_per_class": (int, type(None)), "seed": int, "options": dict, "notes": list, "runs": dict}


@dataclass(frozen=True)
class TimelineFrame:
    """One position of the timeline: which epoch of which run, and its projection."""

    phase: str
    epoch: int
    run_id: str
    coords: np.ndarray       # (N, 2) float32
    prediction: np.ndarray   # (N,) int16, timeline class index
    boundary: np.ndarray     # (B, 2) float32
    grid_class: np.ndarray   # (G, G) int16, row 0 = top
    grid_gap: np.ndarray     # (G, G) float32 in [0, 1]
    extent: tuple[float, float, float, float]  # x_min, x_max, y_min, y_max
    metrics: dict
    seconds: float


def _frame(p: int) -> str:
    return f"frames/{p:03d}"


def write_timeline_bundle(root: str | Path, frames: Iterable[TimelineFrame], *, points: dict, meta: dict) -> dict:
    """Write a timeline bundle into the new folder ``root``, frame by frame as ``frames`` yields them (one in
    memory at a time), the manifest last. ``points``: the `POINT_COLUMNS`; ``meta``: the manifest's
    ``timeline`` block without ``n_points`` and ``grid`` (taken from the frames) plus any top-level fields
    under ``extra`` (e.g. ``software``). Returns the manifest.

    Raises:
        BundleError: no frame, or frames that disagree with the points or with each other.
    """
    missing = [c for c in POINT_COLUMNS if c not in points]
    if missing:
        raise BundleError(f"timeline points need columns {list(POINT_COLUMNS)}; missing {missing}")
    n = len(points["label"])
    w = BundleWriter(root)
    w.write_table("points", {c: points[c] for c in POINT_COLUMNS})
    rows: dict[str, list] = {c: [] for c in EPOCH_COLUMNS}
    grid = None
    for p, f in enumerate(frames):
        g = f.grid_class.shape[0]
        grid = g if grid is None else grid
        if f.coords.shape != (n, 2) or f.prediction.shape != (n,) or f.grid_class.shape != (grid, grid) \
                or f.grid_gap.shape != (grid, grid) or f.boundary.ndim != 2 or f.boundary.shape[1:] != (2,):
            raise BundleError(f"timeline frame {p} does not fit {n} points on a {grid}×{grid} grid: coords "
                              f"{f.coords.shape}, prediction {f.prediction.shape}, grid {f.grid_class.shape}")
        if f.phase not in PHASES:
            raise BundleError(f"timeline frame {p} has phase {f.phase!r}; expected one of {PHASES}")
        base = _frame(p)
        w.write_array(f"{base}/coords", np.asarray(f.coords, np.float32))
        w.write_array(f"{base}/prediction", np.asarray(f.prediction, np.int16))
        w.write_array(f"{base}/boundary", np.asarray(f.boundary, np.float32))
        w.write_array(f"{base}/grid_class", np.asarray(f.grid_class, np.int16))
        w.write_array(f"{base}/grid_gap", np.asarray(f.grid_gap, np.float32))
        w.write_png(f"{base}/regions", region_image(f.grid_class, f.grid_gap))
        x0, x1, y0, y1 = (float(v) for v in f.extent)
        row = {"position": p, "phase": f.phase, "epoch": int(f.epoch), "run_id": f.run_id, "x_min": x0, "x_max": x1,
               "y_min": y0, "y_max": y1, "seconds": float(f.seconds),
               **{m: float(f.metrics.get(m, np.nan)) for m in METRICS}}
        for c in EPOCH_COLUMNS:
            rows[c].append(row[c])
    if grid is None:
        raise BundleError("a timeline needs at least one frame; got none")
    w.write_table("epochs", rows)
    meta = dict(meta)
    extra = meta.pop("extra", {})
    return w.finish(kind=KIND, timeline={**meta, "n_points": n, "grid": grid}, **extra)


@dataclass(eq=False)  # one open bundle is one object: views cache by identity
class TimelineBundle:
    """Typed access to a timeline bundle (see the module docstring); every read is checked against the
    manifest, as the bundle is untrusted."""

    reader: BundleReader

    @classmethod
    def open(cls, root: str | Path) -> "TimelineBundle":
        reader = BundleReader(root, fix=FIX, what="timeline")
        m = reader.manifest
        if m.get("kind") != KIND:
            raise BundleError(f"{root} is a bundle but not a timeline bundle (kind {shown(m.get('kind'))}); {FIX}")
        block = m.get("timeline")
        expected = "manifest field 'timeline' as {" + ", ".join(_BLOCK) + "}"
        if not isinstance(block, dict):
            raise reader.corrupt(expected, shown(block))
        for key, kind in _BLOCK.items():
            value = block.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise reader.corrupt(expected, f"{key}={shown(value)}")
        if not all(isinstance(c, str) for c in block["classes"]) or not all(isinstance(t, str) for t in block["notes"]):
            raise reader.corrupt("manifest fields 'timeline.classes' and 'timeline.notes' as lists of text",
                                 shown(block["classes"]))
        bundle = cls(reader)
        epochs = bundle.epochs()  # read once here: every position's row is checked before any view asks
        n = len(epochs["position"])
        if n == 0 or list(epochs["position"]) != list(range(n)):
            raise reader.corrupt("table epochs with positions 0, 1, … in order", shown(list(epochs["position"])))
        if not all(p in PHASES for p in epochs["phase"]):
            raise reader.corrupt(f"table epochs with phases in {list(PHASES)}", shown(sorted(set(epochs["phase"]))))
        tp = block["transfer_position"]
        if tp is not None and not 0 <= tp < n:
            raise reader.corrupt(f"timeline.transfer_position in [0, {n})", shown(tp))
        bundle._epochs = epochs
        return bundle

    @property
    def meta(self) -> dict:
        return self.reader.manifest["timeline"]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def transfer_position(self) -> int | None:
        return self.meta["transfer_position"]

    @property
    def notes(self) -> list[str]:
        return list(self.meta["notes"])

    @property
    def n_positions(self) -> int:
        return len(self.epochs()["position"])

    def epochs(self) -> dict:
        """One row per position: ``position``, ``phase``, ``epoch``, ``run_id``, the extent, ``seconds`` and
        every `METRICS` name (columns as `BundleReader.read_table` gives them)."""
        cached = getattr(self, "_epochs", None)
        return cached if cached is not None else self.reader.read_required_table("epochs", EPOCH_COLUMNS)

    def points(self) -> dict:
        """``domain``, ``split``, ``label`` (a class index of `classes`), ``index``; checked."""
        table = self.reader.read_required_table("points", POINT_COLUMNS)
        n = self.meta["n_points"]
        labels = np.asarray(table["label"])
        if len(labels) != n or not (set(table["domain"]) <= set(DOMAINS) and set(table["split"]) <= set(SPLITS)) \
                or (n and (labels.min() < 0 or labels.max() >= len(self.classes))):
            raise self.reader.corrupt(f"table points of {n} rows with domains {DOMAINS}, splits {SPLITS} and "
                                      f"labels in [0, {len(self.classes)})", f"{len(labels)} rows")
        return table

    def _array(self, name: str, shape: tuple, kinds: str) -> np.ndarray:
        array = self.reader.read_array(name)
        if array.shape != shape or array.dtype.kind not in kinds:
            raise self.reader.corrupt(f"array {name} of shape {shape}", f"{array.dtype} {array.shape}")
        return array

    def _position(self, position) -> int:
        if isinstance(position, bool) or not isinstance(position, (int, np.integer)) \
                or not 0 <= position < self.n_positions:
            raise BundleError(f"Expected a timeline position in [0, {self.n_positions}); got {shown(position)}")
        return int(position)

    def frame(self, position: int) -> TimelineFrame:
        """The frame at ``position`` with its arrays checked (shapes, finite coordinates, classes in range)."""
        p = self._position(position)
        n, g, base = self.meta["n_points"], self.meta["grid"], _frame(p)
        coords = self._array(f"{base}/coords", (n, 2), "f")
        if not np.isfinite(coords).all():
            raise self.reader.corrupt(f"finite coordinates in {base}/coords", "NaN or infinity")
        boundary = self.reader.read_array(f"{base}/boundary")
        if boundary.ndim != 2 or boundary.shape[1] != 2 or boundary.dtype.kind != "f":
            raise self.reader.corrupt(f"array {base}/boundary of shape (B, 2)", f"{boundary.dtype} {boundary.shape}")
        prediction = self._array(f"{base}/prediction", (n,), "iu")
        grid_class = self._array(f"{base}/grid_class", (g, g), "iu")
        c = len(self.classes)
        for name, values in (("prediction", prediction), ("grid_class", grid_class)):
            if values.size and (values.min() < 0 or values.max() >= c):
                raise self.reader.corrupt(f"{base}/{name} as class indices in [0, {c})",
                                          f"values {int(values.min())}…{int(values.max())}")
        row = {k: v[p] for k, v in self.epochs().items()}
        extent = tuple(float(row[k]) for k in ("x_min", "x_max", "y_min", "y_max"))
        if not (np.isfinite(extent).all() and extent[0] < extent[1] and extent[2] < extent[3]):
            raise self.reader.corrupt(f"a finite, non-empty extent at position {p}", shown(extent))
        return TimelineFrame(
            phase=str(row["phase"]), epoch=int(row["epoch"]), run_id=str(row["run_id"]), coords=coords,
            prediction=prediction, boundary=boundary, grid_class=grid_class,
            grid_gap=self._array(f"{base}/grid_gap", (g, g), "f"), extent=extent,
            metrics={m: float(row[m]) for m in METRICS}, seconds=float(row["seconds"]))

    def region(self, position: int) -> np.ndarray:
        """The decision-region image at ``position``, (G, G, 3) uint8, row 0 the top of the extent."""
        g = self.meta["grid"]
        image = self.reader.read_png(f"{_frame(self._position(position))}/regions")
        if image.shape != (g, g, 3) or image.dtype != np.uint8:
            raise self.reader.corrupt(f"an RGB image of {g}×{g} at position {position}", f"{image.dtype} {image.shape}")
        return image

    def trajectories(self, point_indices) -> np.ndarray:
        """Coordinates of the given points at every position: (positions, len(point_indices), 2) float32."""
        idx = np.asarray(point_indices, dtype=np.int64).reshape(-1)
        n = self.meta["n_points"]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise BundleError(f"Expected point indices in [0, {n}); got {shown(idx.tolist())}")
        out = np.empty((self.n_positions, idx.size, 2), np.float32)
        for p in range(self.n_positions):
            out[p] = self._array(f"{_frame(p)}/coords", (n, 2), "f")[idx]
        return out
