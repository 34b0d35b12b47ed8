"""Re-projection of a subset of classes (paper §5.2): a fresh 2-D t-SNE of only their instances.

The bundle's projection places every instance among all classes; looking at two confusable classes
alone spreads them out. This runs the same openTSNE projection the diagnostics use, on the stored
target-model embeddings of the selected classes' instances — a view of stored records, nothing is
re-diagnosed — and keeps the last results in memory, so flipping back is instant. The cache is shared
by every session of the server, so it is bounded in entries and in bytes.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from mlflow_transfer.bundle import PairBundle
from mlflow_transfer.projection import tsne_projection

__all__ = ["MIN_INSTANCES", "reprojected"]

MIN_INSTANCES = 4  # t-SNE needs at least this many points
_BH_BELOW = 1000   # Barnes–Hut beats the FFT grid's fixed cost on small sets
_CACHE_SIZE = 16   # projections kept (bundle folder, classes, seed) → (K, 2)
_CACHE_BYTES = 64 << 20  # and at most this many bytes of them (a million points is 8 MB each)
_CACHE: OrderedDict = OrderedDict()


def reprojected(bundle: PairBundle, classes: list[str], *, seed: int = 0,
                instances: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE of the target-model embeddings of the instances of ``classes`` only.

    ``instances``: the bundle's instance table when the caller already read it (it holds every
    thumbnail, so reading it again on each class change would cost more than a cache hit).

    Returns:
        (rows, xy): the instance rows (K,) of the bundle's instance table, ascending, and their new
        coordinates (K, 2) float32. Fewer than `MIN_INSTANCES` instances: their stored coordinates.
    """
    table = bundle.instances() if instances is None else instances
    wanted = tuple(sorted(bundle.classes.index(c) for c in classes))
    rows = np.flatnonzero(np.isin(np.asarray(table["label"]), wanted))
    key = (str(bundle.reader.root), wanted, seed)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return rows, _CACHE[key]
    if len(rows) < MIN_INSTANCES:
        xy = np.stack([np.asarray(table["x"])[rows], np.asarray(table["y"])[rows]], 1).astype(np.float32)
    else:
        xy = tsne_projection(bundle.embedding("target")[rows], seed=seed,
                             gradient="bh" if len(rows) < _BH_BELOW else "fft")
    _CACHE[key] = xy
    while len(_CACHE) > 1 and (len(_CACHE) > _CACHE_SIZE or sum(v.nbytes for v in _CACHE.values()) > _CACHE_BYTES):
        _CACHE.popitem(last=False)  # the least recently used; the one just made always stays
    return rows, xy
