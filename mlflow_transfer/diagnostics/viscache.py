"""A local cache of feature-visualisation images, one ``.npy`` file per image, so that every pair diagnosed
from the same source run (same weights) reuses the source model's images instead of optimising again.

Keys are SHA-256 digests of the model's weights (every state-dict tensor: name, dtype, shape, bytes), the
layer name, the neuron and the settings. Files are written atomically (a temporary file in the cache
folder, then renamed over the key) and read back without pickle; a file that is not a regular file, does
not load, or has another shape or dtype is a miss — recomputed and replaced, never trusted. Only files
named by a key (or this module's temporary files) are ever written; nothing is deleted but its own
temporary file when a write fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["CACHE_ENV", "default_cache_dir", "key", "load", "store", "weights_digest"]

CACHE_ENV = "MLFLOW_TRANSFER_FEATUREVIS_CACHE"


def default_cache_dir() -> Path:
    """``$MLFLOW_TRANSFER_FEATUREVIS_CACHE`` or ``~/.cache/mlflow-transfer/featurevis``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlflow-transfer" / "featurevis")


def weights_digest(model) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, raw bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 included
    return digest.hexdigest()


def key(weights: str, layer: str, neuron: int, settings: dict) -> str:
    """The cache key (hex) of one image."""
    text = json.dumps({"weights": weights, "layer": layer, "neuron": int(neuron), "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _path(root, k: str) -> Path:
    return Path(root) / f"{k}.npy"


def load(root, k: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached uint8 image of key ``k`` with ``shape``, or None (missing, unreadable or foreign)."""
    path = _path(root, k)
    try:
        if path.is_symlink() or not path.is_file():
            return None
        image = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != tuple(shape):
        return None
    return image


def store(root, k: str, image: np.ndarray) -> bool:
    """Write ``image`` under key ``k`` atomically; False (with a warning) when the cache is not writable."""
    root = Path(root)
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".tmp-", suffix=".npy", delete=False) as fh:
            tmp = Path(fh.name)
            np.save(fh, np.ascontiguousarray(image, dtype=np.uint8), allow_pickle=False)
        os.replace(tmp, _path(root, k))
        return True
    except OSError as exc:
        if tmp is not None and tmp.exists():
            tmp.unlink()  # our own temporary file
        warnings.warn(f"feature-visualisation cache {root} not written ({exc}); images are recomputed next "
                      f"time. Set {CACHE_ENV} to a folder you can write.", stacklevel=2)
        return False
