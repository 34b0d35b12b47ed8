"""Small images for the views: neuron patches cut from the bundle's sprites, PNG bytes, ``data:`` URIs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

__all__ = ["crop_patches", "data_uri", "png_bytes", "vis_image"]

_DOMAINS = ("source", "target")  # sprite row order within a neuron


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 image (H, W) or (H, W, 3)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes: shown inline, no request to any server."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def crop_patches(record: dict, neuron: int) -> dict[str, list[dict]]:
    """A neuron's top activating patches per data domain, cut from a ``bundle.patches()`` record.

    Returns:
        ``{"source": [...], "target": [...]}``, each a list (most activating first) of
        ``{"image": (p, p, 3) uint8, "value": activation, "index": instance index}``; empty lists when
        the neuron has no stored patches (``diagnose`` stores them for important neurons and their most
        similar neurons of the other model).
    """
    hits = np.flatnonzero(np.asarray(record["neurons"]) == neuron)
    if hits.size == 0:
        return {d: [] for d in _DOMAINS}
    i, values, indices, sprite = int(hits[0]), record["values"], record["indices"], record["sprite"]
    k = values.shape[2]
    p = sprite.shape[1] // k
    out = {}
    for dom, name in enumerate(_DOMAINS):
        row = (2 * i + dom) * p  # sprite rows: neuron i, domain dom; columns: the k patches
        out[name] = [{"image": sprite[row:row + p, j * p:(j + 1) * p], "value": float(values[i, dom, j]),
                      "index": int(indices[i, dom, j])} for j in range(k) if indices[i, dom, j] >= 0]
    return out


def vis_image(record: dict | None, neuron: int) -> np.ndarray | None:
    """A neuron's feature visualisation (S, S, 3) uint8 from a ``bundle.feature_vis()`` record; None when
    the record is None (a bundle without them) or holds no image of ``neuron``."""
    if record is None:
        return None
    hits = np.flatnonzero(np.asarray(record["neurons"]) == neuron)
    return record["images"][int(hits[0])] if hits.size else None
