"""Which rows each computation of a diagnosis reads: the domain classifiers' seeded samples, drawn
before the conductance so that only the rows something reads get conductance."""

from __future__ import annotations

import numpy as np
import torch

from .conductance import layer_conductance

__all__ = ["conductance_on", "sample", "svm_note", "svm_rows"]


def sample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= limit else np.sort(rng.choice(rows, limit, replace=False))


def svm_rows(labels, domain, classes, wanted, limit, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The domain classifiers' (source rows, target rows): per class of ``wanted`` with rows in both
    domains, and ``"__all__"``. Equal rows per domain — the smaller domain's count, at most ``limit`` —
    as for the A-distance the measure follows, so that a cross-validated accuracy of 0.5 means
    indistinguishable domains whatever their sizes; seeded draws in that order."""
    def draw(src, tgt):
        n = min(len(src), len(tgt), limit)
        return sample(src, n, rng), sample(tgt, n, rng)

    plan = {}
    for cls in wanted:
        c = classes.index(cls)
        src, tgt = (np.flatnonzero((domain == d) & (labels == c)) for d in (0, 1))
        if len(src) and len(tgt):
            plan[cls] = draw(src, tgt)
    plan["__all__"] = draw(np.flatnonzero(domain == 0), np.flatnonzero(domain == 1))
    return plan


def svm_note(plan, labels, domain, classes, seed) -> str:
    """One note on the rows the domain classifiers left out (empty when they use every row)."""
    def count(cls):
        mask = np.ones(len(labels), bool) if cls == "__all__" else labels == classes.index(cls)
        return [int(((domain == d) & mask).sum()) for d in (0, 1)]

    cut = [(cls, len(plan[cls][0]), count(cls)) for cls in plan if len(plan[cls][0]) < max(count(cls))]
    if not cut:
        return ""
    shown = "; ".join(f"{'all classes' if cls == '__all__' else repr(cls)}: {n} of {s} source, {n} of {t} target"
                      for cls, n, (s, t) in cut[:4])
    more = f"; and {len(cut) - 4} more" if len(cut) > 4 else ""
    return (f"domain classifiers use equal rows per domain (the smaller domain's count, at most svm_max_rows; "
            f"seed {seed}): {shown}{more}")


def conductance_on(model, images, targets, rows, layers, **kwargs) -> dict[str, np.ndarray]:
    """`layer_conductance` of ``rows`` only, as (N, units) arrays over all instances, NaN on other rows."""
    found = layer_conductance(model, images[rows], torch.as_tensor(targets[rows]), layers, **kwargs)
    out = {}
    for name, values in found.items():
        out[name] = np.full((len(images), *values.shape[1:]), np.nan, dtype=values.dtype)
        out[name][rows] = values
    return out
